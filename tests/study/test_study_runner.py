"""``baldro-pl study`` end to end on the demo's tiny Llama (a few optimiser steps per cell, a cut-down TOFU suite).

One study (two methods x one seed; the untrained base model as the target, its own evaluation as the retain log) is
run once for the module, in process to spare the runner's start-up (the cells are child processes all the same):

1. with ``baldro_pl.study.main([SPEC])`` (what ``baldro-pl study SPEC`` runs), stopped by a real SIGTERM to the
   process once its first cell has finished and the second has started;
2. then resumed with ``run_study(SPEC)``.

The tests check the interruption and the resumption (the first cell is not fitted again), the outputs, and that each
row's forget quality is what ``baldro-pl test -c configs/tofu/eval.yaml`` reports for the cell's exported model.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tofu_logs import write_tofu_log

from baldro_pl.study import main, run_study

REPO = Path(__file__).resolve().parents[2]
EVAL_METRICS = [
    "forget_quality",
    "model_utility",
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "forget_balance",
    "privleak",
]
MAX_NEW_TOKENS = 4


def retain_log(demo: dict[str, Path], path: Path) -> Path:
    """The "retain model"'s TOFU_EVAL.json (here: the untrained base model), evaluated in process (no child)."""
    return write_tofu_log(demo["base"], demo["data"], path, EVAL_METRICS, MAX_NEW_TOKENS)


def tiny_study_spec(root: Path, demo: Path, retain: Path) -> dict[str, Any]:
    """Two NPO methods (Mean, BalDRO-DV hard) x one seed, one step per cell, on the demo set of ``demo``."""
    return {
        "title": "tiny study",
        "output_dir": str(root / "study"),
        "prepare": {"function": "baldro_pl.demo.prepare_demo", "args": {"out_dir": str(demo)}},
        "target": {"path": "${prepare.base}"},  # the untrained base model stands in for a fine-tuned target
        "retain": {"log": str(retain)},
        "unlearn": {
            "configs": [str(REPO / "configs" / "demo.yaml")],
            "args": [
                "--data.init_args.data_dir",
                "${prepare.data}",
                "--trainer.limit_train_batches",
                "1",
                "--trainer.limit_val_batches",
                "0",
                "--trainer.num_sanity_val_steps",
                "0",
                "--trainer.enable_model_summary",
                "false",
            ],
        },  # fmt: skip
        "evaluation": {"every_n_epochs": 1, "init_args": {"metrics": EVAL_METRICS, "max_new_tokens": MAX_NEW_TOKENS}},
        "grid": {
            "methods": [
                {"name": "NPO", "aggregator": {"class_path": "baldro_pl.objectives.Mean"}},
                {
                    "name": "NPO + DV hard",
                    "aggregator": {
                        "class_path": "baldro_pl.objectives.BalDRODV",
                        "init_args": {"temperature": 1.0, "emphasis": "hard"},
                    },
                },
            ],
            "epochs": [1],
            "seeds": [0],
        },
    }


def _sigterm_once_second_cell_runs(cells: Path, done: threading.Event) -> None:
    """Send SIGTERM to this process once one cell is finished and the other one's fit has started."""
    while not done.is_set():
        folders = list(cells.iterdir()) if cells.is_dir() else []
        finished = [f for f in folders if (f / "result.json").exists()]
        started = [f for f in folders if (f / "fit.log").exists() and f not in finished]
        if len(finished) == 1 and started:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny study: run with ``baldro-pl study``'s ``main``, SIGTERM-ed after its first cell, then resumed."""
    from baldro_pl.demo import prepare_demo

    root = tmp_path_factory.mktemp("study")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # a SIGTERM that came after the runner's own handler was gone must not end pytest
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    done = threading.Event()
    try:
        demo = prepare_demo(root / "demo")
        spec = tiny_study_spec(root, root / "demo", retain_log(demo, root / "retain" / "TOFU_EVAL.json"))
        spec_path = root / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        cells = root / "study" / "cells"
        watcher = threading.Thread(target=_sigterm_once_second_cell_runs, args=(cells, done), daemon=True)
        watcher.start()
        code = main([str(spec_path), "--fit-output", "log"])
        done.set()
        after_interrupt = {p.name: sorted(f.name for f in p.iterdir()) for p in cells.iterdir()}
        stamps = {p.name: (p / "fit.log").stat().st_mtime_ns for p in cells.iterdir() if (p / "result.json").exists()}
        start = time.monotonic()
        result = run_study(spec_path, fit_output="log")
        resume_s = time.monotonic() - start
    finally:
        done.set()
        signal.signal(signal.SIGTERM, previous)
        torch.set_num_threads(threads)
    return {
        "root": root,
        "code": code,
        "after_interrupt": after_interrupt,
        "stamps": stamps,
        "result": result,
        "resume_s": resume_s,
    }


