"""The Lightning callback that runs an evaluation suite (TOFU, MUSE) during ``fit``, ``validate`` and ``test``.

When they run:

* before training (``on_train_start``, open-unlearning's ``eval_on_start``), unless ``eval_on_start=False``;
* every ``every_n_epochs`` training epochs (``on_train_epoch_end``);
* in ``trainer.validate(...)`` and ``trainer.test(...)`` (``on_validation_epoch_end`` / ``on_test_epoch_end``; the
  loop needs at least one batch for the hook to fire). Validation inside ``fit`` is left alone.

Every process evaluates its shard of the rows (collectives stay in lockstep, also under FSDP) and the states are
gathered and de-duplicated by row index. Scalars are logged as ``eval/<metric>`` (plus ``hp/<metric>`` for the
headline numbers, for TensorBoard's HParams table); metrics without a finite value are not logged. The per-row log and
the summary are written atomically on rank 0 to ``<output_dir>/<tag>/{TOFU,MUSE}_EVAL.json`` and ``..._SUMMARY.json``
(tags ``start``, ``epoch_<n>``, ``validate``, ``test``; ``output_dir`` defaults to ``trainer.log_dir``).

During training the epoch's scalars go through ``pl_module.log`` (so ``ModelCheckpoint`` / ``EarlyStopping`` can
monitor ``eval/<metric>``). In ``validate`` / ``test`` they go to the loggers directly and into
``trainer.callback_metrics``, not through ``pl_module.log``: Lightning would copy a value logged at epoch end into every
dataloader's column of its console table (the TOFU/MUSE test loop has two) and into every dict ``trainer.test()``
returns, so each number was printed twice. :class:`baldro_pl.run_output.RunSummary` prints the headline numbers once.

Every evaluation is also kept in :attr:`Evaluation.evaluations` (one :class:`EvaluationRecord` per evaluation of
the current ``fit`` / ``validate`` / ``test``), which :class:`~baldro_pl.run_output.RunSummary` turns into the table
printed at the end of the run. Why a value is missing (no retain log, FSDP) is said once per run, in plain words, not
at every evaluation.

Contract with the other parts of baldro-pl:

* ``pl_module.model`` is the Hugging Face ``PreTrainedModel``;
* ``trainer.datamodule`` offers ``evaluation_rows()`` (raw rows per split, keys in :mod:`baldro_pl.metrics.tofu` /
  :mod:`baldro_pl.metrics.muse`; or pass ``rows`` to the callback), ``encoder`` (a
  :class:`~baldro_pl.datamodules.encoder.RowEncoder`, connected to the suite at setup) and, for TOFU, ``forget_split``.
  A suite connected by hand (``suite.connect(encoder=...)``) keeps its encoder.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from baldro_pl.metrics.logs import write_evaluation
from baldro_pl.metrics.suite import EvaluationResult, Rows, Suite
from baldro_pl.strategies import hf_model, is_fsdp, model_call_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationRecord:
    """One evaluation of a run, as :class:`~baldro_pl.run_output.RunSummary` reports it.

    Attributes:
        tag: the evaluation's folder name (``start``, ``epoch_<n>``, ``validate``, ``test``, ...).
        step: ``trainer.global_step`` (optimiser steps done) when it ran.
        summary: ``{metric: value}`` of the metrics with a value (the ``*_SUMMARY.json`` content).
        metrics: every metric the evaluation reported, with or without a value (the ``*_EVAL.json`` keys).
        notes: why some values are missing or differ from the usual, in plain words.
        no_value: reported metrics without a finite value that no note explains (NaN or inf in the model's scores).
    """

    tag: str
    step: int
    summary: dict[str, float]
    metrics: tuple[str, ...]
    notes: tuple[str, ...] = ()
    no_value: tuple[str, ...] = ()


class _CaptureWarnings(logging.Filter):
    """Holds back the warnings of one logger (the evaluator's) while an evaluation runs."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING:
            self.records.append(record)
            return False
        return True


class Evaluation(Callback):
    """Run an evaluation suite from Lightning: when, on which rows, where the files go, which scalars are logged.

    Args:
        suite: the suite (:class:`~baldro_pl.metrics.TOFUSuite`, :class:`~baldro_pl.metrics.MUSESuite`) with its
            metric options.
        every_n_epochs: evaluate after every n-th training epoch (0 / None: never during training).
        eval_on_start: evaluate before the first training step.
        on_validate: evaluate in ``trainer.validate``.
        on_test: evaluate in ``trainer.test``.
        output_dir: where the ``<tag>/<suite>_EVAL.json`` folders go (default ``trainer.log_dir``).
        write_logs: write the JSON files (rank 0).
        rows: the evaluation rows (or a function returning them) instead of ``trainer.datamodule.evaluation_rows()``.
    """

    def __init__(
        self,
        suite: Suite,
        *,
        every_n_epochs: int | None = 1,
        eval_on_start: bool = True,
        on_validate: bool = True,
        on_test: bool = True,
        output_dir: str | os.PathLike | None = None,
        write_logs: bool = True,
        rows: Rows | Callable[[], Rows] | None = None,
    ) -> None:
        if every_n_epochs is not None and every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 or None, got {every_n_epochs}")
        self.suite = suite
        self.every_n_epochs = every_n_epochs
        self.eval_on_start = eval_on_start
        self.on_validate = on_validate
        self.on_test = on_test
        self.output_dir = output_dir
        self.write_logs = write_logs
        self._rows = rows
        self._connects_suite = not suite.connected  # a suite connected by hand keeps its encoder
        self.last_result: EvaluationResult | None = None
        self.evaluations: list[EvaluationRecord] = []
        self._said: set[str] = set()

    @property
    def suite_name(self) -> str:
        """The suite's name (``TOFU``, ``MUSE``): file names, messages and the run summary's table."""
        return self.suite.name

    @property
    def headline(self) -> tuple[str, ...]:
        """The suite's headline metrics, logged also as ``hp/<metric>`` (:class:`~baldro_pl.callbacks.HParamsTable`)."""
        return tuple(self.suite.headline)

    # ------------------------------------------------------------------ inputs
    def _datamodule_name(self, trainer: pl.Trainer) -> str:
        dm = getattr(trainer, "datamodule", None)
        return type(dm).__name__ if dm is not None else "no datamodule"

    def _evaluation_rows(self, trainer: pl.Trainer) -> Rows:
        if self._rows is not None:
            return self._rows() if callable(self._rows) else self._rows
        rows_fn = getattr(getattr(trainer, "datamodule", None), "evaluation_rows", None)
        if rows_fn is None:
            raise AttributeError(
                f"Evaluation needs `evaluation_rows`: pass rows to the callback or attach a datamodule that has it "
                f"(got {self._datamodule_name(trainer)})"
            )
        return rows_fn()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """A new run: forget the previous run's evaluations and notes; connect the suite to the datamodule's encoder."""
        self.evaluations = []
        self._said = set()
        dm = getattr(trainer, "datamodule", None)
        encoder = getattr(dm, "encoder", None)
        if self._connects_suite and encoder is not None:
            self.suite.connect(encoder=encoder, forget_split=getattr(dm, "forget_split", None))

    # ------------------------------------------------------------------ running
    def evaluate(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        tag: str,
        *,
        log_with_module: bool,
        to_callback_metrics: bool = False,
    ) -> EvaluationResult:
        """Run the suite now (on every rank), log the scalars and write the files; returns the result.

        ``log_with_module``: log through ``pl_module.log`` (epoch end during ``fit``); otherwise through the loggers at
        the current step. ``to_callback_metrics``: also put the scalars into ``trainer.callback_metrics``.
        """
        suite, name = self.suite, self.suite_name
        if not suite.connected:
            raise AttributeError(
                "Evaluation needs `tokenizer` and `prompt_format` to encode the rows: attach a datamodule with an "
                "`encoder` (as UnlearningDataModule has) or call suite.connect(encoder=RowEncoder(tokenizer, "
                f"prompt_format, max_length)) (got {self._datamodule_name(trainer)})"
            )
        rows = self._evaluation_rows(trainer)
        fsdp = is_fsdp(trainer)
        model = hf_model(pl_module)
        if trainer.is_global_zero:
            log.info("%s evaluation (%s) at step %d: running", name, tag, trainer.global_step)
        started = time.monotonic()
        # the suite warns at every call (no retain log, FSDP); hold those back and say each once, plainly
        suite_log = logging.getLogger(type(suite).__module__)
        held = _CaptureWarnings()
        suite_log.addFilter(held)
        try:
            result = suite.evaluate(
                model,
                rows,
                call_context=lambda: model_call_context(trainer, pl_module),
                synced_gpus=fsdp and trainer.world_size > 1,
                allow_gradnorm=not fsdp,
            )
        finally:
            suite_log.removeFilter(held)
        for record in held.records:
            if record.getMessage() not in result.warnings:
                suite_log.handle(record)
        notes = tuple(suite.plain_note(note) for note in result.warnings)
        for note in notes:
            if note not in self._said and trainer.is_global_zero:
                log.warning("%s evaluation: %s", name, note)
            self._said.add(note)
        self.last_result = result
        self.evaluations.append(
            EvaluationRecord(
                tag=tag,
                step=trainer.global_step,
                summary=dict(result.summary),
                metrics=tuple(result.logs),
                notes=notes,
                no_value=tuple(suite.unexplained_missing(result)),
            )
        )
        self._log(trainer, pl_module, result, log_with_module, to_callback_metrics)
        # trainer.log_dir is a collective: every rank asks for it, before the rank-0-only write (issue 8)
        root = self.output_dir or (trainer.log_dir if self.write_logs else None) or trainer.default_root_dir
        if self.write_logs and trainer.is_global_zero:
            folder = write_evaluation(Path(root) / tag, name, result.logs, result.summary)
            log.info("%s evaluation (%s) done in %.0f s, written to %s", name, tag, time.monotonic() - started, folder)
        trainer.strategy.barrier(f"{name}_evaluation_{tag}")
        return result

    def _scalars(self, result: EvaluationResult) -> dict[str, float]:
        scalars: dict[str, float] = {}
        for name, value in result.summary.items():
            if isinstance(value, int | float) and math.isfinite(value):
                scalars[f"eval/{name}"] = float(value)
                if name in self.suite.headline:
                    scalars[f"hp/{name}"] = float(value)
        fq = result.summary.get("forget_quality")
        if isinstance(fq, int | float) and fq > 0:  # float32 scalars underflow below ~1e-38; log10 keeps the value
            scalars["eval/forget_quality_log10"] = math.log10(fq)
            scalars["hp/forget_quality_log10"] = math.log10(fq)
        return scalars

    def _log(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        result: EvaluationResult,
        with_module: bool,
        to_callback_metrics: bool = False,
    ) -> None:
        scalars = self._scalars(result)
        if with_module:
            for name, value in scalars.items():
                pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)
            return
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)
        if to_callback_metrics:
            trainer.callback_metrics.update({name: torch.tensor(value) for name, value in scalars.items()})

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate before the first step (``eval_on_start``), logged at the current step through the loggers.

        Values ``self.log()``-ed here would be reported at the end of the first epoch, mixed with that epoch's
        evaluation.
        """
        if self.eval_on_start:
            self.evaluate(trainer, pl_module, "start", log_with_module=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate after every ``every_n_epochs``-th epoch, logged through ``pl_module.log``."""
        n = self.every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0:
            self.evaluate(trainer, pl_module, f"epoch_{trainer.current_epoch}", log_with_module=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate in ``trainer.validate`` (not in the validation inside ``fit``, nor the sanity check)."""
        if self.on_validate and trainer.state.fn == "validate" and not trainer.sanity_checking:
            self.evaluate(trainer, pl_module, "validate", log_with_module=False, to_callback_metrics=True)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate in ``trainer.test``."""
        if self.on_test:
            self.evaluate(trainer, pl_module, "test", log_with_module=False, to_callback_metrics=True)
