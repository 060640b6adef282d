"""Export as a Hugging Face directory (end-of-fit callback and `baldro-pl export` from a checkpoint)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from toy_task import ToyUnlearningData
from transformers import AutoModelForCausalLM, AutoTokenizer

from baldro_pl.callbacks import HFExport
from baldro_pl.checkpoints import CheckpointError
from baldro_pl.export import OutputExistsError, export_checkpoint, main
from baldro_pl.modules import FinetuneModule, UnlearningModule
from baldro_pl.objectives import NPO, BalDROG
from baldro_pl.toy import tiny_llama


@pytest.fixture
def model_dir(tmp_path, people_tokenizer):
    path = tmp_path / "initial"
    tiny_llama(len(people_tokenizer)).save_pretrained(path)
    people_tokenizer.save_pretrained(path)
    return path


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(["[INST] Where does Ava live? [/INST]Ava lives in Oslo."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_finetune_exports_a_loadable_hf_directory(model_dir, people_tokenizer, tmp_path) -> None:
    out = tmp_path / "target"
    module = FinetuneModule(str(model_dir), output_dir=str(out), learning_rate=1e-3)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, datamodule=ToyUnlearningData(people_tokenizer, mode="finetune"))
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == people_tokenizer.pad_token
    torch.testing.assert_close(_logits(reloaded, tokenizer), _logits(module.model.eval(), tokenizer), rtol=0, atol=0)
    initial = AutoModelForCausalLM.from_pretrained(model_dir)
    assert not torch.equal(_logits(initial, tokenizer), _logits(reloaded, tokenizer))


def test_export_command_from_checkpoint_reproduces_the_module(model_dir, people_tokenizer, tmp_path) -> None:
    module = UnlearningModule(str(model_dir), NPO(), BalDROG(), learning_rate=1e-3, warmup_epochs=0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, callbacks=[ckpt], enable_progress_bar=False)
    trainer.fit(module, datamodule=ToyUnlearningData(people_tokenizer))
    out = tmp_path / "unlearned"
    assert main([ckpt.last_model_path, "--output", str(out)]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(
        _logits(reloaded, people_tokenizer), _logits(module.model.eval(), people_tokenizer), rtol=0, atol=0
    )
    # exporting again replaces the directory atomically when asked to; bf16 on request
    path = export_checkpoint(ckpt.last_model_path, out, dtype="bfloat16", overwrite=True)
    assert AutoModelForCausalLM.from_pretrained(path).dtype == torch.bfloat16


def test_export_refuses_what_it_cannot_export(tmp_path, people_tokenizer, tiny_model) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        export_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out")
    bogus = tmp_path / "bogus.ckpt"
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}, "hyper_parameters": {"model": "x/y"}}, bogus)
    with pytest.raises(ValueError, match="no 'model.\\*' weights"):
        export_checkpoint(bogus, tmp_path / "out", model=str(tmp_path))
    built = tmp_path / "built.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, "hyper_parameters": {}}, built)
    with pytest.raises(ValueError, match="pass --model"):
        export_checkpoint(built, tmp_path / "out")


@pytest.fixture
def unlearned_checkpoint(model_dir, people_tokenizer, tmp_path) -> str:
    module = UnlearningModule(str(model_dir), NPO(), BalDROG(), learning_rate=1e-3, warmup_epochs=0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, callbacks=[ckpt], enable_progress_bar=False)
    trainer.fit(module, datamodule=ToyUnlearningData(people_tokenizer))
    return ckpt.last_model_path


def test_export_command_refuses_a_non_empty_destination_unless_overwrite(unlearned_checkpoint, tmp_path, capsys):
    """Issue 10, problem 3: a directory with files, or a file, is refused (one line naming it) and left as it was."""
    out = tmp_path / "unrelated"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main([unlearned_checkpoint, "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "--overwrite" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "model.txt"
    a_file.write_text("a file")
    assert main([unlearned_checkpoint, "--output", str(a_file)]) == 1
    assert str(a_file) in capsys.readouterr().err and a_file.read_text() == "a file"
    with pytest.raises(OutputExistsError, match="not empty"):
        export_checkpoint(unlearned_checkpoint, out)
    # refused before any work: even a checkpoint that does not exist is not looked at
    with pytest.raises(OutputExistsError, match=str(out)):
        export_checkpoint(tmp_path / "missing.ckpt", out)
    # --overwrite replaces them, with nothing left beside them
    assert main([unlearned_checkpoint, "--output", str(out), "--overwrite"]) == 0
    assert (out / "config.json").is_file() and not (out / "notes.txt").exists()
    assert main([unlearned_checkpoint, "--output", str(a_file), "--overwrite"]) == 0
    assert (a_file / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary or .old left
    # an empty directory, or none, is written
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([unlearned_checkpoint, "--output", str(empty)]) == 0
    assert AutoModelForCausalLM.from_pretrained(empty) is not None
    assert main([unlearned_checkpoint, "--output", str(tmp_path / "new" / "dir")]) == 0
    assert (tmp_path / "new" / "dir" / "config.json").is_file()


def test_hf_export_callback_refuses_a_non_empty_dirpath_before_training(model_dir, people_tokenizer, tmp_path):
    out = tmp_path / "unrelated"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    def fit(callback: HFExport) -> UnlearningModule:
        module = UnlearningModule(str(model_dir), NPO(), BalDROG(), learning_rate=1e-3, warmup_epochs=0)
        trainer = pl.Trainer(
            accelerator="cpu",
            max_steps=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            callbacks=[callback],
        )
        try:
            trainer.fit(module, datamodule=ToyUnlearningData(people_tokenizer))
        finally:
            fit.steps = trainer.global_step
        return module

    with pytest.raises(OutputExistsError, match=f"{out}.*overwrite: true"):
        fit(HFExport(str(out)))
    assert fit.steps == 0  # refused before training
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    module = fit(HFExport(str(out), overwrite=True))
    assert fit.steps == 1
    assert (out / "model.safetensors").is_file() and not (out / "notes.txt").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(
        _logits(reloaded, people_tokenizer), _logits(module.model.eval(), people_tokenizer), rtol=0, atol=0
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    fit(HFExport(str(empty)))
    assert (empty / "config.json").is_file()


def test_export_command_refuses_an_unusable_checkpoint_in_one_line(
    unlearned_checkpoint, people_tokenizer, tmp_path, capsys
):
    """Issue 10, problem 5: a truncated file, a directory, a non-checkpoint or another model's checkpoint is refused
    in one line naming the file (exit 2) before anything is written; no library traceback."""
    data = Path(unlearned_checkpoint).read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 3])
    folder = tmp_path / "folder"
    folder.mkdir()
    notes = tmp_path / "notes.ckpt"
    notes.write_text("hello")
    checkpoint = torch.load(unlearned_checkpoint, weights_only=True)
    other = tiny_llama(len(people_tokenizer) + 5, hidden_size=48)
    checkpoint["state_dict"] = {f"model.{k}": v for k, v in other.state_dict().items()}
    other_model = tmp_path / "other.ckpt"
    torch.save(checkpoint, other_model)
    model = checkpoint["hyper_parameters"]["model"]
    cases = {
        truncated: f"is truncated or corrupt ({len(data) // 3} bytes; torch: ",
        folder: "is a directory but not a sharded checkpoint (no .metadata file; files there: none)",
        notes: "is not a PyTorch checkpoint (a .ckpt file written by Lightning)",
        tmp_path / "missing.ckpt": "does not exist",
        other_model: f"is not a checkpoint of the model {model}: ",
    }
    out = tmp_path / "out"
    for path, says in cases.items():
        capsys.readouterr()
        assert main([str(path), "--output", str(out)]) == 2, path
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"baldro-pl export: error: checkpoint {path} {says}"), err
        assert not out.exists()
    with pytest.raises(CheckpointError, match="embed_tokens.weight: \\[.*\\] in the checkpoint, \\[.*\\] in the model"):
        export_checkpoint(other_model, out)
