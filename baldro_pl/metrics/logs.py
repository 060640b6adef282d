"""Evaluation logs in open-unlearning's JSON layout: entries, file names, reading, reference look-ups, writing.

A log is ``{metric_name: {"agg_value": ..., "value_by_index": {"0": {...}, ...}}}`` (metrics-spec §0, P15); MIA
entries also hold ``"forget"`` / ``"holdout"`` sub-results and ``"auc"``. The published retain / retrain logs in this
layout serve as references for forget quality (key ``forget_truth_ratio``) and privleak (key ``mia_min_k``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from baldro_pl.files import write_text_atomic
from baldro_pl.metrics.functional.rouge import ROUGE_FIELDS
from baldro_pl.metrics.indexed import IndexedMetric
from baldro_pl.metrics.mia import MIAAUC


class ReferenceLogError(ValueError):
    """A reference (retain / retrain model) log is missing, malformed or does not match the evaluation."""


def load_eval_log(path: str | os.PathLike) -> dict[str, Any]:
    """Read an open-unlearning ``*_EVAL.json`` log.

    Raises:
        ReferenceLogError: if the file is absent, is not JSON, or is not a JSON object.
    """
    path = Path(path)
    if path.is_dir():
        raise ReferenceLogError(f"evaluation log {path} is a directory; expected a *_EVAL.json file")
    if not path.is_file():
        raise ReferenceLogError(f"evaluation log {path} does not exist")
    try:
        with path.open(encoding="utf-8") as f:
            logs = json.load(f)
    except UnicodeDecodeError as err:
        raise ReferenceLogError(f"evaluation log {path} is not UTF-8 text (byte {err.start}); expected JSON") from err
    except json.JSONDecodeError as err:
        raise ReferenceLogError(f"evaluation log {path} is not valid JSON: {err}") from err
    if not isinstance(logs, dict):
        raise ReferenceLogError(f"evaluation log {path} must hold a JSON object of metrics, got {type(logs).__name__}")
    return logs


def _json_safe(obj: Any) -> Any:
    """NaN / inf -> None (strict JSON), numpy scalars -> Python, int keys -> str."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 4) -> Path:
    """Write ``obj`` as JSON through a temporary file in the same folder and ``os.replace`` (no torn files).

    Non-finite floats are written as ``null``; metric names are sorted, as open-unlearning's ``save_logs`` does.
    """
    data = _json_safe(dict(sorted(obj.items())) if isinstance(obj, Mapping) else obj)
    return write_text_atomic(path, json.dumps(data, indent=indent, allow_nan=False))


def summarize_logs(logs: Mapping[str, Any]) -> dict[str, float]:
    """``{metric: agg_value}`` for every metric with a non-null aggregate (open-unlearning's ``*_SUMMARY.json``)."""
    summary = {}
    for name, result in logs.items():
        if isinstance(result, Mapping) and result.get("agg_value") is not None:
            summary[name] = result["agg_value"]
    return summary


class ReferenceLog:
    """A retain / retrain model's evaluation log, read lazily, with validated look-ups.

    Args:
        source: a path to its ``TOFU_EVAL.json`` / ``MUSE_EVAL.json``, or the already-loaded log.
        name: how errors refer to an in-memory log.
    """

    def __init__(self, source: str | os.PathLike | Mapping[str, Any], *, name: str = "<in-memory reference log>"):
        if isinstance(source, Mapping):
            self.name = name
            self._logs: dict[str, Any] | None = dict(source)
            self._path: Path | None = None
        else:
            self._path = Path(source)
            self.name = str(self._path)
            self._logs = None

    @property
    def logs(self) -> dict[str, Any]:
        """The whole log (read on first access)."""
        if self._logs is None:
            assert self._path is not None  # internal invariant: one of path / logs is set
            self._logs = load_eval_log(self._path)
        return self._logs

    def _entry(self, key: str, needed_by: str) -> Mapping[str, Any]:
        entry = self.logs.get(key)
        if not isinstance(entry, Mapping):
            raise ReferenceLogError(
                f"reference log {self.name} has no {key!r} entry, which {needed_by} needs "
                f"(present keys: {sorted(self.logs)})"
            )
        return entry

    def forget_truth_ratios(self, *, expected_rows: int | None = None, split: str | None = None) -> np.ndarray:
        """The retain model's per-row forget truth ratios (key ``forget_truth_ratio``), ordered by row index.

        Args:
            expected_rows: number of rows of the evaluated forget split; a different count means the reference
                comes from another forget split (retain90 pairs with forget10, retain95 with forget05, retain99 with
                forget01).
            split: name of the evaluated forget split, for the error message.

        Raises:
            ReferenceLogError: naming the file, the key and the split.
        """
        entry = self._entry("forget_truth_ratio", "forget quality / forgetting balance")
        by_index = entry.get("value_by_index")
        if not isinstance(by_index, Mapping) or not by_index:
            raise ReferenceLogError(f"reference log {self.name}: 'forget_truth_ratio' has no 'value_by_index'")
        try:
            pairs = sorted((int(k), float(v["score"])) for k, v in by_index.items())
        except (KeyError, TypeError, ValueError) as err:
            raise ReferenceLogError(
                f"reference log {self.name}: 'forget_truth_ratio.value_by_index' entries must be {{'score': float}}"
            ) from err
        if expected_rows is not None and len(pairs) != expected_rows:
            where = f"forget split {split!r}" if split else "the evaluated forget split"
            raise ReferenceLogError(
                f"reference log {self.name} holds {len(pairs)} 'forget_truth_ratio' values but {where} has "
                f"{expected_rows} rows: the retain model must be evaluated on the same forget split "
                "(retain90 <-> forget10, retain95 <-> forget05, retain99 <-> forget01)"
            )
        return np.array([v for _, v in pairs], dtype=np.float64)

    def mia_min_k_auc(self) -> float:
        """The retain / retrain model's min-k AUC (key ``mia_min_k``, field ``agg_value``), for privleak."""
        entry = self._entry("mia_min_k", "privleak")
        value = entry.get("agg_value", entry.get("auc"))
        if value is None:
            raise ReferenceLogError(f"reference log {self.name}: 'mia_min_k' has no 'agg_value'")
        return float(value)


# ---------------------------------------------------------------------- entries of a log


def _num(x: float | Tensor) -> float | None:
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


def value_entry(value: float | None) -> dict[str, Any]:
    """Log entry of a metric with an aggregate only (forget quality, balance, model utility, privleak)."""
    return {"agg_value": value}


# ---------------------------------------------------------------------- files of an evaluation


def eval_log_path(folder: str | os.PathLike, suite: str) -> Path:
    """``<folder>/<suite>_EVAL.json``: the per-row log of one evaluation (``TOFU_EVAL.json``, ``MUSE_EVAL.json``)."""
    return Path(folder) / f"{suite}_EVAL.json"


def summary_path(folder: str | os.PathLike, suite: str) -> Path:
    """``<folder>/<suite>_SUMMARY.json``: the ``{metric: agg_value}`` summary of one evaluation."""
    return Path(folder) / f"{suite}_SUMMARY.json"


def write_evaluation(
    folder: str | os.PathLike, suite: str, logs: Mapping[str, Any], summary: Mapping[str, Any]
) -> Path:
    """Write an evaluation's log and summary atomically into ``folder`` (open-unlearning's layout); returns it."""
    write_json_atomic(eval_log_path(folder, suite), logs)
    write_json_atomic(summary_path(folder, suite), summary)
    return Path(folder)
