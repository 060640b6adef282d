"""Distributed glue in one place: rank and world, sharding rows over processes, gathering Python objects, the
process-group timeout and rank-0-only paths (FSDP specifics live in :mod:`baldro_pl.strategies`).

Evaluation sharding: every process evaluates a disjoint shard of the rows, padded with repeats exactly like
``torch.utils.data.DistributedSampler(shuffle=False, drop_last=False)``, so that all processes run the same number of
forward / generate calls (collectives under FSDP need lockstep); the metric states carry the row index and are
de-duplicated after the gather (:mod:`baldro_pl.metrics.indexed`).

Two rules keep multi-process runs from deadlocking:

* code that runs on one rank only (Lightning's ``SaveConfigCallback.save_config``, anything under
  ``if trainer.is_global_zero``) must not call a collective: ``trainer.log_dir`` is one (it broadcasts rank 0's
  directory), so rank-0-only code reads the directory with :func:`rank_zero_log_dir` instead;
* a collective that some rank never reaches must fail, not wait forever: :func:`apply_process_group_timeout`
  gives DDP and FSDP a timeout of minutes (torch's and Lightning's default is 30 minutes; with NCCL some torch
  versions wait indefinitely unless error handling is on).
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

if TYPE_CHECKING:
    import lightning.pytorch as pl

log = logging.getLogger(__name__)

DEFAULT_PG_TIMEOUT_S = 600.0
"""Default process-group timeout of ``baldro-pl`` runs (seconds): long enough for rank 0 to write a 7B
checkpoint or export while the others wait at a barrier, short enough that a hang fails within minutes."""


def rank_zero_log_dir(trainer: pl.Trainer) -> str | None:
    """``trainer.log_dir`` without its broadcast, for code that runs on rank 0 only.

    ``Trainer.log_dir`` is a collective (it broadcasts rank 0's value so that every rank agrees on the logger's
    version); called on rank 0 alone, it pairs with whatever collective the other ranks reach next and the run
    deadlocks or exchanges the wrong objects. On rank 0 the local value is the broadcast one.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if not trainer.loggers:
        return trainer.default_root_dir
    logger = trainer.loggers[0]
    return logger.log_dir if isinstance(logger, TensorBoardLogger | CSVLogger) else logger.save_dir


def apply_process_group_timeout(trainer: pl.Trainer, seconds: float | None) -> None:
    """Give the trainer's DDP/FSDP strategy a process-group timeout of ``seconds`` before it sets up the group.

    An explicit ``timeout`` in the strategy's ``init_args`` wins (anything other than Lightning's default of 30
    minutes); ``seconds=None`` leaves the strategy as it is. No-op for single-process strategies.

    Raises:
        ValueError: ``seconds`` is not a positive number.
    """
    if seconds is None:
        return
    if not (isinstance(seconds, int | float) and seconds > 0):
        raise ValueError(f"pg_timeout must be a number of seconds > 0, got {seconds!r}")
    from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout

    strategy = trainer.strategy
    # Lightning 2.6 keeps the value passed as DDPStrategy/FSDPStrategy(timeout=...) in the private `_timeout`, read
    # when the process group is created in `setup_environment` (after the Trainer is built): the only hook.
    if not hasattr(strategy, "_timeout"):
        return
    if strategy._timeout not in (None, default_pg_timeout):
        return
    strategy._timeout = timedelta(seconds=float(seconds))
    log.debug("process-group timeout set to %s s", seconds)


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Row indices of ``rank``: ``range(n)`` padded with its first rows to a multiple of ``world_size``, strided.

    >>> shard_indices(5, rank=1, world_size=2)
    [1, 3, 0]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    if n == 0:
        return []
    total = math.ceil(n / world_size) * world_size
    indices = list(range(n))
    indices += (indices * math.ceil(total / n))[: total - n]
    return indices[rank:total:world_size]


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` without a process group (collective otherwise)."""
    _, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out
