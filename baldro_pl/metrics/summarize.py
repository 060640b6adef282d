"""``baldro-pl summarize LOG.json [--reference RETAIN_LOG.json] [--json]``: recompute a log's aggregates.

Every aggregate of an open-unlearning ``TOFU_EVAL.json`` / ``MUSE_EVAL.json`` is recomputed from the per-sample values
it stores (metrics-spec §9, step 1): Prob means, normalised Prob, truth-ratio aggregates, ROUGE means, EM / ES, MIA
AUCs, model utility, and, with the retain / retrain model's log as ``--reference``, forget quality, the forgetting
balance and privleak (else privleak uses the reference AUC 0.5, as open-unlearning does), and the per-stratum forget
metrics of a log with memorisation strata (``stratum/<s>/...``, :mod:`baldro_pl.metrics.strata`). The table shows the
logged ``agg_value`` beside the recomputed one. A TOFU-authors log (``eval_log_aggregated.json``) is also accepted; its
``aggregate_eval_stat.py`` quantities are printed.

Before any recomputation the log (and the reference) is checked: a missing, empty, truncated, non-UTF-8 or non-JSON
file, a directory, a log of neither benchmark, a reference of the other benchmark, an entry that is not
``{"agg_value", "value_by_index"}``, a malformed per-sample value, or an aggregate whose source metrics the log lacks
is refused with one line naming the file, the metric and the row. Every row whose value cannot be recomputed, or is
recomputed from part of the rows, says why in a note; a logged aggregate that the recomputation does not reproduce is
flagged ``MISMATCH`` with the likely cause.

Exit status: 0 when every logged aggregate that could be recomputed is reproduced; 1 when at least one is not (the
table is still printed, and a line on stderr names them); 2 when the input is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baldro_pl.metrics.functional.balance import BALANCE_KEYS, forgetting_balance
from baldro_pl.metrics.functional.forget_quality import forget_quality
from baldro_pl.metrics.functional.mia import mia_auc, privleak
from baldro_pl.metrics.functional.probability import mean_probability, normalised_probability
from baldro_pl.metrics.functional.truth_ratio import aggregate_truth_ratio, truth_ratio
from baldro_pl.metrics.functional.utility import MODEL_UTILITY_COMPONENTS, model_utility
from baldro_pl.metrics.logs import ReferenceLog
from baldro_pl.metrics.strata import STRATUM_LOG_KEY, per_stratum_metrics, read_stratum_map
from baldro_pl.metrics.tofu_legacy import aggregate_tofu_legacy, is_legacy_tofu_log

_TR_SOURCES = {  # truth-ratio metric -> (correct-answer metric, perturbed-answers metric, aggregator)
    "forget_truth_ratio": ("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "closer_to_1_better"),
    "forget_Truth_Ratio": ("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "closer_to_1_better"),
    "retain_Truth_Ratio": ("retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob", "true_better"),
    "ra_Truth_Ratio": ("ra_Q_A_Prob", "ra_Q_A_PERT_Prob", "true_better"),
    "wf_Truth_Ratio": ("wf_Q_A_Prob", "wf_Q_A_PERT_Prob", "true_better"),
}
TOLERANCE: dict[str, float] = {"rel_tol": 1e-6, "abs_tol": 1e-10}
"""How close a recomputed aggregate must be to the logged one to count as reproduced (``math.isclose``)."""

LEGACY_BENCHMARK = "TOFU-authors"
_REFERENCE_METRICS = frozenset({"forget_quality", "privleak", *BALANCE_KEYS})  # values that depend on --reference
_SHARED_METRICS = frozenset({"privleak", "exact_memorization", "extraction_strength"})  # TOFU and MUSE alike
_TOFU_PATTERN = re.compile(r"^(forget|retain|ra|wf)_(Q_A_|Truth_Ratio$|truth_ratio$)")
_ROUGE_FIELDS = ("rougeL_recall", "rougeL_f1", "rouge1_recall")
_JSON_TYPES = {"dict": "object", "list": "array", "str": "string", "int": "number", "float": "number"}
_JSON_TYPES |= {"bool": "true/false", "NoneType": "null"}


def _json_kind(value: Any) -> str:
    """What ``value`` is called in JSON terms (object, array, string, number, true/false, null)."""
    return _JSON_TYPES.get(type(value).__name__, type(value).__name__)


class SummarizeError(ValueError):
    """An input ``baldro-pl summarize`` refuses: one line naming the file (and metric, row) and what is wrong."""


# ---------------------------------------------------------------------------------------------------- recomputation


def _rows(entry: Any, name: str = "?") -> dict[int, Any] | None:
    """``{row index: per-sample object}`` of an entry's ``value_by_index`` (None when it has none)."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("value_by_index"), Mapping):
        return None
    out = {}
    for key, value in entry["value_by_index"].items():
        try:
            out[int(key)] = value
        except (TypeError, ValueError):
            raise ValueError(f"metric {name!r}: row index {key!r} is not an integer") from None
    return out


