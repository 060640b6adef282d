"""The TOFU suite's catalogue and work plan: its metrics, what each split must provide, the row checks.

:func:`plan_splits` turns the chosen metrics into one :class:`SplitPlan` per split (which answer variants are scored,
whether the split is generated from, gradnorm), which :class:`~baldro_pl.metrics.tofu.TOFUSuite` follows, and
:func:`check_rows` refuses rows that lack what the plan reads, naming split, row and field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from baldro_pl.metrics.functional.balance import BALANCE_KEYS
from baldro_pl.metrics.functional.utility import MODEL_UTILITY_COMPONENTS
from baldro_pl.metrics.mia import MIA_ATTACKS

TOFU_SPLITS: tuple[str, ...] = ("forget", "retain", "real_authors", "world_facts", "holdout")
PREFIX = {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}

#: Every metric of the suite, in log order. ``*_PARA_ROUGE`` / ``*_PERT_ROUGE`` are in upstream open-unlearning's
#: ``tofu.yaml`` (not in the BalDRO fork's); ``forget_balance_*`` is baldro-pl's forgetting balance.
TOFU_METRICS: tuple[str, ...] = (
    "forget_Q_A_Prob",
    "forget_Q_A_PARA_Prob",
    "forget_Q_A_PERT_Prob",
    "forget_Q_A_ROUGE",
    "forget_Q_A_PARA_ROUGE",
    "forget_Q_A_PERT_ROUGE",
    "forget_truth_ratio",
    "forget_quality",
    *BALANCE_KEYS,
    "retain_Q_A_Prob",
    "retain_Q_A_PARA_Prob",
    "retain_Q_A_PERT_Prob",
    "retain_Q_A_ROUGE",
    "retain_Q_A_PARA_ROUGE",
    "retain_Q_A_PERT_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob",
    "ra_Q_A_PERT_Prob",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob",
    "wf_Q_A_PERT_Prob",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
    "model_utility",
    "privleak",
    *MIA_ATTACKS,
    "extraction_strength",
    "exact_memorization",
)

DEPENDS: dict[str, tuple[str, ...]] = {
    "forget_truth_ratio": ("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob"),
    "forget_quality": ("forget_truth_ratio",),
    **{key: ("forget_truth_ratio",) for key in BALANCE_KEYS},
    "retain_Truth_Ratio": ("retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob"),
    "ra_Truth_Ratio": ("ra_Q_A_Prob", "ra_Q_A_PERT_Prob"),
    "ra_Q_A_Prob_normalised": ("ra_Q_A_Prob", "ra_Q_A_PERT_Prob"),
    "wf_Truth_Ratio": ("wf_Q_A_Prob", "wf_Q_A_PERT_Prob"),
    "wf_Q_A_Prob_normalised": ("wf_Q_A_Prob", "wf_Q_A_PERT_Prob"),
    "model_utility": MODEL_UTILITY_COMPONENTS,
    "privleak": ("mia_min_k",),
}
ALIASES = {"forget_balance": BALANCE_KEYS}

_ANSWER_METRICS = (
    "mia_loss",
    "mia_zlib",
    "mia_min_k",
    "mia_min_k_plus_plus",
    "exact_memorization",
    "extraction_strength",
)
_VOCAB_METRICS = {
    "forget": ("mia_min_k_plus_plus", "exact_memorization", "extraction_strength"),
    "holdout": ("mia_min_k_plus_plus",),
}


@dataclass
class SplitPlan:
    """What one split needs: which answer variants are scored, whether it is generated from, gradnorm."""

    split: str
    answer: bool = False
    vocab: bool = False
    para: bool = False
    pert: bool = False
    generate: bool = False
    gradnorm: bool = False

    @property
    def needed(self) -> bool:
        """Whether any chosen metric reads the split."""
        return self.answer or self.para or self.pert or self.generate or self.gradnorm


def plan_splits(metrics: Sequence[str]) -> dict[str, SplitPlan]:
    """What each split must provide for ``metrics``."""
    chosen = set(metrics)
    plans = {split: SplitPlan(split) for split in TOFU_SPLITS}
    for split, prefix in PREFIX.items():
        p = plans[split]
        p.answer = f"{prefix}_Q_A_Prob" in chosen
        p.para = f"{prefix}_Q_A_PARA_Prob" in chosen
        p.pert = f"{prefix}_Q_A_PERT_Prob" in chosen
        p.generate = any(f"{prefix}_Q_A_{v}ROUGE" in chosen for v in ("", "PARA_", "PERT_"))
    for split in ("forget", "holdout"):
        p = plans[split]
        answer_metrics = _ANSWER_METRICS if split == "forget" else _ANSWER_METRICS[:4]
        p.answer = p.answer or any(m in chosen for m in answer_metrics)
        p.vocab = any(m in chosen for m in _VOCAB_METRICS[split])
        p.gradnorm = "mia_gradnorm" in chosen
    return plans


def question_field(split: str, question_key: str) -> str:
    """The question field of a split's rows: ``question_key`` for forget and retain, else ``question``."""
    return question_key if split in ("forget", "retain") else "question"


def _users(metrics: Sequence[str], split: str) -> list[str]:
    prefix = PREFIX.get(split, "")
    names = [m for m in metrics if prefix and m.startswith(prefix + "_")]
    if split in ("forget", "holdout"):
        names += [m for m in metrics if m.startswith("mia_") or m in ("privleak",)]
    return names


def check_rows(
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    plans: Mapping[str, SplitPlan],
    metrics: Sequence[str],
    *,
    question_key: str,
    forget_split: str | None,
) -> None:
    """Every split the plan reads, with the fields it needs.

    Raises:
        KeyError: a split is missing (naming the metrics that read it).
        ValueError: a split is empty, or a row lacks a field or has a malformed ``perturbed_answer``.
    """
    for split, plan in plans.items():
        if not plan.needed:
            continue
        name = f"{split} ({forget_split})" if split == "forget" and forget_split else split
        where, users = f"TOFU split {name!r}", _users(metrics, split)
        if split not in rows:
            raise KeyError(f"TOFU evaluation needs the {split!r} split (metrics {users}); got {sorted(rows)}")
        if len(rows[split]) == 0:
            raise ValueError(f"{where} is empty")
        fields = [question_field(split, question_key), "answer"]
        if plan.para:
            fields.append("paraphrased_answer")
        if plan.pert or (plan.generate and f"{PREFIX.get(split)}_Q_A_PERT_ROUGE" in metrics):
            fields.append("perturbed_answer")
        if plan.generate and f"{PREFIX.get(split)}_Q_A_PARA_ROUGE" in metrics:
            fields.append("paraphrased_answer")
        n_options = None
        for i, row in enumerate(rows[split]):
            missing = [f for f in fields if f not in row or row[f] is None]
            if missing:
                perturbed = "perturbed_answer" in missing or "paraphrased_answer" in missing
                hint = " (use the *_perturbed config of this split)" if perturbed else ""
                raise ValueError(f"{where} row {i} has no {missing} field, needed by {users}{hint}")
            if "perturbed_answer" in fields:
                options = row["perturbed_answer"]
                if isinstance(options, str) or not isinstance(options, Sequence) or len(options) == 0:
                    raise ValueError(f"{where} row {i}: 'perturbed_answer' must be a non-empty list")
                if n_options is None:
                    n_options = len(options)
                elif len(options) != n_options:
                    raise ValueError(f"{where} row {i} has {len(options)} perturbed answers, earlier rows {n_options}")
