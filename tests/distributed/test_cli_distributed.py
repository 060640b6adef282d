"""Multi-process runs through the real command line (issue 8): ``baldro-pl fit`` / ``test`` with 2 CPU processes.

Each run is the console script as a user types it, with a preset's full callback list (ModelCheckpoint with
``save_on_exception``, HFExport, the TOFU evaluation, and the HParamsTable the CLI appends), so that every rank must
build the same callbacks and reach the same collectives. A hang cannot pass silently: every process of the run
(Lightning's launched rank too, and torchrun's workers) imports ``hang_guard/sitecustomize.py``, which dumps all
stacks and exits after ``HANG_GUARD_S``; the test then fails and prints both ranks' stacks. ``--pg_timeout`` is
left at the CLI's default, which the test of the timeout itself checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tofu_logs import write_tofu_log

from baldro_pl.cli import lightning_cli
from baldro_pl.distributed import DEFAULT_PG_TIMEOUT_S

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
GUARD = Path(__file__).with_name("hang_guard")
HANG_GUARD_S = 180  # a 2-process run of the tiny model takes ~20 s on 2 cores; a hang is caught well before CI's end
SCRIPT = Path(sys.executable).with_name("baldro-pl")
EVAL_METRICS = "[forget_Q_A_Prob, forget_truth_ratio, forget_quality]"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """The layout configs/demo.yaml expects under outputs/demo: data, a target model, the retain model's log."""
    from baldro_pl.demo import prepare_demo

    root = tmp_path_factory.mktemp("cli_distributed")
    out = root / "outputs" / "demo"
    paths = prepare_demo(out)
    shutil.copytree(paths["base"], out / "models" / "target")  # the untrained base stands in for the target
    metrics = ["forget_truth_ratio", "forget_Q_A_Prob"]
    write_tofu_log(paths["base"], paths["data"], out / "eval" / "retain" / "TOFU_EVAL.json", metrics)
    return root


def _run(cwd: Path, command: list[str]) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group with the hang guard; on failure, show both ranks' output."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(GUARD), os.environ.get("PYTHONPATH")])),
        "BALDRO_HANG_GUARD_S": str(HANG_GUARD_S),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=HANG_GUARD_S + 120)
    except subprocess.TimeoutExpired:  # the guard itself did not fire: kill the whole group
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a rank left behind by a failed launcher
    done = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    assert done.returncode == 0, (
        f"{' '.join(command)} exited {done.returncode}\n--- stdout ---\n{stdout[-4000:]}\n"
        f"--- stderr (both ranks) ---\n{stderr[-20000:]}"
    )
    return done


def _fit_command(*extra: str) -> list[str]:
    return [
        str(SCRIPT),
        "fit",
        "-c",
        str(CONFIGS / "demo.yaml"),
        *extra,
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        # the preset's evaluation callback, after the one epoch, a few metrics (forget quality needs the retain log)
        "--trainer.callbacks.init_args.every_n_epochs",
        "1",
        "--trainer.callbacks.init_args.suite.init_args.metrics",
        EVAL_METRICS,
    ]


def _check_fit(root: Path, version: str) -> None:
    run = root / "outputs/demo/runs/unlearn_npo_dv" / version
    assert (run / "config.yaml").is_file()
    assert (run / "versions.json").is_file()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["best.ckpt", "last.ckpt"], checkpoints  # last: resumable, at the end; best: weights only
    metas = {}
    for name in checkpoints:  # DDP: files; FSDP: sharded directories with a meta.pt
        path = run / "checkpoints" / name
        metas[name] = torch.load(path / "meta.pt" if path.is_dir() else path, map_location="cpu", weights_only=False)
    assert "lr_schedulers" in metas["last.ckpt"] and "lr_schedulers" not in metas["best.ckpt"]
    export = root / "outputs/demo/models/unlearned_npo_dv"
    assert (export / "config.json").is_file()
    assert list(export.glob("*.safetensors"))
    logs = sorted(p.relative_to(run).as_posix() for p in run.rglob("TOFU_EVAL.json"))
    assert logs == ["epoch_0/TOFU_EVAL.json"]  # written once, by rank 0, for the one evaluation
    summary = json.loads((run / "epoch_0" / "TOFU_SUMMARY.json").read_text())
    assert 0.0 < summary["forget_quality"] <= 1.0
    assert 0.0 <= summary["forget_Q_A_Prob"] <= 1.0


def _fresh(root: Path) -> None:
    shutil.rmtree(root / "outputs/demo/runs", ignore_errors=True)
    shutil.rmtree(root / "outputs/demo/models/unlearned_npo_dv", ignore_errors=True)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_fit_with_two_processes_through_the_cli(demo_dir: Path, strategy: str) -> None:
    """README's data-parallel commands on the demo preset: DDP, and FSDP through HFFSDPStrategy on gloo."""
    _fresh(demo_dir)
    _run(demo_dir, _fit_command("-c", str(CONFIGS / "strategy" / f"{strategy}.yaml")))  # FSDP: bf16-true, as written
    _check_fit(demo_dir, "version_0")


