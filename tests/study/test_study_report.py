"""The study's tables and plots from hand-made cell results (no fit): mean ± std over seeds, the best value per column
in bold by that column's direction, the reference rows, per-stratum tables, atomic PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from baldro_pl.study.report import direction, markdown_table, report_markdown, write_outputs

STRATA = ("x1", "x8")


def _result(method: str, seed: int, fq: float, mu: float, under: float, tr: float) -> dict[str, Any]:
    summary = {
        "forget_quality": fq,
        "model_utility": mu,
        "forget_truth_ratio": tr,
        "privleak": -10.0 * fq,
        "forget_balance_under": under,
        "forget_balance_within": 1.0 - under,
        "forget_balance_over": 0.0,
    }
    for i, stratum in enumerate(STRATA):
        summary[f"stratum/{stratum}/forget_balance_under"] = under * (i + 1) / 2
    return {
        "cell": f"{method}-{seed}",
        "method": method,
        "base": "NPO",
        "learning_rate": 1e-4,
        "epochs": 2,
        "seed": seed,
        "summary": summary,
        "epochs_evaluated": [{"epoch": 1, "forget_quality": fq / 2, "model_utility": mu}, {"epoch": 2, **summary}],
        "truth_ratios": [tr - 0.1, tr, tr + 0.1],
        "wall_s": 10.0 + seed,
        "peak_rss_mb": 500.0,
    }


@pytest.fixture
def study(tmp_path: Path) -> tuple[Any, dict[str, dict[str, Any]], dict[str, Any]]:
    results = [
        _result("Mean", 0, fq=0.01, mu=0.50, under=0.40, tr=0.60),
        _result("Mean", 1, fq=0.03, mu=0.52, under=0.30, tr=0.62),
        _result("DV hard", 0, fq=0.20, mu=0.48, under=0.10, tr=0.70),
        _result("DV hard", 1, fq=0.40, mu=0.46, under=0.20, tr=0.72),
    ]
    plan = SimpleNamespace(
        spec=SimpleNamespace(title="hand-made", seeds=(0, 1)),
        output_dir=tmp_path,
        cells=[SimpleNamespace(hash=r["cell"]) for r in results],
        retain_log="retain/TOFU_EVAL.json",
    )
    retain = {"forget_quality": 1.0, "model_utility": 0.5, "forget_truth_ratio": 0.71}
    target = {"forget_quality": 1e-5, "model_utility": 0.55, "forget_truth_ratio": 0.4}
    reference = {
        "retain": {"summary": retain, "truth_ratios": [0.6, 0.7, 0.8]},
        "target": {"summary": target, "truth_ratios": [0.3, 0.4]},
    }
    return plan, {r["cell"]: r for r in results}, reference


def test_directions_of_the_columns() -> None:
    assert direction("forget_quality") == direction("model_utility") == direction("forget_balance_within") == "max"
    assert direction("forget_balance_under") == direction("wall_s") == "min"
    assert direction("privleak") == "zero"
    assert direction("forget_truth_ratio") == "retain"
    assert direction("stratum/x8/forget_balance_under") == "min"


def test_report_bolds_the_best_mean_by_direction_and_shows_the_reference_rows(study) -> None:
    plan, results, reference = study
    text = report_markdown(plan, list(results.values()), reference)
    main_table = text.split("## Per stratum")[0].splitlines()
    rows = {line.split("|")[1].strip(): line for line in main_table if line.startswith("| ")}
    # forget quality: DV hard (0.30 ± 0.141) beats Mean (0.020 ± 0.014); utility: Mean (0.510) beats DV (0.470)
    assert "**0.300 ± 0.141**" in rows["DV hard"]
    assert "**0.510 ± 0.014**" in rows["Mean"]
    # truth ratio closest to the retain model's 0.71: DV hard (0.71); under-forgotten: lower is better (DV 0.15)
    assert "**0.710 ± 0.014**" in rows["DV hard"]
    assert "**0.150 ± 0.071**" in rows["DV hard"]
    assert "*retain model*" in rows and "*target model*" in rows
    assert "**" not in rows["*retain model*"]
    assert "### NPO: forget_balance_under by stratum (lower is best)" in text
    assert "| method | seeds | x1 | x8 |" in text


def test_markdown_table_leaves_equal_columns_unbolded() -> None:
    same = [{"summary": {"model_utility": 0.5}}]
    table = markdown_table({"a": same, "b": same}, ["model_utility"], {})
    assert "**" not in table


def test_outputs_are_written(study) -> None:
    plan, results, reference = study
    files = write_outputs(plan, results, reference)
    for key in ("csv", "json", "report", "plot_fq_mu", "plot_truth_ratios", "plot_epochs"):
        assert files[key].is_file() and files[key].stat().st_size > 0, key
    header = files["csv"].read_text().splitlines()[0].split(",")
    assert "stratum/x1/forget_balance_under" in header and "stratum/x8/forget_balance_under" in header
    assert json.loads(files["json"].read_text())["cells_finished"] == 4
    assert not list(plan.output_dir.glob(".*tmp*"))  # no temporary file left behind