def _is_numeric(value: Any) -> bool:
    """A JSON number or a (nested) list of numbers (the perturbed answers' values are lists)."""
    if isinstance(value, list):
        return bool(value) and all(_is_numeric(v) for v in value)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bad_value(name: str, row: int | str, field: str, value: Any) -> str:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return (
        f"metric {name!r}, row {row}: {field!r} must be a number or a list of numbers, got {_json_kind(value)} {shown}"
    )


def _field(logs: Mapping[str, Any], name: str, field: str) -> tuple[list[int], np.ndarray] | None:
    """Row indices and the values of ``field`` (None rows dropped; lists averaged later by the callers)."""
    rows = _rows(logs.get(name), name)
    if rows is None:
        return None
    keep = sorted(i for i, v in rows.items() if isinstance(v, Mapping) and v.get(field) is not None)
    if not keep:
        return None
    for i in keep:
        if not _is_numeric(rows[i][field]):
            raise ValueError(_bad_value(name, i, field, rows[i][field]))
    try:
        return keep, np.array([rows[i][field] for i in keep], dtype=np.float64)
    except ValueError:  # lists of different lengths
        raise ValueError(f"metric {name!r}: the rows' {field!r} lists differ in length") from None


def _mean_field(logs: Mapping[str, Any], name: str, field: str) -> float | None:
    got = _field(logs, name, field)
    if got is None:
        return None
    values = got[1]
    return float(np.mean(values.reshape(len(values), -1).mean(-1)))


def _truth_ratio_scores(logs: Mapping[str, Any], name: str) -> np.ndarray | None:
    got = _field(logs, name, "score")
    return None if got is None else got[1]


def _recompute_truth_ratio(logs: Mapping[str, Any], name: str) -> float | None:
    correct_name, wrong_name, aggregator = _TR_SOURCES[name]
    correct, wrong = _field(logs, correct_name, "avg_loss"), _field(logs, wrong_name, "avg_loss")
    if correct is not None and wrong is not None and correct[0] == wrong[0]:
        return float(
            aggregate_truth_ratio(truth_ratio(torch.from_numpy(correct[1]), torch.from_numpy(wrong[1])), aggregator)
        )
    scores = _truth_ratio_scores(logs, name)  # no pre-computed losses in the log: aggregate the stored ratios
    return None if scores is None else float(aggregate_truth_ratio(torch.from_numpy(scores), aggregator))


def _recompute_normalised(logs: Mapping[str, Any], name: str) -> float | None:
    prefix = name.removesuffix("_Q_A_Prob_normalised")
    correct, wrong = _field(logs, f"{prefix}_Q_A_Prob", "prob"), _field(logs, f"{prefix}_Q_A_PERT_Prob", "prob")
    if correct is not None and wrong is not None and correct[0] == wrong[0]:
        return float(normalised_probability(torch.from_numpy(correct[1]), torch.from_numpy(wrong[1])).mean())
    return _mean_field(logs, name, "prob")


def _mia_scores(entry: Any, name: str, side: str) -> list[float] | None:
    """The ``score`` of every row of an MIA side; None when the side is absent or a row has no score."""
    rows = _rows(entry.get(side), f"{name}.{side}") if isinstance(entry, Mapping) else None
    if not rows:
        return None
    scores = []
    for i, v in sorted(rows.items()):
        score = v.get("score") if isinstance(v, Mapping) else None
        if score is None:
            return None
        if not _is_numeric(score) or isinstance(score, list):
            raise ValueError(_bad_value(f"{name}.{side}", i, "score", score).replace(" or a list of numbers", ""))
        if not math.isfinite(score):  # the AUC of a NaN score is undefined: not recomputed, with a note
            return None
        scores.append(float(score))
    return scores


def _recompute_mia(entry: Any, name: str = "mia") -> float | None:
    sides = [_mia_scores(entry, name, side) for side in ("forget", "holdout")]
    if any(s is None for s in sides):
        return None
    return mia_auc(*(torch.tensor(s, dtype=torch.float64) for s in sides))


def _rouge_field(name: str) -> str:
    """The ROUGE field a suite averages: F1 for MUSE (knowmem / verbmem), recall for TOFU."""
    return "rougeL_f1" if ("knowmem" in name or "verbmem" in name) else "rougeL_recall"


