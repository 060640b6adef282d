"""Distributed glue in one place (FSDP specifics live in :mod:`baldro_pl.strategies`).

Rank and world, sharding rows over processes, gathering ragged tensors and Python objects (and, for losses over the
global batch, rows with their gradient: :func:`gather_rows_with_grad`), the process-group timeout and rank-0-only
paths.

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
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

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


AllGather = Callable[[Tensor], Tensor]
"""An all-gather of one tensor: ``[world, *shape]`` (or ``shape`` itself in one process), such as
``LightningModule.all_gather`` or :func:`all_gather_tensor`."""


def all_gather_tensor(tensor: Tensor) -> Tensor:
    """``[world, *shape]``: ``tensor`` of every rank, stacked (``tensor[None]`` without a process group).

    Collective under a process group: every rank calls it with a tensor of the same shape and dtype (on the device
    of the group's backend: CUDA for NCCL, CPU for gloo).

    >>> all_gather_tensor(torch.tensor([1, 2])).tolist()
    [[1, 2]]
    """
    _, world = rank_world()
    if world == 1:
        return tensor.unsqueeze(0)
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


def gather_ragged(*tensors: Tensor, all_gather: AllGather | None = None) -> tuple[Tensor, ...]:
    """All-gather per-rank tensors whose first dimension differs between ranks, concatenated in rank order.

    Every tensor of one call has the same length ``n_r`` on rank ``r`` (rows of one table, e.g. dataset index, NLL
    and token count of each sample scored on that rank); the result is rank 0's rows, then rank 1's, and so on, on
    every rank. The lengths are gathered first, each tensor is padded with zeros to the longest, gathered and the
    padding dropped, so any dtype and trailing shape works and no row value is reserved as padding.

    Args:
        *tensors: ``[n_r, ...]`` tensors of this rank (same ``n_r`` for all of them).
        all_gather: the strategy's all-gather (``LightningModule.all_gather``, so that it works under any Lightning
            strategy); default :func:`all_gather_tensor` (``torch.distributed``'s default group).

    Returns:
        ``[sum_r n_r, ...]`` tensors, one per input; the inputs themselves in one process.

    Raises:
        ValueError: the tensors of one rank differ in length.

    >>> index, value = gather_ragged(torch.tensor([3, 1]), torch.tensor([0.5, 0.25]))  # one process: unchanged
    >>> index.tolist(), value.tolist()
    ([3, 1], [0.5, 0.25])
    """
    if not tensors:
        return ()
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"gather_ragged: the tensors differ in length on this rank: {[t.shape[0] for t in tensors]}")
    gather = all_gather_tensor if all_gather is None else all_gather
    counts = gather(torch.tensor([n], device=tensors[0].device)).reshape(-1).tolist()
    if len(counts) == 1:
        return tensors
    width = max(counts)
    out = []
    for t in tensors:
        padded = torch.cat([t, t.new_zeros((width - n, *t.shape[1:]))]) if width > n else t
        stacked = gather(padded.contiguous()).reshape(len(counts), width, *t.shape[1:])
        out.append(torch.cat([stacked[r, :c] for r, c in enumerate(counts)]))
    return tuple(out)


class _GatherRowsWithGrad(torch.autograd.Function):
    """All-gather of ragged rows whose backward sums the gradient over ranks and keeps this rank's rows."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, counts: list[int], rank: int) -> Tensor:
        ctx.counts, ctx.rank = counts, rank
        width = max(counts)
        n = tensor.shape[0]
        padded = torch.cat([tensor, tensor.new_zeros((width - n, *tensor.shape[1:]))]) if width > n else tensor
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:c] for part, c in zip(parts, counts, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        # every rank's loss may depend on every row: the gradient of rank r's rows is the sum over ranks
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]], None, None


def gather_rows_with_grad(tensor: Tensor) -> tuple[Tensor, slice]:
    """All-gather ``tensor`` ``[n_r, ...]`` of every rank in rank order, differentiably.

    The same concatenation as :func:`gather_ragged` (lengths may differ between ranks), with torch.distributed.nn's
    gradient: the backward all-reduces (sums) the gradient of the gathered rows over ranks and returns this rank's
    rows of it, ``dL_total/dx_r = sum_s dL_s/dy[rows of r]``. When every rank computes the same scalar ``L`` of the
    gathered rows (a loss over the global batch), each rank's gradient is therefore ``W * dL/dx_r``, and the average
    over the ``W`` ranks that DDP and FSDP apply to parameter gradients gives exactly ``dL/dtheta``, the gradient of
    one process that saw the whole batch: the loss needs no rescaling. Two collectives forward (lengths, rows), one
    backward (an all-reduce of ``sum_r n_r`` rows), all of them on every rank.

    Args:
        tensor: ``[n_r, ...]`` rows of this rank (same dtype and trailing shape on every rank).

    Returns:
        ``([sum_r n_r, ...] rows of all ranks, slice of this rank's rows in them)``; ``(tensor, slice(0, n))`` without
        a process group or with one process.

    >>> rows, mine = gather_rows_with_grad(torch.tensor([0.5, 2.0]))  # one process: unchanged
    >>> rows.tolist(), mine
    ([0.5, 2.0], slice(0, 2, None))
    """
    rank, world = rank_world()
    n = tensor.shape[0]
    if world == 1:
        return tensor, slice(0, n)
    counts = all_gather_tensor(torch.tensor([n], device=tensor.device)).reshape(-1).tolist()
    start = sum(counts[:rank])
    return _GatherRowsWithGrad.apply(tensor, counts, rank), slice(start, start + n)
