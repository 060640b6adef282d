"""The bad-input catalogue, models part: missing or broken model and tokenizer directories are refused before any
weights are loaded (headers only), with one line naming the setting, the file and what is wrong; a tokenizer without
pad token gets the exact setting that fixes it; written model directories are as readable as any other file.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest

from baldro_pl import hf
from baldro_pl.datamodules import JsonDataModule
from baldro_pl.hf import check_model_source, load_causal_lm, load_tokenizer, write_hf_directory
from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import NPO
from baldro_pl.toy import tiny_llama, train_tokenizer


@pytest.fixture(scope="module")
def good_model(tmp_path_factory, toy_tokenizer) -> Path:
    """A complete tiny model directory (config, safetensors, tokenizer) to copy and break."""
    directory = tmp_path_factory.mktemp("good") / "model"
    tok = toy_tokenizer
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    tiny_llama(len(tok), **ids).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _sharded(d: Path) -> None:
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}), encoding="utf-8")


# case -> (how to break a copy of the good directory, message with {d} for the directory)
MODEL_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "no_config_json": (
        lambda d: (d / "config.json").unlink(),
        "model: {d} has no config.json, so it is not a model directory written by save_pretrained (files there: "
        "['chat_template.jinja', 'generation_config.json', 'model.safetensors', 'tokenizer.json', "
        "'tokenizer_config.json']); for a GGUF file set gguf_file",
    ),
    "config_json_invalid": (
        lambda d: (d / "config.json").write_text('{"model_type": "llama",', encoding="utf-8"),
        "model: {d}/config.json is not valid JSON (line 1, column 24: Expecting property name enclosed in double "
        "quotes); re-export or re-download the model",
    ),
    "config_json_empty": (
        lambda d: (d / "config.json").write_text("", encoding="utf-8"),
        "model: {d}/config.json is empty; re-export or re-download the model",
    ),
    "config_json_a_list": (
        lambda d: (d / "config.json").write_text("[]", encoding="utf-8"),
        "model: {d}/config.json holds a JSON list; expected an object; re-export or re-download the model",
    ),
    "safetensors_truncated": (
        lambda d: _truncate(d / "model.safetensors"),
        "model: {d}/model.safetensors is truncated ({half} bytes; its header describes {size}); "
        "re-export or re-download the model",
    ),
    "safetensors_header_cut": (
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
        "model: {d}/model.safetensors is truncated (100 bytes; its header alone takes {header}); "
        "re-export or re-download the model",
    ),
    "safetensors_empty": (
        lambda d: (d / "model.safetensors").write_bytes(b""),
        "model: {d}/model.safetensors is truncated or not a safetensors file (0 bytes, less than the 8-byte header "
        "length); re-export or re-download the model",
    ),
    "safetensors_not_safetensors": (
        lambda d: (d / "model.safetensors").write_bytes(b"PK\x03\x04 a zip, not safetensors"),
        "model: {d}/model.safetensors is not a safetensors file (27 bytes; no valid header length in its first 8 "
        "bytes); re-export or re-download the model",
    ),
    "no_weights": (
        lambda d: (d / "model.safetensors").unlink(),
        "model: {d} has no weights (expected one of model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin, pytorch_model.bin.index.json)",
    ),
    "missing_shard": (
        _sharded,
        "model: {d}/model-00002-of-00002.safetensors is missing; re-export or re-download the model",
    ),
}


@pytest.mark.parametrize("case", list(MODEL_CASES), ids=list(MODEL_CASES))
def test_broken_model_directory_is_refused_before_loading(case: str, tmp_path: Path, good_model, monkeypatch) -> None:
    size = (good_model / "model.safetensors").stat().st_size
    directory = _copy(good_model, tmp_path / "model")
    breaker, message = MODEL_CASES[case]
    breaker(directory)

    def no_load(*args, **kwargs):
        raise AssertionError("from_pretrained must not be reached")

    monkeypatch.setattr(hf.AutoModelForCausalLM, "from_pretrained", no_load)
    header = 8 + int.from_bytes((good_model / "model.safetensors").read_bytes()[:8], "little")
    expected = message.format(d=directory, half=size // 2, size=size, header=header)
    for check in (lambda: load_causal_lm(str(directory)), lambda: check_model_source(str(directory))):
        with pytest.raises(ValueError) as info:
            check()
        assert str(info.value) == expected


def test_missing_model_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError) as info:
        load_causal_lm(str(missing))
    assert str(info.value) == (
        f"model: local path {str(missing)!r} does not exist (expected a directory with config.json, a hub name "
        "'org/name', or 'pkg:<package>')"
    )


def test_missing_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError) as info:
        load_causal_lm(str(tmp_path), gguf_file="model.gguf")
    assert str(info.value) == f"model: gguf_file 'model.gguf' is not in {tmp_path} (GGUF files there: ['other.gguf'])"


def test_unknown_name_is_named_as_neither_local_nor_cached(tmp_path: Path, monkeypatch) -> None:
    """``models/target`` (one slash) is read as a hub name; offline, the message says no such local folder exists."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as info:
        load_causal_lm("models/target")
    text = str(info.value)
    assert text.startswith("model: could not load a causal LM from 'models/target': OSError: ")
    assert text.endswith(
        "('models/target' is not a local directory either, so it was looked up as a hub name. HF_HUB_OFFLINE is "
        "set, so hub names work only when already in the local cache.)"
    )
    assert "\n" not in text