def recompute_aggregates(
    logs: Mapping[str, Any], reference: Mapping[str, Any] | ReferenceLog | None = None
) -> dict[str, float | None]:
    """Recompute every aggregate of an open-unlearning log from its per-sample values.

    Args:
        logs: the log (``{metric: {"agg_value", "value_by_index", ...}}``).
        reference: the retain / retrain model's log, for forget quality, the forgetting balance and privleak.

    Returns:
        ``{metric: recomputed value}`` for every metric of ``logs`` (None where it cannot be recomputed, e.g. forget
        quality without a reference).

    Raises:
        ValueError: naming the metric and the row of a malformed per-sample value.
    """
    ref = reference if isinstance(reference, ReferenceLog) or reference is None else ReferenceLog(reference)
    out: dict[str, float | None] = {}
    for name, entry in logs.items():
        if name in _TR_SOURCES:
            out[name] = _recompute_truth_ratio(logs, name)
        elif name.endswith("_Prob_normalised"):
            out[name] = _recompute_normalised(logs, name)
        elif name.endswith("_Prob"):
            got = _field(logs, name, "prob")
            out[name] = None if got is None else float(mean_probability(torch.from_numpy(got[1])))
        elif name.endswith("_ROUGE"):
            out[name] = _mean_field(logs, name, _rouge_field(name))
        elif name.startswith("mia_"):
            out[name] = _recompute_mia(entry, name)
        elif name in ("exact_memorization", "extraction_strength"):
            out[name] = _mean_field(logs, name, "score")
    if "model_utility" in logs:
        parts = {k: out.get(k) for k in MODEL_UTILITY_COMPONENTS}
        out["model_utility"] = None if any(v is None for v in parts.values()) else model_utility(parts)
    tr_key = "forget_truth_ratio" if "forget_truth_ratio" in logs else "forget_Truth_Ratio"
    scores = _truth_ratio_scores(logs, tr_key)
    strata = read_stratum_map(logs)
    ref_tr = None
    if "forget_quality" in logs or any(k in logs for k in BALANCE_KEYS) or strata:
        if ref is not None and scores is not None:
            ref_tr = ref.forget_truth_ratios(expected_rows=len(scores))
        if "forget_quality" in logs:
            out["forget_quality"] = None if ref_tr is None else forget_quality(scores, ref_tr)
        balance = forgetting_balance(scores, ref_tr) if ref_tr is not None else dict.fromkeys(BALANCE_KEYS)
        for key in BALANCE_KEYS:
            if key in logs:
                out[key] = balance[key]
    for name, entry in per_stratum_metrics(logs, strata, ref_tr).items():  # stratum/<s>/<metric>, if any
        if name in logs:
            out[name] = entry["agg_value"]
    if "privleak" in logs:
        auc = out.get("mia_min_k")
        out["privleak"] = None if auc is None else privleak(auc, ref.mia_min_k_auc() if ref is not None else None)
    return out


# ------------------------------------------------------------------------------------------------ reading, checking


def read_log(path: str | os.PathLike, role: str = "evaluation log") -> dict[str, Any]:
    """Read a JSON log for ``summarize``, refusing anything that is not a non-empty JSON object.

    Args:
        path: the file.
        role: how the message names it (``"evaluation log"``, ``"reference log"``).

    Raises:
        SummarizeError: one line naming the file: a directory (with the ``*_EVAL.json`` inside it, if any), missing,
            unreadable, empty, not UTF-8, not valid JSON (truncated or not), not an object, an object without keys.
    """
    p = Path(path)
    if p.is_dir():
        inside = [str(p / n) for n in ("TOFU_EVAL.json", "MUSE_EVAL.json") if (p / n).is_file()]
        hint = f"; did you mean {' or '.join(inside)}?" if inside else " (give its TOFU_EVAL.json / MUSE_EVAL.json)"
        raise SummarizeError(f"{role} {p} is a directory, not a JSON file{hint}")
    if not p.exists():
        raise SummarizeError(f"{role} {p} does not exist")
    if not p.is_file():
        raise SummarizeError(f"{role} {p} is not a regular file")
    try:
        data = p.read_bytes()
    except OSError as err:
        raise SummarizeError(f"{role} {p} cannot be read: {err.strerror or err}") from None
    if not data.strip():
        raise SummarizeError(f"{role} {p} is empty ({len(data)} bytes): expected a JSON object of metrics")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SummarizeError(
            f"{role} {p} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}): expected a JSON file"
        ) from None
    try:
        logs = json.loads(text)
    except json.JSONDecodeError as err:
        end = len(text.rstrip())
        truncated = err.pos >= end or (err.msg.startswith("Unterminated string") and "\n" not in text[err.pos : end])
        cause = " (it ends early: truncated?)" if truncated else ""
        where = f"{err.msg.removesuffix(' at')} at line {err.lineno} column {err.colno}"
        raise SummarizeError(f"{role} {p} is not valid JSON{cause}: {where}") from None
    if not isinstance(logs, dict):
        kind = _json_kind(logs)
        raise SummarizeError(f"{role} {p} must hold a JSON object of metrics, got a JSON {kind}")
    if not logs:
        raise SummarizeError(f"{role} {p} holds no metrics (an empty JSON object)")
    return logs


def _base_metric(name: str) -> str:
    """``stratum/<s>/<metric>`` -> ``<metric>``; other names unchanged."""
    parts = name.split("/")
    return parts[2] if len(parts) == 3 and parts[0] == "stratum" else name


