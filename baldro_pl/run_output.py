"""What a person watching a run sees: progress lines a log file keeps, less library noise, and the results at the end.

* :class:`PlainProgressBar`: with the output going to a file or a pipe, Lightning's bar writes nothing readable until
  the end; this one prints one plain line every ``interval_s`` seconds and at every epoch end (epoch, optimiser
  step / total, the progress-bar metrics such as the loss, steps/s, elapsed time and ETA).
* :class:`RunSummary`: at the end of ``fit`` / ``validate`` / ``test``, one compact table of the TOFU/MUSE evaluation's
  headline numbers (the demo's layout), also written as ``summary.csv`` and ``summary.md`` in the run's log folder.
* :func:`configure_console_output`: drops Lightning's advertising and device lines, a FutureWarning Lightning triggers
  inside torch, and transformers' weight-loading bars; shows baldro-pl's own progress messages (evaluation started /
  done, model exported).
* :func:`add_run_output_callbacks`: what ``baldro-pl fit`` / ``validate`` / ``test`` add to every trainer: the
  summary, the plain progress lines when stdout is not a terminal, and (``fit``) a learning-rate scalar per step.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.callbacks.progress import ProgressBar, RichProgressBar, TQDMProgressBar

from baldro_pl.distributed import rank_zero_log_dir
from baldro_pl.files import write_text_atomic
from baldro_pl.tables import TABLE_ROWS, format_value

log = logging.getLogger(__name__)

SUMMARY_FILES = ("summary.csv", "summary.md")


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------------------------------------------------------
# The summary table


@dataclass
class SuiteSummary:
    """The evaluations of one suite callback in one run, and what the table says about them.

    Attributes:
        suite: ``TOFU`` or ``MUSE``.
        records: every evaluation of the run (:class:`baldro_pl.metrics.callbacks.EvaluationRecord`), in order.
        rows: the table's rows, (metric, description).
        shown: the records the printed table shows (the first and the last); ``summary.csv`` has all of them.
        notes: plain-words notes printed under the table.
    """

    suite: str
    records: list[Any]
    rows: list[tuple[str, str]]
    shown: list[Any]
    notes: list[str]


def _schedule(callback: Any) -> str:
    every = getattr(callback, "every_n_epochs", None)
    start = getattr(callback, "eval_on_start", None)
    return f"every_n_epochs: {every}, eval_on_start: {str(start).lower()}"


def suite_summaries(trainer: pl.Trainer, stage: str) -> tuple[list[SuiteSummary], list[str]]:
    """The summaries of the trainer's evaluation callbacks for the run just finished.

    Also returns notes about callbacks that did not evaluate (e.g. a ``fit`` shorter than ``every_n_epochs``).
    """
    summaries: list[SuiteSummary] = []
    idle: list[str] = []
    for callback in trainer.callbacks:
        records = list(getattr(callback, "evaluations", None) or [])
        suite = getattr(callback, "suite_name", "")
        if not suite or not hasattr(callback, "evaluations"):
            continue
        if not records:
            if stage == "fit":
                idle.append(
                    f"no {suite} evaluation ran in this fit ({_schedule(callback)}, max_epochs: {trainer.max_epochs})"
                )
            continue
        reported = [m for r in records for m in r.metrics]
        rows = [(key, label) for key, label in TABLE_ROWS.get(suite, ()) if key in reported]
        if not rows:  # none of the headline metrics was asked for: the metrics that were
            rows = [(key, key) for key in dict.fromkeys(reported)]
        shown = records if len(records) <= 2 else [records[0], records[-1]]
        notes = list(dict.fromkeys(note for r in shown for note in r.notes))
        for key, label in rows:
            tags = [r.tag for r in shown if key in r.no_value]
            if tags:
                notes.append(f"{label}: no finite value in {', '.join(tags)} (NaN or inf in the model's scores)")
        if stage == "fit" and len(records) == 1:
            notes.append(
                f"the {suite} evaluation ran once in this fit ({records[0].tag}, step {records[0].step}): "
                f"TensorBoard's eval/* curves have a single point ({_schedule(callback)}; every_n_epochs: 1 and "
                "eval_on_start: true draw curves)"
            )
        if len(records) > len(shown):
            notes.append(
                f"{len(records)} {suite} evaluations in this run; the first and the last are shown, all are in "
                "summary.csv and TensorBoard"
            )
        summaries.append(SuiteSummary(suite, records, rows, shown, notes))
    return summaries, idle


def render_text(summaries: Sequence[SuiteSummary], stage: str) -> str:
    """The console table, in the demo's layout (one block per suite)."""
    blocks = []
    for s in summaries:
        width = max(len("metric"), *(len(label) for _, label in s.rows))
        title = f"{s.suite} evaluation ({stage}): " + ", ".join(f"{r.tag} at step {r.step}" for r in s.shown)
        lines = [title, f"  {'metric':{width}s}  " + "  ".join(f"{r.tag:>12s}" for r in s.shown)]
        for key, label in s.rows:
            cells = "  ".join(f"{format_value(r.summary.get(key)):>12s}" for r in s.shown)
            lines.append(f"  {label:{width}s}  {cells}")
        lines += [f"  - {note}" for note in s.notes]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_markdown(summaries: Sequence[SuiteSummary], stage: str, log_dir: str | None) -> str:
    """``summary.md``: the console table as Markdown, with its notes."""
    out = [f"# {stage} summary" + (f": {log_dir}" if log_dir else ""), ""]
    for s in summaries:
        out += [f"## {s.suite} evaluation", ""]
        out.append("| metric | " + " | ".join(f"{r.tag} (step {r.step})" for r in s.shown) + " |")
        out.append("|---|" + "---:|" * len(s.shown))
        for key, label in s.rows:
            out.append(f"| {label} | " + " | ".join(format_value(r.summary.get(key)) for r in s.shown) + " |")
        out.append("")
        out += [f"- {note}" for note in s.notes]
        if s.notes:
            out.append("")
    return "\n".join(out)