def test_study_interrupted_after_first_cell_resumes_without_refitting_it(study: dict[str, Any]) -> None:
    assert study["code"] == 128 + signal.SIGTERM
    finished = [name for name, files in study["after_interrupt"].items() if "result.json" in files]
    unfinished = [name for name, files in study["after_interrupt"].items() if "result.json" not in files]
    assert len(finished) == 1, study["after_interrupt"]
    assert len(unfinished) == 1  # the second cell was started, stopped, and left nothing finished-looking
    assert not any(f.endswith(".tmp") for f in study["after_interrupt"][unfinished[0]])
    cells = study["root"] / "study" / "cells"
    (first,) = finished
    assert (cells / first / "fit.log").stat().st_mtime_ns == study["stamps"][first]  # not fitted again
    rows = study["result"]["rows"]
    assert [r["method"] for r in rows] == ["NPO", "NPO + DV hard"]
    assert rows[0]["cell"] == first
    assert all((cells / r["cell"] / "result.json").is_file() for r in rows)
    assert study["result"]["failures"] == []


def test_study_writes_results_report_and_plots(study: dict[str, Any]) -> None:
    out = study["root"] / "study"
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 2
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    for column in ("method", "learning_rate", "seed", "forget_quality", "model_utility", "forget_balance_within"):
        assert column in header
    for column in ("wall_s", "peak_rss_mb", "privleak", "forget_Q_A_ROUGE"):
        assert column in header
    for row in rows:
        assert 0.0 <= row["forget_quality"] <= 1.0
        assert row["wall_s"] > 0 and row["peak_rss_mb"] > 0
        total = row["forget_balance_under"] + row["forget_balance_within"] + row["forget_balance_over"]
        assert total == pytest.approx(1.0)
    report = (out / "report.md").read_text()
    assert "## NPO" in report
    assert "| NPO + DV hard | 1 |" in report
    assert "*retain model*" in report and "*target model*" in report
    for name in ("plot_fq_vs_mu.png", "plot_truth_ratios.png", "plot_epochs.png"):
        assert (out / name).stat().st_size > 1000, name
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    epochs = study["result"]["rows"][0]["epochs_evaluated"]
    assert [e["epoch"] for e in epochs] == [1]  # the per-epoch evaluation behind plot (c)
    print(f"resumed study (second cell, report, plots) in {study['resume_s']:.0f} s; per-cell wall time:")
    for row in rows:
        print(f"  {row['method']}: {row['wall_s']:.1f} s")


def test_study_forget_quality_equals_baldro_pl_test_of_the_exported_model(
    study: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from baldro_pl.cli import main

    monkeypatch.setattr(sys, "argv", ["baldro-pl"])
    retain_log = json.loads((study["root"] / "study" / "results.json").read_text())["reference"]["retain"]["log"]
    data = study["root"] / "demo" / "data"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for row in study["result"]["rows"]:
            output = study["root"] / "check" / row["cell"]
            code = main(
                [
                    "test",
                    "--config", str(REPO / "configs" / "tofu" / "eval.yaml"),
                    "--model.init_args.model", row["hf_model"],
                    "--data.init_args.data_dir", str(data),
                    "--trainer.accelerator", "cpu",
                    "--trainer.precision", "32-true",
                    "--trainer.limit_test_batches", "1",
                    "--trainer.enable_progress_bar", "false",
                    "--trainer.logger.init_args.save_dir", str(output),
                    "--trainer.callbacks.init_args.suite.init_args.retain_logs_path", retain_log,
                    "--trainer.callbacks.init_args.suite.init_args.metrics", "[forget_quality]",
                    "--trainer.callbacks.init_args.suite.init_args.max_new_tokens", str(MAX_NEW_TOKENS),
                    "--trainer.callbacks.init_args.output_dir", str(output),
                ]
            )  # fmt: skip
            assert code == 0
            summary = json.loads((output / "test" / "TOFU_SUMMARY.json").read_text())
            assert summary["forget_quality"] == pytest.approx(row["summary"]["forget_quality"], rel=1e-9, abs=0)
    finally:
        torch.set_num_threads(threads)
