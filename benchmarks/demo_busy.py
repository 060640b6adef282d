"""Wall time of the demo alone and beside CPU-bound neighbour processes (issue 10, item 4).

Runs a command (default ``baldro-pl demo --output-dir {out}``) in a subprocess, each time in a fresh output
directory under a temporary folder, first alone and then beside N processes that spin on the CPU
(``python -c "while True: pass"``), and prints a Markdown table: wall time, the child's CPU time (user + system), the
demo's own "done in" figure and the slowdown against the run alone.

    python benchmarks/demo_busy.py                         # alone, then beside 1 busy process
    python benchmarks/demo_busy.py --neighbours 0 1 4 --repeats 2
    # the same for an older checkout (its own virtualenv), to compare before and after:
    python benchmarks/demo_busy.py --cwd ../old --command "../old/.venv/bin/baldro-pl demo --output-dir {out}"

The thread variables ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` are removed from the child's environment (a new user
has none), unless ``--keep-thread-env``; ``--env KEY=VALUE`` sets others. ``{out}`` in the command is the run's output
directory; without it, ``--output-dir {out}`` is appended. Each run's output is kept in ``<work>/<label>.log``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
NEIGHBOUR = [sys.executable, "-c", "while True: pass"]


@dataclass
class Run:
    """One timed run of the command."""

    neighbours: int
    repeat: int
    wall_s: float
    cpu_s: float
    reported_s: float | None
    returncode: int | None  # None: timed out
    log: Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(
    command: str, neighbours: int, repeat: int, work: Path, env: dict[str, str], cwd: Path | None, timeout_s: float
) -> Run:
    """Run ``command`` once beside ``neighbours`` spinning processes; the neighbours are stopped afterwards."""
    label = f"n{neighbours}_r{repeat}"
    out = work / label
    text = command.replace("{out}", shlex.quote(str(out))) if "{out}" in command else f"{command} --output-dir {out}"
    log = work / f"{label}.log"
    spinners = [subprocess.Popen(NEIGHBOUR) for _ in range(neighbours)]
    try:
        time.sleep(0.5 if neighbours else 0.0)  # the neighbours are running before the command starts
        cpu0, t0 = _children_cpu_s(), time.perf_counter()
        with log.open("w") as f:
            child = subprocess.Popen(shlex.split(text), stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
            try:
                returncode: int | None = child.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                returncode = None
        # measured before the neighbours are reaped, so their CPU time is not counted
        wall, cpu = time.perf_counter() - t0, _children_cpu_s() - cpu0
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()
    found = re.findall(r"done in (\d+(?:\.\d+)?) s", log.read_text(errors="replace"))
    reported = float(found[-1]) if found else None
    shutil.rmtree(out, ignore_errors=True)
    return Run(neighbours, repeat, wall, cpu, reported, returncode, log)


def table(runs: list[Run], cpus: int) -> str:
    """The Markdown table of the runs, with the slowdown against the first run alone."""
    alone = [r.wall_s for r in runs if r.neighbours == 0 and r.returncode == 0]
    base = min(alone) if alone else None
    lines = [
        "| busy neighbours | run | wall s | CPU s (user+sys) | demo's 'done in' s | vs alone | exit |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        ratio = f"{r.wall_s / base:.2f}×" if base else "-"
        reported = "-" if r.reported_s is None else f"{r.reported_s:.0f}"
        status = "timed out" if r.returncode is None else str(r.returncode)
        lines.append(
            f"| {r.neighbours} | {r.repeat} | {r.wall_s:.1f} | {r.cpu_s:.1f} | {reported} | {ratio} | {status} |"
        )
    return "\n".join(lines) + f"\n\n({cpus} CPUs usable; 'vs alone': wall time over the fastest run alone)"


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the command alone and beside busy neighbours, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--command", default="baldro-pl demo --output-dir {out}", help="the command to time (default: %(default)s)"
    )
    parser.add_argument("--cwd", type=Path, default=None, help="run the command in this directory")
    parser.add_argument(
        "--neighbours", type=int, nargs="+", default=[0, 1], help="numbers of busy processes (default: 0 1)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per number of neighbours (default: 1)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a run is killed (default 3600)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set in the child's env")
    parser.add_argument("--keep-thread-env", action="store_true", help="keep OMP_NUM_THREADS / MKL_NUM_THREADS")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the runs and logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(n < 0 for n in args.neighbours):
        parser.error("--repeats must be >= 1 and --neighbours >= 0")

    env = dict(os.environ)
    if not args.keep_thread_env:
        for name in THREAD_ENV:
            env.pop(name, None)
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env takes KEY=VALUE, got {item!r}")
        env[key] = value
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="demo_busy_"))
    work.mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    shown_env = {k: env[k] for k in (*THREAD_ENV, "OMP_WAIT_POLICY") if k in env}
    print(f"command: {args.command}  (cwd: {args.cwd or os.getcwd()}; thread env: {shown_env or 'none'})")
    print(f"machine: {_cpu_model()}, {cpus} CPUs; {time.strftime('%Y-%m-%d %H:%M')}; logs in {work}", flush=True)
    runs = []
    for repeat in range(1, args.repeats + 1):
        for n in args.neighbours:
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            run = run_once(args.command, n, repeat, work, env, args.cwd, args.timeout)
            runs.append(run)
            print(
                f"  {n} neighbours, run {repeat}: {run.wall_s:.1f} s wall, {run.cpu_s:.1f} s CPU, exit "
                f"{run.returncode} (load average before: {load})",
                flush=True,
            )
    print()
    print(table(runs, cpus))
    return 0 if all(r.returncode == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
