"""The MUSE evaluation suite (metrics-spec §3, §4, §5) with open-unlearning's metric names and log layout.

Rows come as raw dicts keyed by split: ``verbmem_forget`` (``prompt``, ``gt``), ``knowmem_forget_qa`` /
``knowmem_retain_qa`` with their 10 in-context examples ``knowmem_forget_qa_icl`` / ``knowmem_retain_qa_icl``
(``question``, ``answer``), and ``privleak_forget`` / ``privleak_holdout`` (``{"text": ...}`` or plain strings).

* ``forget_verbmem_ROUGE`` (VerbMem): greedy continuation of BOS + ``prompt``, 128 new tokens, ROUGE-L F1 against
  the decoded ``gt`` tokens.
* ``forget_knowmem_ROUGE`` / ``retain_knowmem_ROUGE`` (KnowMem, UtilityPreserve): 10-shot ``Question: ... Answer:``
  prompts, 32 new tokens cut at ``"\\n\\n"``, ``"\\nQuestion"``, ``"Question:"``, ROUGE-L F1 against the answer.
* ``mia_*`` on privleak forget (members) vs holdout, ``privleak`` from the min-k AUC against the retrain model's.
* ``extraction_strength`` / ``exact_memorization`` on verbmem (prefix ``prompt``, target ``gt``).

Batch sizes follow open-unlearning: 16 for KnowMem, 8 for VerbMem / ES / EM / MIA, 1 for gradnorm.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from baldro_pl.datamodules.formatting import PromptFormat
from baldro_pl.distributed import all_gather_objects, rank_world, shard_indices
from baldro_pl.labels import scored_ids
from baldro_pl.metrics.functional.mia import privleak, zlib_scores
from baldro_pl.metrics.generation import decode, greedy_generate, reference_text
from baldro_pl.metrics.likelihood import CallContext, gradnorm_scores, model_device, score_samples
from baldro_pl.metrics.logs import ReferenceLog
from baldro_pl.metrics.memorization import ExactMemorization, ExtractionStrength
from baldro_pl.metrics.mia import MIA_ATTACKS, MIAAUC
from baldro_pl.metrics.rouge import ROUGE
from baldro_pl.metrics.suite import (
    EncodingCache,
    EvaluationResult,
    mia_entry,
    pad_token_id,
    resolve_metrics,
    rouge_entry,
    score_entry,
    target_text,
)

log = logging.getLogger(__name__)

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


class MUSEEvaluator:
    """Runs the MUSE suite on a model; keeps tokenisations across calls.

    Args:
        tokenizer: the model's tokenizer.
        prompt_format: KnowMem prompt template (default ``PromptFormat.muse_qa()``, metrics-spec §1.1).
        metrics: names to report (None = :data:`MUSE_METRICS`); ``privleak`` brings ``mia_min_k``.
        exclude: names to leave out (e.g. ``["mia_gradnorm"]``).
        retain_logs_path: the retrain model's ``MUSE_EVAL.json`` (key ``mia_min_k``) for privleak; without it
            privleak uses the reference AUC 0.5, as open-unlearning does.
        max_new_tokens: overrides both generation budgets (VerbMem 128, KnowMem 32) — only for smoke tests.
        verbmem_batch_size / knowmem_batch_size / mia_batch_size: 8 / 16 / 8 as in open-unlearning.
        knowmem_max_length: token cap of the few-shot prompts (512).
        completion_max_length: token cap of VerbMem continuations and privleak texts (2048).
        mia_k: min-k fraction (0.4). gradnorm_p: gradnorm norm.
        sort_by_length: batch rows of similar length together.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_format: PromptFormat | None = None,
        *,
        metrics: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        retain_logs_path: str | os.PathLike | Mapping[str, Any] | None = None,
        max_new_tokens: int | None = None,
        verbmem_batch_size: int = 8,
        knowmem_batch_size: int = 16,
        mia_batch_size: int = 8,
        knowmem_max_length: int = 512,
        completion_max_length: int = 2048,
        mia_k: float = 0.4,
        gradnorm_p: float = 2.0,
        sort_by_length: bool = True,
    ) -> None:
        for name, value in (
            ("verbmem_batch_size", verbmem_batch_size),
            ("knowmem_batch_size", knowmem_batch_size),
            ("mia_batch_size", mia_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format or PromptFormat.muse_qa()
        self.metrics = resolve_metrics(metrics, exclude, MUSE_METRICS, _DEPENDS, suite="MUSE")
        self.reference = None if retain_logs_path is None else ReferenceLog(retain_logs_path)
        self.verbmem_max_new_tokens = max_new_tokens or 128
        self.knowmem_max_new_tokens = max_new_tokens or 32
        self.verbmem_batch_size = verbmem_batch_size
        self.knowmem_batch_size = knowmem_batch_size
        self.mia_batch_size = mia_batch_size
        self.completion_max_length = completion_max_length
        self.mia_k = mia_k
        self.gradnorm_p = gradnorm_p
        self.sort_by_length = sort_by_length
        self.cache = EncodingCache(tokenizer, self.prompt_format, knowmem_max_length)

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

    def _check_rows(self, rows: Mapping[str, Sequence[Any]]) -> None:
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

    def evaluate(
        self,
        model: torch.nn.Module,
        rows: Mapping[str, Sequence[Any]],
        *,
        call_context: CallContext | None = None,
        synced_gpus: bool = False,
        allow_gradnorm: bool = True,
    ) -> EvaluationResult:
        """Evaluate ``model`` on MUSE ``rows`` (collective in a process group); see :meth:`TOFUEvaluator.evaluate`."""
        self._check_rows(rows)
        notes: list[str] = []
        ref_auc = None
        if "privleak" in self.metrics:
            if self.reference is None:
                notes.append(
                    "privleak uses the reference AUC 0.5: no retain_logs_path (the retrain model's MUSE_EVAL.json) "
                    "was given"
                )
            else:
                ref_auc = self.reference.mia_min_k_auc()
        gradnorm = "mia_gradnorm" in self.metrics and allow_gradnorm
        if "mia_gradnorm" in self.metrics and not allow_gradnorm:
            notes.append("mia_gradnorm is None: gradnorm was not allowed in this run (FSDP)")
        rank, world = rank_world()
        shards = {s: shard_indices(len(rows[s]), rank, world) for s in self._needed_splits() if not s.endswith("_icl")}
        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()
            outputs = self._run_model(model, rows, shards, call_context, synced_gpus, gradnorm)
        finally:
            for m, mode in modes.items():
                m.training = mode
        logs = self._logs(outputs, shards, model_device(model), gradnorm, ref_auc)
        for note in notes:
            log.warning(note)
        return EvaluationResult.from_logs(logs, notes)

    def _run_model(self, model, rows, shards, call_context, synced_gpus, gradnorm) -> dict[str, Any]:
        tok, chosen, out = self.tokenizer, set(self.metrics), {}
        common = {"sort_by_length": self.sort_by_length, "call_context": call_context}
        if "verbmem_forget" in shards:
            data = rows["verbmem_forget"]
            samples = [
                self.cache.completion(
                    data[r]["prompt"], data[r]["gt"], r, max_length=self.completion_max_length, insert_space=True
                )
                for r in shards["verbmem_forget"]
            ]
            if chosen & {"extraction_strength", "exact_memorization"}:
                out["verbmem_scores"] = score_samples(
                    model,
                    samples,
                    pad_token_id=pad_token_id(tok),
                    batch_size=self.verbmem_batch_size,
                    vocab=True,
                    k=self.mia_k,
                    **common,
                )
            if "forget_verbmem_ROUGE" in chosen:
                prompts = [list(tok(data[r]["prompt"])["input_ids"]) for r in shards["verbmem_forget"]]
                gens = greedy_generate(
                    model,
                    tok,
                    prompts,
                    max_new_tokens=self.verbmem_max_new_tokens,
                    batch_size=self.verbmem_batch_size,
                    synced_gpus=synced_gpus,
                    **common,
                )
                out["forget_verbmem_ROUGE"] = [
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
            data = rows[split]
            prompts = [self.cache.prompt(data[r]["question"], shots) for r in shards[split]]
            gens = greedy_generate(
                model,
                tok,
                prompts,
                max_new_tokens=self.knowmem_max_new_tokens,
                stop_strings=KNOWMEM_STOP_STRINGS,
                batch_size=self.knowmem_batch_size,
                synced_gpus=synced_gpus,
                **common,
            )
            out[name] = [
                {
                    "input": decode(tok, p),
                    "generation": g,
                    "ground_truth": reference_text(
                        tok, p, self.cache.qa(data[r]["question"], data[r]["answer"], r, shots).input_ids
                    ),
                }
                for r, p, g in zip(shards[split], prompts, gens)
            ]
        if "privleak_forget" in shards:
            for split in ("privleak_forget", "privleak_holdout"):
                data = rows[split]
                samples = [
                    self.cache.completion(
                        "", _text(data[r], split, r), r, max_length=self.completion_max_length, insert_space=False
                    )
                    for r in shards[split]
                ]
                scores = score_samples(
                    model,
                    samples,
                    pad_token_id=pad_token_id(tok),
                    batch_size=self.mia_batch_size,
                    vocab="mia_min_k_plus_plus" in chosen,
                    k=self.mia_k,
                    **common,
                )
                scores["zlib"] = zlib_scores(scores["avg_loss"], [target_text(tok, s) for s in samples])
                if gradnorm:
                    scores["gradnorm"] = gradnorm_scores(model, samples, p=self.gradnorm_p, call_context=call_context)
                out[split] = scores
        return out

    def _logs(self, outputs, shards, device, gradnorm, ref_auc) -> dict[str, Any]:
        chosen = set(self.metrics)
        logs: dict[str, Any] = {}
        for name, split in (("forget_verbmem_ROUGE", "verbmem_forget"), *((n, s) for n, s in _KNOWMEM.items())):
            if name not in chosen:
                continue
            index = shards[split]
            texts = outputs[name]
            metric = ROUGE("rougeL_f1").to(device)
            metric.update(index, [t["generation"] for t in texts], [t["ground_truth"] for t in texts])
            merged: dict[int, Any] = {}
            for gathered in all_gather_objects(dict(zip(index, texts))):
                for r, t in gathered.items():
                    merged.setdefault(r, t)
            logs[name] = rouge_entry(metric, merged)
        for attack in MIA_ATTACKS:
            if attack not in chosen:
                continue
            if attack == "mia_gradnorm" and not gradnorm:
                logs[attack] = {"agg_value": None}
                continue
            key = {
                "mia_loss": "avg_loss",
                "mia_zlib": "zlib",
                "mia_min_k": "min_k",
                "mia_min_k_plus_plus": "min_k_plus_plus",
                "mia_gradnorm": "gradnorm",
            }[attack]
            metric = MIAAUC().to(device)
            metric.update(shards["privleak_forget"], outputs["privleak_forget"][key], member=True)
            metric.update(shards["privleak_holdout"], outputs["privleak_holdout"][key], member=False)
            logs[attack] = mia_entry(metric)
        for name, cls in (("extraction_strength", ExtractionStrength), ("exact_memorization", ExactMemorization)):
            if name in chosen:
                metric = cls().to(device)
                metric.update(shards["verbmem_forget"], outputs["verbmem_scores"][name])
                logs[name] = score_entry(metric)
        if "privleak" in chosen:
            logs["privleak"] = {"agg_value": privleak(logs["mia_min_k"]["agg_value"], ref_auc)}
        return {name: logs[name] for name in self.metrics if name in logs}


def evaluate_muse(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Mapping[str, Sequence[Any]],
    *,
    prompt_format: PromptFormat | None = None,
    call_context: CallContext | None = None,
    synced_gpus: bool = False,
    allow_gradnorm: bool = True,
    **kwargs: Any,
) -> EvaluationResult:
    """Evaluate ``model`` on MUSE rows without Lightning (see :class:`MUSEEvaluator` for the options)."""
    evaluator = MUSEEvaluator(tokenizer, prompt_format, **kwargs)
    return evaluator.evaluate(
        model,
        rows,
        call_context=call_context or contextlib.nullcontext,
        synced_gpus=synced_gpus,
        allow_gradnorm=allow_gradnorm,
    )
