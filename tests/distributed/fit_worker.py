"""Run by tests/distributed/test_distributed.py in a subprocess (not a test itself).

Unlearns a tiny Llama on the synthetic TOFU-style set with a given strategy and number of CPU processes, and writes
what the test compares to ``<out>/rank<r>.json``: the loss of every step on this rank, the size of the gathered
reference cache, the FSDP units, and whether the frozen reference model stayed untouched. Lightning's ``ddp`` and
FSDP strategies start the other processes by re-running this script (``sys.argv``), which cannot work from inside
pytest, hence the separate script.

Usage: python fit_worker.py SPEC.json   (see ``test_distributed.py`` for the keys; ``aggregator``: ``dv`` or ``group``
for BalDRO over the global batch instead of the mean)
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from baldro_pl.callbacks import HFExport
from baldro_pl.datamodules import TOFUDataModule
from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import KL, NLL, NPO, BalDRODV, BalDROG, GradAscent, Mean
from baldro_pl.strategies import HFFSDPStrategy


class Record(pl.Callback):
    """Per-step losses of this rank (the objective's value on this rank's micro-batch)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


class StopAfterEpochs(pl.Callback):
    """Simulates an interrupted run: stop once ``epochs`` epochs are done."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class SigtermAtStep(pl.Callback):
    """Sends this process SIGTERM once ``step`` optimiser steps are done (a preempted job)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.kill(os.getpid(), signal.SIGTERM)


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    torch.manual_seed(0)
    if spec.get("kl"):
        module = UnlearningModule(spec["model"], GradAscent(), Mean(), KL(), learning_rate=1e-3, warmup_epochs=0)
    else:
        # "dv" / "group": BalDRO over the global batch (scope "global", the default); G keeps every retain row, whose
        # random subset would otherwise differ between 1 and 2 processes
        aggregator = {
            None: Mean(),
            "dv": BalDRODV(temperature=1.0),
            "group": BalDROG(ratio=0.5, subsample_retain=False),
        }[spec.get("aggregator")]
        module = UnlearningModule(
            spec["model"], NPO(beta=0.1), aggregator, NLL(per="sequence"), learning_rate=1e-3, warmup_epochs=0
        )
    data = TOFUDataModule(
        data_dir=spec["data"], forget_split="forget10", tokenizer=spec["model"], batch_size=spec["batch_size"], seed=3
    )
    if spec["strategy"] == "fsdp":
        strategy = HFFSDPStrategy(state_dict_type=spec.get("state_dict_type", "full"))
    else:
        strategy = spec["strategy"]
    record = Record()
    callbacks = [record]
    if spec.get("checkpoint_dir"):
        callbacks.append(ModelCheckpoint(dirpath=spec["checkpoint_dir"], save_last=True, save_on_exception=True))
    if spec.get("sigterm_at_step"):
        callbacks.append(SigtermAtStep(spec["sigterm_at_step"]))
    if spec.get("stop_after_epochs"):
        callbacks.append(StopAfterEpochs(spec["stop_after_epochs"]))
    if spec.get("export"):
        callbacks.append(HFExport(spec["export"]))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=spec["devices"],
        strategy=strategy,
        max_epochs=spec["epochs"],
        logger=False,
        enable_checkpointing=bool(spec.get("checkpoint_dir")),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
        deterministic=True,
        gradient_clip_val=spec.get("gradient_clip_val"),
    )
    try:
        trainer.fit(module, datamodule=data, ckpt_path=spec.get("resume"))
    except SystemExit:  # Lightning's SIGTERMException, raised after the exception checkpoint is written
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"sigterm_at": trainer.global_step}))
        raise
    from torch.distributed.fsdp import FullyShardedDataParallel

    units = [name for name, m in trainer.strategy.model.named_modules() if isinstance(m, FullyShardedDataParallel)]
    result = {
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "losses": record.losses,
        "reference_cache_size": len(module.reference_cache),
        "fsdp_units": units,
    }
    if module.reference_model is not None:
        result["reference_requires_grad"] = any(p.requires_grad for p in module.reference_model.parameters())
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
