"""Training callbacks that are not metrics.

Export as a Hugging Face directory, the TensorBoard HParams table, a stop on a non-finite loss, and the checkpoint of
the best evaluated epoch.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from baldro_pl.strategies import full_module_state_dict

log = logging.getLogger(__name__)


def hf_state_dict(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, torch.Tensor] | None:
    """The Hugging Face model's full state dict (keys without the ``model.`` prefix), on rank 0; None elsewhere.

    Collective: every process must call it. Under FSDP, Lightning's strategy gathers the full state dict (offloaded
    to CPU, rank 0 only); the frozen reference model, if any, is left out.
    """
    full = full_module_state_dict(trainer)
    if not trainer.is_global_zero:
        return None
    prefix = "model."
    return {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}


def export_hf(trainer: pl.Trainer, pl_module: pl.LightningModule, directory: str | Path) -> Path | None:
    """Write the module's model (safetensors + config + tokenizer) to ``directory``; returns the path on rank 0."""
    state = hf_state_dict(trainer, pl_module)
    path = None
    if trainer.is_global_zero:
        path = pl_module.save_hf(directory, state_dict=state)
        log.info("exported the model as a Hugging Face directory: %s", path)
    trainer.strategy.barrier("baldro_pl_export")
    return path


class HFExport(Callback):
    """Write the trained model as a Hugging Face directory at the end of ``fit`` (works under DDP and FSDP).

    Args:
        dirpath: output directory (default: ``<log dir>/hf_model``, so every run version keeps its own export, and a
            resumed run replaces its own). Written atomically (a temporary directory beside it, then renamed).
        overwrite: replace an explicit ``dirpath`` that exists and is not empty. Without it the run fails before
            training starts, naming the path (:class:`baldro_pl.export.OutputExistsError`).
    """

    def __init__(self, dirpath: str | None = None, overwrite: bool = False) -> None:
        self.dirpath = dirpath
        self.overwrite = overwrite

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse a non-empty ``dirpath`` before any training (rank 0 looks; every rank fails together)."""
        if stage != "fit" or self.dirpath is None or self.overwrite:
            return
        from baldro_pl.export import OutputExistsError, check_output_dir

        message = None
        if trainer.is_global_zero:
            try:
                check_output_dir(self.dirpath, overwrite=False)
            except OutputExistsError as err:
                message = str(err)
        message = trainer.strategy.broadcast(message, src=0)
        if message is not None:
            raise OutputExistsError(f"{message} (HFExport: set overwrite: true to replace it)")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Export once training is over."""
        directory = self.dirpath or str(Path(trainer.log_dir or trainer.default_root_dir) / "hf_model")
        export_hf(trainer, pl_module, directory)


class HParamsTable(Callback):
    """Put the run's hyperparameters and its evaluation headline numbers into TensorBoard's HParams table.

    TensorBoard shows a run in the HParams tab only if its hyperparameters were written together with the metric
    names that belong to them; Lightning writes them without metrics (``default_hp_metric=False``), so the table
    stays empty. This callback writes them once, at the start of ``fit`` / ``validate`` / ``test``, with the
    ``hp/<metric>`` names that the TOFU/MUSE evaluation callbacks log (their ``headline``), so a sweep can be sorted
    by forget quality and model utility next to its learning rate, temperature or ratio.
    """

    def __init__(self) -> None:
        self._done = False

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        if self._done or not trainer.is_global_zero:
            return
        names: list[str] = []
        for callback in trainer.callbacks:
            for name in getattr(callback, "headline", ()):
                names += [f"hp/{name}"] + ([f"hp/{name}_log10"] if name == "forget_quality" else [])
        if not names:
            return
        params = dict(pl_module.hparams)
        datamodule = trainer.datamodule
        if datamodule is not None and getattr(datamodule, "hparams", None):
            params.update({f"data.{k}": v for k, v in datamodule.hparams.items()})
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params, metrics={name: float("nan") for name in names})
        self._done = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Before training (and the evaluation before it)."""
        self._write(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """For ``baldro-pl validate``."""
        self._write(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """For ``baldro-pl test``."""
        self._write(trainer, pl_module)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; raised by :class:`StopOnNonFinite`."""


