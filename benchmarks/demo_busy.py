"""Wall time of the demo alone and beside CPU-bound neighbour processes (issue 10, item 4), and where a fit's time goes.

Runs a command (default ``baldro-pl demo --output-dir {out}``) in a subprocess, each time in a fresh output
directory under a temporary folder, first alone and then beside N processes that spin on the CPU
(``python -c "while True: pass"``), and prints a Markdown table: wall time, the child's CPU time (user + system), the
demo's own "done in" figure and the slowdown against the run alone.

    python benchmarks/demo_busy.py                         # alone, then beside 1 busy process
    python benchmarks/demo_busy.py --neighbours 0 1 4 --repeats 2
    # the same for an older checkout (its own virtualenv), to compare before and after:
    python benchmarks/demo_busy.py --cwd ../old --command "../old/.venv/bin/baldro-pl demo --output-dir {out}"

Several ``--command LABEL=COMMAND`` are run in turn within each repeat (A, B, A, B for ``--repeats 2``), so that the
machine's drift hits each alike. ``--profile`` adds Lightning's ``--trainer.profiler simple`` to ``baldro-pl fit``
commands and prints a second table from its report (issue 13, item 5): the time of the training batches (forward,
backward and optimiser step: Lightning's ``run_training_batch``), of the evaluation callback, of Lightning's
validation loop, of checkpoint writes and of data loading, as seconds and as shares of the fit (the profiler's total:
from the trainer's start to the end of ``fit``) and of the process's wall time (imports and model loading included).
The configs/demo.yaml fit, before and after issue 13's change of its checkpoint and validation settings
(``outputs/demo`` made by ``baldro-pl demo`` in DIR first; the old file from git; docs/presets.md has the table):

    git show 8cb1e78:configs/demo.yaml > /tmp/demo_before.yaml
    OMP_NUM_THREADS=1 python benchmarks/demo_busy.py --cwd DIR --neighbours 0 --repeats 2 --profile --keep-thread-env \
        --command "before=baldro-pl fit -c /tmp/demo_before.yaml --trainer.logger.init_args.save_dir {out}" \
        --command "after=baldro-pl fit -c $PWD/configs/demo.yaml --trainer.logger.init_args.save_dir {out}"

The thread variables ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` are removed from the child's environment (a new user
has none), unless ``--keep-thread-env``; ``--env KEY=VALUE`` sets others. ``{out}`` in the command is the run's output
directory; without it, ``--output-dir {out}`` is appended to a ``demo`` command (other commands get nothing). Relative
paths in a command are read from ``--cwd``. Each run's output is kept in ``<work>/<label>.log``.
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
PROFILER_FLAG = "--trainer.profiler simple"
#: The parts of a fit in Lightning's SimpleProfiler report: (column, how an action name is matched). An action counts
#: once, in the first part it matches; the fit's other time is what none of them holds.
PARTS = (
    ("fwd+bwd+opt", lambda a: a == "run_training_batch"),  # training_step, backward, optimiser step (one closure)
    ("evaluation", lambda a: a.startswith("[Callback]Evaluation.on_train_")),  # the Evaluation callback in fit
    ("validation", lambda a: a.endswith(".validation_step") or a == "[_EvaluationLoop].val_next"),
    ("checkpoints", lambda a: a == "save_checkpoint"),  # every trainer.save_checkpoint (ModelCheckpoint's writes)
    ("data", lambda a: a == "[_TrainingEpochLoop].train_dataloader_next"),
)


@dataclass
class Run:
    """One timed run of a command."""

    neighbours: int
    repeat: int
    wall_s: float
    cpu_s: float
    reported_s: float | None
    returncode: int | None  # None: timed out
    log: Path
    label: str = ""
    profile: dict[str, float] | None = None  # {"fit": total, part: seconds} from the profiler report


def parse_profile(text: str) -> dict[str, float] | None:
    """The fit's total and the seconds of each of :data:`PARTS` from a SimpleProfiler report (None: no report).

    Rows look like ``|  action  |  mean s  |  calls  |  total s  |  percent  |``; the ``Total`` row's total is the
    profiler's whole duration.
    """
    start = text.rfind("FIT Profiler Report")
    if start < 0:
        return None
    totals: dict[str, float] = {}
    for line in text[start:].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5:
            continue
        try:
            totals[cells[0]] = float(cells[3])
        except ValueError:
            continue
    if "Total" not in totals:
        return None
    found = {"fit": totals.pop("Total")}
    for name, _ in PARTS:
        found[name] = 0.0
    for action, seconds in totals.items():
        for name, matches in PARTS:
            if matches(action):
                found[name] += seconds
                break
    return found


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


def command_line(command: str, out: Path) -> str:
    """``command`` with ``{out}`` replaced; without it, ``--output-dir OUT`` appended to a ``demo`` command."""
    if "{out}" in command:
        return command.replace("{out}", shlex.quote(str(out)))
    return f"{command} --output-dir {shlex.quote(str(out))}" if "demo" in shlex.split(command) else command


def run_once(
    command: str,
    neighbours: int,
    repeat: int,
    work: Path,
    env: dict[str, str],
    cwd: Path | None,
    timeout_s: float,
    name: str = "",
) -> Run:
    """Run ``command`` once beside ``neighbours`` spinning processes; the neighbours are stopped afterwards."""
    label = f"{name + '_' if name else ''}n{neighbours}_r{repeat}"
    out = work / label
    text = command_line(command, out)
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
    output = log.read_text(errors="replace")
    found = re.findall(r"done in (\d+(?:\.\d+)?) s; everything is under", output)  # `baldro-pl demo`'s last line
    reported = float(found[-1]) if found else None
    shutil.rmtree(out, ignore_errors=True)
    return Run(neighbours, repeat, wall, cpu, reported, returncode, log, name, parse_profile(output))


def table(runs: list[Run], cpus: int) -> str:
    """The Markdown table of the runs, with the slowdown against the fastest run alone of the same command."""
    lines = [
        "| command | busy neighbours | run | wall s | CPU s (user+sys) | demo's 'done in' s | vs alone | exit |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        alone = [x.wall_s for x in runs if x.label == r.label and x.neighbours == 0 and x.returncode == 0]
        ratio = f"{r.wall_s / min(alone):.2f}×" if alone else "-"
        reported = "-" if r.reported_s is None else f"{r.reported_s:.0f}"
        status = "timed out" if r.returncode is None else str(r.returncode)
        lines.append(
            f"| {r.label or '-'} | {r.neighbours} | {r.repeat} | {r.wall_s:.1f} | {r.cpu_s:.1f} | {reported} | "
            f"{ratio} | {status} |"
        )
    return "\n".join(lines) + f"\n\n({cpus} CPUs usable; 'vs alone': wall time over the fastest run alone)"


def profile_table(runs: list[Run]) -> str:
    """Where each profiled fit's time went: seconds, and the training batches' share of the fit and of the wall time."""
    names = [name for name, _ in PARTS]
    lines = [
        "| command | run | wall s | fit s | "
        + " | ".join(f"{n} s" for n in names)
        + " | other s | fwd+bwd+opt / fit | fwd+bwd+opt / wall |",
        "|---|---:|" + "---:|" * (len(names) + 5),
    ]
    for r in runs:
        if r.profile is None:
            lines.append(f"| {r.label or '-'} | {r.repeat} | {r.wall_s:.1f} | no profiler report |")
            continue
        fit, train = r.profile["fit"], r.profile["fwd+bwd+opt"]
        other = fit - sum(r.profile[n] for n in names)
        cells = " | ".join(f"{r.profile[n]:.2f}" for n in names)
        lines.append(
            f"| {r.label or '-'} | {r.repeat} | {r.wall_s:.1f} | {fit:.2f} | {cells} | {other:.2f} | "
            f"{train / fit:.0%} | {train / r.wall_s:.0%} |"
        )
    return "\n".join(lines) + (
        "\n\n(fit: Lightning's SimpleProfiler total, from the trainer's start to the end of fit; wall: the whole "
        "process, imports and model loading included; fwd+bwd+opt: run_training_batch)"
    )


def _commands(given: list[str], profile: bool, parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """``(label, command)`` pairs from ``--command [LABEL=]COMMAND``; ``--profile`` adds the profiler flag."""
    commands = []
    for i, item in enumerate(given or ["baldro-pl demo --output-dir {out}"]):
        label, sep, command = item.partition("=")
        if not sep or " " in label or not label:
            label, command = (f"c{i + 1}" if len(given) > 1 else ""), item
        if profile:
            if "fit" not in shlex.split(command):
                parser.error(f"--profile needs `baldro-pl fit` commands (the profiler is a Trainer setting): {item!r}")
            command = f"{command} {PROFILER_FLAG}"
        commands.append((label, command))
    if len({label for label, _ in commands}) != len(commands):
        parser.error("--command labels must differ")
    return commands


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the commands alone and beside busy neighbours, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--command",
        action="append",
        default=[],
        metavar="[LABEL=]COMMAND",
        help="a command to time, repeatable: run in turn (default: baldro-pl demo --output-dir {out})",
    )
    parser.add_argument("--cwd", type=Path, default=None, help="run the commands in this directory")
    parser.add_argument(
        "--neighbours", type=int, nargs="+", default=[0, 1], help="numbers of busy processes (default: 0 1)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per command and number of neighbours (default 1)")
    parser.add_argument("--profile", action="store_true", help="profile `baldro-pl fit` commands (SimpleProfiler)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a run is killed (default 3600)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set in the child's env")
    parser.add_argument("--keep-thread-env", action="store_true", help="keep OMP_NUM_THREADS / MKL_NUM_THREADS")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the runs and logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(n < 0 for n in args.neighbours):
        parser.error("--repeats must be >= 1 and --neighbours >= 0")
    commands = _commands(args.command, args.profile, parser)

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
    for label, command in commands:
        print(f"command{' ' + label if label else ''}: {command}")
    print(f"(cwd: {args.cwd or os.getcwd()}; thread env: {shown_env or 'none'})")
    print(f"machine: {_cpu_model()}, {cpus} CPUs; {time.strftime('%Y-%m-%d %H:%M')}; logs in {work}", flush=True)
    runs = []
    for repeat in range(1, args.repeats + 1):
        for n in args.neighbours:
            for label, command in commands:
                load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                run = run_once(command, n, repeat, work, env, args.cwd, args.timeout, label)
                runs.append(run)
                print(
                    f"  {label + ': ' if label else ''}{n} neighbours, run {repeat}: {run.wall_s:.1f} s wall, "
                    f"{run.cpu_s:.1f} s CPU, exit {run.returncode} (load average before: {load})",
                    flush=True,
                )
    print()
    print(table(runs, cpus))
    if args.profile:
        print()
        print(profile_table(runs))
    return 0 if all(r.returncode == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
