"""The study runner: ``run_study(spec)`` and ``baldro-pl study SPEC.yaml [--workers N] [--dry-run]``.

Order of work (each step reuses what an earlier run left finished):

1. structural validation of the spec (:func:`~baldro_pl.study.spec.parse_spec`);
2. ``prepare`` (in process), ``${prepare.<key>}`` substituted, file checks, the unlearning config resolved
   (``--print_config``) and every cell built and hashed: all errors so far come before any process starts;
3. the target and retain models fine-tuned if their directories hold no model (``baldro-pl fit``);
4. the retain model evaluated (its ``TOFU_EVAL.json`` is the reference of every forget-quality, balance and privleak
   number) unless ``retain.log`` exists, then the target model (``baldro-pl test``, the cells' evaluation settings);
5. the cells, ``workers`` at a time (``baldro-pl fit`` each), a progress line per finished cell;
6. ``results.csv`` / ``results.json`` (also rewritten after every finished cell), ``report.md`` and the plots.

A folder (cell or reference evaluation) is finished when its ``result.json`` exists; that file is written atomically
after the child succeeded and its outputs were read. A folder without it is wiped and redone.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from baldro_pl.files import write_text_atomic
from baldro_pl.study.configs import (
    CELL_DIR,
    base_name,
    cell_config,
    check_unlearn_config,
    config_hash,
    reference_config,
    resolve_fit_config,
    with_cell_dir,
)
from baldro_pl.study.processes import Interrupted, Job, SignalGuard, child_env, cli_command
from baldro_pl.study.report import METRICS
from baldro_pl.study.spec import (
    Method,
    StudySpec,
    StudySpecError,
    check_paths,
    interpolate,
    load_spec,
    model_ready,
    parse_spec,
)

RESULT_FILE = "result.json"
#: summary keys a cell's per-epoch record keeps (plus every ``stratum/*`` key): the report's metric columns.
EPOCH_KEYS = METRICS


class StudyError(RuntimeError):
    """A step of the study failed after validation (a fine-tune or reference evaluation; the log is named)."""


@dataclass
class Cell:
    """One ``baldro-pl fit`` of the grid: a method at one learning rate, number of epochs and seed."""

    index: int
    method: Method
    base: str
    learning_rate: float
    epochs: int
    seed: int
    hash: str
    config: dict[str, Any]
    dir: Path

    @property
    def params(self) -> dict[str, Any]:
        """The cell's grid coordinates (the first columns of ``results.csv``)."""
        return {
            "cell": self.hash,
            "method": self.method.name,
            "base": self.base,
            "learning_rate": self.learning_rate,
            "epochs": self.epochs,
            "seed": self.seed,
        }

    def label(self) -> str:
        """``method  lr=..  ep=..  seed=..`` for progress lines."""
        return f"{self.method.name}  lr={self.learning_rate:.2e}  ep={self.epochs}  seed={self.seed}"


@dataclass
class Runtime:
    """How children run: their environment, where their output is echoed, the runner's signal guard."""

    env: dict[str, str]
    echo: IO[str] | None
    guard: SignalGuard


@dataclass
class Plan:
    """Everything a study will run, resolved and hashed (what ``--dry-run`` prints)."""

    spec: StudySpec
    output_dir: Path
    base_config: dict[str, Any]
    target_path: str
    retain_path: str | None
    retain_log: str
    retain_eval: tuple[str, dict[str, Any]] | None  # (folder hash, config) when the retain log must be made
    target_eval: tuple[str, dict[str, Any]]
    cells: list[Cell]
    prepared: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- small helpers
