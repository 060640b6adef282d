"""baldro_pl.threads: torch's CPU thread count follows the cores other processes leave free (issue 10, item 4), and
the test suite itself runs on one thread (tests/conftest.py).

No timing here: the load meter reads a fake ``/proc/stat`` with a fake clock, and the controller a fake meter.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from baldro_pl.threads import AdaptiveThreads, CPUThreads, OtherLoad, threads_for, user_thread_count


@pytest.fixture
def keep_threads():
    """Put torch's thread count back after a test that changes it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_thread_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user who set no thread count (conftest sets one for the suite)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)


def test_suite_runs_on_the_thread_count_of_its_environment() -> None:
    # conftest.py sets OMP_NUM_THREADS=1 (unless the caller chose a count) before torch is imported, for this process
    # and every subprocess a test starts, and applies it to torch
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"]
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])


# ------------------------------------------------------------------------------------------------ the pure parts
@pytest.mark.parametrize(
    ("others", "cpus", "max_threads", "expected"),
    [
        (0.0, 2, 2, 2),  # quiet machine
        (0.25, 2, 2, 2),  # background noise
        (0.26, 2, 2, 1),  # a neighbour that takes part of a core stalls a sibling thread: give the core up
        (0.67, 2, 2, 1),  # a spinning neighbour's share beside our two spinning threads
        (1.0, 2, 2, 1),
        (4.0, 2, 2, 1),  # never below one
        (1.0, 16, 8, 8),  # never above the count torch started with
        (3.2, 16, 16, 13),  # a fifth of a core is background noise
        (3.3, 16, 16, 12),
    ],
)
def test_threads_for(others: float, cpus: int, max_threads: int, expected: int) -> None:
    assert threads_for(others, cpus, max_threads) == expected


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"OMP_NUM_THREADS": "3"}, 3),
        ({"MKL_NUM_THREADS": "2"}, 2),
        ({"OMP_NUM_THREADS": "0", "MKL_NUM_THREADS": "4"}, 4),
        ({"OMP_NUM_THREADS": "many"}, None),
    ],
)
def test_user_thread_count(environ: dict[str, str], expected: int | None) -> None:
    assert user_thread_count(environ) == expected


def _stat(cpu0: tuple[int, ...], cpu1: tuple[int, ...], cpu2: tuple[int, ...]) -> str:
    def line(name: str, v: tuple[int, ...]) -> str:
        return f"{name} " + " ".join(map(str, v)) + " 0 0"

    total = tuple(a + b + c for a, b, c in zip(cpu0, cpu1, cpu2, strict=True))
    return "\n".join([line("cpu", total), line("cpu0", cpu0), line("cpu1", cpu1), line("cpu2", cpu2), "intr 1 2"])


