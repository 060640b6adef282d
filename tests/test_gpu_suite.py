"""benchmarks/gpu_suite.py and its wrapper: the tiny CPU mode runs every case and writes the JSON and Markdown."""

from __future__ import annotations

import doctest
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_suite.py"
WRAPPER = REPO / "benchmarks" / "gpu_suite.sh"

# case id -> tokens per step in --tiny mode (2 forget + 2 retain rows of 32 tokens; BalDRO-G keeps 1 retain row, and
# its two-pass step trains on 1 forget row, the one pass on both)
TINY_TOKENS = {
    "floor": 128,
    "floor_two_passes": 128,
    "npo": 128,
    "npo_g": 64,
    "npo_g_one_pass": 96,
    "npo_dv": 128,
    "simnpo_dv": 128,
    "satimp_dv": 128,
    "public_npo": 128,
    "public_npo_g": 96,
    "public_npo_dv": 128,
    "lightning_single": 128,
    "lightning_fsdp": 128,
    "sweep_mb1": 64,
    "sweep_mb2": 128,
}


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _load_suite_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_suite_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_tiny_mode_measures_every_case_and_writes_json_and_markdown_atomically(tmp_path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # written through a temporary file and renamed: nothing but the two outputs is left, hidden files included
    assert sorted(p.name for p in out.iterdir()) == ["gpu_suite.json", "gpu_suite.md"]

    doc = json.loads((out / "gpu_suite.json").read_text())
    assert doc["finished"] is True
    assert doc["mode"] == "tiny"
    cases = {c["id"]: c for c in doc["cases"]}
    assert list(cases) == list(TINY_TOKENS)  # every case, in the order they ran
    for case_id, case in cases.items():
        assert case["status"] == "ok", (case_id, case["reason"])
        assert case["ms_per_step"] > 0, case_id
        assert case["tokens_per_s"] > 0, case_id
        assert case["tokens_per_step"] == TINY_TOKENS[case_id], case_id
        assert case["tokens_per_s"] == pytest.approx(case["tokens_per_step"] / (case["ms_per_step"] / 1000))
        assert case["steps_timed"] == 2, case_id
        assert case["mfu"] is None and case["peak_gib"] is None, case_id  # no peak FLOP/s or GPU memory on a CPU
    n = doc["model"]["non_embedding_parameters"]
    assert n == doc["model"]["parameters"] - 512 * 64  # the input embedding: vocab 512 x hidden 64
    assert cases["npo"]["model_flops_per_step"] == 6 * n * 128
    assert cases["npo_dv"]["optimizer_ms"] > 0 and cases["floor"]["optimizer_ms"] is None
    best = doc["best_micro_batch"]
    assert best["micro_batch"] in (1, 2)
    assert best["tokens_per_s"] == max(cases[f"sweep_mb{b}"]["tokens_per_s"] for b in (1, 2))

    markdown = (out / "gpu_suite.md").read_text()
    lines = markdown.splitlines()
    header = "| case | status | ms/step | tokens/step | tokens/s | MFU | peak GiB | optimizer ms | notes |"
    assert header in lines
    rows = lines[lines.index(header) + 2 :]
    for case in doc["cases"]:
        row = next(r for r in rows if r.startswith(f"| {case['name']} | ok | "))
        assert f"{case['ms_per_step']:.1f}" in row
    assert "MFU = 6 * N * T / (step time * peak)" in markdown
    assert f"Best micro-batch for MFU (NPO + BalDRO-DV): {best['micro_batch']} forget" in markdown


def test_wrapper_copies_outputs_into_out_and_a_spent_budget_skips_cases(tmp_path) -> None:
    results, device_out = tmp_path / "results", tmp_path / "device_out"
    proc = subprocess.run(
        ["bash", str(WRAPPER), "--tiny", "--budget-s", "0", "--out", str(results)],
        capture_output=True,
        text=True,
        env={**_env(), "OUT": str(device_out)},
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in results.iterdir()) == ["gpu_suite.json", "gpu_suite.md"]
    assert sorted(p.name for p in device_out.iterdir()) == ["gpu_suite.json", "gpu_suite.log", "gpu_suite.md"]
    assert (device_out / "gpu_suite.json").read_text() == (results / "gpu_suite.json").read_text()
    doc = json.loads((device_out / "gpu_suite.json").read_text())
    assert [c["id"] for c in doc["cases"]] == list(TINY_TOKENS)
    for case in doc["cases"]:
        assert case["status"] == "skipped"
        assert case["reason"] == "time budget of 0 s spent"
        assert case["ms_per_step"] is None
    assert doc["best_micro_batch"] is None
    log = (device_out / "gpu_suite.log").read_text()
    assert "NPO + BalDRO-DV (baldro-pl): skipped (time budget of 0 s spent)" in log
    assert "| NPO (baldro-pl) | skipped: time budget of 0 s spent | n/a |" in (device_out / "gpu_suite.md").read_text()


def test_peak_table_and_mfu_formula(monkeypatch) -> None:
    suite = _load_suite_module(monkeypatch)
    assert doctest.testmod(suite).failed == 0
    assert suite.peak_flops_for("NVIDIA H200") == 989e12
    assert suite.peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert suite.peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert suite.peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert suite.peak_flops_for("NVIDIA GeForce RTX 4090") is None
    # 1.1B-class model, 8 x 256 forget + 8 x 256 retain tokens, 100 ms per step on an H100
    flops = suite.model_flops(1_034_000_000, 4096)
    assert flops == 6 * 1_034_000_000 * 4096
    assert suite.mfu(flops, 0.1, 989e12) == pytest.approx(flops / 0.1 / 989e12)
    assert suite.mfu(flops, 0.1, None) is None
