"""Export a Lightning checkpoint (full ``.ckpt`` file or sharded FSDP directory) as a Hugging Face model directory.

    baldro-pl export runs/tofu/checkpoints/last.ckpt --output runs/tofu/unlearned-hf

The architecture and tokenizer come from the model source the run started from (read from the checkpoint's
hyperparameters unless ``--model`` is given); the weights come from the checkpoint. The frozen reference model, if
the run had one, is not part of the checkpoint and not exported.

Before anything is written, the checkpoint is checked (:mod:`baldro_pl.checkpoints`): a missing, truncated or
non-checkpoint file, a directory that is not a sharded checkpoint, or weights that do not fit the model's config are
refused in one line naming the file (exit 2). torch and transformers are imported only when a checkpoint is
exported, so that ``baldro-pl export --help`` is immediate.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baldro_pl.checkpoints import CheckpointError, check_checkpoint_file, check_weights_match, expected_weight_shapes

if TYPE_CHECKING:  # pragma: no cover
    import torch


class OutputExistsError(FileExistsError):
    """The output path exists and is not an empty directory (pass ``--overwrite`` to replace it)."""


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Refuse to replace ``path`` if it is a file or a non-empty directory, unless ``overwrite``.

    Raises:
        OutputExistsError: naming the path.
    """
    path = Path(path)
    if overwrite or not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink():
        if next(path.iterdir(), None) is None:
            return
        raise OutputExistsError(f"output directory {path} exists and is not empty; refusing to replace it")
    raise OutputExistsError(f"output path {path} exists and is not a directory; refusing to replace it")


def load_lightning_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a Lightning checkpoint: a ``.ckpt`` file, or a sharded (FSDP distributed-checkpoint) directory.

    Raises:
        CheckpointError: the path is missing, truncated, not a checkpoint, or a directory without ``.metadata``.
    """
    path = Path(path)
    checkpoint = check_checkpoint_file(path)
    if checkpoint is not None:
        return checkpoint
    from baldro_pl.strategies import load_sharded_checkpoint

    try:
        checkpoint = load_sharded_checkpoint(path)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path}: the sharded checkpoint cannot be read ({err})") from err
    if "model" in checkpoint and "state_dict" not in checkpoint:
        checkpoint["state_dict"] = checkpoint.pop("model")
    return checkpoint


def hf_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The Hugging Face model's weights in a Lightning checkpoint (``model.`` prefix removed)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint: no 'state_dict' (is this a Lightning checkpoint?)")
    weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if not weights:
        raise CheckpointError("checkpoint: its state_dict has no 'model.*' weights (not a baldro-pl module checkpoint)")
    return weights


def export_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    model: str | None = None,
    tokenizer: str | None = None,
    gguf_file: str | None = None,
    pad_token: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the weights of a checkpoint as a Hugging Face directory (safetensors, config, tokenizer), atomically.

    Args:
        checkpoint_path: ``.ckpt`` file or sharded checkpoint directory.
        output_dir: the directory to create; written beside it, then renamed into place.
        overwrite: replace ``output_dir`` if it is a file or a non-empty directory (else: :class:`OutputExistsError`,
            before the checkpoint is read).
        model: the model source the run started from (default: the checkpoint's ``model`` hyperparameter).
        tokenizer: tokenizer source (default: the checkpoint's ``tokenizer`` hyperparameter, else the model source).
        gguf_file: GGUF file inside the model source, as for the modules (default: from the checkpoint's
            hyperparameters).
        pad_token: pad token to set, as for the modules (default: from the checkpoint's hyperparameters).
        dtype: save in this dtype (``float32``/``bfloat16``; default: as stored in the checkpoint).
    """
    import torch
    from transformers import AutoConfig

    from baldro_pl.hf import load_tokenizer, resolve_source, write_hf_directory

    check_output_dir(output_dir, overwrite=overwrite)
    checkpoint = load_lightning_checkpoint(checkpoint_path)
    try:
        weights = hf_weights(checkpoint)
    except CheckpointError as err:
        raise CheckpointError(f"{str(err).replace('checkpoint:', f'checkpoint {checkpoint_path}:', 1)}") from err
    hparams = checkpoint.get("hyper_parameters", {}) or {}
    source = model or hparams.get("model")
    if not isinstance(source, str):
        raise ValueError(
            "export: the checkpoint does not name its model source (the run was given a built model); pass --model"
        )
    gguf_file = gguf_file or hparams.get("gguf_file")
    resolved = resolve_source(source, "model")
    expected = expected_weight_shapes(resolved, gguf_file=gguf_file)
    if expected is not None:
        check_weights_match(checkpoint_path, weights, expected, model=source)
    config = AutoConfig.from_pretrained(resolved, **({"gguf_file": gguf_file} if gguf_file else {}))
    tok = load_tokenizer(
        tokenizer or hparams.get("tokenizer") or source,
        gguf_file=gguf_file if not (tokenizer or hparams.get("tokenizer")) else None,
        pad_token=pad_token or hparams.get("pad_token"),
    )
    try:
        return write_hf_directory(config, weights, tok, output_dir, dtype=getattr(torch, dtype) if dtype else None)
    except ValueError as err:
        raise ValueError(f"export: {checkpoint_path}: {err}") from err


def main(argv: list[str] | None = None) -> int:
    """``baldro-pl export CKPT --output DIR [--model SRC] [--tokenizer SRC] [--dtype bfloat16]``."""
    parser = argparse.ArgumentParser(prog="baldro-pl export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="Lightning checkpoint: a .ckpt file or a sharded checkpoint directory")
    parser.add_argument("--output", "-o", required=True, help="Hugging Face directory to write")
    parser.add_argument("--model", help="model source the run started from (default: from the checkpoint)")
    parser.add_argument("--tokenizer", help="tokenizer source (default: from the checkpoint, else the model)")
    parser.add_argument("--gguf-file", help="GGUF file inside the model source")
    parser.add_argument("--pad-token", help="pad token to set if the tokenizer has none")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="dtype to save in")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
    args = parser.parse_args(argv)
    try:
        path = export_checkpoint(
            args.checkpoint,
            args.output,
            model=args.model,
            tokenizer=args.tokenizer,
            gguf_file=args.gguf_file,
            pad_token=args.pad_token,
            dtype=args.dtype,
            overwrite=args.overwrite,
        )
    except OutputExistsError as err:
        print(f"baldro-pl export: {err} (pass --overwrite to replace it)", file=sys.stderr)
        return 1
    except ValueError as err:  # CheckpointError, a model source that does not resolve, ...: one line, exit 2
        from baldro_pl.cli import debug_enabled

        if debug_enabled():
            raise
        print(f"baldro-pl export: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {path}")
    return 0