def _metric_benchmark(name: str) -> str | None:
    """``"TOFU"``, ``"MUSE"``, ``"both"`` (a metric of either suite) or None (not a TOFU / MUSE metric)."""
    base = _base_metric(name)
    if name == STRATUM_LOG_KEY or base != name:
        return "TOFU"
    if "knowmem" in base or "verbmem" in base:
        return "MUSE"
    if _TOFU_PATTERN.match(base) or base in ("forget_quality", "model_utility", *BALANCE_KEYS):
        return "TOFU"
    if base in _SHARED_METRICS or base.startswith("mia_"):
        return "both"
    return None


def log_benchmark(logs: Mapping[str, Any], path: str | os.PathLike = "<log>", role: str = "evaluation log") -> str:
    """The benchmark of a log, told from its keys.

    ``"TOFU"``, ``"MUSE"``, :data:`LEGACY_BENCHMARK` (the TOFU authors' ``eval_log_aggregated.json``) or
    ``"TOFU or MUSE"`` (only metrics both suites log, such as ``mia_min_k``).

    Raises:
        SummarizeError: the log holds no TOFU / MUSE metric, or metrics of both benchmarks.
    """
    if is_legacy_tofu_log(logs):
        return LEGACY_BENCHMARK
    kinds = {name: _metric_benchmark(name) for name in logs}
    if not any(kinds.values()):
        shown = ", ".join(repr(k) for k in list(logs)[:5]) + (", ..." if len(logs) > 5 else "")
        raise SummarizeError(
            f"{role} {path} is not a TOFU or MUSE evaluation log: none of its keys ({shown}) is a TOFU or MUSE metric "
            "(e.g. 'forget_Q_A_Prob', 'forget_knowmem_ROUGE')"
        )
    tofu = [k for k, v in kinds.items() if v == "TOFU"]
    muse = [k for k, v in kinds.items() if v == "MUSE"]
    if tofu and muse:
        raise SummarizeError(
            f"{role} {path} mixes TOFU metrics ({tofu[0]!r}...) and MUSE metrics ({muse[0]!r}...): "
            "summarize one benchmark's log at a time"
        )
    return "TOFU" if tofu else "MUSE" if muse else "TOFU or MUSE"


def _sources(name: str, logs: Mapping[str, Any]) -> tuple[str, ...]:
    """The metrics an aggregate is computed from, which the suites always log with it (metric-missing check)."""
    base = _base_metric(name)
    if name == "privleak":
        return ("mia_min_k",)
    if name == "model_utility":
        return MODEL_UTILITY_COMPONENTS
    tr_key = "forget_Truth_Ratio" if "forget_Truth_Ratio" in logs else "forget_truth_ratio"
    if name in ("forget_quality", *BALANCE_KEYS):
        return (tr_key,)
    if base != name:  # stratum/<s>/<metric>: the row -> stratum map and the overall metric's per-sample values
        return (STRATUM_LOG_KEY, "forget_Q_A_Prob" if base == "forget_Q_A_Prob" else tr_key)
    return ()


def _fields_read(name: str) -> tuple[str, ...]:
    """The per-sample fields a metric's recomputation reads (checked for malformed values before any work)."""
    if name in _TR_SOURCES or name in ("exact_memorization", "extraction_strength"):
        return ("score",)
    if name.endswith("_Prob_normalised"):
        return ("prob",)
    if name.endswith("_Prob"):
        return ("prob", "avg_loss")
    if name.endswith("_ROUGE"):
        return (_rouge_field(name),)
    return ()


def _check_rows(path: Any, name: str, entry: Mapping[str, Any], fields: Sequence[str]) -> None:
    """``value_by_index`` of an entry: an object of integer row indices -> objects whose ``fields`` are numbers."""
    by_index = entry.get("value_by_index")
    if by_index is None:
        return
    if not isinstance(by_index, Mapping):
        kind = _json_kind(by_index)
        raise SummarizeError(
            f"{path}: metric {name!r}: 'value_by_index' must be an object {{row: {{...}}}}, got {kind}"
        )
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, row in by_index.items():
        try:
            int(key)
        except ValueError:
            raise SummarizeError(f"{path}: metric {name!r}: row index {key!r} is not an integer") from None
        if row is None:
            continue
        if not isinstance(row, Mapping):
            kind = _json_kind(row)
            raise SummarizeError(
                f"{path}: metric {name!r}, row {key}: expected an object of per-sample fields, got {kind}"
            )
        for field in fields:
            value = row.get(field)
            if value is None:
                continue
            if not _is_numeric(value):
                raise SummarizeError(f"{path}: {_bad_value(name, key, field, value)}")
            shape = np.shape(value)
            first = shapes.setdefault(field, (key, shape))
            if shape != first[1]:
                raise SummarizeError(
                    f"{path}: metric {name!r}, row {key}: {field!r} has shape {list(shape)} but row {first[0]} has "
                    f"{list(first[1])}"
                )


