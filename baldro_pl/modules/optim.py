"""AdamW and the learning-rate schedule of the reference runs (HF Trainer defaults with open-unlearning's warm-up).

Two step schedules (``schedule`` of :class:`~baldro_pl.modules.base.CausalLMModule`) count the optimiser steps of a
run of ``epochs`` epochs of ``batches`` micro-batches accumulated ``accumulate`` at a time:

* ``"lightning"``: Lightning's own loop, which also steps on the partial accumulation window left at the end of each
  epoch: ``ceil(batches / accumulate)`` steps per epoch; warm-up ``floor(warmup_epochs * total / epochs)``.
* ``"hf_trainer"``: the published runs (open-unlearning on ``transformers==4.45.1``, the version the BalDRO
  repository pins): ``max(batches // accumulate, 1)`` steps per epoch, every one over a whole accumulation window;
  warm-up ``int(warmup_epochs * rows // (batch_size * accumulate * devices))`` (open-unlearning's
  ``load_trainer_args``).

TOFU forget10 (400 rows, batch 8, accumulation 4, 10 epochs, one warm-up epoch): 130 steps with 13 warm-up steps
under ``"lightning"``, 120 with 12 under ``"hf_trainer"`` (docs/presets.md, "Step schedule").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR


class AdamWFp32State(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) whose moments and update are kept in fp32 whatever the parameter dtype.

    With ``bf16-true`` weights, ``torch.optim.AdamW`` stores bf16 moments; the reference runs use bitsandbytes'
    ``paged_adamw_32bit``, i.e. fp32 moments on bf16 weights. This optimiser gives those numerics without bitsandbytes:
    the update is computed in fp32 and rounded into the bf16 parameter once per step.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = float(state["step"])
                grad = p.grad.float()
                master = p.float()
                master.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
                master.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**t))
                p.copy_(master)
        return loss


def build_optimizer(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    state_dtype: Literal["param", "float32"] = "param",
) -> torch.optim.Optimizer:
    """AdamW over two groups: weight decay on matrices, none on biases and norm weights (as the HF Trainer)."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    needs_fp32_state = state_dtype == "float32" and any(p.dtype != torch.float32 for g in groups for p in g["params"])
    if needs_fp32_state:
        return AdamWFp32State(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)


def warmup_linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, *, decay: bool):
    """Linear warm-up from 0 over ``warmup_steps``, then linear decay to 0 at ``total_steps`` (or constant)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        if not decay:
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return LambdaLR(optimizer, factor)


Schedule = Literal["lightning", "hf_trainer"]
SCHEDULES: tuple[str, ...] = ("lightning", "hf_trainer")


def steps_per_epoch(batches: int, accumulate: int, schedule: Schedule) -> int:
    """Optimiser steps in one epoch of ``batches`` micro-batches accumulated ``accumulate`` at a time."""
    if schedule == "hf_trainer":
        return max(batches // accumulate, 1)  # transformers 4.45 Trainer: num_update_steps_per_epoch
    return math.ceil(batches / accumulate)


def trained_batches_per_epoch(batches: int, accumulate: int, schedule: Schedule) -> int:
    """Micro-batches an epoch trains on.

    All of them (``"lightning"``), or only whole accumulation windows (``"hf_trainer"``; all of them when the epoch
    holds at most one window, which the HF Trainer then steps).
    """
    if schedule == "hf_trainer" and batches > accumulate:
        return batches - batches % accumulate
    return batches


def warmup_steps_for(
    schedule: Schedule,
    warmup_epochs: float,
    *,
    total_steps: int,
    epochs: int,
    batches: int,
    accumulate: int,
    rows: int | None = None,
    batch_size: int | None = None,
    world_size: int = 1,
) -> int:
    """Linear warm-up length in optimiser steps for ``warmup_epochs`` epochs.

    ``"lightning"``: ``floor(warmup_epochs * total_steps / epochs)``. ``"hf_trainer"``: open-unlearning's
    ``int(warmup_epochs * rows // (batch_size * accumulate * world_size))`` from the training set's ``rows``; without
    them (a loader of ready-made batches), ``int(warmup_epochs * batches // accumulate)``, the same number when the
    rows fill whole batches on every process.
    """
    if schedule == "hf_trainer":
        if rows is not None and batch_size:
            return int(warmup_epochs * rows // (batch_size * accumulate * world_size))
        return int(warmup_epochs * batches // accumulate)
    return int(math.floor(warmup_epochs * total_steps / max(1, epochs)))
