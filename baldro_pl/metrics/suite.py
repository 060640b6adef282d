"""Shared machinery of the TOFU and MUSE suites: metric selection, log entries, encoding cache, result type."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from transformers import PreTrainedTokenizerBase

from baldro_pl.datamodules.formatting import EncodedSample, PromptFormat, encode_completion, encode_prompt, encode_qa
from baldro_pl.labels import scored_ids
from baldro_pl.metrics.functional.rouge import ROUGE_FIELDS
from baldro_pl.metrics.generation import clean_up_tokenization
from baldro_pl.metrics.indexed import IndexedMetric
from baldro_pl.metrics.logs import summarize_logs
from baldro_pl.metrics.mia import MIAAUC


@dataclass
class EvaluationResult:
    """The outcome of a suite run.

    Attributes:
        logs: open-unlearning layout ``{metric: {"agg_value", "value_by_index", ...}}`` with string indices, exactly
            what ``*_EVAL.json`` holds.
        summary: ``{metric: agg_value}`` for the metrics with a value (``*_SUMMARY.json``).
        warnings: why some requested values are None (e.g. no reference log for forget quality).
    """

    logs: dict[str, Any]
    summary: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_logs(cls, logs: dict[str, Any], warnings: Iterable[str] = ()) -> EvaluationResult:
        """Build the summary from the logs."""
        return cls(logs=logs, summary=summarize_logs(logs), warnings=list(warnings))


def resolve_metrics(
    requested: Sequence[str] | None,
    exclude: Sequence[str],
    available: Sequence[str],
    depends: Mapping[str, Sequence[str]],
    aliases: Mapping[str, Sequence[str]] | None = None,
    *,
    suite: str,
) -> list[str]:
    """The metrics to compute: the request (None = all) minus ``exclude``, closed under dependencies, in suite order.

    Raises:
        ValueError: naming unknown metric names and listing the valid ones.
    """
    aliases = aliases or {}

    def expand(names: Iterable[str]) -> list[str]:
        out = []
        for name in names:
            out.extend(aliases.get(name, [name]))
        unknown = [n for n in out if n not in available]
        if unknown:
            raise ValueError(f"unknown {suite} metric(s) {unknown}; choose from {list(available) + list(aliases)}")
        return out

    chosen = set(expand(available if requested is None else requested)) - set(expand(exclude))
    stack = list(chosen)
    while stack:
        for dep in depends.get(stack.pop(), ()):
            if dep not in chosen:
                chosen.add(dep)
                stack.append(dep)
    return [name for name in available if name in chosen]


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _values(value: Tensor) -> float | None | list:
    return _num(value) if value.ndim == 0 else [_values(v) for v in value]


def probability_entry(metric: IndexedMetric) -> dict[str, Any]:
    """Log entry of a :class:`Probability` metric: ``{"prob", "avg_loss"}`` per row (lists for several options)."""
    index, avg_loss = metric.per_sample()
    prob = (-avg_loss).exp()
    by_index = {
        str(int(i)): {"prob": _values(p), "avg_loss": _values(a)}
        for i, p, a in zip(index, prob.squeeze(-1) if prob.ndim > 1 and prob.shape[-1] == 1 else prob, avg_loss)
    }
    return {"agg_value": _num(metric.compute()), "value_by_index": by_index}


def score_entry(metric: IndexedMetric, key: str = "score") -> dict[str, Any]:
    """Log entry ``{"agg_value", "value_by_index": {i: {key: value}}}`` of a per-row scalar metric."""
    index, value = metric.per_sample()
    by_index = {str(int(i)): {key: _values(v.reshape(()) if v.numel() == 1 else v)} for i, v in zip(index, value)}
    return {"agg_value": _num(metric.compute()), "value_by_index": by_index}


def rouge_entry(metric: IndexedMetric, texts: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Log entry of a :class:`ROUGE` metric with the ``input`` / ``ground_truth`` / ``generation`` texts of each row.

    ``texts[i]`` holds ``input``, ``generation`` and ``ground_truth`` (a string, or a list for several references).
    """
    index, value = metric.per_sample()  # [U, K, 3]
    by_index = {}
    for i, v in zip(index.tolist(), value):
        row = texts[i]
        if v.shape[0] == 1:
            entry: dict[str, Any] = {f: _num(v[0, j]) for j, f in enumerate(ROUGE_FIELDS)}
            entry.update(input=row["input"], ground_truth=row["ground_truth"], generation=row["generation"])
        else:  # several references: open-unlearning's dict_transpose gives one list per field
            k = v.shape[0]
            entry = {f: [_num(x) for x in v[:, j]] for j, f in enumerate(ROUGE_FIELDS)}
            entry.update(
                input=[row["input"]] * k, ground_truth=list(row["ground_truth"]), generation=[row["generation"]] * k
            )
        by_index[str(i)] = entry
    return {"agg_value": _num(metric.compute()), "value_by_index": by_index}