def test_fit_with_a_strategy_name_through_the_cli(demo_dir: Path) -> None:
    """``--trainer.strategy ddp`` instead of the preset file (the form of the original report)."""
    _fresh(demo_dir)
    _run(demo_dir, _fit_command("--trainer.strategy", "ddp"))
    _check_fit(demo_dir, "version_0")


def test_fit_under_torchrun(demo_dir: Path) -> None:
    """README's multi-node recipe on one node: torchrun launches both ranks, Lightning only joins them."""
    _fresh(demo_dir)
    torchrun = Path(sys.executable).with_name("torchrun")
    fit = _fit_command("-c", str(CONFIGS / "strategy" / "ddp.yaml"), "--trainer.num_nodes", "1")
    command = [str(torchrun), "--nproc-per-node", "2", "--master-port", "29531", *fit]
    _run(demo_dir, command)
    _check_fit(demo_dir, "version_0")


def test_test_with_two_processes_through_the_cli(demo_dir: Path) -> None:
    """``baldro-pl test`` with the evaluation preset on 2 processes: one log, every row evaluated once."""
    shutil.rmtree(demo_dir / "runs", ignore_errors=True)
    target = demo_dir / "outputs/demo/models/target"
    command = [
        str(SCRIPT),
        "test",
        "-c",
        str(CONFIGS / "tofu" / "eval.yaml"),
        "-c",
        str(CONFIGS / "strategy" / "ddp.yaml"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.precision",
        "32-true",
        "--trainer.enable_progress_bar",
        "false",
        "--model.init_args.model",
        str(target),
        "--data.init_args.data_dir",
        str(demo_dir / "outputs/demo/data"),
        "--trainer.callbacks.init_args.suite.init_args.retain_logs_path",
        str(demo_dir / "outputs/demo/eval/retain/TOFU_EVAL.json"),
        "--trainer.callbacks.init_args.suite.init_args.metrics",
        EVAL_METRICS,
        "--trainer.callbacks.init_args.suite.init_args.max_new_tokens",
        "8",
    ]
    _run(demo_dir, command)
    run = demo_dir / "runs/tofu_eval/version_0"
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("TOFU_EVAL.json")) == ["test/TOFU_EVAL.json"]
    logs = json.loads((run / "test" / "TOFU_EVAL.json").read_text())
    assert len(logs["forget_Q_A_Prob"]["value_by_index"]) == 20  # both shards gathered, no row twice
    # the untrained target is the retain log's own model: the same truth ratios, so forget quality is 1
    summary = json.loads((run / "test" / "TOFU_SUMMARY.json").read_text())
    assert summary["forget_quality"] == pytest.approx(1.0)


def test_process_group_timeout_defaults_to_minutes_and_can_be_changed(demo_dir: Path, monkeypatch) -> None:
    """The CLI gives DDP/FSDP a timeout of minutes (Lightning's is 30); ``--pg_timeout`` and an explicit strategy
    ``timeout`` change it."""
    from datetime import timedelta

    monkeypatch.chdir(demo_dir)
    monkeypatch.setattr(sys, "argv", ["baldro-pl"])
    cpu = ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    base = ["--config", str(CONFIGS / "demo.yaml"), *cpu]
    ddp = ["--config", str(CONFIGS / "strategy" / "ddp.yaml"), *cpu]
    cli = lightning_cli([*base, *ddp], run=False)
    assert cli.trainer.strategy._timeout == timedelta(seconds=DEFAULT_PG_TIMEOUT_S)
    assert DEFAULT_PG_TIMEOUT_S <= 900
    cli = lightning_cli([*base, *ddp, "--pg_timeout", "42"], run=False)
    assert cli.trainer.strategy._timeout == timedelta(seconds=42)
    cli = lightning_cli([*base, "--trainer.strategy", "ddp", "--pg_timeout", "7"], run=False)
    assert cli.trainer.strategy._timeout == timedelta(seconds=7)
    explicit = [*base, *ddp, "--trainer.strategy.init_args.timeout", "0:01:30", "--pg_timeout", "42"]
    cli = lightning_cli(explicit, run=False)
    assert cli.trainer.strategy._timeout == timedelta(seconds=90)
    fsdp = [*base, "--config", str(CONFIGS / "strategy" / "fsdp.yaml"), *cpu, "--pg_timeout", "42"]
    assert lightning_cli(fsdp, run=False).trainer.strategy._timeout == timedelta(seconds=42)
    from baldro_pl.strategies import HFFSDPStrategy

    assert HFFSDPStrategy()._timeout == timedelta(seconds=DEFAULT_PG_TIMEOUT_S)  # the Python API too
    with pytest.raises(ValueError, match="pg_timeout"):
        lightning_cli([*base, *ddp, "--pg_timeout", "-1"], run=False)