def check_log_structure(logs: Mapping[str, Any], path: str | os.PathLike = "<log>") -> None:
    """Refuse a malformed log (open-unlearning layout) before any recomputation.

    Refused: an entry that is not ``{"agg_value", "value_by_index"}``, a malformed per-sample value, and an aggregate
    whose source metrics the log lacks.

    Raises:
        SummarizeError: one line naming the file, the metric and, for a per-sample value, the row and field.
    """
    for name, entry in logs.items():
        if _metric_benchmark(name) is None:
            continue  # not a metric: shown with a note, never read
        if not isinstance(entry, Mapping):
            kind = _json_kind(entry)
            raise SummarizeError(
                f'{path}: metric {name!r} must be an object {{"agg_value": ..., "value_by_index": {{...}}}}, '
                f"got {kind} {entry!r:.40}"
            )
        if name == STRATUM_LOG_KEY:
            _check_rows(path, name, entry, ())
            continue
        if "agg_value" not in entry:
            raise SummarizeError(f"{path}: metric {name!r} has no 'agg_value' (keys: {sorted(entry)})")
        value = entry["agg_value"]
        if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool)):
            raise SummarizeError(f"{path}: metric {name!r}: 'agg_value' must be a number or null, got {value!r:.40}")
        if name.startswith("mia_"):
            for side in ("forget", "holdout"):
                if isinstance(entry.get(side), Mapping):
                    _check_rows(path, f"{name}.{side}", entry[side], ("score",))
        else:
            _check_rows(path, name, entry, _fields_read(name))
        missing = [s for s in _sources(name, logs) if s not in logs]
        if missing:
            raise SummarizeError(
                f"{path}: metric {name!r} is computed from {', '.join(map(repr, _sources(name, logs)))}, but the log "
                f"lacks {', '.join(map(repr, missing))} (an evaluation logs them together): cannot check {name!r}"
            )


def _mia_rows(logs: Mapping[str, Any], side: str = "forget") -> int | None:
    entry = logs.get("mia_min_k")
    sub = entry.get(side) if isinstance(entry, Mapping) else None
    rows = sub.get("value_by_index") if isinstance(sub, Mapping) else None
    return len(rows) if isinstance(rows, Mapping) else None


def check_reference(
    logs: Mapping[str, Any], log_path: Any, benchmark: str, ref_logs: Mapping[str, Any], ref_path: Any
) -> ReferenceLog:
    """Check a ``--reference`` log against the evaluated one before any recomputation.

    Refused: a reference of another benchmark (a TOFU retain log for a MUSE log, or the reverse, or the TOFU authors'
    format for an open-unlearning log), one without the entries the log's forget quality / balance / privleak need, and
    one whose forget split differs (another number of forget truth ratios or of min-k forget scores).

    Raises:
        SummarizeError: naming both files and both benchmarks, or the reference file and the missing key.
    """
    ref_benchmark = log_benchmark(ref_logs, ref_path, role="reference log")
    ambiguous = "TOFU or MUSE"
    if benchmark != ref_benchmark and ambiguous not in (benchmark, ref_benchmark):
        raise SummarizeError(
            f"reference log {ref_path} is a {ref_benchmark} log but {log_path} is a {benchmark} log: "
            f"--reference must be the retain / retrain model's log of the same benchmark ({benchmark})"
        )
    ref = ReferenceLog(ref_logs, name=str(ref_path))
    check_log_structure(ref_logs, ref_path)
    tr_key = "forget_truth_ratio" if "forget_truth_ratio" in logs else "forget_Truth_Ratio"
    needs_tr = "forget_quality" in logs or any(k in logs for k in BALANCE_KEYS) or bool(read_stratum_map(logs))
    scores = _truth_ratio_scores(logs, tr_key) if needs_tr else None
    if scores is not None:
        ref.forget_truth_ratios(expected_rows=len(scores))  # raises ReferenceLogError (names file, key, rows)
    if "privleak" in logs:
        ref.mia_min_k_auc()
        ours, theirs = _mia_rows(logs), _mia_rows(ref_logs)
        if ours is not None and theirs is not None and ours != theirs:
            raise SummarizeError(
                f"reference log {ref_path} scored {theirs} 'mia_min_k' forget rows but {log_path} scored {ours}: the "
                "retain model must be evaluated on the same forget split (retain90 <-> forget10, retain95 <-> "
                "forget05, retain99 <-> forget01)"
            )
    return ref


# --------------------------------------------------------------------------------------------------------- the notes


@dataclass
class MetricCheck:
    """One row of the summary: a log entry, its logged and recomputed values, the verdict and why.

    ``status`` is ``"reproduced"``, ``"MISMATCH"`` (both values present, not within :data:`TOLERANCE`),
    ``"not recomputed"`` (logged, but the per-sample values or the reference do not allow it), ``"not logged"``
    (recomputed only) or ``"n/a"`` (neither). ``why`` explains every status but ``"reproduced"`` where it can.
    """

    name: str
    logged: float | None
    recomputed: float | None
    status: str
    why: str | None = None