def write_json(path: Path, obj: Any) -> Path:
    """JSON (non-finite floats as null) written atomically."""
    return write_text_atomic(path, json.dumps(_finite(obj), indent=2) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_yaml(path: Path, config: Mapping[str, Any]) -> Path:
    """A config file for ``baldro-pl ... --config`` (written atomically)."""
    import yaml

    return write_text_atomic(path, yaml.safe_dump(dict(config), sort_keys=False))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _say(text: str, stream: IO[str] | None = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)


def _fresh(folder: Path) -> None:
    """Wipe a half-finished folder (no result.json) before redoing it."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def truth_ratios(logs: Mapping[str, Any]) -> list[float]:
    """Per-sample forget truth ratios (``forget_truth_ratio.value_by_index.*.score``) of a log, in row order."""
    entry = logs.get("forget_truth_ratio") or {}
    by_index = entry.get("value_by_index") or {}
    pairs = sorted(
        (int(k), v.get("score")) for k, v in by_index.items() if isinstance(v, Mapping) and v.get("score") is not None
    )
    return [float(v) for _, v in pairs]


def _epoch_records(eval_dir: Path) -> list[dict[str, Any]]:
    """``[{"epoch": epochs trained, **headline summary}]`` from ``eval/epoch_<n>/TOFU_SUMMARY.json``."""
    records = []
    for folder in eval_dir.glob("epoch_*"):
        summary_path = folder / "TOFU_SUMMARY.json"
        suffix = folder.name.split("_", 1)[1]
        if not suffix.isdigit() or not summary_path.is_file():
            continue
        summary = _read_json(summary_path)
        keep = {k: v for k, v in summary.items() if k in EPOCH_KEYS or k.startswith("stratum/")}
        records.append({"epoch": int(suffix) + 1, **keep})
    return sorted(records, key=lambda r: r["epoch"])


# --------------------------------------------------------------------------------------------------- planning
def _prepare(spec: StudySpec, output_dir: Path) -> dict[str, Any]:
    """Call ``prepare.function(**prepare.args)`` once; its returned mapping becomes ``${prepare.<key>}``."""
    if spec.prepare is None:
        return {}
    function_path, args = spec.prepare
    module_name, _, name = function_path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise StudySpecError(f"prepare.function: cannot import {function_path!r} ({err})") from err
    if not callable(function):
        raise StudySpecError(f"prepare.function: {function_path!r} is not callable")
    args = interpolate(args, {"output_dir": str(output_dir)}, "prepare.args")
    result = function(**args)
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        raise StudySpecError(f"prepare.function: {function_path!r} returned {type(result).__name__}, not a mapping")
    return dict(result)


def _method_grid(spec: StudySpec, method: Method, base_config: Mapping[str, Any]) -> tuple[tuple, tuple]:
    model_args, trainer = base_config["model"]["init_args"], base_config["trainer"]
    lrs = method.learning_rates or spec.learning_rates or (float(model_args["learning_rate"]),)
    epochs = method.epochs or spec.epochs
    if epochs is None:
        if not trainer.get("max_epochs") or trainer["max_epochs"] < 1:
            raise StudySpecError("grid.epochs: missing and the unlearning config sets no trainer.max_epochs")
        epochs = (int(trainer["max_epochs"]),)
    return lrs, epochs


def plan_study(spec_source: str | Path | Mapping[str, Any], workers: int | None = None) -> Plan:
    """Validate the spec, run ``prepare``, resolve and hash every config; starts no process.

    Raises:
        StudySpecError: naming the field.
    """
    raw = load_spec(spec_source)
    spec = parse_spec(raw)  # structure first: bad specs fail before prepare
    output_dir = Path(str(interpolate(str(spec.output_dir), {}, "output_dir"))).absolute()
    prepared = _prepare(spec, output_dir)
    variables = {"output_dir": str(output_dir), **{f"prepare.{k}": v for k, v in prepared.items()}}
    resolved = interpolate({k: v for k, v in raw.items() if k != "output_dir"}, variables)
    spec = parse_spec({**resolved, "output_dir": str(output_dir)})
    if workers is not None:
        if workers < 1:
            raise StudySpecError(f"workers: expected an integer >= 1, got {workers}")
        spec = _replace(spec, workers=workers)
    check_paths(spec)
    spec = _materialize(spec, output_dir / "configs")
    base_config = resolve_fit_config(spec.unlearn_configs, spec.unlearn_args)
    check_unlearn_config(base_config)

    target_path = spec.target.path or str(output_dir / "models" / "target")
    retain_path = spec.retain.path or (str(output_dir / "models" / "retain") if spec.retain.finetune else None)
    retain_eval = None
    if spec.retain.log is not None and Path(spec.retain.log).is_file():
        retain_log = spec.retain.log
    else:
        assert retain_path is not None  # check_paths: no log -> a model
        config = reference_config(base_config, model=retain_path, retain_log=None, evaluation=spec.evaluation)
        digest = config_hash(config)
        retain_eval = (digest, config)
        made = output_dir / "reference" / f"retain-{digest}" / "eval" / "test" / "TOFU_EVAL.json"
        retain_log = spec.retain.log or str(made)
    target_config = reference_config(base_config, model=target_path, retain_log=retain_log, evaluation=spec.evaluation)
    target_eval = (config_hash(target_config), target_config)

    cells: list[Cell] = []
    seen: dict[str, str] = {}
    for method in spec.methods:
        lrs, epochs_list = _method_grid(spec, method, base_config)
        for lr in lrs:
            for epochs in epochs_list:
                for seed in spec.seeds:
                    config = cell_config(
                        base_config,
                        method,
                        learning_rate=lr,
                        epochs=epochs,
                        seed=seed,
                        target=target_path,
                        retain_log=retain_log,
                        evaluation=spec.evaluation,
                        export_model=spec.export_models,
                    )
                    digest = config_hash(config)
                    if digest in seen:
                        raise StudySpecError(
                            f"grid.methods: {method.name!r} and {seen[digest]!r} give the same cell config "
                            f"(lr={lr}, epochs={epochs}, seed={seed}); remove one"
                        )
                    seen[digest] = method.name
                    cells.append(
                        Cell(
                            index=len(cells) + 1,
                            method=method,
                            base=base_name(base_config, method),
                            learning_rate=lr,
                            epochs=epochs,
                            seed=seed,
                            hash=digest,
                            config=config,
                            dir=output_dir / "cells" / digest,
                        )
                    )
    return Plan(
        spec=spec,
        output_dir=output_dir,
        base_config=base_config,
        target_path=target_path,
        retain_path=retain_path,
        retain_log=retain_log,
        retain_eval=retain_eval,
        target_eval=target_eval,
        cells=cells,
        prepared=prepared,
    )


def _materialize(spec: StudySpec, folder: Path) -> StudySpec:
    """The spec with its inline configs (mappings in ``unlearn.configs`` / ``*.finetune``) written to YAML files."""

    def files(configs: tuple, name: str) -> tuple[str, ...]:
        return tuple(
            c if isinstance(c, str) else str(write_yaml(folder / f"{name}-{i}.yaml", c)) for i, c in enumerate(configs)
        )

    return _replace(
        spec,
        unlearn_configs=files(spec.unlearn_configs, "unlearn"),
        target=_replace(spec.target, finetune=files(spec.target.finetune, "finetune-target")),
        retain=_replace(spec.retain, finetune=files(spec.retain.finetune, "finetune-retain")),
    )


def _replace(spec: Any, **changes: Any) -> Any:
    """A copy of a frozen dataclass with ``changes``."""
    from dataclasses import replace

    return replace(spec, **changes)


# --------------------------------------------------------------------------------------------------- reference models
def _run_child(args: list[str], log: Path, run: Runtime, what: str) -> Job:
    with run.guard.deferred():
        job = Job(cli_command(*args), log, run.env, run.echo)
    try:
        code = job.wait()
    except BaseException:
        _say(f"{what}: stopped")
        job.stop()
        raise
    if code != 0:
        raise StudyError(f"{what} failed (exit code {code}); see {log}")
    return job


def _finetune(plan: Plan, role: str, path: str, run: Runtime) -> None:
    source = plan.spec.target if role == "target" else plan.spec.retain
    if model_ready(path):
        _say(f"{role} model: {path} (exists, reused)")
        return
    log = plan.output_dir / "models" / f"{role}.fit.log"
    _say(f"{role} model: fine-tuning into {path} (log: {log})")
    args = ["fit", *(a for c in source.finetune for a in ("--config", c)), *source.args]
    args += ["--model.init_args.output_dir", path]
    job = _run_child(args, log, run, f"{role}.finetune")
    if not model_ready(path):
        raise StudyError(
            f"{role}.finetune: the fit ended but wrote no model in {path} (is the model a FinetuneModule, whose "
            f"output_dir the runner sets?); see {log}"
        )
    _say(f"{role} model: fine-tuned in {job.wall_s:.0f} s")


def _evaluate_reference(plan: Plan, role: str, digest: str, config: dict[str, Any], run: Runtime) -> dict[str, Any]:
    """Evaluate a reference model with ``baldro-pl test`` in ``reference/<role>-<hash>/`` (reused when finished)."""
    folder = plan.output_dir / "reference" / f"{role}-{digest}"
    if (folder / RESULT_FILE).is_file():
        return _read_json(folder / RESULT_FILE)
    _fresh(folder)
    config = with_cell_dir(config, str(folder))
    config_path = write_yaml(folder / "config.yaml", config)
    _say(f"{role} model: evaluating (log: {folder / 'test.log'})")
    job = _run_child(["test", "--config", str(config_path)], folder / "test.log", run, f"{role} evaluation")
    eval_dir = folder / "eval" / "test"
    try:
        summary = _read_json(eval_dir / "TOFU_SUMMARY.json")
    except FileNotFoundError as err:
        raise StudyError(f"{role} evaluation wrote no TOFU_SUMMARY.json in {eval_dir}; see {job.log_path}") from err
    result = {
        "role": role,
        "model": config["model"]["init_args"]["model"],
        "log": str(eval_dir / "TOFU_EVAL.json"),
        "summary": summary,
        "wall_s": job.wall_s,
        "peak_rss_mb": job.peak_rss_mb,
    }
    write_json(folder / RESULT_FILE, result)
    _say(f"{role} model: evaluated in {job.wall_s:.0f} s")
    return result


def _references(plan: Plan, run: Runtime) -> dict[str, dict[str, Any]]:
    """Fine-tune what is missing, make the retain log, evaluate the target; the report's two reference rows."""
    from baldro_pl.metrics.logs import load_eval_log
    from baldro_pl.metrics.summarize import recompute_aggregates

    spec = plan.spec
    if spec.target.finetune:
        _finetune(plan, "target", plan.target_path, run)
    retain: dict[str, Any] = {"summary": {}}
    if plan.retain_eval is not None:
        assert plan.retain_path is not None
        if spec.retain.finetune:
            _finetune(plan, "retain", plan.retain_path, run)
        retain = _evaluate_reference(plan, "retain", *plan.retain_eval, run)
        if Path(retain["log"]) != Path(plan.retain_log):  # retain.log named but missing: put the log there
            write_text_atomic(Path(plan.retain_log), Path(retain["log"]).read_text())
    else:
        _say(f"retain log: {plan.retain_log} (exists, reused)")
    logs = load_eval_log(plan.retain_log)
    # The retain row: the retain model against its own log (forget quality 1, balance about 0.05 / 0.90 / 0.05).
    recomputed = recompute_aggregates(logs, logs)
    retain_summary = {**retain.get("summary", {}), **{k: v for k, v in recomputed.items() if v is not None}}
    retain_row = {"summary": retain_summary, "truth_ratios": truth_ratios(logs), "log": plan.retain_log}
    target = _evaluate_reference(plan, "target", *plan.target_eval, run)
    target_row = {**target, "truth_ratios": truth_ratios(load_eval_log(target["log"]))}
    return {"retain": retain_row, "target": target_row}


# --------------------------------------------------------------------------------------------------- cells
def _start_cell(cell: Cell, run: Runtime) -> Job:
    _fresh(cell.dir)
    config = with_cell_dir(cell.config, str(cell.dir))
    config_path = write_yaml(cell.dir / "config.yaml", config)
    return Job(cli_command("fit", "--config", str(config_path)), cell.dir / "fit.log", run.env, run.echo)


def _collect_cell(cell: Cell, job: Job, keep_checkpoints: bool) -> dict[str, Any]:
    """Read a finished cell's outputs into its result (raises StudyError when something is missing)."""
    from baldro_pl.metrics.logs import load_eval_log

    report_path = cell.dir / "cell_report.json"
    if not report_path.is_file():
        raise StudyError(f"no cell_report.json (did the fit run its callbacks?); see {job.log_path}")
    report = _read_json(report_path)
    final = report.get("final_evaluation")
    if not final or not (Path(final) / "TOFU_SUMMARY.json").is_file():
        raise StudyError(f"the final model was not evaluated ({final}); see {job.log_path}")
    summary = _read_json(Path(final) / "TOFU_SUMMARY.json")
    logs = load_eval_log(Path(final) / "TOFU_EVAL.json")
    if not keep_checkpoints:
        shutil.rmtree(cell.dir / "checkpoints", ignore_errors=True)
    hf_model = cell.dir / "hf_model"
    return {
        **cell.params,
        "summary": summary,
        "epochs_evaluated": _epoch_records(cell.dir / "eval"),
        "truth_ratios": truth_ratios(logs),
        "final_evaluation": final,
        "hf_model": str(hf_model) if model_ready(hf_model) else None,
        "wall_s": job.wall_s,
        "train_s": report.get("train_s"),
        "peak_rss_mb": job.peak_rss_mb,
        "peak_gpu_allocated_mb": report.get("peak_gpu_allocated_mb"),
        "global_step": report.get("global_step"),
    }


def _progress(cell: Cell, total: int, result: dict[str, Any], note: str = "") -> str:
    summary = result["summary"]
    return (
        f"cell {cell.index}/{total}  {cell.label()}  FQ={_fmt(summary.get('forget_quality'))}  "
        f"MU={_fmt(summary.get('model_utility'))}  time={_fmt(result.get('wall_s'), 0)}s{note}"
    )


def _run_cells(plan: Plan, run: Runtime, on_result: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Run the unfinished cells, ``workers`` at a time; returns the results by hash and the failure messages."""
    total = len(plan.cells)
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for cell in plan.cells:
        if (cell.dir / RESULT_FILE).is_file():
            results[cell.hash] = _read_json(cell.dir / RESULT_FILE)
            _say(_progress(cell, total, results[cell.hash], "  (finished earlier, skipped)"))
        else:
            pending.append(cell)
    if results:
        on_result(results)
    failures: list[str] = []
    running: dict[int, tuple[Cell, Job]] = {}
    try:
        while pending or running:
            while pending and len(running) < plan.spec.workers:
                with run.guard.deferred():  # a signal now waits until the child is registered
                    cell = pending.pop(0)
                    job = _start_cell(cell, run)
                    running[job.pid] = (cell, job)
                if run.echo is None:
                    _say(f"cell {cell.index}/{total}  started  {cell.label()}  (log: {job.log_path})")
            for pid, (cell, job) in list(running.items()):
                code = job.poll()
                if code is None:
                    continue
                del running[pid]
                try:
                    if code != 0:
                        raise StudyError(f"exit code {code}; see {job.log_path}")
                    result = _collect_cell(cell, job, plan.spec.keep_checkpoints)
                except StudyError as err:
                    failures.append(f"cell {cell.index}/{total} ({cell.label()}): {err}")
                    _say(f"cell {cell.index}/{total}  {cell.label()}  FAILED: {err}")
                    continue
                write_json(cell.dir / RESULT_FILE, result)  # the cell is finished from here on
                results[cell.hash] = result
                _say(_progress(cell, total, result))
                on_result(results)
            time.sleep(0.2)
    except BaseException:
        for cell, job in running.values():
            _say(f"cell {cell.index}/{total}  {cell.label()}  stopped (will be redone)")
            job.stop()
        raise
    return results, failures


# --------------------------------------------------------------------------------------------------- the study
def _print_plan(plan: Plan) -> None:
    spec = plan.spec
    _say(f"study: {spec.title or plan.output_dir.name}  ->  {plan.output_dir}")
    state = "exists" if model_ready(plan.target_path) else "fine-tune" if spec.target.finetune else "MISSING"
    _say(f"target model: {plan.target_path} ({state})")
    if plan.retain_eval is None:
        _say(f"retain log: {plan.retain_log} (exists)")
    else:
        state = "exists" if model_ready(plan.retain_path) else "fine-tune"
        _say(f"retain model: {plan.retain_path} ({state}); its evaluation makes {plan.retain_log}")
    total = len(plan.cells)
    done = sum((c.dir / RESULT_FILE).is_file() for c in plan.cells)
    _say(f"cells: {total} ({done} finished), {spec.workers} at a time")
    for cell in plan.cells:
        status = "finished" if (cell.dir / RESULT_FILE).is_file() else "to run"
        _say(f"  cell {cell.index}/{total}  {cell.hash}  [{cell.base}] {cell.label()}  {status}")


def run_study(
    spec: str | Path | Mapping[str, Any],
    *,
    workers: int | None = None,
    dry_run: bool = False,
    fit_output: str = "auto",
) -> dict[str, Any]:
    """Run (or resume) a study; returns ``{"output_dir", "rows", "reference", "failures", "files"}``.

    Args:
        spec: a spec file or mapping (the schema is in :mod:`baldro_pl.study`).
        workers: cells run at once (default: the spec's ``workers``, else 1).
        dry_run: validate, prepare and print the plan (the cells and whether they are finished); run nothing.
        fit_output: ``"show"``: the children's output (Lightning's progress bar) on stdout as well as in their logs;
            ``"log"``: only in the logs; ``"auto"``: show when one cell runs at a time and stdout is a terminal.

    Raises:
        StudySpecError: the spec is invalid (before any process started).
        StudyError: a fine-tune or reference evaluation failed (cell failures are reported in ``failures``).
        baldro_pl.study.processes.Interrupted: SIGTERM / SIGINT; running children were stopped, finished cells kept.
    """
    from baldro_pl.study.report import write_outputs, write_results

    if fit_output not in ("auto", "show", "log"):
        raise ValueError(f"fit_output must be 'auto', 'show' or 'log', got {fit_output!r}")
    plan = plan_study(spec, workers)
    if dry_run:
        _print_plan(plan)
        return {"output_dir": plan.output_dir, "rows": [], "reference": {}, "failures": [], "files": {}}
    spec_obj = plan.spec
    show = fit_output == "show" or (fit_output == "auto" and spec_obj.workers == 1 and sys.stdout.isatty())
    echo = sys.stdout if show else None
    start = time.monotonic()
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(plan.output_dir / "spec.json", {"spec": spec_obj.raw, "prepared": plan.prepared})
    _print_plan(plan)
    with SignalGuard() as guard:
        run = Runtime(env=child_env(spec_obj.workers), echo=echo, guard=guard)
        reference = _references(plan, run)

        def on_result(results: dict[str, dict[str, Any]]) -> None:
            write_results(plan, results, reference)

        results, failures = _run_cells(plan, run, on_result)
    files = write_outputs(plan, results, reference)
    elapsed = time.monotonic() - start
    done = sum(c.hash in results for c in plan.cells)
    _say(f"study: {done}/{len(plan.cells)} cells finished in {elapsed:.0f} s; report: {files['report']}")
    for failure in failures:
        _say(f"FAILED {failure}")
    rows = [results[c.hash] for c in plan.cells if c.hash in results]
    return {
        "output_dir": plan.output_dir,
        "rows": rows,
        "reference": reference,
        "failures": failures,
        "files": files,
    }


def main(argv: list[str] | None = None) -> int:
    """``baldro-pl study SPEC.yaml [--workers N] [--dry-run] [--fit-output auto|show|log]``; the exit code."""
    parser = argparse.ArgumentParser(
        prog="baldro-pl study",
        description="Run a sweep of unlearning fits and evaluations from a YAML spec (docs/study.md), resumably; "
        "write results.csv/json, report.md and plots.",
    )
    parser.add_argument("spec", help="the study spec (YAML)")
    parser.add_argument("--workers", type=int, default=None, help="cells run at once (default: the spec's, else 1)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    parser.add_argument(
        "--fit-output",
        choices=("auto", "show", "log"),
        default="auto",
        help="show the fits' own output (progress bars) on screen, or only in cells/<hash>/fit.log "
        "(auto: show when one cell runs at a time on a terminal)",
    )
    args = parser.parse_args(argv)
    try:
        out = run_study(args.spec, workers=args.workers, dry_run=args.dry_run, fit_output=args.fit_output)
    except StudySpecError as err:
        print(f"baldro-pl study: invalid spec: {err}", file=sys.stderr)
        return 2
    except StudyError as err:
        print(f"baldro-pl study: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"baldro-pl study: {err}; finished cells are kept, rerun to resume", file=sys.stderr)
        return 128 + err.signum
    return 1 if out["failures"] else 0


__all__ = ["CELL_DIR", "Cell", "Plan", "StudyError", "main", "plan_study", "run_study"]
