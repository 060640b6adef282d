"""Mid-epoch resume: a run stopped inside an epoch continues with the next batch of the same seeded order.

The datamodule's ``state_dict``/``load_state_dict`` is the one mechanism (the training loader's own Lightning state
is empty). It must work whether the training loader is built after the checkpoint's datamodule state
is restored (``estimated_stepping_batches`` in ``configure_optimizers``) or before it (``schedule="hf_trainer"``
sizes the epoch in ``setup``), and checkpoints written before issue 11, which also carry a loader state in the fit
loop, must still resume.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from trainers import quiet_trainer

from baldro_pl.datamodules import JsonDataModule
from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import NLL, NPO, BalDRODV

N_FORGET, BATCH, STOP_AT = 10, 2, 7  # 5 batches per epoch; stopped after 2 batches of the second epoch


class _Interrupt(Exception):
    """Stands for a preemption."""


class _Record(pl.Callback):
    """Keeps the forget rows of every trained batch; with ``stop_at``, stops there and writes a checkpoint."""

    def __init__(self, stop_at: int | None = None, path: Path | None = None) -> None:
        self.forget: list[list[int]] = []
        self.stop_at, self.path = stop_at, path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.stop_at:
            raise _Interrupt
        self.forget.append(batch["forget"]["index"].tolist())

    def on_exception(self, trainer, pl_module, exception) -> None:
        trainer.save_checkpoint(self.path)


def _write_qa(path: Path, n: int, who: str) -> str:
    rows = [{"question": f"Where was {who} {i} born?", "answer": f"{who} {i} was born in Paris."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    return _write_qa(tmp_path / "forget.jsonl", N_FORGET, "author"), _write_qa(tmp_path / "retain.jsonl", 7, "poet")


def _fit(
    model, tok, files, schedule: str, record: _Record, ckpt_path: Path | None = None, reload: int = 0
) -> UnlearningModule:
    module = UnlearningModule(
        copy.deepcopy(model), NPO(beta=0.1), BalDRODV(temperature=0.5), NLL(), learning_rate=1e-3, schedule=schedule
    )
    module.tokenizer = tok
    data = JsonDataModule(forget=files[0], retain=files[1], tokenizer=tok, batch_size=BATCH, seed=5)
    trainer = quiet_trainer(None, max_epochs=2, callbacks=[record], reload_dataloaders_every_n_epochs=reload)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


@pytest.mark.parametrize(
    ("schedule", "legacy", "reload"),
    [
        ("lightning", False, 0),
        ("lightning", True, 0),  # a checkpoint as written before issue 11
        ("hf_trainer", False, 0),  # the loader is built before the checkpoint is restored
        ("hf_trainer", True, 0),
        ("lightning", False, 1),  # the loader is built again after the checkpoint is restored
        ("lightning", True, 1),
    ],
)
def test_resume_mid_epoch_continues_with_the_next_batch(
    schedule: str, legacy: bool, reload: int, files, tiny_model, toy_tokenizer, tmp_path: Path
) -> None:
    full = _Record()
    uninterrupted = _fit(tiny_model, toy_tokenizer, files, schedule, full, reload=reload)
    assert len(full.forget) == 2 * N_FORGET // BATCH

    path = tmp_path / "stopped.ckpt"
    with pytest.raises(_Interrupt):
        _fit(tiny_model, toy_tokenizer, files, schedule, _Record(stop_at=STOP_AT, path=path), reload=reload)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert checkpoint["JsonDataModule"] == {"train_epoch": 1, "train_batches_done": STOP_AT - N_FORGET // BATCH}
    if legacy:  # what the training loader also saved before issue 11 (Lightning's stateful-dataloader protocol)
        checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] = [{"epoch": 1, "batches_done": 2}]
        torch.save(checkpoint, path)

    after = _Record()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = _fit(tiny_model, toy_tokenizer, files, schedule, after, ckpt_path=path, reload=reload)
    assert not [w for w in caught if "not resumable" in str(w.message)], "Lightning says the loader cannot resume"
    assert after.forget == full.forget[STOP_AT:]
    for (name, a), (_, b) in zip(uninterrupted.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"parameter {name} differs after resume")


def _datamodule(files, tok, batches_done: int) -> JsonDataModule:
    data = JsonDataModule(forget=files[0], retain=files[1], tokenizer=tok, batch_size=BATCH, seed=5)
    progress = SimpleNamespace(current=SimpleNamespace(completed=batches_done))
    data.trainer = SimpleNamespace(
        distributed_sampler_kwargs=None, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
    )
    return data


def _rows(loader, epoch: int) -> list[int]:
    loader.sampler.set_epoch(epoch)
    return [i for batch in loader for i in batch["forget"]["index"].tolist()]


@pytest.mark.parametrize("loader_first", [False, True], ids=["state_then_loader", "loader_then_state"])
def test_state_round_trip_skips_the_trained_batches_once(loader_first: bool, files, toy_tokenizer) -> None:
    saved = _datamodule(files, toy_tokenizer, batches_done=3)
    assert saved.state_dict() == {}  # no training loader yet: nothing to resume
    whole = _rows(saved.train_dataloader(), 1)
    state = saved.state_dict()
    assert state == {"train_epoch": 1, "train_batches_done": 3}

    restored = _datamodule(files, toy_tokenizer, batches_done=0)
    restored.setup("fit")
    if loader_first:
        loader = restored.train_dataloader()
        restored.load_state_dict(state)
    else:
        restored.load_state_dict(state)
        loader = restored.train_dataloader()
    assert _rows(loader, 1) == whole[3 * BATCH :]
    assert _rows(loader, 1) == whole  # the skip applies to the resumed pass only
    assert _rows(restored.train_dataloader(), 1) == whole[3 * BATCH :]  # a loader rebuilt in the same fit
    assert _rows(restored.train_dataloader(), 2) == _rows(saved.train_dataloader(), 2)  # other epochs: no skip
    restored.load_state_dict({})  # a checkpoint without a training position changes nothing
    assert _rows(loader, 1) == whole
    restored.setup("fit")  # a new fit: the position restored for the last one is gone
    assert _rows(restored.train_dataloader(), 1) == whole
