"""Lightning callbacks that run the TOFU and MUSE suites during ``fit``, ``validate`` and ``test``.

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

Every evaluation is also kept in :attr:`_SuiteEvaluation.evaluations` (one :class:`EvaluationRecord` per evaluation of
the current ``fit`` / ``validate`` / ``test``), which :class:`~baldro_pl.run_output.RunSummary` turns into the table
printed at the end of the run. Why a value is missing (no retain log, FSDP) is said once per run, in plain words, not
at every evaluation.

Contract with the other parts of baldro-pl:

* ``pl_module.model`` is the Hugging Face ``PreTrainedModel``;
* ``trainer.datamodule`` offers ``evaluation_rows()`` (raw rows per split, keys in :mod:`baldro_pl.metrics.tofu` /
  :mod:`baldro_pl.metrics.muse`), ``tokenizer``, ``prompt_format`` (a ``PromptFormat``), ``max_length`` and, for TOFU,
  ``forget_split``. Each of them can instead be passed to the callback.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from transformers import PreTrainedTokenizerBase

from baldro_pl.datamodules.formatting import PromptFormat
from baldro_pl.metrics.logs import write_json_atomic
from baldro_pl.metrics.muse import MUSEEvaluator
from baldro_pl.metrics.suite import EvaluationResult
from baldro_pl.metrics.tofu import TOFUEvaluator
from baldro_pl.strategies import hf_model, is_fsdp, model_call_context

log = logging.getLogger(__name__)

Rows = Mapping[str, Sequence[Any]]


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


def _require_at_least_one(**settings: int | None) -> None:
    """Refuse a count below 1 when the callback is built, not at its first evaluation (possibly after training)."""
    for name, value in settings.items():
        if value is not None and not value >= 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")


class _SuiteEvaluation(Callback):
    """Common scheduling, data look-up, logging and writing of the suite callbacks."""

    suite_name = ""
    headline: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        every_n_epochs: int | None = 1,
        eval_on_start: bool = True,
        on_validate: bool = True,
        on_test: bool = True,
        output_dir: str | os.PathLike | None = None,
        write_logs: bool = True,
        rows: Rows | Callable[[], Rows] | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        prompt_format: PromptFormat | None = None,
    ) -> None:
        if every_n_epochs is not None and every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 or None, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.eval_on_start = eval_on_start
        self.on_validate = on_validate
        self.on_test = on_test
        self.output_dir = output_dir
        self.write_logs = write_logs
        self._rows = rows
        self._tokenizer = tokenizer
        self._prompt_format = prompt_format
        self._evaluator: Any = None
        self.last_result: EvaluationResult | None = None
        self.evaluations: list[EvaluationRecord] = []
        self._said: set[str] = set()

    # ------------------------------------------------------------------ inputs
    def _datamodule_attr(self, trainer: pl.Trainer, name: str, required: bool = True) -> Any:
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and getattr(dm, name, None) is not None:
            return getattr(dm, name)
        if required:
            raise AttributeError(
                f"{type(self).__name__} needs `{name}`: pass it to the callback or attach a datamodule that has it "
                f"(got {type(dm).__name__ if dm is not None else 'no datamodule'})"
            )
        return None

    def _evaluation_rows(self, trainer: pl.Trainer) -> Rows:
        if self._rows is not None:
            return self._rows() if callable(self._rows) else self._rows
        rows_fn = self._datamodule_attr(trainer, "evaluation_rows")
        return rows_fn()

    def _get_evaluator(self, trainer: pl.Trainer) -> Any:
        tokenizer = self._tokenizer or self._datamodule_attr(trainer, "tokenizer")
        if self._evaluator is None or self._evaluator.tokenizer is not tokenizer:
            prompt_format = self._prompt_format or self._datamodule_attr(trainer, "prompt_format", required=False)
            self._evaluator = self._build(trainer, tokenizer, prompt_format)
        return self._evaluator

    def _build(
        self, trainer: pl.Trainer, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat | None
    ) -> Any:
        raise NotImplementedError

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
        evaluator = self._get_evaluator(trainer)
        rows = self._evaluation_rows(trainer)
        fsdp = is_fsdp(trainer)
        model = hf_model(pl_module)
        if trainer.is_global_zero:
            log.info("%s evaluation (%s) at step %d: running", self.suite_name, tag, trainer.global_step)
        started = time.monotonic()
        # the evaluator warns at every call (no retain log, FSDP); hold those back and say each once, plainly
        evaluator_log = logging.getLogger(type(evaluator).__module__)
        held = _CaptureWarnings()
        evaluator_log.addFilter(held)
        try:
            result = evaluator.evaluate(
                model,
                rows,
                call_context=lambda: model_call_context(trainer, pl_module),
                synced_gpus=fsdp and trainer.world_size > 1,
                allow_gradnorm=not fsdp,
            )
        finally:
            evaluator_log.removeFilter(held)
        for record in held.records:
            if record.getMessage() not in result.warnings:
                evaluator_log.handle(record)
        notes = tuple(self.plain_note(note) for note in result.warnings)
        for note in notes:
            if note not in self._said and trainer.is_global_zero:
                log.warning("%s evaluation: %s", self.suite_name, note)
            self._said.add(note)
        self.last_result = result
        self.evaluations.append(
            EvaluationRecord(
                tag=tag,
                step=trainer.global_step,
                summary=dict(result.summary),
                metrics=tuple(result.logs),
                notes=notes,
                no_value=tuple(self._unexplained_missing(result)),
            )
        )
        self._log(trainer, pl_module, result, log_with_module, to_callback_metrics)
        # trainer.log_dir is a collective: every rank asks for it, before the rank-0-only write (issue 8)
        root = self.output_dir or (trainer.log_dir if self.write_logs else None) or trainer.default_root_dir
        if self.write_logs and trainer.is_global_zero:
            folder = Path(root) / tag
            write_json_atomic(folder / f"{self.suite_name}_EVAL.json", result.logs)
            write_json_atomic(folder / f"{self.suite_name}_SUMMARY.json", result.summary)
            log.info(
                "%s evaluation (%s) done in %.0f s, written to %s",
                self.suite_name,
                tag,
                time.monotonic() - started,
                folder,
            )
        trainer.strategy.barrier(f"{self.suite_name}_evaluation_{tag}")
        return result

    def plain_note(self, note: str) -> str:
        """The evaluator's note about a missing or changed value, said in plain words (unknown notes unchanged)."""
        reference = "retain" if self.suite_name == "TOFU" else "retrain"
        log_name = f"{self.suite_name}_EVAL.json"
        if note.startswith("forget_quality and forget_balance_* are None"):
            return (
                "forget quality and the forgetting balance are not computed: both compare the model with the retain "
                f"model, and retain_logs_path (the retain model's {log_name} on the same forget split) is not set"
            )
        if note.startswith("privleak uses the reference AUC 0.5"):
            return (
                f"privleak is measured against an AUC of 0.5, not against the {reference} model's: retain_logs_path "
                f"(the {reference} model's {log_name}) is not set"
            )
        if note.startswith("mia_gradnorm is None"):
            return "mia_gradnorm is not computed under FSDP (gradient norms of sharded parameters)"
        return note

    def _unexplained_missing(self, result: EvaluationResult) -> list[str]:
        """Reported metrics without a value that none of the evaluator's notes accounts for."""
        explained: set[str] = set()
        for note in result.warnings:
            if note.startswith("forget_quality and forget_balance_*"):
                explained.add("forget_quality")
                explained.update(m for m in result.logs if m.startswith("forget_balance_"))
            elif note.startswith("mia_gradnorm"):
                explained.add("mia_gradnorm")
        return [m for m in result.logs if m not in result.summary and m not in explained]

    def _scalars(self, result: EvaluationResult) -> dict[str, float]:
        scalars: dict[str, float] = {}
        for name, value in result.summary.items():
            if isinstance(value, int | float) and math.isfinite(value):
                scalars[f"eval/{name}"] = float(value)
                if name in self.headline:
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

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """A new run: forget the previous run's evaluations and notes."""
        self.evaluations = []
        self._said = set()

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.eval_on_start:
            # Logged through the loggers at the current step: values self.log()-ed here would be reported at the
            # end of the first epoch, mixed with that epoch's evaluation.
            self.evaluate(trainer, pl_module, "start", log_with_module=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = self.every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0:
            self.evaluate(trainer, pl_module, f"epoch_{trainer.current_epoch}", log_with_module=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_validate and trainer.state.fn == "validate" and not trainer.sanity_checking:
            self.evaluate(trainer, pl_module, "validate", log_with_module=False, to_callback_metrics=True)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_test:
            self.evaluate(trainer, pl_module, "test", log_with_module=False, to_callback_metrics=True)


class TOFUEvaluation(_SuiteEvaluation):
    """Run the TOFU suite (:class:`baldro_pl.metrics.tofu.TOFUEvaluator`) from Lightning.

    Args:
        metrics: metric names (None = full suite, ``mia_gradnorm`` included); ``exclude`` removes some.
        retain_logs_path: the retain model's ``TOFU_EVAL.json`` on the same forget split (forget quality, balance,
            privleak). Without it forget quality is None and a warning says why.
        every_n_epochs: evaluate after every n-th training epoch (0 / None: never during training).
        eval_on_start: evaluate before the first training step.
        on_validate / on_test: evaluate in ``trainer.validate`` / ``trainer.test``.
        output_dir: where the ``<tag>/TOFU_EVAL.json`` folders go (default ``trainer.log_dir``).
        write_logs: write the JSON files (rank 0).
        batch_size, max_new_tokens, question_key, sort_by_length: see :class:`TOFUEvaluator`.
        max_length / forget_split / rows / tokenizer / prompt_format: override the datamodule's.
    """

    suite_name = "TOFU"
    headline = (
        "forget_quality",
        "model_utility",
        "forget_truth_ratio",
        "privleak",
        "forget_Q_A_Prob",
        "forget_Q_A_ROUGE",
    )

    def __init__(
        self,
        *,
        metrics: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        retain_logs_path: str | os.PathLike | None = None,
        batch_size: int = 32,
        max_new_tokens: int = 200,
        max_length: int | None = None,
        question_key: str = "question",
        forget_split: str | None = None,
        sort_by_length: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _require_at_least_one(batch_size=batch_size, max_new_tokens=max_new_tokens)
        self.metrics = metrics
        self.exclude = exclude
        self.retain_logs_path = retain_logs_path
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.question_key = question_key
        self.forget_split = forget_split
        self.sort_by_length = sort_by_length

    def _build(
        self, trainer: pl.Trainer, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat | None
    ) -> TOFUEvaluator:
        return TOFUEvaluator(
            tokenizer,
            prompt_format,
            metrics=self.metrics,
            exclude=self.exclude,
            retain_logs_path=self.retain_logs_path,
            forget_split=self.forget_split or self._datamodule_attr(trainer, "forget_split", required=False),
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            max_length=self.max_length or self._datamodule_attr(trainer, "max_length", required=False) or 512,
            question_key=self.question_key,
            sort_by_length=self.sort_by_length,
        )


class MUSEEvaluation(_SuiteEvaluation):
    """Run the MUSE suite (:class:`baldro_pl.metrics.muse.MUSEEvaluator`) from Lightning.

    Args:
        metrics / exclude: metric names (None = full suite).
        retain_logs_path: the retrain model's ``MUSE_EVAL.json`` (privleak reference).
        max_new_tokens: overrides both generation budgets (smoke tests only).
        verbmem_batch_size / knowmem_batch_size / mia_batch_size: 8 / 16 / 8 as in open-unlearning.
        Scheduling, output and data arguments: see :class:`TOFUEvaluation`.
    """

    suite_name = "MUSE"
    headline = ("forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "privleak")

    def __init__(
        self,
        *,
        metrics: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        retain_logs_path: str | os.PathLike | None = None,
        max_new_tokens: int | None = None,
        verbmem_batch_size: int = 8,
        knowmem_batch_size: int = 16,
        mia_batch_size: int = 8,
        sort_by_length: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _require_at_least_one(
            max_new_tokens=max_new_tokens,
            verbmem_batch_size=verbmem_batch_size,
            knowmem_batch_size=knowmem_batch_size,
            mia_batch_size=mia_batch_size,
        )
        self.metrics = metrics
        self.exclude = exclude
        self.retain_logs_path = retain_logs_path
        self.max_new_tokens = max_new_tokens
        self.verbmem_batch_size = verbmem_batch_size
        self.knowmem_batch_size = knowmem_batch_size
        self.mia_batch_size = mia_batch_size
        self.sort_by_length = sort_by_length

    def _build(
        self, trainer: pl.Trainer, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat | None
    ) -> MUSEEvaluator:
        return MUSEEvaluator(
            tokenizer,
            prompt_format,
            metrics=self.metrics,
            exclude=self.exclude,
            retain_logs_path=self.retain_logs_path,
            max_new_tokens=self.max_new_tokens,
            verbmem_batch_size=self.verbmem_batch_size,
            knowmem_batch_size=self.knowmem_batch_size,
            mia_batch_size=self.mia_batch_size,
            sort_by_length=self.sort_by_length,
        )