@dataclass
class Summary:
    """The checks of one log (see :func:`check_log`)."""

    path: str
    reference: str | None
    benchmark: str
    rows: list[MetricCheck]

    @property
    def mismatches(self) -> list[str]:
        """The metrics whose logged aggregate the recomputation does not reproduce."""
        return [r.name for r in self.rows if r.status == "MISMATCH"]


def _null_rows(logs: Mapping[str, Any], name: str, field: str) -> tuple[int, int] | None:
    """(rows without ``field``, rows) of an entry's ``value_by_index``; None without one."""
    by_index = logs[name].get("value_by_index") if isinstance(logs.get(name), Mapping) else None
    if not isinstance(by_index, Mapping):
        return None
    missing = sum(1 for v in by_index.values() if not isinstance(v, Mapping) or v.get(field) is None)
    return missing, len(by_index)


def _finite_score(row: Any) -> bool:
    score = row.get("score") if isinstance(row, Mapping) else None
    return isinstance(score, int | float) and math.isfinite(score)


def _why_no_values(logs: Mapping[str, Any], name: str, field: str, path: str) -> str:
    """Why ``field`` of ``name`` gives nothing to aggregate."""
    entry = logs.get(name)
    if not isinstance(entry, Mapping):
        return f"{path} has no {name!r} entry"
    if "value_by_index" not in entry:
        return f"no per-sample values ('value_by_index') for {name} in {path}"
    got = _null_rows(logs, name, field)
    if got is None or got[1] == 0:
        return f"{name}.value_by_index in {path} holds no rows"
    return f"none of the {got[1]} rows of {name} in {path} has a {field!r} value (all null or absent)"


def _why_not_recomputed(name: str, logs: Mapping[str, Any], out: Mapping[str, Any], path: str, ref: bool) -> str:
    base = _base_metric(name)
    tr_key = "forget_Truth_Ratio" if "forget_Truth_Ratio" in logs else "forget_truth_ratio"
    if name == STRATUM_LOG_KEY:
        return "the row -> stratum map of the forget rows (not a metric)"
    if _metric_benchmark(name) is None:
        return "not a TOFU or MUSE metric: nothing to recompute"
    if name in ("forget_quality", *BALANCE_KEYS) or (base != name and base in BALANCE_KEYS and not ref):
        if not ref:
            return "needs the retain model's log (--reference RETAIN_LOG.json)"
        return f"needs per-sample forget truth ratios: {_why_no_values(logs, tr_key, 'score', path)}"
    if base != name:
        return f"a row of stratum {name.split('/')[1]!r} has no finite per-sample value in {path}"
    if name == "model_utility":
        parts = [k for k in MODEL_UTILITY_COMPONENTS if out.get(k) is None]
        return f"needs its nine components; not recomputed: {', '.join(parts)}"
    if name == "privleak":
        return "needs mia_min_k, which could not be recomputed"
    if name.startswith("mia_"):
        entry = logs[name]
        for side in ("forget", "holdout"):
            sub = entry.get(side)
            if not isinstance(sub, Mapping) or not isinstance(sub.get("value_by_index"), Mapping):
                return f"no per-sample scores ('{side}.value_by_index') for {name} in {path}"
            rows = sub["value_by_index"]
            nulls = sum(1 for v in rows.values() if not _finite_score(v))
            if not rows or nulls:
                return (
                    f"{nulls} of {len(rows)} {side} rows of {name} in {path} have no finite 'score' "
                    "(null, absent or NaN): the AUC needs them all"
                )
    if name in _TR_SOURCES:
        correct, wrong, _ = _TR_SOURCES[name]
        return f"{_why_no_values(logs, name, 'score', path)}, and no 'avg_loss' of both {correct} and {wrong}"
    fields = _fields_read(name)
    if fields:
        return _why_no_values(logs, name, fields[0], path)
    return f"nothing in {path} to recompute {name} from"


def _implied_reference_auc(auc: float, leak: float) -> float:
    """The reference min-k AUC that gives privleak ``leak`` for ``auc`` (inverse of :func:`privleak`)."""
    return 1.0 - (1.0 - auc) / (1.0 + leak / 100.0)


