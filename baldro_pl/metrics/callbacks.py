"""Lightning callbacks that run the TOFU and MUSE suites during ``fit``, ``validate`` and ``test``.

When they run:

* before training (``on_train_start``, open-unlearning's ``eval_on_start``), unless ``eval_on_start=False``;
* every ``every_n_epochs`` training epochs (``on_train_epoch_end``);
* in ``trainer.validate(...)`` and ``trainer.test(...)`` (``on_validation_epoch_end`` / ``on_test_epoch_end``; the
  loop needs at least one batch for the hook to fire). Validation inside ``fit`` is left alone.

Every process evaluates its shard of the rows (collectives stay in lockstep, also under FSDP) and the states are
gathered and de-duplicated by row index. Scalars are logged as ``eval/<metric>`` (plus ``hp/<metric>`` for the
headline numbers, for TensorBoard's HParams table); the per-row log and the summary are written atomically on rank 0
to ``<output_dir>/<tag>/{TOFU,MUSE}_EVAL.json`` and ``..._SUMMARY.json`` (tags ``start``, ``epoch_<n>``,
``validate``, ``test``; ``output_dir`` defaults to ``trainer.log_dir``).

Contract with the other parts of baldro-pl:

* ``pl_module.model`` is the Hugging Face ``PreTrainedModel``;
* ``trainer.datamodule`` offers ``evaluation_rows()`` (raw rows per split, keys in :mod:`baldro_pl.metrics.tofu` /
  :mod:`baldro_pl.metrics.muse`), ``tokenizer``, ``prompt_format`` (a ``PromptFormat``), ``max_length`` and, for TOFU,
  ``forget_split``. Each of them can instead be passed to the callback.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
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

log = logging.getLogger(__name__)

Rows = Mapping[str, Sequence[Any]]


def _is_fsdp(trainer: pl.Trainer) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(getattr(trainer, "strategy", None), FSDPStrategy)


@contextlib.contextmanager
def model_call_context(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[None]:
    """The context every evaluation forward / generate runs in.

    Under Lightning's ``FSDPStrategy`` (FSDP1), the parameters owned directly by the root unit, and by the Hugging
    Face model's own unit when it is one (``HFFSDPStrategy`` wraps each HF model separately), are gathered with
    ``FullyShardedDataParallel.summon_full_params(unit, recurse=False, writeback=False)``, so that the Hugging Face
    model can be called directly and ``generate()`` works (ecosystem-notes §2.3); the decoder-layer units gather
    their own parameters in their forward. The FSDP root is initialised first if no forward has run yet
    (:func:`baldro_pl.strategies.prepare_direct_calls`). Otherwise a null context.
    """
    if not _is_fsdp(trainer):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    from baldro_pl.strategies import prepare_direct_calls

    root = trainer.strategy.model
    prepare_direct_calls(root)
    with contextlib.ExitStack() as stack:
        if isinstance(root, FullyShardedDataParallel):
            stack.enter_context(FullyShardedDataParallel.summon_full_params(root, recurse=False, writeback=False))
        unit = pl_module.model
        if isinstance(unit, FullyShardedDataParallel) and unit is not root:
            stack.enter_context(FullyShardedDataParallel.summon_full_params(unit, recurse=False, writeback=False))
        yield


def hf_model(pl_module: pl.LightningModule) -> torch.nn.Module:
    """``pl_module.model`` without an FSDP wrapper of its own (calls then go through :func:`model_call_context`)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = pl_module.model
    return model.module if isinstance(model, FullyShardedDataParallel) else model


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
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str, *, log_with_module: bool
    ) -> EvaluationResult:
        """Run the suite now (on every rank), log the scalars and write the files; returns the result."""
        evaluator = self._get_evaluator(trainer)
        rows = self._evaluation_rows(trainer)
        fsdp = _is_fsdp(trainer)
        if fsdp and "mia_gradnorm" in evaluator.metrics:
            log.warning("mia_gradnorm is skipped under FSDP (per-parameter gradient norms of sharded parameters)")
        model = hf_model(pl_module)
        result = evaluator.evaluate(
            model,
            rows,
            call_context=lambda: model_call_context(trainer, pl_module),
            synced_gpus=fsdp and trainer.world_size > 1,
            allow_gradnorm=not fsdp,
        )
        self.last_result = result
        self._log(trainer, pl_module, result, log_with_module)
        # trainer.log_dir is a collective: every rank asks for it, before the rank-0-only write (issue 8)
        root = self.output_dir or (trainer.log_dir if self.write_logs else None) or trainer.default_root_dir
        if self.write_logs and trainer.is_global_zero:
            folder = Path(root) / tag
            write_json_atomic(folder / f"{self.suite_name}_EVAL.json", result.logs)
            write_json_atomic(folder / f"{self.suite_name}_SUMMARY.json", result.summary)
            log.info("%s evaluation (%s) written to %s", self.suite_name, tag, folder)
        trainer.strategy.barrier(f"{self.suite_name}_evaluation_{tag}")
        return result

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
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, result: EvaluationResult, with_module: bool
    ) -> None:
        scalars = self._scalars(result)
        if with_module:
            for name, value in scalars.items():
                pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)
        elif trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)

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
            self.evaluate(trainer, pl_module, "validate", log_with_module=True)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_test:
            self.evaluate(trainer, pl_module, "test", log_with_module=True)


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
