r"""The MUSE evaluation suite (metrics-spec §3, §4, §5) with open-unlearning's metric names and log layout.

Rows come as raw dicts keyed by split: ``verbmem_forget`` (``prompt``, ``gt``), ``knowmem_forget_qa`` /
``knowmem_retain_qa`` with their 10 in-context examples ``knowmem_forget_qa_icl`` / ``knowmem_retain_qa_icl``
(``question``, ``answer``), and ``privleak_forget`` / ``privleak_holdout`` (``{"text": ...}`` or plain strings).

* ``forget_verbmem_ROUGE`` (VerbMem): greedy continuation of BOS + ``prompt``, 128 new tokens, ROUGE-L F1 against
  the decoded ``gt`` tokens.
* ``forget_knowmem_ROUGE`` / ``retain_knowmem_ROUGE`` (KnowMem, UtilityPreserve): 10-shot ``Question: ... Answer:``
  prompts, 32 new tokens cut at ``"\n\n"``, ``"\nQuestion"``, ``"Question:"``, ROUGE-L F1 against the answer.
* ``mia_*`` on privleak forget (members) vs holdout, ``privleak`` from the min-k AUC against the retrain model's.
* ``extraction_strength`` / ``exact_memorization`` on verbmem (prefix ``prompt``, target ``gt``).

Batch sizes follow open-unlearning: 16 for KnowMem, 8 for VerbMem / ES / EM / MIA, 1 for gradnorm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from baldro_pl.datamodules.formatting import PromptFormat
from baldro_pl.distributed import all_gather_objects
from baldro_pl.labels import scored_ids
from baldro_pl.metrics.functional.mia import privleak, zlib_scores
from baldro_pl.metrics.generation import decode, greedy_generate, reference_text, target_text
from baldro_pl.metrics.likelihood import gradnorm_scores, score_samples
from baldro_pl.metrics.logs import rouge_entry, score_entry, value_entry
from baldro_pl.metrics.memorization import ExactMemorization, ExtractionStrength
from baldro_pl.metrics.mia import MIA_ATTACKS
from baldro_pl.metrics.rouge import ROUGE
from baldro_pl.metrics.suite import ModelRun, References, Rows, Suite, require_at_least_one

MUSE_METRICS: tuple[str, ...] = (
    "forget_verbmem_ROUGE",
    "forget_knowmem_ROUGE",
    "retain_knowmem_ROUGE",
    "privleak",
    *MIA_ATTACKS,
    "extraction_strength",
    "exact_memorization",
)
_DEPENDS = {"privleak": ("mia_min_k",)}
KNOWMEM_STOP_STRINGS: tuple[str, ...] = ("\n\n", "\nQuestion", "Question:")
_KNOWMEM = {"forget_knowmem_ROUGE": "knowmem_forget_qa", "retain_knowmem_ROUGE": "knowmem_retain_qa"}


def _text(row: Any, split: str, i: int) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, Mapping) and isinstance(row.get("text"), str):
        return row["text"]
    raise ValueError(f"MUSE split {split!r} row {i} must be a string or have a 'text' field")


@dataclass
class MUSEOutputs:
    """What the model produced on this process's shards.

    Attributes:
        verbmem: per-row statistics of the VerbMem continuations (for extraction strength / exact memorisation).
        texts: ROUGE metric name -> input / generation / ground truth of each shard row.
        privleak: ``privleak_forget`` / ``privleak_holdout`` -> per-row MIA scores (``avg_loss``, ``zlib``, ...).
    """

    verbmem: dict[str, Tensor] | None = None
    texts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    privleak: dict[str, dict[str, Any]] = field(default_factory=dict)


class MUSESuite(Suite):
    """The MUSE suite; keeps tokenisations across calls through its encoder.

    Args:
        max_new_tokens: overrides both generation budgets (VerbMem 128, KnowMem 32); only for smoke tests.
        verbmem_batch_size: rows per VerbMem / ES / EM call (8 as in open-unlearning).
        knowmem_batch_size: rows per KnowMem call (16 as in open-unlearning).
        mia_batch_size: rows per privleak scoring call (8 as in open-unlearning).
        knowmem_max_length: token cap of the few-shot prompts (512).
        completion_max_length: token cap of VerbMem continuations and privleak texts (2048).
        **kwargs: ``metrics``, ``exclude``, ``retain_logs_path`` (the retrain model's ``MUSE_EVAL.json``; without it
            privleak uses the reference AUC 0.5, as open-unlearning does), ``mia_k``, ``gradnorm_p``,
            ``sort_by_length`` (see :class:`Suite`).
    """

    name = "MUSE"
    headline = ("forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "privleak")
    reference_model = "retrain"
    privleak_note = (
        "privleak uses the reference AUC 0.5: no retain_logs_path (the retrain model's MUSE_EVAL.json) was given"
    )
    available = MUSE_METRICS
    depends = _DEPENDS

    def __init__(
        self,
        *,
        max_new_tokens: int | None = None,
        verbmem_batch_size: int = 8,
        knowmem_batch_size: int = 16,
        mia_batch_size: int = 8,
        knowmem_max_length: int = 512,
        completion_max_length: int = 2048,
        **kwargs: Any,
    ) -> None:
        require_at_least_one(
            max_new_tokens=max_new_tokens,
            verbmem_batch_size=verbmem_batch_size,
            knowmem_batch_size=knowmem_batch_size,
            mia_batch_size=mia_batch_size,
        )
        super().__init__(**kwargs)
        self.verbmem_max_new_tokens = max_new_tokens or 128
        self.knowmem_max_new_tokens = max_new_tokens or 32
        self.verbmem_batch_size = verbmem_batch_size
        self.knowmem_batch_size = knowmem_batch_size
        self.mia_batch_size = mia_batch_size
        self.knowmem_max_length = knowmem_max_length
        self.completion_max_length = completion_max_length

    @classmethod
    def default_prompt_format(cls) -> PromptFormat:
        """MUSE's ``Question: ... Answer:`` KnowMem template (metrics-spec §1.1)."""
        return PromptFormat.muse_qa()

    def _needed_splits(self) -> dict[str, list[str]]:
        need: dict[str, list[str]] = {}
        chosen = set(self.metrics)

        def add(split: str, fields: list[str]) -> None:
            need.setdefault(split, [])
            need[split] += [f for f in fields if f not in need[split]]

        if chosen & {"forget_verbmem_ROUGE", "extraction_strength", "exact_memorization"}:
            add("verbmem_forget", ["prompt", "gt"])
        for name, split in _KNOWMEM.items():
            if name in chosen:
                add(split, ["question", "answer"])
                add(split + "_icl", ["question", "answer"])
        if any(a in chosen for a in MIA_ATTACKS):
            add("privleak_forget", [])
            add("privleak_holdout", [])
        return need

    def check_rows(self, rows: Rows) -> None:
        """Every split the chosen metrics read, with its fields (plain strings or ``text`` for privleak)."""
        for split, fields in self._needed_splits().items():
            if split not in rows:
                raise KeyError(f"MUSE evaluation of {self.metrics} needs the {split!r} split; got {sorted(rows)}")
            if len(rows[split]) == 0:
                raise ValueError(f"MUSE split {split!r} is empty")
            for i, row in enumerate(rows[split]):
                if not fields:
                    _text(row, split, i)
                    continue
                missing = [f for f in fields if not isinstance(row, Mapping) or row.get(f) is None]
                if missing:
                    raise ValueError(f"MUSE split {split!r} row {i} has no {missing} field")

    def scored_splits(self) -> list[str]:
        """The needed splits except the in-context examples (every process reads those whole)."""
        return [split for split in self._needed_splits() if not split.endswith("_icl")]

    def run_model(
        self, model: torch.nn.Module, rows: Rows, shards: Mapping[str, list[int]], run: ModelRun
    ) -> MUSEOutputs:
        """VerbMem continuations (scored and generated), KnowMem generations and the privleak scores."""
        enc, chosen, out = self.encoder, set(self.metrics), MUSEOutputs()
        tok = enc.tokenizer
        common = {"sort_by_length": self.sort_by_length, "call_context": run.call_context}
        if "verbmem_forget" in shards:
            data, shard = rows["verbmem_forget"], shards["verbmem_forget"]
            cap = self.completion_max_length
            samples = [
                enc.completion(data[r]["prompt"], data[r]["gt"], r, max_length=cap, insert_space=True) for r in shard
            ]
            if chosen & {"extraction_strength", "exact_memorization"}:
                out.verbmem = score_samples(
                    model,
                    samples,
                    pad_token_id=enc.pad_token_id,
                    batch_size=self.verbmem_batch_size,
                    vocab=True,
                    k=self.mia_k,
                    **common,
                )
            if "forget_verbmem_ROUGE" in chosen:
                prompts = [list(tok(data[r]["prompt"])["input_ids"]) for r in shard]
                gens = greedy_generate(
                    model,
                    tok,
                    prompts,
                    max_new_tokens=self.verbmem_max_new_tokens,
                    batch_size=self.verbmem_batch_size,
                    synced_gpus=run.synced_gpus,
                    **common,
                )
                out.texts["forget_verbmem_ROUGE"] = [
                    {
                        "input": decode(tok, p),
                        "generation": g,
                        "ground_truth": reference_text(tok, p, scored_ids(s.labels)),
                    }
                    for p, g, s in zip(prompts, gens, samples)
                ]
        for name, split in _KNOWMEM.items():
            if name not in chosen:
                continue
            shots = tuple((r["question"], r["answer"]) for r in rows[split + "_icl"])
            data, cap = rows[split], self.knowmem_max_length
            prompts = [enc.prompt(data[r]["question"], shots, max_length=cap) for r in shards[split]]
            gens = greedy_generate(
                model,
                tok,
                prompts,
                max_new_tokens=self.knowmem_max_new_tokens,
                stop_strings=KNOWMEM_STOP_STRINGS,
                batch_size=self.knowmem_batch_size,
                synced_gpus=run.synced_gpus,
                **common,
            )
            out.texts[name] = [
                {
                    "input": decode(tok, p),
                    "generation": g,
                    "ground_truth": reference_text(
                        tok, p, enc.qa(data[r]["question"], data[r]["answer"], r, shots, max_length=cap).input_ids
                    ),
                }
                for r, p, g in zip(shards[split], prompts, gens)
            ]
        for split in ("privleak_forget", "privleak_holdout") if "privleak_forget" in shards else ():
            data, cap = rows[split], self.completion_max_length
            samples = [
                enc.completion("", _text(data[r], split, r), r, max_length=cap, insert_space=False)
                for r in shards[split]
            ]
            scores = score_samples(
                model,
                samples,
                pad_token_id=enc.pad_token_id,
                batch_size=self.mia_batch_size,
                vocab="mia_min_k_plus_plus" in chosen,
                k=self.mia_k,
                **common,
            )
            scores["zlib"] = zlib_scores(scores["avg_loss"], [target_text(tok, s) for s in samples])
            if run.gradnorm:
                scores["gradnorm"] = gradnorm_scores(model, samples, p=self.gradnorm_p, call_context=run.call_context)
            out.privleak[split] = scores
        return out

    def compute_logs(
        self,
        outputs: MUSEOutputs,
        rows: Rows,
        shards: Mapping[str, list[int]],
        references: References,
        device: torch.device,
        gradnorm: bool,
    ) -> dict[str, Any]:
        """ROUGE, MIA, memorisation and privleak entries (the same syncs in the same order on every rank)."""
        chosen, logs = set(self.metrics), {}
        for name, split in (("forget_verbmem_ROUGE", "verbmem_forget"), *_KNOWMEM.items()):
            if name not in chosen:
                continue
            index, texts = shards[split], outputs.texts[name]
            metric = ROUGE("rougeL_f1").to(device)
            metric.update(index, [t["generation"] for t in texts], [t["ground_truth"] for t in texts])
            merged: dict[int, Any] = {}
            for gathered in all_gather_objects(dict(zip(index, texts))):
                for r, t in gathered.items():
                    merged.setdefault(r, t)
            logs[name] = rouge_entry(metric, merged)
        if "privleak_forget" in shards:
            member = (shards["privleak_forget"], outputs.privleak["privleak_forget"])
            holdout = (shards["privleak_holdout"], outputs.privleak["privleak_holdout"])
            logs.update(self.mia_logs(member, holdout, device, gradnorm))
        for name, cls in (("extraction_strength", ExtractionStrength), ("exact_memorization", ExactMemorization)):
            if name in chosen:
                metric = cls().to(device)
                metric.update(shards["verbmem_forget"], outputs.verbmem[name])
                logs[name] = score_entry(metric)
        if "privleak" in chosen:
            logs["privleak"] = value_entry(privleak(logs["mia_min_k"]["agg_value"], references.mia_auc))
        return logs