def test_model_config_that_transformers_cannot_read_is_one_line(tmp_path: Path, good_model) -> None:
    directory = _copy(good_model, tmp_path / "model")
    (directory / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_causal_lm(str(directory))
    assert str(info.value) == (
        f"model: could not load a causal LM from {str(directory)!r}: ValueError: Unrecognized model in {directory}. "
        "Should have a `model_type` key in its config.json."
    )


# ----------------------------------------------------------------------------------------------- tokenizers
TOKENIZER_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "no_tokenizer_files": (
        lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
        "tokenizer: could not load a tokenizer: {d} has no tokenizer files (expected one of tokenizer.json, "
        "tokenizer.model, vocab.json, tokenizer_config.json, vocab.txt; files there: ['chat_template.jinja', "
        "'config.json', 'generation_config.json', 'model.safetensors'])",
    ),
    "tokenizer_json_invalid": (
        lambda d: (d / "tokenizer.json").write_text('{"version": ', encoding="utf-8"),
        "tokenizer: could not load a tokenizer: {d}/tokenizer.json is not valid JSON (line 1, column 13: "
        "Expecting value)",
    ),
    "config_json_invalid": (
        lambda d: (d / "config.json").write_text("{", encoding="utf-8"),
        "tokenizer: could not load a tokenizer: {d}/config.json is not valid JSON (line 1, column 2: Expecting "
        "property name enclosed in double quotes)",
    ),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES), ids=list(TOKENIZER_CASES))
def test_broken_tokenizer_directory(case: str, tmp_path: Path, good_model) -> None:
    directory = _copy(good_model, tmp_path / "model")
    breaker, message = TOKENIZER_CASES[case]
    breaker(directory)
    with pytest.raises(ValueError) as info:
        load_tokenizer(str(directory))
    assert str(info.value) == message.format(d=directory)


@pytest.fixture
def no_pad_dir(tmp_path: Path) -> Path:
    """A tiny model directory whose tokenizer has an EOS token but no pad token."""
    tok = train_tokenizer(["a b c", "d e f"], vocab_size=280)
    tok.pad_token = None
    directory = tmp_path / "nopad"
    tiny_llama(len(tok)).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("setting", ["tokenizer", "data.tokenizer"])
def test_tokenizer_without_pad_token_says_which_setting_fixes_it(setting: str, no_pad_dir: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_tokenizer(str(no_pad_dir), setting=setting)
    assert str(info.value) == (
        f"{setting}: tokenizer {no_pad_dir} has no pad token; set pad_token to one of its tokens, e.g. its EOS token "
        '"</s>" (what open-unlearning does for Llama-2/3): in a config `model.init_args.pad_token: "</s>"`, on the '
        'command line --model.init_args.pad_token "</s>" (the CLI passes it on to the data)'
    )
    assert load_tokenizer(str(no_pad_dir), pad_token="</s>", setting=setting).pad_token == "</s>"


def test_tokenizer_without_pad_or_eos_token(no_pad_dir: Path) -> None:
    tok = load_tokenizer(str(no_pad_dir), pad_token="</s>")
    tok.pad_token = None
    tok.eos_token = None
    with pytest.raises(ValueError) as info:
        load_tokenizer(tok)
    assert str(info.value) == (
        f"tokenizer: tokenizer {type(tok).__name__} has no pad token (and no EOS token); set pad_token to one of its "
        "tokens (CLI: --model.init_args.pad_token TOKEN, passed on to the data)"
    )


def test_broken_model_stops_fit_before_any_batch(tmp_path: Path, good_model, toy_tokenizer) -> None:
    """Through Lightning: a truncated safetensors file fails ``fit`` before the first batch, in one line."""
    directory = _copy(good_model, tmp_path / "model")
    _truncate(directory / "model.safetensors")
    forget = tmp_path / "forget.jsonl"
    forget.write_text('{"question": "Who?", "answer": "Me."}\n', encoding="utf-8")
    batches = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, *args) -> None:
            batches.append(1)

    module = UnlearningModule(str(directory), NPO())
    data = JsonDataModule(forget=str(forget), tokenizer=toy_tokenizer, batch_size=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Spy()],
    )
    with pytest.raises(ValueError, match=r"^model: .*model\.safetensors is truncated \(\d+ bytes; its header"):
        trainer.fit(module, datamodule=data)
    assert batches == []


# ----------------------------------------------------------------------------------------------- permissions
@pytest.mark.parametrize(
    ("umask", "dir_mode", "file_mode"), [(0o027, 0o750, 0o640), (0o002, 0o775, 0o664)], ids=["027", "002"]
)
def test_written_model_directory_follows_the_umask(
    umask: int, dir_mode: int, file_mode: int, tmp_path: Path, tiny_model, toy_tokenizer
) -> None:
    """Not the private 0700/0600 of a temporary folder: what mkdir/open would give under the umask."""
    previous = os.umask(umask)
    try:
        out = write_hf_directory(tiny_model.config, tiny_model.state_dict(), toy_tokenizer, tmp_path / "export")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == dir_mode
    files = sorted(out.iterdir())
    assert files and {stat.S_IMODE(f.stat().st_mode) for f in files} == {file_mode}
    assert load_causal_lm(str(out)).config.vocab_size == tiny_model.config.vocab_size
