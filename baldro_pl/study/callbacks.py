"""``StudyCellReport``: the callback every study cell's fit carries (added by the runner, last in the list).

It makes sure the *final* model is evaluated (the TOFU evaluation runs every ``every_n_epochs`` epochs; when the run
ends elsewhere, e.g. ``max_steps`` in the middle of an epoch or a number of epochs that ``every_n_epochs`` does not
divide, it evaluates once more, tag ``final``) and writes ``cell_report.json``: which evaluation folder holds the final
model's numbers, the last epoch and step, the training time and, on a GPU, the peak memory that torch allocated.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback

from baldro_pl.metrics.logs import write_json_atomic


class StudyCellReport(Callback):
    """Evaluate the final model if the evaluation schedule missed it, then write the cell's report.

    Args:
        path: where to write the report (``<cell>/cell_report.json``).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._start = 0.0
        self._epoch_end: tuple[int, int] | None = None  # (epoch index, global step) of the last finished epoch

    def _evaluation(self, trainer: pl.Trainer) -> Any:
        from baldro_pl.metrics.callbacks import Evaluation

        found = [c for c in trainer.callbacks if isinstance(c, Evaluation)]
        return found[-1] if found else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the clock and the GPU peak-memory counter."""
        self._start = time.perf_counter()
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remember the last finished epoch (the evaluation callback, earlier in the list, has run for it)."""
        self._epoch_end = (trainer.current_epoch, trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate the final weights if no evaluation folder holds them, and write the report (rank 0)."""
        train_s = time.perf_counter() - self._start
        evaluation = self._evaluation(trainer)
        final = None
        if evaluation is not None:
            root = Path(evaluation.output_dir or trainer.log_dir or trainer.default_root_dir)
            tag = None
            if self._epoch_end is not None and self._epoch_end[1] == trainer.global_step:
                tag = f"epoch_{self._epoch_end[0]}"
            if tag is None or not (root / tag / f"{evaluation.suite_name}_SUMMARY.json").is_file():
                tag = tag or "final"
                evaluation.evaluate(trainer, pl_module, tag, log_with_module=False)
            final = str(root / tag)
        peak = None
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
        if trainer.is_global_zero:
            write_json_atomic(
                self.path,
                {
                    "final_evaluation": final,
                    "last_epoch": None if self._epoch_end is None else self._epoch_end[0],
                    "global_step": trainer.global_step,
                    "train_s": train_s,
                    "peak_gpu_allocated_mb": peak,
                },
            )
