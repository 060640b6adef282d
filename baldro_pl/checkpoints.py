"""Check a Lightning checkpoint before any training, evaluation or export work is done with it.

``baldro-pl fit/validate/test --ckpt_path X`` and ``baldro-pl export X`` call these first, so that a truncated file,
a file that is not a checkpoint, a directory that is not a sharded checkpoint, or a checkpoint of a different model
is refused in one line naming the file and what is wrong, instead of a library traceback after the model and the
data were loaded. Only what is cheap is read: a ``.ckpt`` file is opened memory-mapped (no tensor data is read), and
a model's expected weight shapes come from its ``config.json`` (built on the ``meta`` device).

This module imports torch and transformers lazily: ``baldro_pl.cli`` imports it to catch :class:`CheckpointError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: ``ckpt_path`` values Lightning resolves itself (no file to check).
SPECIAL_CKPT_PATHS = frozenset({"last", "best", "hpc", "registry"})

SAFETENSORS_HINT = "a safetensors weights file, not a Lightning checkpoint (a Hugging Face model directory holds it)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""


def is_local_checkpoint_path(path: Any) -> bool:
    """Whether ``ckpt_path`` names a local file or directory to check (not None, ``last``/``best``/..., or a URL)."""
    if path is None:
        return False
    text = str(path)
    return bool(text) and text not in SPECIAL_CKPT_PATHS and not text.startswith("registry:") and "://" not in text


def _first_line(err: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    for line in lines:  # torch's weights-only refusal names the offending global on a later line
        if "Unsupported global" in line or "Unsupported operand" in line:  # without torch's advice to allow it
            text = line.split("WeightsUnpickler error:")[-1].split(" was not an allowed global")[0].strip()
            break
    text = text.replace("\x1b[1m", "").replace("\x1b[0m", "")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_like_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(10)
    return len(head) == 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") > 0


def read_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint") -> dict[str, Any]:
    """Open a ``.ckpt`` file memory-mapped (weights-only) and return its top-level dictionary, or refuse it.

    Raises:
        CheckpointError: missing, a directory, empty, truncated, not a PyTorch checkpoint, holding objects the
            weights-only loader refuses, or not a dictionary with a ``state_dict`` (a Lightning checkpoint).
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory; expected a .ckpt file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes)")
    if _looks_like_safetensors(path):
        raise CheckpointError(f"{what} {path} is {SAFETENSORS_HINT}")
    with path.open("rb") as f:
        magic = f.read(4)
    try:
        if magic == b"PK\x03\x04":  # the zip format of torch.save: opened memory-mapped, no tensor data read
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        elif magic[:1] == b"\x80":  # torch.save's legacy (pickle) format
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"{what} {path} is not a PyTorch checkpoint (a .ckpt file written by Lightning)")
    except CheckpointError:
        raise
    except Exception as err:
        if type(err).__name__ == "UnpicklingError":
            raise CheckpointError(
                f"{what} {path} holds Python objects that torch's weights-only loader refuses ({_first_line(err)}); "
                "checkpoints written by baldro-pl hold only tensors and plain values"
            ) from err
        if magic == b"PK\x03\x04":
            raise CheckpointError(
                f"{what} {path} is truncated or corrupt ({size} bytes; torch: {_first_line(err, 80)})"
            ) from err
        raise CheckpointError(f"{what} {path} cannot be read as a PyTorch checkpoint ({_first_line(err)})") from err
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{what} {path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint")
    if not isinstance(checkpoint.get("state_dict"), Mapping):
        keys = sorted(map(str, checkpoint))[:3]
        kind = "a bare state dict" if checkpoint and all(_is_tensor(v) for v in checkpoint.values()) else "a dict"
        raise CheckpointError(
            f"{what} {path} is not a Lightning checkpoint: {kind} without 'state_dict' (keys: {keys})"
        )
    return dict(checkpoint)


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def check_sharded_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint") -> None:
    """Refuse a directory that is not a sharded (distributed-checkpoint) Lightning checkpoint with readable metadata.

    Raises:
        CheckpointError: no ``.metadata`` file, or one that cannot be read.
    """
    path = Path(path)
    metadata = path / ".metadata"
    if not metadata.is_file():
        present = sorted(p.name for p in path.iterdir())[:5]
        raise CheckpointError(
            f"{what} {path} is a directory but not a sharded checkpoint (no .metadata file; files there: "
            f"{present or 'none'}); expected a .ckpt file or a sharded checkpoint directory"
        )
    try:
        from torch.distributed.checkpoint import FileSystemReader

        FileSystemReader(str(path)).read_metadata()
    except Exception as err:
        raise CheckpointError(
            f"{what} {path}: its .metadata cannot be read, the sharded checkpoint is truncated or corrupt "
            f"({_first_line(err, 80)})"
        ) from err


def check_checkpoint_file(
    path: str | os.PathLike, *, what: str = "checkpoint", for_resume: bool = False
) -> dict[str, Any] | None:
    """Check a checkpoint path (a ``.ckpt`` file or a sharded directory) and return the file's contents (memory-mapped).

    Returns None for a sharded directory (its weights are checked by Lightning when loaded).

    Args:
        path: the ``.ckpt`` file or sharded checkpoint directory.
        what: how messages name it (``checkpoint``, ``--ckpt_path``...).
        for_resume: the checkpoint must hold the optimizer state (``fit`` resumes training from it).

    Raises:
        CheckpointError: as :func:`read_checkpoint` and :func:`check_sharded_checkpoint`.
    """
    path = Path(path)
    if path.is_dir():
        check_sharded_checkpoint(path, what=what)
        return None
    checkpoint = read_checkpoint(path, what=what)
    if for_resume and "optimizer_states" not in checkpoint:
        raise CheckpointError(
            f"{what} {path} holds only the model weights (saved with save_weights_only): it can be tested or "
            "exported, but training cannot resume from it"
        )
    return checkpoint


def expected_weight_shapes(source: str, *, gguf_file: str | None = None) -> dict[str, tuple[int, ...]] | None:
    """Names and shapes of the Hugging Face model's weights at ``source``, from its config on the ``meta`` device.

    Returns None when they cannot be known cheaply (a GGUF file, a hub name not in the local cache).
    """
    if gguf_file:
        return None
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from baldro_pl.hf import resolve_source

        config = AutoConfig.from_pretrained(resolve_source(source, "model"))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # no config to compare with: Lightning's own loading reports the problem
        return None
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else None


def check_weights_match(
    path: str | os.PathLike,
    weights: Mapping[str, Any],
    expected: Mapping[str, tuple[int, ...]],
    *,
    model: str,
    what: str = "checkpoint",
) -> None:
    """Refuse a checkpoint whose weights do not fit the model: missing or unexpected names, or different shapes.

    Args:
        path: the checkpoint, for messages.
        weights: the checkpoint's weights, by name (tensors or anything with ``shape``).
        expected: the model's weight shapes, by the same names.
        model: what the model is, for the message (its source).
        what: how messages name the checkpoint.

    Raises:
        CheckpointError: one line with the counts and the first differences.
    """
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    different = [(k, _shape(weights[k]), expected[k]) for k in expected if k in weights]
    different = [(k, got, want) for k, got, want in different if got is not None and got != tuple(want)]
    if not (missing or unexpected or different):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's weights missing (e.g. {', '.join(missing[:2])})")
    if unexpected:
        parts.append(f"{len(unexpected)} weights the model lacks (e.g. {', '.join(unexpected[:2])})")
    if different:
        name, got, want = different[0]
        parts.append(
            f"{len(different)} of another shape (e.g. {name}: {list(got)} in the checkpoint, {list(want)} in the model)"
        )
    raise CheckpointError(f"{what} {path} is not a checkpoint of the model {model}: {'; '.join(parts)}")


def check_checkpoint_for_module(path: str | os.PathLike, module: Any, *, for_resume: bool = False) -> None:
    """Check ``--ckpt_path`` against the run's module before Lightning loads it (file, then weights vs the model).

    The module's Hugging Face model weights (``model.*`` in the Lightning state dict) are compared by name and
    shape with the model the module will build (its live model when already built, else its source's config).
    Other entries of the state dict are left to Lightning.

    Raises:
        CheckpointError: one line naming the file and what is wrong.
    """
    checkpoint = check_checkpoint_file(path, for_resume=for_resume)
    if checkpoint is None:
        return
    built = getattr(module, "model", None)
    source = getattr(module, "model_source", None)
    if built is not None and hasattr(built, "state_dict"):
        expected = {name: tuple(t.shape) for name, t in built.state_dict().items()}
        described = type(built).__name__
    elif isinstance(source, str):
        expected = expected_weight_shapes(source, gguf_file=getattr(module, "gguf_file", None))
        described = source
    else:
        return
    if expected is None:
        return
    state = checkpoint["state_dict"]
    weights = {k[len("model.") :]: v for k, v in state.items() if isinstance(k, str) and k.startswith("model.")}
    if not weights:
        raise CheckpointError(
            f"checkpoint {path}: its state_dict has no 'model.*' weights, so it is not a checkpoint of a baldro-pl "
            f"module (keys: {sorted(map(str, state))[:3]})"
        )
    check_weights_match(path, weights, expected, model=described)
