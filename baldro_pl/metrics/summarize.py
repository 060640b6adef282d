"""``baldro-pl summarize LOG.json [--reference RETAIN_LOG.json] [--json]``: recompute a log's aggregates.

Every aggregate of an open-unlearning ``TOFU_EVAL.json`` / ``MUSE_EVAL.json`` is recomputed from the per-sample values
it stores (metrics-spec §9, step 1): Prob means, normalised Prob, truth-ratio aggregates, ROUGE means, EM / ES, MIA
AUCs, model utility, and, with the retain / retrain model's log as ``--reference``, forget quality, the forgetting
balance and privleak (else privleak uses the reference AUC 0.5, as open-unlearning does), and the per-stratum forget
metrics of a log with memorisation strata (``stratum/<s>/...``, :mod:`baldro_pl.metrics.strata`). The table shows the
logged ``agg_value`` beside the recomputed one. A TOFU-authors log (``eval_log_aggregated.json``) is also accepted; its
``aggregate_eval_stat.py`` quantities are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from baldro_pl.metrics.functional.balance import BALANCE_KEYS, forgetting_balance
from baldro_pl.metrics.functional.forget_quality import forget_quality
from baldro_pl.metrics.functional.mia import mia_auc, privleak
from baldro_pl.metrics.functional.probability import mean_probability, normalised_probability
from baldro_pl.metrics.functional.truth_ratio import aggregate_truth_ratio, truth_ratio
from baldro_pl.metrics.functional.utility import MODEL_UTILITY_COMPONENTS, model_utility
from baldro_pl.metrics.logs import ReferenceLog, load_eval_log
from baldro_pl.metrics.strata import per_stratum_metrics, read_stratum_map
from baldro_pl.metrics.tofu_legacy import aggregate_tofu_legacy, is_legacy_tofu_log

_TR_SOURCES = {  # truth-ratio metric -> (correct-answer metric, perturbed-answers metric, aggregator)
    "forget_truth_ratio": ("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "closer_to_1_better"),
    "forget_Truth_Ratio": ("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "closer_to_1_better"),
    "retain_Truth_Ratio": ("retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob", "true_better"),
    "ra_Truth_Ratio": ("ra_Q_A_Prob", "ra_Q_A_PERT_Prob", "true_better"),
    "wf_Truth_Ratio": ("wf_Q_A_Prob", "wf_Q_A_PERT_Prob", "true_better"),
}


def _by_index(entry: Any) -> dict[int, Any] | None:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("value_by_index"), Mapping):
        return None
    return {int(k): v for k, v in entry["value_by_index"].items()}


def _field(logs: Mapping[str, Any], name: str, field: str) -> tuple[list[int], np.ndarray] | None:
    """Row indices and the values of ``field`` (None rows dropped; lists averaged later by the callers)."""
    rows = _by_index(logs.get(name))
    if rows is None:
        return None
    keep = sorted(i for i, v in rows.items() if isinstance(v, Mapping) and v.get(field) is not None)
    if not keep:
        return None
    return keep, np.array([rows[i][field] for i in keep], dtype=np.float64)


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


def _recompute_mia(entry: Any) -> float | None:
    if not isinstance(entry, Mapping):
        return None
    sides = []
    for side in ("forget", "holdout"):
        rows = _by_index(entry.get(side))
        if not rows:
            return None
        sides.append(torch.tensor([v["score"] for v in rows.values()], dtype=torch.float64))
    return mia_auc(*sides)


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
            field = "rougeL_f1" if ("knowmem" in name or "verbmem" in name) else "rougeL_recall"
            out[name] = _mean_field(logs, name, field)
        elif name.startswith("mia_"):
            out[name] = _recompute_mia(entry)
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


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.6g}" if (x == 0 or 1e-4 <= abs(x) < 1e6) else f"{x:.4e}"
    return str(x)


def _table(rows: Sequence[tuple[str, Any, Any]]) -> str:
    header = ("metric", "logged", "recomputed", "|diff|")
    body = []
    for name, logged, recomputed in rows:
        diff = (
            abs(logged - recomputed)
            if isinstance(logged, int | float) and isinstance(recomputed, int | float) and math.isfinite(logged)
            else None
        )
        body.append((name, _fmt(logged), _fmt(recomputed), _fmt(diff)))
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def summarize_file(path: str, reference: str | None = None) -> dict[str, dict[str, float | None]]:
    """``{metric: {"logged": agg_value, "recomputed": value}}`` for a log file (either format)."""
    logs = load_eval_log(path)
    if is_legacy_tofu_log(logs):
        ref_logs = load_eval_log(reference) if reference else None
        return {k: {"logged": None, "recomputed": v} for k, v in aggregate_tofu_legacy(logs, ref_logs).items()}
    recomputed = recompute_aggregates(logs, ReferenceLog(reference) if reference else None)
    return {
        name: {
            "logged": entry.get("agg_value") if isinstance(entry, Mapping) else None,
            "recomputed": recomputed.get(name),
        }
        for name, entry in logs.items()
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``baldro-pl summarize``; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="baldro-pl summarize", description=__doc__.split("\n\n")[0])
    parser.add_argument("log", help="an open-unlearning TOFU_EVAL.json / MUSE_EVAL.json (or a TOFU-authors log)")
    parser.add_argument("--reference", help="the retain / retrain model's log (forget quality, balance, privleak)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        result = summarize_file(args.log, args.reference)
    except (ValueError, KeyError) as err:
        print(f"baldro-pl summarize: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False, default=str))
    else:
        print(_table([(k, v["logged"], v["recomputed"]) for k, v in result.items()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