def mia_entry(metric: MIAAUC) -> dict[str, Any]:
    """Log entry of an MIA attack: per-side mean score and per-row scores, plus the AUC (metrics-spec §4.2)."""
    sides = metric.per_sample()
    auc = _num(metric.compute())
    entry: dict[str, Any] = {}
    for side, (index, score) in sides.items():
        entry[side] = {
            "agg_value": _num(score.nanmean()),
            "value_by_index": {str(int(i)): {"score": _num(s)} for i, s in zip(index, score)},
        }
    entry.update(auc=auc, agg_value=auc)
    return entry


class EncodingCache:
    """Tokenisations of evaluation rows, kept across evaluations (the rows and the tokenizer do not change).

    Keys are the texts themselves, so a cache survives re-ordered or re-sharded rows.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format
        self.max_length = max_length
        self._qa: dict[tuple, tuple[list[int], list[int]]] = {}
        self._prompt: dict[tuple, list[int]] = {}
        self._completion: dict[tuple, tuple[list[int], list[int]]] = {}

    def qa(self, question: str, answer: str, index: int, few_shot: tuple[tuple[str, str], ...] = ()) -> EncodedSample:
        """Scoring sample of a QA pair (metrics-spec §1.2): prompt masked, answer + EOS scored."""
        key = (question, answer, few_shot)
        if key not in self._qa:
            s = encode_qa(
                self.tokenizer, question, answer, self.prompt_format, few_shot=few_shot, max_length=self.max_length
            )
            self._qa[key] = (s.input_ids, s.labels)
        ids, labels = self._qa[key]
        return EncodedSample(ids, labels, index)

    def prompt(self, question: str, few_shot: tuple[tuple[str, str], ...] = ()) -> list[int]:
        """Generation prompt of a question (special tokens included)."""
        key = (question, few_shot)
        if key not in self._prompt:
            self._prompt[key] = encode_prompt(
                self.tokenizer, question, self.prompt_format, few_shot=few_shot, max_length=self.max_length
            )
        return self._prompt[key]

    def completion(self, prefix: str, text: str, index: int, *, max_length: int, insert_space: bool) -> EncodedSample:
        """Scoring sample of a continuation (metrics-spec §1.3): prefix masked, continuation scored, no EOS."""
        key = (prefix, text, max_length, insert_space)
        if key not in self._completion:
            s = encode_completion(self.tokenizer, prefix, text, max_length=max_length, insert_space=insert_space)
            self._completion[key] = (s.input_ids, s.labels)
        ids, labels = self._completion[key]
        return EncodedSample(ids, labels, index)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used to pad batches: the pad token, else EOS (open-unlearning sets ``pad_token = eos_token``)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    return pad


def target_text(tokenizer: PreTrainedTokenizerBase, sample: EncodedSample) -> str:
    """Decoded target tokens, special tokens skipped (the zlib attack's text, metrics-spec §4.1).

    open-unlearning decodes with ``tokenizer.decode(ids, skip_special_tokens=True)``, so the tokenizer's own
    ``clean_up_tokenization_spaces`` default decides whether tokenisation spaces are cleaned up: False for the Llama-2
    tokenizers of the published TOFU and MUSE logs, True for the Llama-3.x ones. transformers 5 ignores that setting
    for BPE tokenizers, so the transformers 4.x clean-up of the reference runs is applied here explicitly
    (:func:`baldro_pl.metrics.generation.clean_up_tokenization`).
    """
    ids = scored_ids(sample.labels)
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return clean_up_tokenization(text) if getattr(tokenizer, "clean_up_tokenization_spaces", False) else text
