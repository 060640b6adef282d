"""Run by test_eval_callbacks_distributed.py in a subprocess (not a test itself).

Trains a tiny Llama for one step on the synthetic TOFU-style set with two CPU processes (``ddp`` or FSDP through
``HFFSDPStrategy``) with the TOFU :class:`Evaluation` attached, then runs ``trainer.test``. Lightning starts rank 1 by
re-running this script, hence a script and not a test. Writes ``<out>/rank<r>.json`` with the callback's test result,
whether the evaluation in ``test`` changed any (local shard of a) weight and whether it left gradients behind.

Usage: python callback_worker.py SPEC.json   (keys: out, model, data, strategy)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch


def _digest(module: pl.LightningModule) -> str:
    """Digest of this rank's parameters (its FSDP shards under FSDP; no collective)."""
    digest = hashlib.sha256()
    for name, tensor in module.named_parameters():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class WeightWatch(pl.Callback):
    """Parameter digests around the test loop (the evaluation runs in between, in ``on_test_epoch_end``)."""

    def __init__(self) -> None:
        self.digests: list[str] = []
        self.grads_left = False

    def on_test_start(self, trainer, pl_module) -> None:
        self.digests.append(_digest(pl_module))

    def on_test_end(self, trainer, pl_module) -> None:
        self.digests.append(_digest(pl_module))
        self.grads_left = any(p.grad is not None for p in pl_module.parameters())


def main(spec_path: str) -> None:
    from baldro_pl.datamodules import TOFUDataModule
    from baldro_pl.metrics import Evaluation, TOFUSuite
    from baldro_pl.modules import UnlearningModule
    from baldro_pl.objectives import NLL, NPO, Mean
    from baldro_pl.strategies import HFFSDPStrategy

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    fsdp = spec["strategy"] == "fsdp"

    def build() -> UnlearningModule:
        return UnlearningModule(
            spec["model"], NPO(beta=0.1), Mean(), NLL(per="sequence"), learning_rate=1e-3, warmup_epochs=0
        )

    def trainer_for(*callbacks: pl.Callback) -> pl.Trainer:
        return pl.Trainer(
            accelerator="cpu",
            devices=2,
            strategy=HFFSDPStrategy(activation_checkpointing_layers=False) if fsdp else spec["strategy"],
            max_epochs=1,
            limit_train_batches=1,
            limit_val_batches=0,
            limit_test_batches=1,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=list(callbacks),
        )

    data = TOFUDataModule(data_dir=spec["data"], forget_split="forget01", tokenizer=spec["model"], batch_size=2, seed=3)
    evaluation = Evaluation(TOFUSuite(max_new_tokens=4, batch_size=4), output_dir=str(out / "eval"))
    module = build()
    trainer_for(evaluation).fit(module, datamodule=data)
    # HFFSDPStrategy refuses to wrap an already wrapped module a second time: test a fresh module under FSDP
    module = build() if fsdp else module
    watch = WeightWatch()
    trainer = trainer_for(watch, evaluation)
    trainer.test(module, datamodule=data)
    result = {
        "world_size": trainer.world_size,
        "test_logs": evaluation.last_result.logs,
        "test_unchanged": watch.digests[0] == watch.digests[1],
        "grads_left": watch.grads_left,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
