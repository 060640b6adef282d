"""Forget metrics per memorisation stratum: hand-computed values, the TOFU suite's log and summary, ``summarize``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from suites import evaluate_tofu

from baldro_pl.metrics import recompute_aggregates, write_json_atomic
from baldro_pl.metrics.strata import STRATUM_LOG_KEY, per_stratum_metrics, read_stratum_map, stratum_logs
from baldro_pl.metrics.summarize import main as summarize_main
from baldro_pl.metrics.summarize import summarize_file

BALANCE = ("forget_balance_under", "forget_balance_within", "forget_balance_over")
STRATUM_METRICS = ("forget_truth_ratio", "forget_Q_A_Prob", *BALANCE)
FAST = ["forget_truth_ratio", "forget_Q_A_Prob", "forget_balance", "forget_quality", "retain_Q_A_Prob"]


def _hand_log() -> tuple[dict, dict[int, str], list[float]]:
    """Six forget rows in two strata (rows 0, 2, 5: "x1"; rows 1, 3, 4: "x8"), and a reference whose 5-95% range is
    [0.05, 0.95] exactly (21 evenly spaced values, numpy's linear interpolation)."""
    scores = [0.5, 0.02, 2.0, 0.01, 0.9, 0.04]  # truth ratios
    probs = [0.2, 0.9, 0.4, 0.8, 0.7, 0.3]
    logs = {
        "forget_truth_ratio": {
            "agg_value": 0.0,
            "value_by_index": {str(i): {"score": s} for i, s in enumerate(scores)},
        },
        "forget_Q_A_Prob": {
            "agg_value": 0.0,
            "value_by_index": {str(i): {"prob": p, "avg_loss": -np.log(p)} for i, p in enumerate(probs)},
        },
        **{key: {"agg_value": None} for key in BALANCE},
    }
    strata = {0: "x1", 1: "x8", 2: "x1", 3: "x8", 4: "x8", 5: "x1"}
    return logs, strata, [i / 20 for i in range(21)]


def test_per_stratum_values_equal_a_hand_computation() -> None:
    logs, strata, reference = _hand_log()
    got = {k: v["agg_value"] for k, v in per_stratum_metrics(logs, strata, reference).items()}
    # x1: rows 0, 2, 5 -> truth ratios 0.5, 2.0, 0.04; closer_to_1 = mean(min(tr, 1/tr)) = (0.5 + 0.5 + 0.04) / 3;
    # probs 0.2, 0.4, 0.3; range [0.05, 0.95]: 0.04 under, 0.5 within, 2.0 over.
    # x8: rows 1, 3, 4 -> 0.02, 0.01, 0.9: (0.02 + 0.01 + 0.9) / 3; probs 0.9, 0.8, 0.7; 0.02 and 0.01 under.
    expected = {
        "stratum/x1/forget_truth_ratio": (0.5 + 0.5 + 0.04) / 3,
        "stratum/x1/forget_Q_A_Prob": 0.3,
        "stratum/x1/forget_balance_under": 1 / 3,
        "stratum/x1/forget_balance_within": 1 / 3,
        "stratum/x1/forget_balance_over": 1 / 3,
        "stratum/x8/forget_truth_ratio": 0.31,
        "stratum/x8/forget_Q_A_Prob": 0.8,
        "stratum/x8/forget_balance_under": 2 / 3,
        "stratum/x8/forget_balance_within": 1 / 3,
        "stratum/x8/forget_balance_over": 0.0,
    }
    assert list(got) == list(expected)  # strata in order, metrics in STRATUM_METRICS order
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # without a reference: the balance is None, as the overall forget_balance_* are
    no_ref = per_stratum_metrics(logs, strata)
    assert no_ref["stratum/x8/forget_balance_under"] == {"agg_value": None, "n_samples": 3}
    assert no_ref["stratum/x8/forget_Q_A_Prob"]["agg_value"] == pytest.approx(0.8)
    # a metric absent from the log is absent per stratum; no strata -> no entries at all
    only_prob = {"forget_Q_A_Prob": logs["forget_Q_A_Prob"]}
    assert sorted(per_stratum_metrics(only_prob, strata)) == [
        "stratum/x1/forget_Q_A_Prob",
        "stratum/x8/forget_Q_A_Prob",
    ]
    assert stratum_logs(logs, {}, reference) == {}


def test_strata_sort_naturally_and_map_round_trips() -> None:
    logs, _, reference = _hand_log()
    strata = {0: "x16", 1: "x2", 2: "x16", 3: "x2", 4: "x2", 5: "x16"}
    entries = stratum_logs(logs, strata, reference)
    assert [k for k in entries if k.endswith("/forget_Q_A_Prob")] == [
        "stratum/x2/forget_Q_A_Prob",
        "stratum/x16/forget_Q_A_Prob",
    ]
    assert read_stratum_map(entries) == strata
    assert entries[STRATUM_LOG_KEY]["value_by_index"]["0"] == {"stratum": "x16"}


def _with_strata(rows: dict[str, list[dict]], labels: list[str]) -> dict[str, list[dict]]:
    out = dict(rows)
    out["forget"] = [{**r, "stratum": s} for r, s in zip(rows["forget"], labels)]
    return out


def test_suite_logs_and_summarizes_per_stratum(tiny_model, toy_tokenizer, tofu_rows, tmp_path) -> None:
    rows = tofu_rows(8)
    plain = evaluate_tofu(tiny_model, toy_tokenizer, rows, metrics=FAST, max_new_tokens=2, batch_size=8)
    assert not any(k.startswith("stratum/") or k == STRATUM_LOG_KEY for k in plain.logs)  # no strata: log unchanged
    labels = ["x1", "x8", "x2", "x1", "x8", "x2", "x1", "x8"]
    reference = plain.logs  # any log with per-sample forget truth ratios serves as the reference
    result = evaluate_tofu(
        tiny_model,
        toy_tokenizer,
        _with_strata(rows, labels),
        metrics=FAST,
        max_new_tokens=2,
        batch_size=8,
        retain_logs_path=reference,
    )
    logs, summary = result.logs, result.summary
    assert {k: v for k, v in logs.items() if not k.startswith("stratum/") and k != STRATUM_LOG_KEY} == {
        k: v for k, v in logs.items() if k in plain.logs
    }
    assert read_stratum_map(logs) == dict(enumerate(labels))
    # hand computation from the logged per-sample values
    tr = np.array([logs["forget_truth_ratio"]["value_by_index"][str(i)]["score"] for i in range(8)])
    prob = np.array([logs["forget_Q_A_Prob"]["value_by_index"][str(i)]["prob"] for i in range(8)])
    ref = np.array([reference["forget_truth_ratio"]["value_by_index"][str(i)]["score"] for i in range(8)])
    low, high = np.percentile(ref, [5, 95])
    for stratum in ("x1", "x2", "x8"):
        rows_in = [i for i, s in enumerate(labels) if s == stratum]
        t = tr[rows_in]
        expected = {
            "forget_truth_ratio": float(np.mean(np.minimum(t, 1 / (t + 1e-10)))),
            "forget_Q_A_Prob": float(np.mean(prob[rows_in])),
            "forget_balance_under": float(np.mean(t < low)),
            "forget_balance_within": float(np.mean((t >= low) & (t <= high))),
            "forget_balance_over": float(np.mean(t > high)),
        }
        for metric, value in expected.items():
            key = f"stratum/{stratum}/{metric}"
            assert logs[key] == {"agg_value": pytest.approx(value, rel=1e-12, abs=1e-12), "n_samples": len(rows_in)}
            assert summary[key] == pytest.approx(value, rel=1e-12, abs=1e-12)
    # the strata's values, weighted by their sizes, give the overall ones
    for metric in ("forget_truth_ratio", "forget_Q_A_Prob", "forget_balance_under"):
        weighted = sum(summary[f"stratum/{s}/{metric}"] * labels.count(s) for s in ("x1", "x2", "x8")) / 8
        assert weighted == pytest.approx(summary[metric], rel=1e-12, abs=1e-12)
    assert STRATUM_LOG_KEY not in summary

    # summarize: recomputes the per-stratum values from the log (with the reference for the balance), and the
    # command works on the file, with and without --reference
    log_path = write_json_atomic(tmp_path / "TOFU_EVAL.json", logs)
    ref_path = write_json_atomic(tmp_path / "RETAIN_EVAL.json", reference)
    again = recompute_aggregates(json.loads(log_path.read_text()), json.loads(ref_path.read_text()))
    for key in (k for k in logs if k.startswith("stratum/")):
        assert again[key] == pytest.approx(logs[key]["agg_value"], rel=1e-12, abs=1e-12), key
    table = summarize_file(str(log_path))
    assert table["stratum/x8/forget_balance_under"]["recomputed"] is None  # no reference: no balance
    assert table["stratum/x8/forget_Q_A_Prob"]["recomputed"] == pytest.approx(summary["stratum/x8/forget_Q_A_Prob"])
    assert table[STRATUM_LOG_KEY] == {"logged": None, "recomputed": None}
    assert summarize_main([str(log_path), "--reference", str(ref_path)]) == 0
    assert summarize_main([str(log_path), "--json"]) == 0
