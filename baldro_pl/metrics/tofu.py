"""The TOFU evaluation suite (metrics-spec §2, §4, §5) with open-unlearning's metric names and log layout.

Where the public evaluator runs separate data passes per metric, this suite plans the work once:

* one teacher-forced pass per (split, answer variant, row), pooled over splits in length-sorted batches, gives
  Prob, truth ratio, normalised Prob, every likelihood MIA score, EM and ES (the forget answers feed eight metrics);
* one greedy generation per split row serves ROUGE, PARA_ROUGE and PERT_ROUGE (open-unlearning re-generates the same
  prompts for each of them, and once per perturbed answer);
* gradnorm (batch size 1, a backward pass per row) runs only for the forget and holdout answers.

Rows come as raw dicts (``question``, ``answer``, ``paraphrased_answer``, ``perturbed_answer`` [list]), keyed by split:
``forget`` (forgetXX_perturbed), ``retain`` (retain_perturbed), ``real_authors``, ``world_facts`` (their
``*_perturbed`` configs) and ``holdout`` (holdoutXX). Forget rows with a ``stratum`` field (the synthetic set's
memorisation strata) also get their forget metrics per stratum (``stratum/<s>/...``, :mod:`baldro_pl.metrics.strata`).
In a process group every process evaluates its shard of each split (:mod:`baldro_pl.distributed`) and the
metric states are gathered and de-duplicated by row index.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from baldro_pl.datamodules.formatting import EncodedSample, PromptFormat
from baldro_pl.distributed import all_gather_objects, rank_world, shard_indices
from baldro_pl.metrics.functional.balance import BALANCE_KEYS, forgetting_balance
from baldro_pl.metrics.functional.forget_quality import forget_quality
from baldro_pl.metrics.functional.mia import privleak, zlib_scores
from baldro_pl.metrics.functional.utility import MODEL_UTILITY_COMPONENTS, model_utility
from baldro_pl.metrics.generation import decode, greedy_generate, reference_text
from baldro_pl.metrics.likelihood import SCORE_KEYS, CallContext, gradnorm_scores, model_device, score_samples
from baldro_pl.metrics.logs import ReferenceLog
from baldro_pl.metrics.memorization import ExactMemorization, ExtractionStrength
from baldro_pl.metrics.mia import MIA_ATTACKS, MIAAUC
from baldro_pl.metrics.probability import NormalisedProbability, Probability
from baldro_pl.metrics.rouge import ROUGE
from baldro_pl.metrics.strata import strata_of_rows, stratum_logs
from baldro_pl.metrics.suite import (
    EncodingCache,
    EvaluationResult,
    mia_entry,
    pad_token_id,
    probability_entry,
    resolve_metrics,
    rouge_entry,
    score_entry,
    target_text,
)
from baldro_pl.metrics.truth_ratio import TruthRatio

log = logging.getLogger(__name__)

TOFU_SPLITS: tuple[str, ...] = ("forget", "retain", "real_authors", "world_facts", "holdout")
_PREFIX = {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}

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

_DEPENDS: dict[str, tuple[str, ...]] = {
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
_ALIASES = {"forget_balance": BALANCE_KEYS}

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
class _SplitPlan:
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
        return self.answer or self.para or self.pert or self.generate or self.gradnorm


def _plan(metrics: Sequence[str]) -> dict[str, _SplitPlan]:
    chosen = set(metrics)
    plans = {split: _SplitPlan(split) for split in TOFU_SPLITS}
    for split, prefix in _PREFIX.items():
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


class TOFUEvaluator:
    """Runs the TOFU suite on a model; keeps tokenisations across calls (use one instance per run).

    Args:
        tokenizer: the model's tokenizer.
        prompt_format: how questions become prompts (``PromptFormat.llama2_chat()`` for the BalDRO Llama-2 setup).
        metrics: metric names to report (None = the full suite, :data:`TOFU_METRICS`); dependencies are added
            (e.g. ``model_utility`` brings its nine components). ``"forget_balance"`` selects the three balance keys.
        exclude: names to leave out of the request (e.g. ``["mia_gradnorm"]``, the expensive one).
        retain_logs_path: the retain model's ``TOFU_EVAL.json`` on the same forget split (or the loaded log), for
            forget quality, forgetting balance and privleak. Without it forget quality and balance are None (with a
            warning) and privleak uses open-unlearning's reference AUC 0.5.
        forget_split: name of the forget split (``forget10``...), used in messages.
        batch_size: rows per forward / generate call (32 as in open-unlearning; gradnorm always uses 1).
        max_new_tokens: generation budget for ROUGE (200 in the published metric).
        max_length: token cap of prompts and QA pairs (512).
        question_key: question field of the forget and retain rows (``"paraphrased_question"`` is also used).
        mia_k: the min-k / min-k++ fraction (0.4).
        gradnorm_p: the norm of ``mia_gradnorm`` (1, 2 or inf).
        sort_by_length: batch rows of similar length together (less padding; P13 numerics aside, same results).
        balance_percentiles: the reference range of the forgetting balance.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_format: PromptFormat | None = None,
        *,
        metrics: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        retain_logs_path: str | os.PathLike | Mapping[str, Any] | None = None,
        forget_split: str | None = None,
        batch_size: int = 32,
        max_new_tokens: int = 200,
        max_length: int = 512,
        question_key: str = "question",
        mia_k: float = 0.4,
        gradnorm_p: float = 2.0,
        sort_by_length: bool = True,
        balance_percentiles: tuple[float, float] = (5.0, 95.0),
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format or PromptFormat.llama2_chat()
        self.metrics = resolve_metrics(metrics, exclude, TOFU_METRICS, _DEPENDS, _ALIASES, suite="TOFU")
        self.reference = None if retain_logs_path is None else ReferenceLog(retain_logs_path)
        self.forget_split = forget_split
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.question_key = question_key
        self.mia_k = mia_k
        self.gradnorm_p = gradnorm_p
        self.sort_by_length = sort_by_length
        self.balance_percentiles = balance_percentiles
        self.cache = EncodingCache(tokenizer, self.prompt_format, max_length)
        self.plans = _plan(self.metrics)

    # ------------------------------------------------------------------ validation
    def _split_name(self, split: str) -> str:
        return f"{split} ({self.forget_split})" if split == "forget" and self.forget_split else split

    def _check_rows(self, rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        for split, plan in self.plans.items():
            if not plan.needed:
                continue
            if split not in rows:
                raise KeyError(
                    f"TOFU evaluation needs the {split!r} split (metrics {self._users(split)}); got {sorted(rows)}"
                )
            if len(rows[split]) == 0:
                raise ValueError(f"TOFU split {self._split_name(split)!r} is empty")
            qkey = self.question_key if split in ("forget", "retain") else "question"
            fields = [qkey, "answer"]
            if plan.para:
                fields.append("paraphrased_answer")
            if plan.pert or (plan.generate and f"{_PREFIX.get(split)}_Q_A_PERT_ROUGE" in self.metrics):
                fields.append("perturbed_answer")
            if plan.generate and f"{_PREFIX.get(split)}_Q_A_PARA_ROUGE" in self.metrics:
                fields.append("paraphrased_answer")
            n_options = None
            for i, row in enumerate(rows[split]):
                missing = [f for f in fields if f not in row or row[f] is None]
                if missing:
                    hint = (
                        " (use the *_perturbed config of this split)"
                        if "perturbed_answer" in missing or "paraphrased_answer" in missing
                        else ""
                    )
                    raise ValueError(
                        f"TOFU split {self._split_name(split)!r} row {i} has no {missing} field, needed by "
                        f"{self._users(split)}{hint}"
                    )
                if "perturbed_answer" in fields:
                    options = row["perturbed_answer"]
                    if isinstance(options, str) or not isinstance(options, Sequence) or len(options) == 0:
                        raise ValueError(
                            f"TOFU split {self._split_name(split)!r} row {i}: 'perturbed_answer' must be a "
                            "non-empty list"
                        )
                    if n_options is None:
                        n_options = len(options)
                    elif len(options) != n_options:
                        raise ValueError(
                            f"TOFU split {self._split_name(split)!r} row {i} has {len(options)} perturbed answers, "
                            f"earlier rows {n_options}"
                        )

    def _users(self, split: str) -> list[str]:
        prefix = _PREFIX.get(split, "")
        names = [m for m in self.metrics if prefix and m.startswith(prefix + "_")]
        if split in ("forget", "holdout"):
            names += [m for m in self.metrics if m.startswith("mia_") or m in ("privleak",)]
        return names

    def _reference_values(self, n_forget: int | None) -> tuple[Any, float | None, list[str]]:
        notes: list[str] = []
        needs_tr = any(m in self.metrics for m in ("forget_quality", *BALANCE_KEYS))
        ref_tr, ref_auc = None, None
        if self.reference is None:
            if needs_tr:
                notes.append(
                    "forget_quality and forget_balance_* are None: no retain_logs_path (the retain model's "
                    "TOFU_EVAL.json on the same forget split) was given"
                )
            if "privleak" in self.metrics:
                notes.append("privleak uses the reference AUC 0.5: no retain_logs_path was given")
            return ref_tr, ref_auc, notes
        if needs_tr:
            ref_tr = self.reference.forget_truth_ratios(expected_rows=n_forget, split=self.forget_split or "forget")
        if "privleak" in self.metrics:
            ref_auc = self.reference.mia_min_k_auc()
        return ref_tr, ref_auc, notes

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        model: torch.nn.Module,
        rows: Mapping[str, Sequence[Mapping[str, Any]]],
        *,
        call_context: CallContext | None = None,
        synced_gpus: bool = False,
        allow_gradnorm: bool = True,
    ) -> EvaluationResult:
        """Evaluate ``model`` on ``rows`` and return the logs (collective in a process group: call on every rank).

        Args:
            model: a Hugging Face causal LM. Its train/eval modes and gradients are restored afterwards.
            rows: raw rows per split (see the module docstring).
            call_context: factory of a context manager entered around every forward / generate call.
            synced_gpus: passed to ``generate`` (needed under FSDP).
            allow_gradnorm: False skips ``mia_gradnorm`` (value None, with a warning), e.g. under FSDP.
        """
        self._check_rows(rows)
        n_forget = len(rows["forget"]) if "forget" in rows else None
        ref_tr, ref_auc, notes = self._reference_values(n_forget)
        rank, world = rank_world()
        shards = {s: shard_indices(len(rows[s]), rank, world) for s, p in self.plans.items() if p.needed}
        gradnorm = "mia_gradnorm" in self.metrics and allow_gradnorm
        if "mia_gradnorm" in self.metrics and not allow_gradnorm:
            notes.append("mia_gradnorm is None: gradnorm was not allowed in this run (FSDP)")

        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()
            per_split = self._run_model(model, rows, shards, call_context, synced_gpus, gradnorm)
        finally:
            for m, mode in modes.items():
                m.training = mode
        metrics = self._update_metrics(per_split, shards, model_device(model), gradnorm)
        logs = self._compute_logs(metrics, per_split, ref_tr, ref_auc, gradnorm)
        # forget rows with a "stratum" field (memorisation strata): the forget metrics per stratum as well
        strata = strata_of_rows(rows["forget"]) if "forget" in rows else {}
        logs.update(stratum_logs(logs, strata, ref_tr, balance_percentiles=self.balance_percentiles))
        for note in notes:
            log.warning(note)
        return EvaluationResult.from_logs(logs, notes)

    def _qkey(self, split: str) -> str:
        return self.question_key if split in ("forget", "retain") else "question"

    def _run_model(self, model, rows, shards, call_context, synced_gpus, gradnorm) -> dict[str, dict[str, Any]]:
        tok = self.tokenizer
        samples: list[EncodedSample] = []
        vocab: list[bool] = []
        slots: list[tuple[str, str, int, int]] = []  # (split, variant, position in shard, option)
        prompts: list[list[int]] = []
        prompt_slots: list[tuple[str, int, int]] = []  # (split, position in shard, row)
        per_split: dict[str, dict[str, Any]] = {}
        for split, shard in shards.items():
            plan, data = self.plans[split], rows[split]
            qkey = self._qkey(split)
            out: dict[str, Any] = {"index": shard}
            n_options = len(data[0]["perturbed_answer"]) if plan.pert else 0
            for pos, r in enumerate(shard):
                row = data[r]
                q = row[qkey]
                if plan.answer or plan.gradnorm:
                    samples.append(self.cache.qa(q, row["answer"], r))
                    vocab.append(plan.vocab)
                    slots.append((split, "answer", pos, 0))
                if plan.para:
                    samples.append(self.cache.qa(q, row["paraphrased_answer"], r))
                    vocab.append(False)
                    slots.append((split, "para", pos, 0))
                if plan.pert:
                    for k, option in enumerate(row["perturbed_answer"]):
                        samples.append(self.cache.qa(q, option, r))
                        vocab.append(False)
                        slots.append((split, "pert", pos, k))
                if plan.generate:
                    prompts.append(self.cache.prompt(q))
                    prompt_slots.append((split, pos, r))
            size = len(shard)
            for variant in ("answer", "para"):
                out[variant] = {key: torch.full((size,), float("nan"), dtype=torch.float64) for key in SCORE_KEYS}
            out["pert"] = torch.full((size, max(n_options, 1)), float("nan"), dtype=torch.float64)
            per_split[split] = out

        scores = score_samples(
            model,
            samples,
            pad_token_id=pad_token_id(tok),
            batch_size=self.batch_size,
            vocab=vocab,
            k=self.mia_k,
            sort_by_length=self.sort_by_length,
            call_context=call_context,
        )
        answer_samples: dict[str, list[EncodedSample]] = {s: [None] * len(shards[s]) for s in shards}  # type: ignore[list-item]
        for j, (split, variant, pos, k) in enumerate(slots):
            out = per_split[split]
            if variant == "pert":
                out["pert"][pos, k] = scores["avg_loss"][j]
            else:
                for key in SCORE_KEYS:
                    out[variant][key][pos] = scores[key][j]
                if variant == "answer":
                    answer_samples[split][pos] = samples[j]
        for split, out in per_split.items():
            if self.plans[split].answer:
                out["zlib"] = zlib_scores(
                    out["answer"]["avg_loss"], [target_text(tok, s) for s in answer_samples[split]]
                )

        if prompts:
            generations = greedy_generate(
                model,
                tok,
                prompts,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                sort_by_length=self.sort_by_length,
                synced_gpus=synced_gpus,
                call_context=call_context,
            )
            for (split, pos, r), prompt, text in zip(prompt_slots, prompts, generations):
                per_split[split].setdefault("texts", {})[pos] = self._texts(split, r, rows, prompt, text)

        if gradnorm:
            for split in ("forget", "holdout"):
                if split in shards and self.plans[split].gradnorm:
                    per_split[split]["gradnorm"] = gradnorm_scores(
                        model, answer_samples[split], p=self.gradnorm_p, call_context=call_context
                    )
        return per_split

    def _texts(self, split: str, r: int, rows, prompt: list[int], generation: str) -> dict[str, Any]:
        """input / generation / ground truths (answer, paraphrase, perturbed) of generated row ``r``."""
        row = rows[split][r]
        q = row[self._qkey(split)]
        prefix = _PREFIX[split]

        def gt(answer: str) -> str:
            return reference_text(self.tokenizer, prompt, self.cache.qa(q, answer, r).input_ids)

        texts: dict[str, Any] = {
            "input": decode(self.tokenizer, prompt),
            "generation": generation,
            "answer": gt(row["answer"]),
        }
        if f"{prefix}_Q_A_PARA_ROUGE" in self.metrics:
            texts["para"] = gt(row["paraphrased_answer"])
        if f"{prefix}_Q_A_PERT_ROUGE" in self.metrics:
            texts["pert"] = [gt(a) for a in row["perturbed_answer"]]
        return texts

    def _update_metrics(self, per_split, shards, device, gradnorm) -> dict[str, Any]:
        chosen = set(self.metrics)
        metrics: dict[str, Any] = {}

        def new(name: str, factory):
            metrics[name] = factory().to(device)
            return metrics[name]

        for split, prefix in _PREFIX.items():
            if split not in per_split:
                continue
            out = per_split[split]
            index = torch.tensor(out["index"], dtype=torch.long)
            ans, para, pert = out["answer"]["avg_loss"], out["para"]["avg_loss"], out["pert"]
            for name, values in (
                (f"{prefix}_Q_A_Prob", ans),
                (f"{prefix}_Q_A_PARA_Prob", para),
                (f"{prefix}_Q_A_PERT_Prob", pert),
            ):
                if name in chosen:
                    new(name, Probability).update(index, values)
            tr_name = "forget_truth_ratio" if split == "forget" else f"{prefix}_Truth_Ratio"
            if tr_name in chosen:
                aggregator = "closer_to_1_better" if split == "forget" else "true_better"
                correct = para if split in ("forget", "retain") else ans  # P5
                new(tr_name, lambda a=aggregator: TruthRatio(a)).update(index, correct, pert)
            if f"{prefix}_Q_A_Prob_normalised" in chosen:
                new(f"{prefix}_Q_A_Prob_normalised", NormalisedProbability).update(index, ans, pert)
            texts = out.get("texts", {})
            for variant, key in (("", "answer"), ("PARA_", "para"), ("PERT_", "pert")):
                name = f"{prefix}_Q_A_{variant}ROUGE"
                if name in chosen:
                    positions = sorted(texts)
                    new(name, lambda: ROUGE("rougeL_recall")).update(
                        index[positions],
                        [texts[p]["generation"] for p in positions],
                        [texts[p][key] for p in positions],
                    )

        if "forget" in per_split:
            forget = per_split["forget"]
            index = torch.tensor(forget["index"], dtype=torch.long)
            if "exact_memorization" in chosen:
                new("exact_memorization", ExactMemorization).update(index, forget["answer"]["exact_memorization"])
            if "extraction_strength" in chosen:
                new("extraction_strength", ExtractionStrength).update(index, forget["answer"]["extraction_strength"])
        for attack in MIA_ATTACKS:
            if attack not in chosen or (attack == "mia_gradnorm" and not gradnorm):
                continue
            metric = new(attack, MIAAUC)
            for split, member in (("forget", True), ("holdout", False)):
                out = per_split[split]
                scores = {
                    "mia_loss": out["answer"]["avg_loss"],
                    "mia_zlib": out.get("zlib"),
                    "mia_min_k": out["answer"]["min_k"],
                    "mia_min_k_plus_plus": out["answer"]["min_k_plus_plus"],
                    "mia_gradnorm": out.get("gradnorm"),
                }[attack]
                metric.update(torch.tensor(out["index"], dtype=torch.long), scores, member=member)
        return metrics

    def _compute_logs(self, metrics, per_split, ref_tr, ref_auc, gradnorm) -> dict[str, Any]:
        """Aggregate every metric (collective: the same sequence of syncs on every rank)."""
        texts_by_split: dict[str, dict[int, Any]] = {}
        local = {
            split: {int(out["index"][pos]): t for pos, t in out.get("texts", {}).items()}
            for split, out in per_split.items()
        }
        for gathered in all_gather_objects(local):
            for split, by_row in gathered.items():
                bucket = texts_by_split.setdefault(split, {})
                for r, t in by_row.items():
                    bucket.setdefault(r, t)
        logs: dict[str, Any] = {}
        for name in self.metrics:
            metric = metrics.get(name)
            if isinstance(metric, Probability):
                logs[name] = probability_entry(metric)
            elif isinstance(metric, ROUGE):
                split = next(s for s, p in _PREFIX.items() if name.startswith(p + "_"))
                key = "para" if "_PARA_" in name else "pert" if "_PERT_" in name else "answer"
                rows = {
                    r: {"input": t["input"], "generation": t["generation"], "ground_truth": t[key]}
                    for r, t in texts_by_split[split].items()
                }
                logs[name] = rouge_entry(metric, rows)
            elif isinstance(metric, MIAAUC):
                logs[name] = mia_entry(metric)
            elif isinstance(metric, TruthRatio | NormalisedProbability):
                logs[name] = score_entry(metric, "prob" if isinstance(metric, NormalisedProbability) else "score")
            elif isinstance(metric, ExactMemorization | ExtractionStrength):
                logs[name] = score_entry(metric)
        if "mia_gradnorm" in self.metrics and not gradnorm:
            logs["mia_gradnorm"] = {"agg_value": None}
        if "forget_quality" in self.metrics or any(k in self.metrics for k in BALANCE_KEYS):
            tr = None
            if ref_tr is not None:
                _, tr = metrics["forget_truth_ratio"].per_sample()
            if "forget_quality" in self.metrics:
                logs["forget_quality"] = {"agg_value": None if tr is None else forget_quality(tr, ref_tr)}
            balance = (
                forgetting_balance(
                    tr,
                    ref_tr,
                    lower_percentile=self.balance_percentiles[0],
                    upper_percentile=self.balance_percentiles[1],
                )
                if tr is not None
                else dict.fromkeys(BALANCE_KEYS)
            )
            for key in BALANCE_KEYS:
                if key in self.metrics:
                    logs[key] = {"agg_value": balance[key]}
        if "model_utility" in self.metrics:
            logs["model_utility"] = {
                "agg_value": model_utility({k: logs[k]["agg_value"] for k in MODEL_UTILITY_COMPONENTS})
            }
        if "privleak" in self.metrics:
            logs["privleak"] = {"agg_value": privleak(logs["mia_min_k"]["agg_value"], ref_auc)}
        return {name: logs[name] for name in self.metrics if name in logs}


def evaluate_tofu(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    prompt_format: PromptFormat | None = None,
    call_context: CallContext | None = None,
    synced_gpus: bool = False,
    allow_gradnorm: bool = True,
    **kwargs: Any,
) -> EvaluationResult:
    """Evaluate ``model`` on TOFU rows without Lightning (see :class:`TOFUEvaluator` for the options).

    Example:
        ``evaluate_tofu(model, tok, {"forget": [...], "retain": [...], "real_authors": [...], "world_facts": [...],
        "holdout": [...]}, retain_logs_path="tofu_Llama-2-7b-chat-hf_retain90_TOFU_EVAL.json").summary``
    """
    evaluator = TOFUEvaluator(tokenizer, prompt_format, **kwargs)
    return evaluator.evaluate(
        model,
        rows,
        call_context=call_context or contextlib.nullcontext,
        synced_gpus=synced_gpus,
        allow_gradnorm=allow_gradnorm,
    )