def _why_mismatch(
    name: str, logged: float, logs: Mapping[str, Any], out: Mapping[str, Any], path: str, ref: ReferenceLog | None
) -> str:
    base = _base_metric(name)
    if name == "privleak" and out.get("mia_min_k") is not None and logged != -100.0:
        implied = _implied_reference_auc(out["mia_min_k"], logged)
        used = f"the reference AUC {ref.mia_min_k_auc():.6g} of {ref.name}" if ref else "AUC 0.5 (no --reference)"
        advice = "was the log evaluated against another retain log?" if ref else "pass that retain log as --reference"
        return f"recomputed against {used}; the logged value implies a reference AUC of {implied:.6g}: {advice}"
    if name in _REFERENCE_METRICS or base in BALANCE_KEYS:
        return (
            f"recomputed against the forget truth ratios of {ref.name if ref else '?'}; the logged value was computed "
            "against another retain log (or the log was edited)"
        )
    if name == "model_utility":
        return "the harmonic mean of the nine recomputed components differs: see their rows"
    if name.endswith("_ROUGE"):
        used = _rouge_field(name)
        for field in _ROUGE_FIELDS:
            value = _mean_field(logs, name, field) if field != used else None
            if value is not None and math.isclose(value, logged, **TOLERANCE):
                return f"the logged value is the mean of {field!r}, but this metric averages {used!r}"
    return f"the per-sample values in {path} do not give the logged aggregate (edited log, or another formula)"


def _why_partial(name: str, logs: Mapping[str, Any], path: str) -> str | None:
    """A note when the recomputation dropped rows without a value."""
    fields = _fields_read(name)
    if not fields or name not in logs:
        return None
    got = _null_rows(logs, name, fields[0])
    if got is None or got[0] == 0 or got[0] == got[1]:
        return None
    missing, total = got
    return (
        f"{missing} of {total} rows of {name} in {path} have no {fields[0]!r} (null or absent): recomputed over the "
        f"other {total - missing}"
    )


def _stale_scores(logs: Mapping[str, Any], name: str, path: str) -> str | None:
    """A note when a truth-ratio metric's per-sample ``score`` disagrees with the ratios of its sources' ``avg_loss``.

    (The aggregate is recomputed from the losses, forget quality and balance from the scores).
    """
    correct_name, wrong_name, _ = _TR_SOURCES[name]
    correct, wrong, scores = (
        _field(logs, correct_name, "avg_loss"),
        _field(logs, wrong_name, "avg_loss"),
        _field(logs, name, "score"),
    )
    if correct is None or wrong is None or scores is None or not (correct[0] == wrong[0] == scores[0]):
        return None
    expected = truth_ratio(torch.from_numpy(correct[1]), torch.from_numpy(wrong[1])).numpy()
    off = ~np.isclose(scores[1], expected, rtol=TOLERANCE["rel_tol"], atol=TOLERANCE["abs_tol"])
    if not off.any():
        return None
    first = scores[0][int(np.argmax(off))]
    return (
        f"the per-sample 'score' of {name} in {path} differs from the truth ratio of {correct_name} / {wrong_name} "
        f"'avg_loss' at {int(off.sum())} of {len(off)} rows (first: row {first}); the aggregate matches the losses, "
        "forget quality and the balance use the scores"
    )


def _judge(logged: Any, recomputed: Any) -> str:
    have_logged = isinstance(logged, int | float) and not isinstance(logged, bool)
    have_recomputed = isinstance(recomputed, int | float)
    if have_logged and have_recomputed:
        if not math.isfinite(logged) or not math.isfinite(recomputed):
            same = (math.isnan(logged) and math.isnan(recomputed)) or logged == recomputed
        else:
            same = math.isclose(logged, recomputed, **TOLERANCE)
        return "reproduced" if same else "MISMATCH"
    if have_logged:
        return "not recomputed"
    return "not logged" if have_recomputed else "n/a"


