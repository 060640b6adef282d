"""benchmarks/eval_speed.py: both metric sets run, the two patterns agree, the phases add up to the run.

The benchmark's speed-up is only meaningful if its transcription of the public evaluator computes the same numbers as
baldro-pl's suite; this runs it on a few real TOFU rows with a short generation budget.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from shared_data import REPO, shared_path


@pytest.fixture(scope="module")
def eval_speed():
    spec = importlib.util.spec_from_file_location("eval_speed", REPO / "benchmarks" / "eval_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("metrics", ["fork", "full"])
def test_both_patterns_give_the_same_aggregates(eval_speed, metrics, tmp_path) -> None:
    data = shared_path("data", "tofu")
    out = tmp_path / "report.json"
    args = ["--rows", "6", "--metrics", metrics, "--max-new-tokens", "6", "--data", str(data), "--json", str(out)]
    assert eval_speed.main(args) == 0
    report = json.loads(out.read_text())
    assert report["metrics"] == metrics and report["rows"]["forget"] == 6
    assert report["max_abs_diff"] < 1e-5, report["max_abs_diff_metric"]
    for name in ("baldro_pl", "public_pattern"):
        phases = sum(report[f"{name}_{p}_s"][0] for p in eval_speed.PHASES if f"{name}_{p}_s" in report)
        assert 0 < phases <= report[f"{name}_s"][0]
    assert report["speedup_bound"] > 0