def test_other_load_is_busy_time_of_its_cpus_minus_its_own(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    clock, own = [100.0], [5.0]
    #           user nice system idle iowait irq softirq steal
    stat.write_text(_stat((10, 0, 5, 100, 0, 0, 0, 0), (20, 1, 2, 50, 7, 0, 0, 0), (0, 0, 0, 0, 0, 0, 0, 0)))
    load = OtherLoad(stat, own_cpu_s=lambda: own[0], clock=lambda: clock[0], cpus={0, 1})
    assert load.available
    tick = load.tick_s
    # 2 s later: cpu0 +150 busy ticks (user 120, system 20, irq 5, softirq 5), cpu1 +60 (user 40, nice 10, steal 10)
    # and +40 iowait (not busy); cpu2 (outside the affinity mask) +500; this process used 1.1 s
    stat.write_text(_stat((130, 0, 25, 150, 0, 5, 5, 0), (60, 11, 2, 90, 47, 0, 0, 10), (500, 0, 0, 0, 0, 0, 0, 0)))
    clock[0], own[0] = 102.0, 6.1
    assert load.seconds_since() == pytest.approx(2.0)
    assert load.read() == pytest.approx(((150 + 60) * tick - 1.1) / 2.0)
    # nothing more happened: nobody else ran (never below 0, even though this process's own time grew)
    clock[0], own[0] = 103.0, 6.6
    assert load.read() == 0.0


def test_other_load_without_proc_stat(tmp_path: Path) -> None:
    load = OtherLoad(tmp_path / "missing")
    assert not load.available
    assert load.read() is None


class FakeLoad:
    """A meter that reports given loads and counts its readings."""

    available = True

    def __init__(self, *loads: float) -> None:
        self.loads = list(loads)
        self.reads = 0
        self.due = True

    def seconds_since(self) -> float:
        return float("inf") if self.due else 0.0

    def read(self) -> float:
        self.reads += 1
        return self.loads.pop(0)


def test_cpu_threads_follow_the_free_cores(no_thread_env: None, keep_threads: None) -> None:
    torch.set_num_threads(2)
    load = FakeLoad(0.0, 1.0, 0.1)
    threads = CPUThreads(load=load)
    threads.cpus = 2  # the machine of the test does not matter
    assert threads.adaptive
    assert torch.get_num_threads() == 1  # starts on one thread until the first reading
    assert threads.update() == 2  # quiet: both cores
    assert threads.update() == 1  # a busy neighbour: one
    load.due = False
    assert threads.update() == 1  # not re-measured before interval_s
    assert load.reads == 2
    load.due = True
    assert threads.update() == 2
    assert threads.changes == 3
    assert threads.describe() == "torch CPU threads followed the free cores (1 to 2, started on 1; 3 changes)"
    threads.restore()
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize(("env", "given", "expected"), [({"OMP_NUM_THREADS": "2"}, None, 2), ({}, 3, 3)])
def test_cpu_threads_keep_a_count_the_user_chose(
    monkeypatch: pytest.MonkeyPatch, no_thread_env: None, keep_threads: None, env, given, expected
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    torch.set_num_threads(1)
    load = FakeLoad(0.0, 0.0)
    threads = CPUThreads(threads=given, load=load)
    assert not threads.adaptive
    assert torch.get_num_threads() == expected
    assert threads.update() == expected
    assert load.reads == 0
    assert threads.describe() == f"torch CPU threads fixed at {expected}"
    threads.restore()
    assert torch.get_num_threads() == 1


def test_cpu_threads_keep_torchs_count_without_a_load_meter(
    tmp_path: Path, no_thread_env: None, keep_threads: None
) -> None:
    torch.set_num_threads(2)
    threads = CPUThreads(load=OtherLoad(tmp_path / "missing"))
    assert threads.update() == 2
    assert threads.describe() == "torch CPU threads: 2, torch's default (no /proc/stat to measure the free cores)"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_cpu_threads_refuse_a_bad_count(bad) -> None:
    with pytest.raises(ValueError, match=rf"^threads must be a positive integer or None \(adaptive\), got {bad!r}$"):
        CPUThreads(threads=bad)


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(torch.get_num_threads())
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.seen.append(torch.get_num_threads())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_adaptive_threads_callback_updates_before_every_batch(
    tmp_path: Path, no_thread_env: None, keep_threads: None
) -> None:
    torch.set_num_threads(2)
    load = FakeLoad(0.0, 0.0, 1.0, 1.0, 1.0, 1.0)
    threads = CPUThreads(load=load)
    threads.cpus = 2
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 4)), batch_size=2)
    module = _Tiny()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[AdaptiveThreads(threads)],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data, data)
    # 4 training batches (quiet, quiet, busy, busy), then 2 validation batches (busy)
    assert module.seen == [2, 2, 1, 1, 1, 1]
    assert load.reads == 6
    # a controller given from outside is left as it is (the demo shares one between its trainers)
    assert torch.get_num_threads() == 1
    threads.restore()
    assert torch.get_num_threads() == 2


def test_adaptive_threads_callback_puts_back_the_count_of_its_own_controller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_threads: None
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the controller made at setup keeps the user's count
    torch.set_num_threads(1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 4)), batch_size=2)
    callback, module = AdaptiveThreads(), _Tiny()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)
    assert module.seen == [2, 2]
    assert callback.threads is None
    assert torch.get_num_threads() == 1