def check_log(path: str | os.PathLike, reference: str | os.PathLike | None = None) -> Summary:
    """Check every aggregate of a log against its recomputation (the work of ``baldro-pl summarize``).

    Args:
        path: an open-unlearning ``TOFU_EVAL.json`` / ``MUSE_EVAL.json`` or a TOFU-authors log.
        reference: the retain / retrain model's log of the same benchmark (and format, and forget split).

    Raises:
        SummarizeError: a bad log or reference (see :func:`read_log`, :func:`log_benchmark`,
            :func:`check_log_structure`, :func:`check_reference`), before any recomputation.
    """
    path_s = str(path)
    logs = read_log(path)
    benchmark = log_benchmark(logs, path_s)
    ref_s = None if reference is None else str(reference)
    ref_logs = None if reference is None else read_log(reference, role="reference log")
    if benchmark == LEGACY_BENCHMARK:
        if ref_logs is not None and not is_legacy_tofu_log(ref_logs):
            other = log_benchmark(ref_logs, ref_s, role="reference log")
            raise SummarizeError(
                f"reference log {ref_s} is an open-unlearning {other} log but {path_s} is a {LEGACY_BENCHMARK} log "
                "(eval_log_aggregated.json): give the retain model's log in the same format"
            )
        try:
            values = aggregate_tofu_legacy(logs, ref_logs)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            detail = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise SummarizeError(f"{path_s}: malformed {LEGACY_BENCHMARK} log: {detail}") from None
        rows = [MetricCheck(k, None, v, "not logged") for k, v in values.items()]
        return Summary(path_s, ref_s, benchmark, rows)
    check_log_structure(logs, path_s)
    ref = None
    if ref_logs is not None:
        if is_legacy_tofu_log(ref_logs):
            raise SummarizeError(
                f"reference log {ref_s} is a {LEGACY_BENCHMARK} log (eval_log_aggregated.json) but {path_s} is an "
                f"open-unlearning {benchmark} log: give the retain model's {benchmark}_EVAL.json"
            )
        ref = check_reference(logs, path_s, benchmark, ref_logs, ref_s)
    try:
        out = recompute_aggregates(logs, ref)
    except ValueError as err:  # a value the structure check let through (e.g. a NaN the AUC refuses)
        raise SummarizeError(f"{path_s}: {err}") from None
    rows = []
    for name, entry in logs.items():
        logged = entry.get("agg_value") if isinstance(entry, Mapping) else None
        if isinstance(logged, bool) or not isinstance(logged, int | float | None):
            logged = None
        recomputed = out.get(name)
        status = _judge(logged, recomputed)
        notes = []
        if status == "MISMATCH":
            notes.append(_why_mismatch(name, float(logged), logs, out, path_s, ref))
        elif status in ("not recomputed", "n/a"):
            notes.append(_why_not_recomputed(name, logs, out, path_s, ref is not None))
        if status in ("MISMATCH", "reproduced", "not logged"):
            notes.append(_why_partial(name, logs, path_s))
        if status == "reproduced" and name in _TR_SOURCES and (stale := _stale_scores(logs, name, path_s)):
            status, notes = "MISMATCH", [stale]
        why = "; ".join(n for n in notes if n) or None
        rows.append(MetricCheck(name, logged, recomputed, status, why))
    return Summary(path_s, ref_s, benchmark, rows)


def summarize_file(path: str, reference: str | None = None) -> dict[str, dict[str, float | None]]:
    """``{metric: {"logged": agg_value, "recomputed": value}}`` for a log file (either format).

    See :func:`check_log` for the verdicts and the reasons.
    """
    return {r.name: {"logged": r.logged, "recomputed": r.recomputed} for r in check_log(path, reference).rows}


# ----------------------------------------------------------------------------------------------------------- output


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.6g}" if (x == 0 or 1e-4 <= abs(x) < 1e6) else f"{x:.4e}"
    return str(x)


def _json_number(x: Any) -> float | None:
    """A value for strict JSON: a float, or None for a missing or non-finite one (its status and note still say)."""
    return None if x is None or not math.isfinite(x) else float(x)


def _json_row(row: MetricCheck) -> dict[str, Any]:
    """One metric of the ``--json`` output."""
    logged, recomputed = _json_number(row.logged), _json_number(row.recomputed)
    return {"logged": logged, "recomputed": recomputed, "status": row.status, "why": row.why}


def _table(summary: Summary) -> str:
    """The fixed-width table, a note mark per row that has one, and the notes (one per distinct reason) below."""
    header = ("metric", "logged", "recomputed", "|diff|", "note")
    notes: dict[str, int] = {}
    body = []
    for row in summary.rows:
        logged, recomputed = row.logged, row.recomputed
        diff = (
            abs(logged - recomputed)
            if isinstance(logged, int | float) and isinstance(recomputed, int | float) and math.isfinite(logged)
            else None
        )
        mark = "MISMATCH" if row.status == "MISMATCH" else ""
        if row.why:
            mark = f"{mark} [{notes.setdefault(row.why, len(notes) + 1)}]".strip()
        body.append((row.name, _fmt(logged), _fmt(recomputed), _fmt(diff), mark))
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in body]
    if notes:
        lines.append("")
        lines += [f"[{i}] {text}" for text, i in notes.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``baldro-pl summarize``; returns the process exit code (0 reproduced, 1 mismatch, 2 bad input)."""
    parser = argparse.ArgumentParser(
        prog="baldro-pl summarize",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[-1].strip(),
    )
    parser.add_argument("log", help="an open-unlearning TOFU_EVAL.json / MUSE_EVAL.json (or a TOFU-authors log)")
    parser.add_argument("--reference", help="the retain / retrain model's log (forget quality, balance, privleak)")
    parser.add_argument("--json", action="store_true", help="print JSON (logged, recomputed, status, why per metric)")
    args = parser.parse_args(argv)
    try:
        summary = check_log(args.log, args.reference)
    except (ValueError, KeyError) as err:  # SummarizeError, ReferenceLogError: one line naming the file
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"baldro-pl summarize: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        result = {r.name: _json_row(r) for r in summary.rows}
        print(json.dumps(result, indent=2, allow_nan=False))
    else:
        print(_table(summary))
    if summary.mismatches:
        names = summary.mismatches
        print(
            f"baldro-pl summarize: {summary.path}: {len(names)} of "
            f"{sum(r.status in ('MISMATCH', 'reproduced') for r in summary.rows)} checked aggregates disagree with "
            f"the per-sample values: {', '.join(names)} (see the notes)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
