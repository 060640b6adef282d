"""Distributed glue that is not a metric or a strategy: the process-group timeout and rank-0-only paths.

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
from datetime import timedelta

import lightning.pytorch as pl
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout

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
    strategy = trainer.strategy
    # Lightning 2.6 keeps the value passed as DDPStrategy/FSDPStrategy(timeout=...) in the private `_timeout`, read
    # when the process group is created in `setup_environment` (after the Trainer is built): the only hook.
    if not hasattr(strategy, "_timeout"):
        return
    if strategy._timeout not in (None, default_pg_timeout):
        return
    strategy._timeout = timedelta(seconds=float(seconds))
    log.debug("process-group timeout set to %s s", seconds)
