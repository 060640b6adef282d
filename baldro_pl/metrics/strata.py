"""Forget metrics per stratum: the heterogeneity benchmark's view of a TOFU log (baldro-pl's own metric).

When the forget rows carry a ``"stratum"`` field (the memorisation strata of the synthetic set,
:mod:`baldro_pl.datamodules.synthetic`: ``"x1"``, ``"x2"``, ``"x4"``, ``"x8"``; any string label works), the TOFU suite
adds to its log

* ``forget_stratum``: the row -> stratum map, ``{"value_by_index": {"<row>": {"stratum": "<label>"}}}`` (no
  ``agg_value``, so no summary key);
* per stratum ``s`` and metric ``m`` of :data:`STRATUM_METRICS`, an entry ``stratum/<s>/<m>`` =
  ``{"agg_value": value, "n_samples": rows in the stratum}``, hence the flat summary keys
  ``stratum/<s>/forget_truth_ratio``, ``stratum/<s>/forget_Q_A_Prob`` and ``stratum/<s>/forget_balance_under`` /
  ``_within`` / ``_over``.

Each value is the suite's own aggregate restricted to the stratum's rows, computed from the per-sample values the log
already holds (``value_by_index``): the forget truth ratio is ``closer_to_1_better`` of the rows' ``score`` (the
aggregate of ``forget_truth_ratio``), the answer probability the mean of their ``prob``, and the balance fractions
compare their truth ratios with the whole retain log's 5-95% range (as ``forget_balance_*`` do). So the strata's
values, weighted by their sizes, average to the overall ones. ``baldro-pl summarize`` recomputes them the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from baldro_pl.datamodules.synthetic import STRATUM_FIELD
from baldro_pl.metrics.functional.balance import BALANCE_KEYS, forgetting_balance
from baldro_pl.metrics.functional.probability import mean_probability
from baldro_pl.metrics.functional.truth_ratio import closer_to_1_better

STRATUM_LOG_KEY = "forget_stratum"
STRATUM_METRICS: tuple[str, ...] = ("forget_truth_ratio", "forget_Q_A_Prob", *BALANCE_KEYS)


def stratum_key(stratum: str, metric: str) -> str:
    """The log and summary key of ``metric`` restricted to ``stratum``: ``stratum/<stratum>/<metric>``."""
    return f"stratum/{stratum}/{metric}"


def natural_key(label: str) -> list:
    """Sort key putting ``x2`` before ``x16``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", label) if part]


def strata_of_rows(rows: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """``{row position: stratum label}`` of the rows that carry a ``stratum`` field (empty: no strata)."""
    return {i: str(row[STRATUM_FIELD]) for i, row in enumerate(rows) if row.get(STRATUM_FIELD) is not None}


def stratum_map_entry(strata: Mapping[int, str]) -> dict[str, Any]:
    """The ``forget_stratum`` log entry of a row -> stratum map."""
    return {"value_by_index": {str(i): {STRATUM_FIELD: s} for i, s in sorted(strata.items())}}


def read_stratum_map(logs: Mapping[str, Any]) -> dict[int, str]:
    """The row -> stratum map stored in a log (empty when the log has none)."""
    entry = logs.get(STRATUM_LOG_KEY)
    by_index = entry.get("value_by_index") if isinstance(entry, Mapping) else None
    if not isinstance(by_index, Mapping):
        return {}
    return {int(i): str(v[STRATUM_FIELD]) for i, v in by_index.items() if isinstance(v, Mapping) and STRATUM_FIELD in v}


def _per_row(logs: Mapping[str, Any], name: str, field: str) -> dict[int, float] | None:
    """``{row: value}`` of a per-sample field of a log entry (None values as NaN); None when the entry is absent."""
    entry = logs.get(name)
    by_index = entry.get("value_by_index") if isinstance(entry, Mapping) else None
    if not isinstance(by_index, Mapping):
        return None
    out = {}
    for i, v in by_index.items():
        value = v.get(field) if isinstance(v, Mapping) else None
        out[int(i)] = math.nan if value is None else float(np.mean(value))  # a list (several options): its mean
    return out


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def per_stratum_metrics(
    logs: Mapping[str, Any],
    strata: Mapping[int, str],
    reference_truth_ratios: Sequence[float] | np.ndarray | None = None,
    *,
    balance_percentiles: tuple[float, float] = (5.0, 95.0),
) -> dict[str, dict[str, Any]]:
    """The forget metrics of each stratum, from a TOFU log's per-sample values (see the module docstring).

    Args:
        logs: a TOFU log (``{metric: {"agg_value", "value_by_index"}}``); the metrics of :data:`STRATUM_METRICS` it
            holds are split by stratum (a metric absent from the log is absent from the result).
        strata: ``{row index: stratum label}`` of the forget rows.
        reference_truth_ratios: the retain model's per-sample forget truth ratios (the balance reference); None gives
            balance values of None, as the overall ``forget_balance_*`` without a retain log.
        balance_percentiles: the reference range of the balance (the suite's, 5 and 95).

    Returns:
        ``{"stratum/<s>/<metric>": {"agg_value": value or None, "n_samples": rows of the stratum}}``, strata in
        natural order (``x1``, ``x2``, ``x4``, ``x8``). A value is None when a row of the stratum has no finite
        per-sample value (the suite's aggregate is then None as well) or the stratum has no logged row.
    """
    truth = _per_row(logs, "forget_truth_ratio", "score")
    prob = _per_row(logs, "forget_Q_A_Prob", "prob")
    with_balance = any(key in logs for key in BALANCE_KEYS)
    out: dict[str, dict[str, Any]] = {}
    for stratum in sorted(set(strata.values()), key=natural_key):
        rows = sorted(i for i, s in strata.items() if s == stratum)
        values: dict[str, float | None] = {}
        tr = None
        if truth is not None:
            tr = np.array([truth.get(i, math.nan) for i in rows], dtype=np.float64)
            values["forget_truth_ratio"] = _finite(closer_to_1_better(torch.from_numpy(tr)))
        if prob is not None:
            p = np.array([prob.get(i, math.nan) for i in rows], dtype=np.float64)
            values["forget_Q_A_Prob"] = _finite(mean_probability(torch.from_numpy(p)))
        if with_balance:
            balance: Mapping[str, float | None] = dict.fromkeys(BALANCE_KEYS)
            if tr is not None and reference_truth_ratios is not None and np.isfinite(tr).all():
                low, high = balance_percentiles
                balance = forgetting_balance(
                    tr, np.asarray(reference_truth_ratios), lower_percentile=low, upper_percentile=high
                )
            values.update({key: balance[key] for key in BALANCE_KEYS if key in logs})
        for metric in STRATUM_METRICS:
            if metric in values:
                out[stratum_key(stratum, metric)] = {"agg_value": values[metric], "n_samples": len(rows)}
    return out


def stratum_logs(
    logs: Mapping[str, Any],
    strata: Mapping[int, str],
    reference_truth_ratios: Sequence[float] | np.ndarray | None = None,
    *,
    balance_percentiles: tuple[float, float] = (5.0, 95.0),
) -> dict[str, Any]:
    """The entries a TOFU log gains when its forget rows have strata.

    They are ``forget_stratum`` (the map) and the ``stratum/<s>/<metric>`` entries of :func:`per_stratum_metrics`.
    Empty when ``strata`` is empty or the log holds none of :data:`STRATUM_METRICS`.
    """
    entries = per_stratum_metrics(logs, strata, reference_truth_ratios, balance_percentiles=balance_percentiles)
    return {STRATUM_LOG_KEY: stratum_map_entry(strata), **entries} if entries else {}
