"""How many CPU threads torch uses when other processes share the machine.

Why this exists: torch's CPU operators run on an OpenMP thread pool (libgomp in the pip wheels) whose idle threads
*spin* at every barrier before they sleep. When another CPU-bound process takes one of the cores, one of torch's
threads is descheduled and its sibling spins through whole time slices waiting for it. On the project's 2-core
machine, 4 fine-tuning epochs of the demo's model took 7.4 s on one thread and 199 s on two threads beside one busy
process (27 times slower, its CPU time 13 times the work; docs/benchmarks.md). One thread per free core avoids this;
``OMP_WAIT_POLICY=PASSIVE`` avoids it too but, measured, also loses the second thread's speed-up on a quiet machine
(and it only works if set before torch is imported).

So the intra-op thread count follows the cores that the other processes leave free, measured as they run:

* :class:`OtherLoad`: the CPU time other processes used on this process's CPUs since the previous reading, in cores
  (Linux ``/proc/stat`` minus this process's own CPU time; ``None`` where there is no ``/proc/stat``).
* :func:`threads_for`: the thread count for a measured load.
* :class:`CPUThreads`: keeps ``torch.set_num_threads`` at that count, re-measured at most once per ``interval_s``;
  fixed when the user chose a count (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, or a ``threads`` argument).
* :class:`AdaptiveThreads`: the Lightning callback that updates it at every training / evaluation batch.

Measured on the project's machine, the thread count does not change the numbers: the demo's models trained on one and
on two threads are bit-identical, and its tables are the same alone and beside busy processes (the count changing
during the run). Other CPUs' kernels may split sums differently with the thread count.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

#: Environment variables by which a user fixes the thread count; any of them set turns the adaptation off.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: Other processes' load (in cores) tolerated before giving up a thread: background noise on a quiet machine.
SLACK_CORES = 0.25


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def user_thread_count(environ: dict[str, str] | None = None) -> int | None:
    """The thread count the user set through ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``, else None.

    The first of the two that is a positive integer counts.
    """
    environ = os.environ if environ is None else environ
    for name in THREAD_ENV:
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def threads_for(others: float, cpus: int, max_threads: int) -> int:
    """Intra-op threads for ``cpus`` CPUs of which other processes use ``others`` cores.

    One per core they leave free, between 1 and ``max_threads``. A core counts as taken from ``SLACK_CORES`` of use
    on (a sibling thread that shares its core with another process stalls the whole pool).
    """
    taken = max(0, math.ceil(others - SLACK_CORES))
    return max(1, min(max_threads, cpus - taken))


class OtherLoad:
    """The CPU time that other processes used on this process's CPUs, in cores, between two readings.

    Busy time per CPU comes from ``stat_path`` (``/proc/stat``: user, nice, system, irq, softirq and steal ticks; the
    CPUs of the affinity mask only); this process's own CPU time (all its threads) is taken off. Where ``stat_path``
    cannot be read, :meth:`read` returns None.

    Args:
        stat_path: the kernel's CPU statistics (a test passes its own file).
        own_cpu_s: this process's CPU time in seconds (default ``time.process_time``).
        clock: a monotonic clock in seconds.
        cpus: the CPU numbers to count (default: the affinity mask).
    """

    def __init__(
        self,
        stat_path: str | os.PathLike = "/proc/stat",
        own_cpu_s: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        cpus: set[int] | None = None,
    ) -> None:
        self.stat_path = Path(stat_path)
        self.own_cpu_s = own_cpu_s
        self.clock = clock
        if cpus is None:
            try:
                cpus = set(os.sched_getaffinity(0))
            except AttributeError:
                cpus = None
        self.cpus = cpus
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        self._last = self._sample()

    def _busy_s(self) -> float | None:
        try:
            lines = self.stat_path.read_text().splitlines()
        except OSError:
            return None
        ticks = 0
        for line in lines:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            if self.cpus is not None and int(name[3:]) not in self.cpus:
                continue
            # user nice system idle iowait irq softirq steal (guest time is already inside user)
            values = [int(v) for v in fields[:8]]
            ticks += values[0] + values[1] + values[2] + values[5] + values[6] + values[7]
        return ticks * self.tick_s

    def _sample(self) -> tuple[float, float, float] | None:
        busy = self._busy_s()
        return None if busy is None else (self.clock(), busy, self.own_cpu_s())

    @property
    def available(self) -> bool:
        """Whether the last reading of ``stat_path`` worked."""
        return self._last is not None

    def seconds_since(self) -> float:
        """Seconds since the previous reading (or since construction)."""
        return math.inf if self._last is None else self.clock() - self._last[0]

    def read(self) -> float | None:
        """Cores used by other processes since the previous reading (never below 0).

        None without ``/proc/stat`` or when no time has passed.
        """
        now = self._sample()
        last, self._last = self._last, now
        if now is None or last is None or now[0] <= last[0]:
            return None
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0.0, others / (now[0] - last[0]))


class CPUThreads:
    """Keeps torch's intra-op thread count at one thread per core that other processes leave free.

    Args:
        threads: a fixed count (no adaptation). Default: the user's ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` if set
            (fixed too), else adaptive between 1 and torch's thread count at construction.
        interval_s: the load is re-measured at most this often (each reading covers the time since the previous).
        load: the load meter (a test passes its own).

    Starts on one thread when adaptive: the first reading (after ``interval_s``) raises it if cores are free. Where the
    load cannot be measured (no ``/proc/stat``: macOS, Windows) torch's own count stays. Call :meth:`update` often (it
    is cheap between readings) and :meth:`restore` at the end.
    """

    def __init__(self, threads: int | None = None, interval_s: float = 1.0, load: OtherLoad | None = None) -> None:
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None (adaptive), got {threads!r}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.initial = torch.get_num_threads()
        self.fixed = threads if threads is not None else user_thread_count()
        self.max_threads = self.initial
        self.cpus = usable_cpus()
        self.interval_s = interval_s
        self.load = load if load is not None else (None if self.fixed is not None else OtherLoad())
        if self.load is not None and not self.load.available:
            self.load = None  # no /proc/stat (macOS, Windows): torch's own count stays
        self.changes = 0  # by update(), after the start
        if self.fixed is not None:
            self._set(self.fixed)
        elif self.load is not None:
            self._set(1)

    @property
    def adaptive(self) -> bool:
        """Whether the count follows the load (no fixed count given or set in the environment)."""
        return self.fixed is None

    @staticmethod
    def _set(n: int) -> bool:
        if torch.get_num_threads() == n:
            return False
        torch.set_num_threads(n)
        return True

    def update(self) -> int:
        """Re-measure the load if ``interval_s`` has passed and set the thread count; returns the count."""
        if self.load is not None and self.adaptive and self.load.seconds_since() >= self.interval_s:
            others = self.load.read()
            if others is not None and self._set(threads_for(others, self.cpus, self.max_threads)):
                self.changes += 1
        return torch.get_num_threads()

    def describe(self) -> str:
        """One line: how the count was chosen (and, when adaptive, how often it changed)."""
        if not self.adaptive:
            return f"torch CPU threads fixed at {self.fixed}"
        if self.load is None:
            return f"torch CPU threads: {self.initial}, torch's default (no /proc/stat to measure the free cores)"
        return (
            f"torch CPU threads followed the free cores (1 to {self.max_threads}, started on 1; "
            f"{self.changes} change{'s' if self.changes != 1 else ''})"
        )

    def restore(self) -> None:
        """Put back the thread count found at construction."""
        self._set(self.initial)


class AdaptiveThreads(Callback):
    """Lightning callback that follows the free CPU cores with the intra-op thread count.

    :meth:`CPUThreads.update` runs before every training, validation, test and predict batch, and the thread count
    found at the start is put back when the stage ends. For CPU runs; on an accelerator it changes
    nothing that matters (only the host's threads).

    Args:
        threads: the :class:`CPUThreads` to drive (shared between several trainers, as the demo does), or None to
            make one at setup.
    """

    def __init__(self, threads: CPUThreads | None = None) -> None:
        self.threads = threads
        self._own = threads is None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Make the controller if none was given."""
        if self.threads is None:
            self.threads = CPUThreads()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Put back the thread count of a controller made here."""
        if self._own and self.threads is not None:
            self.threads.restore()
            self.threads = None

    def _update(self, *_: Any) -> None:
        if self.threads is not None:
            self.threads.update()

    on_train_batch_start = _update
    on_validation_batch_start = _update
    on_test_batch_start = _update
    on_predict_batch_start = _update