class StopOnNonFinite(Callback):
    """Stop training at the first NaN or infinite training loss, before its backward pass and optimiser step.

    The weights are never updated with that loss, and no checkpoint is written for the failed step: the
    ``save_on_exception`` checkpoint of :class:`~lightning.pytorch.callbacks.ModelCheckpoint` is skipped, so
    ``last.ckpt`` stays the last periodic checkpoint, written while the loss was finite. The presets write
    ``last.ckpt`` only when training ends (docs/presets.md, "Checkpoints and evaluation cadence"), so with their
    defaults a diverging run leaves none; the message says which. The flag is reduced across processes, so every
    DDP/FSDP rank stops at the same step. Raises :class:`NonFiniteLossError`, whose message names the step
    (``trainer.global_step``: optimiser steps done) and the last finite loss. ``baldro-pl fit`` adds it to every run.
    """

    def __init__(self) -> None:
        self._last_finite: tuple[int, torch.Tensor] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Forget the previous run's last loss."""
        self._last_finite = None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        """Check the loss about to be back-propagated (every micro-batch, on every rank)."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            # automatic optimisation hands the loss divided by the accumulation steps to backward
            scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
            self._last_finite = (trainer.global_step, loss.detach() * scale)
            return
        value = loss.detach().float()
        value = float(value) if value.numel() == 1 else float("nan")
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch})"
        if self._last_finite is None:
            last = "no finite loss before it in this run"
        else:
            step, previous = self._last_finite
            last = f"last finite loss {float(previous.float().mean()):.6g} at step {step}"
        own = f"{value}" if not math.isfinite(value) else "non-finite on another process"
        # keep ModelCheckpoint(save_on_exception=True) from writing the failed step as last.ckpt
        checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
        for callback in checkpoints:
            callback.save_on_exception = False
        if any(c.last_model_path or c.best_model_path for c in checkpoints):
            advice = "the checkpoints on disk keep finite weights (lower the learning rate, or resume from last.ckpt "
            advice += "with another setting)"
        else:
            advice = "no checkpoint was written before it (lower the learning rate and run again)"
        raise NonFiniteLossError(f"training loss is {own} at {where}; {last}. Stopped before the update: {advice}")


class BestCheckpoint(ModelCheckpoint):
    """One checkpoint of the best evaluated epoch (``best.ckpt``), weights only by default.

    A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` (``save_top_k=1``) that is considered only after the
    training epochs at which an evaluation callback (:class:`~baldro_pl.metrics.Evaluation`) evaluated and logged the
    monitored metric: the evaluation's ``every_n_epochs`` is the one cadence to set, and an epoch without an
    evaluation (whose logged value would be the previous evaluation's) writes nothing. The file is replaced in place
    when a later evaluation scores strictly better; the best score is kept in the resume checkpoint, so a run resumed
    in the same folder (``--ckpt_path last``) goes on comparing with it. When the evaluation does not compute the
    metric (TOFU's forget quality needs the retain model's log), nothing is written, and that is said once.

    Weights only by default: with bf16 weights and fp32 Adam moments a parameter takes 2 bytes here and 10 in a full
    checkpoint. ``baldro-pl export`` turns it into a Hugging Face directory; resuming needs the optimiser state, that
    is ``last.ckpt`` of the run's other ``ModelCheckpoint``. Lightning runs checkpoint callbacks after the others,
    so the epoch's evaluation has logged its scalars when this one looks.

    Args:
        monitor: the logged metric to rank by: an ``eval/<metric>`` scalar of the evaluation callback (default
            ``eval/forget_quality_log10``, TOFU's forget quality as log10, which keeps its order below float32's
            range), or any other logged key (then only its presence in ``trainer.callback_metrics`` is checked).
        mode: ``"max"`` (higher is better) or ``"min"``.
        filename: the file name without ``.ckpt`` (Lightning's ``{epoch}`` / ``{step}`` placeholders work).
        dirpath: the folder (default: the run's ``checkpoints/``, beside ``last.ckpt``).
        save_weights_only: ``False`` writes the optimiser state too (a full checkpoint, resumable).
        verbose: say at every evaluation whether the checkpoint was replaced.
    """

    def __init__(
        self,
        monitor: str = "eval/forget_quality_log10",
        mode: str = "max",
        filename: str = "best",
        dirpath: str | None = None,
        save_weights_only: bool = True,
        verbose: bool = False,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=monitor,
            mode=mode,
            verbose=verbose,
            save_top_k=1,
            save_last=False,
            save_weights_only=save_weights_only,
            every_n_epochs=1,
            save_on_train_epoch_end=True,  # after the epoch's evaluation, whether Lightning's validation runs or not
        )
        self._said_missing = False

    @staticmethod
    def _epoch_evaluations(trainer: pl.Trainer) -> list:
        """The evaluation records written at the end of this epoch (``Evaluation.evaluations``, tag ``epoch_<n>``)."""
        tag = f"epoch_{trainer.current_epoch}"
        latest = [c.evaluations[-1] for c in trainer.callbacks if getattr(c, "evaluations", None)]
        return [record for record in latest if record.tag == tag]

    def _fresh_value(self, records: list, logged: dict) -> bool:
        """Whether this epoch's evaluation logged the monitored metric (not an earlier evaluation's value)."""
        if not records or self.monitor not in logged:
            return False
        if not self.monitor.startswith("eval/"):
            return True
        # eval/<metric> is logged only when the evaluation gave <metric> a finite value (eval/forget_quality_log10: a
        # positive forget quality); otherwise trainer.callback_metrics still holds an earlier evaluation's
        metric = self.monitor.removeprefix("eval/")
        for record in records:
            value = record.summary.get(metric)
            if value is None and metric.endswith("_log10"):
                value = record.summary.get(metric.removesuffix("_log10"))
                value = math.log10(value) if isinstance(value, int | float) and value > 0 else None
            if isinstance(value, int | float) and math.isfinite(value):
                return True
        return False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Consider the epoch's weights if its evaluation gave the metric a value (every rank decides alike)."""
        records = self._epoch_evaluations(trainer)
        fresh = self._fresh_value(records, trainer.callback_metrics)
        if trainer.strategy.reduce_boolean_decision(fresh, all=True):
            super().on_train_epoch_end(trainer, pl_module)
        elif records and not self._said_missing:
            self._said_missing = True
            if trainer.is_global_zero:
                log.warning(
                    "BestCheckpoint: the evaluation did not give %s a value (for forget quality: is the retain "
                    "model's log set?); no best checkpoint is written, last.ckpt is the run's checkpoint",
                    self.monitor,
                )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: the checkpoint follows the evaluation callback, not Lightning's validation loop."""
