"""Checkpoints that are never left half-written under their final name.

Lightning's :class:`~lightning.fabric.plugins.io.torch_io.TorchCheckpointIO` serialises to memory and writes the bytes
through an ``fsspec`` transaction whose temporary file lies in the system's temporary folder; when that folder is on
another device (a tmpfs ``/tmp``, a scratch disk), committing is a copy, and a full destination disk leaves a
truncated ``epoch=...ckpt`` under its normal name, which ``--ckpt_path last`` then tries to resume from. The copy
also keeps the temporary file's private mode (0600). :class:`AtomicCheckpointIO` writes local checkpoints with
:func:`baldro_pl.files.write_atomic` instead: a temporary file in the checkpoint's own folder, flushed to disk, then
renamed over the final name, with the permissions a plain ``open`` gives. Remote paths (``s3://`` ...) keep
Lightning's behaviour.

Sharded FSDP checkpoints (a directory written by ``torch.distributed.checkpoint``) do not go through a CheckpointIO
and are not covered.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from baldro_pl.files import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves are atomic.

    The checkpoint file holds either its old content or all of the new one, whatever fails (a full disk, a killed
    process) while it is written.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` through a temporary file in the same folder, then rename it."""
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_atomic(os.fspath(path), lambda f: torch.save(checkpoint, f))


def _is_local(path: str | os.PathLike) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(get_filesystem(path), LocalFileSystem)


def use_atomic_checkpoints(trainer: Any) -> bool:
    """Give ``trainer``'s strategy an :class:`AtomicCheckpointIO`; returns whether it was installed.

    Only when the strategy uses Lightning's plain :class:`TorchCheckpointIO`: a CheckpointIO chosen by the user is kept.
    """
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True
