"""Outputs a teammate can read and a crash cannot tear: file permissions, atomic checkpoints, safe hparams.yaml."""

from __future__ import annotations

import copy
import errno
import os
import shutil
import stat
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from baldro_pl.checkpoint_io import AtomicCheckpointIO, use_atomic_checkpoints
from baldro_pl.datamodules import PromptFormat, encode_qa, pad_samples
from baldro_pl.files import current_umask, plain_open_mode, write_atomic, write_text_atomic
from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import KL, NLL, NPO, WGA, BalDRODV, BalDROG, GradAscent, Mean, SatImp, SimNPO


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------- permissions
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_new_file_gets_the_mode_plain_open_gives(mask: int, expected: int, umask, tmp_path: Path) -> None:
    umask(mask)
    assert current_umask() == mask
    written = write_text_atomic(tmp_path / "logs" / "TOFU_EVAL.json", "{}\n")
    assert _mode(written) == expected
    with open(tmp_path / "plain.txt", "w") as f:  # the reference: what open() gives under the same umask
        f.write("x")
    assert _mode(written) == _mode(tmp_path / "plain.txt")
    assert written.read_text() == "{}\n"
    assert _leftovers(written.parent) == []


@pytest.mark.parametrize(("mask", "folder_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_generated_dataset_folder_follows_the_umask(mask, folder_mode, file_mode, umask, tmp_path) -> None:
    """The synthetic set (the demo's data) is built in a private mkdtemp folder; once renamed it is shared as usual."""
    from baldro_pl.datamodules.synthetic import write_synthetic_tofu

    umask(mask)
    target = write_synthetic_tofu(tmp_path / "data", n_authors=4, seed=0)
    assert _mode(Path(target)) == folder_mode
    files = sorted(Path(target).iterdir())
    assert files and all(_mode(f) == file_mode for f in files)


def test_existing_file_keeps_its_mode(umask, tmp_path: Path) -> None:
    umask(0o022)
    path = tmp_path / "summary.csv"
    path.write_text("old")
    path.chmod(0o660)
    write_text_atomic(path, "new")
    assert (path.read_text(), _mode(path)) == ("new", 0o660)
    assert plain_open_mode(tmp_path / "absent") == 0o644


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_text("complete old content")

    def disk_full(f) -> None:
        f.write(b"half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, disk_full)
    assert path.read_text() == "complete old content"
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "new.json", disk_full)
    assert not (tmp_path / "new.json").exists()
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------- checkpoints
def _checkpoint(value: float) -> dict:
    return {"state_dict": {"w": torch.full((64, 64), value)}, "global_step": int(value)}


def _partial_torch_save(monkeypatch) -> None:
    """torch.save that writes part of the file, then fails as a full disk does."""

    def save(obj, f, *args, **kwargs) -> None:
        f.write(b"PK\x03\x04 a truncated zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)


def _temp_on_another_device_and_disk_full(monkeypatch) -> None:
    """A temporary file on another device than the checkpoint (a tmpfs /tmp) and a full checkpoint disk: a rename
    across folders fails with EXDEV, so a commit falls back to copying, which runs out of space half-way."""
    real_rename, real_replace = os.rename, os.replace

    def across_devices(src, dst) -> bool:
        return os.path.dirname(os.path.abspath(src)) != os.path.dirname(os.path.abspath(dst))

    def rename(src, dst, *args, **kwargs):
        if across_devices(src, dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if across_devices(src, dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst, *args, **kwargs)

    def copyfile(src, dst, *args, **kwargs):
        with open(src, "rb") as source, open(dst, "wb") as target:
            target.write(source.read()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "copyfile", copyfile)


FAILURES = {
    "torch.save fails mid-write": _partial_torch_save,
    "disk full while committing": _temp_on_another_device_and_disk_full,
}


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("existing", [True, False], ids=["over an old checkpoint", "new name"])
def test_checkpoint_never_truncated_under_its_name(failure: str, existing: bool, tmp_path: Path, monkeypatch) -> None:
    """After a save that hits a full disk, the checkpoint's name holds the old checkpoint, the new one whole, or
    nothing. Lightning's TorchCheckpointIO fails the second case: it commits a temporary file of the system's
    temporary folder with shutil.move, so its name is left holding the first 100 bytes of the new checkpoint."""
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "epoch=1-step=26.ckpt"
    if existing:
        io.save_checkpoint(_checkpoint(1.0), path)
    FAILURES[failure](monkeypatch)
    error = None
    try:
        io.save_checkpoint(_checkpoint(2.0), path)
    except OSError as err:
        error = err
    monkeypatch.undo()
    saved = error is None
    assert saved or error.errno == errno.ENOSPC
    # a failing torch.save must fail the save; a copy is never needed when the temporary file is beside the target
    assert saved is (failure == "disk full while committing")
    if saved or existing:
        loaded = io.load_checkpoint(path)
        value = 2.0 if saved else 1.0
        assert loaded["global_step"] == int(value)
        assert torch.equal(loaded["state_dict"]["w"], torch.full((64, 64), value))
    else:
        assert not path.exists()
    assert _leftovers(path.parent) == []


def test_checkpoint_written_whole_and_readable_by_the_group(umask, tmp_path: Path) -> None:
    umask(0o022)
    io = AtomicCheckpointIO()
    path = tmp_path / "a" / "b" / "last.ckpt"
    io.save_checkpoint(_checkpoint(3.0), path)
    assert _mode(path) == 0o644
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.full((64, 64), 3.0))
    with pytest.raises(TypeError, match="storage_options"):  # Lightning's own refusal is kept
        io.save_checkpoint(_checkpoint(3.0), path, storage_options={"x": 1})


def test_trainer_saves_through_the_atomic_io(tmp_path: Path) -> None:
    from lightning.pytorch.demos.boring_classes import BoringModel

    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")],
    )  # fmt: skip
    assert use_atomic_checkpoints(trainer) is True
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    assert use_atomic_checkpoints(trainer) is False  # a CheckpointIO other than Lightning's plain one is kept
    trainer.fit(BoringModel())
    saved = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert [p.name for p in saved] == ["epoch=0-step=2.ckpt"]
    assert torch.load(saved[0], weights_only=True)["global_step"] == 2
    plain = pl.Trainer(accelerator="cpu", logger=False, plugins=[TorchCheckpointIO()])
    assert use_atomic_checkpoints(plain) is True


# ---------------------------------------------------------------------- hparams.yaml
OBJECTS = [
    NPO(beta=0.2), SimNPO(beta=3.5, delta=1.0), SatImp(beta1=6.0, beta2=0.5), WGA(beta=2.0), GradAscent(), Mean(),
    BalDRODV(temperature=2.0, emphasis="easy", unit="token"), BalDRODV(score="nll"),
    BalDROG(ratio=0.25, subsample_retain=False, seed=7), NLL(per="sequence"), KL(normalise="reference"),
]  # fmt: skip


@pytest.mark.parametrize("obj", OBJECTS, ids=repr)
def test_every_objective_saves_as_plain_data_and_comes_back(obj) -> None:
    from baldro_pl.modules.base import from_config, plain_config

    config = plain_config(obj)
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    assert config["class_path"] == f"baldro_pl.objectives.{type(obj).__name__}"
    assert repr(from_config(config, object, "x")) == repr(obj)


def test_from_config_names_the_setting() -> None:
    from baldro_pl.modules.base import from_config
    from baldro_pl.objectives import ForgetLoss

    with pytest.raises(ValueError, match=r"^forget_loss: class_path 'baldro_pl.objectives.Mean' is not a ForgetLoss$"):
        from_config({"class_path": "baldro_pl.objectives.Mean"}, ForgetLoss, "forget_loss")
    with pytest.raises(ValueError, match=r"^forget_loss: class_path 'baldro_pl.objectives.NOPE' cannot be imported$"):
        from_config({"class_path": "baldro_pl.objectives.NOPE"}, ForgetLoss, "forget_loss")


@pytest.mark.parametrize("logger_cls", [TensorBoardLogger, CSVLogger])
def test_fit_writes_a_safe_loadable_hparams_yaml(logger_cls, tiny_model, toy_tokenizer, tmp_path: Path) -> None:
    """A module built from objects (as the demo builds it): hparams.yaml has no !!python tags, and both the YAML and
    the checkpoint's hyperparameters rebuild the same objective."""
    tok = toy_tokenizer
    fmt = PromptFormat.llama2_chat()
    samples = [encode_qa(tok, "Where is Paris?", "Paris is in France.", fmt, index=i) for i in range(4)]
    batch = pad_samples(samples, tok.pad_token_id)
    loader = DataLoader([{"forget": batch, "retain": batch}], batch_size=None)
    module = UnlearningModule(
        copy.deepcopy(tiny_model), WGA(beta=2.0), BalDRODV(temperature=0.5, emphasis="easy"), NLL(per="sequence"),
        alpha=0.5, learning_rate=1e-3, warmup_epochs=0, track_forgetting=False, schedule="hf_trainer",
    )  # fmt: skip
    module.tokenizer = tok
    logger = logger_cls(tmp_path / "runs", name="demo")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, logger=logger, callbacks=[checkpoint], enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)

    text = (Path(logger.log_dir) / "hparams.yaml").read_text()
    assert "!!python" not in text
    hparams = yaml.safe_load(text)
    assert hparams["forget_loss"] == {"class_path": "baldro_pl.objectives.WGA", "init_args": {"beta": 2.0}}
    assert hparams["aggregator"] == {
        "class_path": "baldro_pl.objectives.BalDRODV",
        "init_args": {"temperature": 0.5, "emphasis": "easy", "unit": "sample", "score": "loss", "scope": "global"},
    }
    assert hparams["retain_loss"] == {"class_path": "baldro_pl.objectives.NLL", "init_args": {"per": "sequence"}}
    assert (hparams["alpha"], hparams["schedule"], hparams["learning_rate"]) == (0.5, "hf_trainer", 1e-3)
    assert "model" not in hparams  # a built model is not a hyperparameter

    rebuilt = UnlearningModule(copy.deepcopy(tiny_model), **hparams)
    assert repr(rebuilt.objective) == repr(module.objective)
    restored = UnlearningModule.load_from_checkpoint(checkpoint.best_model_path, model=copy.deepcopy(tiny_model))
    assert repr(restored.objective) == repr(module.objective)
    assert restored.schedule == "hf_trainer"
    for (name, a), (_, b) in zip(module.model.named_parameters(), restored.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
