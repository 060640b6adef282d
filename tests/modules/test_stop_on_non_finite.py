"""StopOnNonFinite: a NaN/inf training loss stops the run, names the step, and leaves finite checkpoints (issue 10)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from toy_task import ToyUnlearningData

from baldro_pl.callbacks import NonFiniteLossError, StopOnNonFinite
from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import NPO, BalDROG
from baldro_pl.toy import tiny_llama


class NaNAtStep(UnlearningModule):
    """The toy module, with its loss turned into ``value`` once ``global_step`` reaches ``step``."""

    def __init__(self, *args, step: int, value: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bad_step, self.bad_value = step, value

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * self.bad_value if self.global_step >= self.bad_step else loss


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(
    value, people_tokenizer, tmp_path
) -> None:
    model_dir = tmp_path / "initial"
    tiny_llama(len(people_tokenizer)).save_pretrained(model_dir)
    people_tokenizer.save_pretrained(model_dir)
    module = NaNAtStep(str(model_dir), NPO(), BalDROG(), learning_rate=1e-3, warmup_epochs=0, step=3, value=value)
    # a checkpoint every 2 steps: step 2 is the last good one; save_on_exception would otherwise write step 3's
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True, save_on_exception=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=6,
        logger=False,
        callbacks=[StopOnNonFinite(), ckpt],
        enable_progress_bar=False,
    )
    with pytest.raises(NonFiniteLossError, match=r"training loss is (nan|inf) at step 3 \(epoch 1\); last finite loss"):
        trainer.fit(module, datamodule=ToyUnlearningData(people_tokenizer))
    assert trainer.global_step == 3
    assert all(torch.isfinite(p).all() for p in module.model.parameters())  # the update was not applied
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