def render_csv(summaries: Sequence[SuiteSummary]) -> str:
    """``summary.csv``: one row per (suite, metric), one column per evaluation of the run.

    Every evaluation, not only the two the table shows, at full precision; an empty cell where an evaluation has no
    value.
    """
    tags = list(dict.fromkeys(r.tag for s in summaries for r in s.records))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["suite", "metric", "description", *tags])
    for s in summaries:
        by_tag = {r.tag: r for r in s.records}
        for key, label in s.rows:
            cells = []
            for tag in tags:
                value = by_tag[tag].summary.get(key) if tag in by_tag else None
                cells.append("" if value is None else repr(float(value)))
            writer.writerow([s.suite, key, label, *cells])
    return buffer.getvalue()


class RunSummary(Callback):
    """At the end of ``fit`` / ``validate`` / ``test``: print the evaluation's headline numbers as one compact table.

    It also writes the table as ``summary.csv`` and ``summary.md`` in the run's log folder (rank 0, each file
    atomically; a later stage logging into the same folder replaces them).

    The table has one column per evaluation shown (``fit``: the first and the last, e.g. ``start`` and ``epoch_9``;
    ``test``: ``test``) and the suite's headline rows (:data:`TABLE_ROWS`) that the evaluation reported; ``-`` marks a
    missing value and a note under the table says why. ``fit`` also prints one line with the steps, the time and the
    last progress-bar metrics (the loss). Nothing is printed or written for a run that failed (Lightning calls
    ``teardown`` only after a run that finished), and nothing is written when no evaluation ran.

    Args:
        stream: where the table is printed (default: standard output).
        write_files: write ``summary.csv`` / ``summary.md``.
    """

    def __init__(self, stream: TextIO | None = None, write_files: bool = True) -> None:
        self.stream = stream
        self.write_files = write_files
        self._started = time.monotonic()
        self.text: str | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Start the clock."""
        self._started = time.monotonic()
        self.text = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Print and write the summary (rank 0; no collective here)."""
        stage = str(getattr(stage, "value", stage))  # Lightning passes its TrainerFn enum
        if stage not in ("fit", "validate", "test") or not trainer.is_global_zero:
            return
        summaries, idle = suite_summaries(trainer, stage)
        log_dir = rank_zero_log_dir(trainer)
        parts = []
        if stage == "fit":
            parts.append(self._fit_line(trainer))
        if summaries:
            parts.append(render_text(summaries, stage))
        parts += idle
        if summaries and self.write_files and log_dir is not None:
            folder = Path(log_dir)
            write_text_atomic(folder / "summary.csv", render_csv(summaries))
            write_text_atomic(folder / "summary.md", render_markdown(summaries, stage, log_dir) + "\n")
            parts.append(f"summary written to {folder / 'summary.md'} and summary.csv")
        self.text = "\n".join(parts)
        print("\n" + self.text, file=self.stream or sys.stdout, flush=True)

    def _fit_line(self, trainer: pl.Trainer) -> str:
        metrics = _bar_metrics(trainer)
        shown = "".join(f", {name} {value}" for name, value in metrics.items())
        return (
            f"fit finished: {trainer.global_step} optimiser steps, {trainer.current_epoch} epochs completed in "
            f"{_duration(time.monotonic() - self._started)}{shown}"
        )


