"""The Lightning trainer most tests run: CPU, deterministic, with nothing written or printed."""

from __future__ import annotations

import lightning.pytorch as pl


def quiet_trainer(tmp_path, **kwargs) -> pl.Trainer:
    """A deterministic CPU trainer without logger, checkpoints, progress bar or validation; ``kwargs`` override."""
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        deterministic=True,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)