def _bar_metrics(trainer: pl.Trainer) -> dict[str, str]:
    """The progress-bar metrics (the loss, whatever the module shows), formatted; the logger version left out."""
    out = {}
    for name, value in trainer.progress_bar_metrics.items():
        if name == "v_num":
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = f"{value:.4g}" if math.isfinite(value) else str(value)
        else:
            out[name] = str(value)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Progress lines for a log file


class PlainProgressBar(ProgressBar):
    """Lightning progress for output that is not a terminal.

    One line every ``interval_s`` seconds and at every epoch end, each complete on its own (no carriage returns), so
    a log file shows progress as it happens::

        fit: 10 epochs, 130 optimiser steps (52 batches per epoch); a line every 30 s and at each epoch end
        epoch 1/10  step 4/130  loss 3.21  0.21 steps/s  elapsed 0:00:19  ETA 0:10:00
        epoch 1/10 done  step 13/130  loss 2.95  0.22 steps/s  elapsed 0:01:00  ETA 0:08:52

    Steps are optimiser steps (``trainer.global_step``; the total is ``trainer.estimated_stepping_batches``); steps/s
    and the ETA count the steps of this session (a resumed run starts its clock again) and the time spent in
    evaluations. The metrics are the progress-bar ones (``self.log(..., prog_bar=True)``). Validation and test loops
    get a line every ``interval_s`` seconds and one at their end. Prints on rank 0 only.

    Args:
        interval_s: seconds between two lines (> 0).
        stream: where the lines go (default: standard output, flushed at each line).
        clock: the time source, in seconds (tests pass a fake one).
    """

    def __init__(
        self, interval_s: float = 30.0, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        if not (isinstance(interval_s, int | float) and math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"PlainProgressBar interval_s must be a number of seconds > 0, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.stream = stream
        self.clock = clock
        self._enabled = True
        self._start = 0.0
        self._last = 0.0
        self._first_step = 0
        self._total: float = math.inf

    # ProgressBar's interface
    def disable(self) -> None:
        """No lines (other ranks; Lightning's learning-rate finder)."""
        self._enabled = False

    def enable(self) -> None:
        """Lines again."""
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        """Whether lines are printed."""
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        """Whether no lines are printed."""
        return not self._enabled

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``LightningModule.print``: to the same stream."""
        if self._enabled:
            print(*args, file=self.stream or sys.stdout, flush=True, **kwargs)

    def _say(self, line: str) -> None:
        self._last = self.clock()
        if self._enabled:
            print(line, file=self.stream or sys.stdout, flush=True)

    def _due(self) -> bool:
        return self.clock() - self._last >= self.interval_s

    # training
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the clock; say how long the run is."""
        self._start = self._last = self.clock()
        self._first_step = trainer.global_step
        try:
            self._total = float(trainer.estimated_stepping_batches)
        except Exception:  # an iterable dataset without a length: the total stays unknown
            self._total = math.inf
        epochs = f"{trainer.max_epochs} epochs" if trainer.max_epochs not in (None, -1) else "no epoch limit"
        steps = f"{int(self._total)} optimiser steps" if math.isfinite(self._total) else "an unknown number of steps"
        per_epoch = self.total_train_batches
        batches = f" ({int(per_epoch)} batches per epoch)" if math.isfinite(per_epoch) else ""
        self._say(f"fit: {epochs}, {steps}{batches}; a line every {self.interval_s:g} s and at each epoch end")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """A line if ``interval_s`` has passed since the last one."""
        if self._due():
            self._say(self.train_line(trainer, done=False))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A line at every epoch end."""
        self._say(self.train_line(trainer, done=True))

    def train_line(self, trainer: pl.Trainer, done: bool) -> str:
        """``epoch e/E [done]  step s/S  <metrics>  r steps/s  elapsed h:mm:ss  ETA h:mm:ss``."""
        epoch = f"epoch {trainer.current_epoch + 1}"
        if trainer.max_epochs not in (None, -1):
            epoch += f"/{trainer.max_epochs}"
        if done:
            epoch += " done"
        step = trainer.global_step
        total = f"/{int(self._total)}" if math.isfinite(self._total) else ""
        parts = [epoch, f"step {step}{total}"]
        parts += [f"{name} {value}" for name, value in _bar_metrics(trainer).items()]
        elapsed = self.clock() - self._start
        steps = step - self._first_step
        rate = steps / elapsed if elapsed > 0 else 0.0
        parts.append(f"{rate:.3g} steps/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if rate > 0 and math.isfinite(self._total):
            parts.append(f"ETA {_duration(max(self._total - step, 0) / rate)}")
        return "  ".join(parts)

    # validation / test
    def _eval_batch(self, stage: str, batch_idx: int, total: float, dataloader_idx: int) -> None:
        if self._due():
            of = f"/{int(total)}" if math.isfinite(total) else ""
            self._say(f"{stage}: dataloader {dataloader_idx} batch {batch_idx + 1}{of}")

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Track the current dataloader (for its batch count)."""
        self.has_dataloader_changed(dataloader_idx)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """A line if ``interval_s`` has passed."""
        if not trainer.sanity_checking:
            self._eval_batch("validate", batch_idx, self.total_val_batches_current_dataloader, dataloader_idx)

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Track the current dataloader (for its batch count)."""
        self.has_dataloader_changed(dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """A line if ``interval_s`` has passed."""
        self._eval_batch("test", batch_idx, self.total_test_batches_current_dataloader, dataloader_idx)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the clock of a ``validate`` run."""
        if trainer.state.fn == "validate":
            self._start = self._last = self.clock()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the clock of a ``test`` run."""
        self._start = self._last = self.clock()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One line when the test loop (and the evaluation in it) is over."""
        self._say(f"test: done in {_duration(self.clock() - self._start)}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One line at the end of a ``validate`` run."""
        if trainer.state.fn == "validate" and not trainer.sanity_checking:
            self._say(f"validate: done in {_duration(self.clock() - self._start)}")


# ---------------------------------------------------------------------------------------------------------------------
# Wiring


def output_is_terminal() -> bool:
    """Whether standard output is a terminal (Lightning's bars write there)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def add_run_output_callbacks(
    trainer: pl.Trainer, stage: str, *, tty: bool | None = None, interval_s: float = 30.0
) -> None:
    """Add what a person watching ``baldro-pl fit`` / ``validate`` / ``test`` needs to the trainer's callbacks.

    * :class:`RunSummary` (unless one is there);
    * when standard output is not a terminal (``tty`` False; None: look), Lightning's default bar
      (``RichProgressBar`` / ``TQDMProgressBar``, not a subclass a user configured) is replaced by
      :class:`PlainProgressBar` at the same place; ``enable_progress_bar: false`` stays without a bar;
    * ``fit`` with a logger: Lightning's :class:`~lightning.pytorch.callbacks.LearningRateMonitor` at every step
      (scalars ``lr-<Optimizer>``, one per parameter group), unless one is there.
    """
    callbacks = trainer.callbacks
    if not any(isinstance(c, RunSummary) for c in callbacks):
        callbacks.append(RunSummary())
    if tty is None:
        tty = output_is_terminal()
    if not tty:
        for i, callback in enumerate(callbacks):
            if type(callback) in (RichProgressBar, TQDMProgressBar):
                callbacks[i] = PlainProgressBar(interval_s=interval_s)
    if stage == "fit" and trainer.loggers and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
        callbacks.append(LearningRateMonitor(logging_interval="step"))


# ---------------------------------------------------------------------------------------------------------------------
# Console noise

NOISE_PREFIXES: tuple[str, ...] = (
    "💡 Tip:",  # litlogger / litmodels advertising (Trainer init)
    "GPU available:",  # device lines (Trainer init): the accelerator is in the config and in versions.json
    "TPU available:",
    "HPU available:",
    "Loading `train_dataloader` to estimate number of stepping batches.",
)
"""Start of the Lightning info lines :func:`configure_console_output` drops (``lightning.*.utilities.rank_zero``)."""

NOISE_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning 2.6's own pytree helper instantiates torch's deprecated LeafSpec: nothing a user can act on
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)
"""(message regex, category) of the warnings :func:`configure_console_output` ignores."""

_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
_UNDO: Callable[[], None] | None = None  # set while configure_console_output is in effect


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(NOISE_PREFIXES)


class _RankZeroInfo(logging.Filter):
    """Info lines from process 0 only (every process runs the same code); warnings from every process."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        return getattr(rank_zero_only, "rank", 0) == 0


def configure_console_output(*, tty: bool | None = None) -> Callable[[], None]:
    """Make the console of a ``baldro-pl`` run say what matters; returns a function that undoes it (for tests).

    * drops Lightning's info lines that start with :data:`NOISE_PREFIXES` (the litlogger / litmodels tips, the
      GPU/TPU/HPU lines, the stepping-batches estimate); every other Lightning line and every warning stays;
    * ignores the warnings of :data:`NOISE_WARNINGS` (only those);
    * turns off transformers' "Loading weights" / "Writing model shards" bars, and, when standard error is not a
      terminal (``tty`` False; None: look), huggingface_hub's download bars too (in a log file they are one line of
      carriage returns);
    * shows baldro-pl's info messages (evaluation started / done and where it was written, model exported) on
      standard error, process 0 only, unless the application configured logging itself (the root logger has handlers:
      then they propagate there, as Lightning's do).

    Call it before the ``Trainer`` is built (the tip and device lines are printed in its constructor). A second call
    while the first is in effect changes nothing (and returns a function that does nothing).
    """
    global _UNDO
    if _UNDO is not None:
        return lambda: None
    undo: list[Callable[[], None]] = []

    noise = _DropNoise()
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        logger.addFilter(noise)
        undo.append(lambda logger=logger: logger.removeFilter(noise))

    added = []
    for message, category in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
        added.append(warnings.filters[0])

    def restore_warnings() -> None:
        for entry in added:
            if entry in warnings.filters:
                warnings.filters.remove(entry)
        mutated = getattr(warnings, "_filters_mutated", None)  # drop the per-module caches of warnings already seen
        if mutated is not None:
            mutated()

    undo.append(restore_warnings)

    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    bars_on = hf_logging.is_progress_bar_enabled()
    hub_off = hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # also disables the hub's bars
    if tty is None:
        try:
            tty = sys.stderr.isatty()
        except (AttributeError, ValueError):
            tty = False
    if tty and not hub_off:
        hub_utils.enable_progress_bars()

    def restore_bars() -> None:
        if bars_on:
            hf_logging.enable_progress_bar()
        if hub_off:
            hub_utils.disable_progress_bars()
        else:
            hub_utils.enable_progress_bars()

    undo.append(restore_bars)

    package = logging.getLogger("baldro_pl")
    if not logging.getLogger().hasHandlers() and not package.handlers:
        handler = logging.StreamHandler()
        handler.addFilter(_RankZeroInfo())
        level, propagate = package.level, package.propagate
        package.addHandler(handler)
        package.setLevel(logging.INFO)
        package.propagate = False

        def restore_package() -> None:
            package.removeHandler(handler)
            package.setLevel(level)
            package.propagate = propagate

        undo.append(restore_package)

    def undo_all() -> None:
        global _UNDO
        if _UNDO is not undo_all:
            return
        for step in reversed(undo):
            step()
        _UNDO = None

    _UNDO = undo_all
    return undo_all
