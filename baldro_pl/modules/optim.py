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
from typing import Any, Literal

import torch
from torch.optim.adamw import adamw as torch_adamw  # torch's functional AdamW (public: torch.optim.adamw.__all__)
from torch.optim.lr_scheduler import LambdaLR

# Elements of fp32 working copies one AdamWFp32State block holds, by device type. On CPU a block's working set (the
# weights' and gradients' fp32 copies, both moments, torch's square-root temporary: about 24 bytes an element) stays
# in the last-level cache: on a ~100M-parameter bf16 Llama (2-core CPU, 2026-12-03), 2**18 and 2**19 elements tied
# fastest of 2**16..2**20 (median step 601 and 634 ms; 2**16: 934 ms, 2**20: 1417 ms). Elsewhere the bound keeps the
# working copies at 3 x 4 bytes x 2**25 = 384 MiB, below the per-parameter loop's peak on a large embedding (16
# bytes an element: 2.1 GB on Llama-2-7b's); not timed on a GPU yet.
_BLOCK_NUMEL = {"cpu": 1 << 18}
_DEFAULT_BLOCK_NUMEL = 1 << 25
# Device types on which build_optimizer asks torch for its fused AdamW kernel (torch 2.13 has it for every floating
# dtype on both); elsewhere torch chooses (foreach where it has multi-tensor kernels).
_FUSED_DEVICES = ("cpu", "cuda")

_Piece = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]  # weight, grad, exp_avg, exp_avg_sq, step


class AdamWFp32State(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) whose moments and update are kept in fp32 whatever the parameter dtype.

    With ``bf16-true`` weights, ``torch.optim.AdamW`` stores bf16 moments: all three of its implementations
    (single-tensor, foreach, fused) keep the state in the parameter's dtype and refuse fp32 state on bf16 weights.
    The reference runs use bitsandbytes' ``paged_adamw_32bit``: fp32 moments on bf16 weights, the update computed in
    fp32 and rounded into the bf16 weight once per step, with no fp32 master copy. This optimiser gives those
    numerics without bitsandbytes: each step runs torch's own AdamW (the functional ``torch.optim.adamw.adamw``,
    multi-tensor ``foreach`` implementation, or its fused kernel) on fp32 working copies of the weights and
    gradients, one block of at most ``block_numel`` elements at a time (a parameter may span blocks), and rounds the
    result into the weights; fp32 weights are updated in place. With ``foreach`` the result is bit for bit that of
    the per-parameter loop this class ran before (``tests/modules/test_optim.py``); the fused kernel computes the
    same update in one pass and agrees to fp32 rounding (at most one bf16 ulp on the weights).

    The state is torch's AdamW's layout: ``step`` (a 0-dim fp32 tensor on the CPU), ``exp_avg`` and ``exp_avg_sq``
    (fp32, on the parameter's device); :meth:`load_state_dict` keeps the moments in fp32.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: decay rates of the first and second moments.
        eps: added to the bias-corrected square root of the second moment.
        weight_decay: decoupled weight decay: each step multiplies the weight by ``1 - lr * weight_decay``.
        block_numel: elements per block of fp32 working copies; ``None``: 2**18 on CPU (cache-sized), 2**25
            elsewhere (384 MiB of working copies).
        fused: torch's fused AdamW kernel on the fp32 working copies (``True``) or its ``foreach`` kernels
            (``False``); ``None``: fused on CUDA, foreach elsewhere. The fused kernel is faster on the CPU too
            (100M-parameter bf16 Llama, one thread: 118 against 226 ms a step, ``benchmarks/optimizer_step.py``),
            but foreach stays the CPU default: it keeps the bits of the per-parameter loop, which CPU runs and
            their tests were checked against.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        block_numel: int | None = None,
        fused: bool | None = None,
    ) -> None:
        if block_numel is not None and block_numel < 1:
            raise ValueError(f"block_numel must be positive, got {block_numel}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.block_numel = block_numel
        self.fused = fused

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "block_numel": self.block_numel, "fused": self.fused}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("block_numel", None)
        self.__dict__.setdefault("fused", None)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_kind: dict[tuple[torch.device, torch.dtype], list[_Piece]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                piece = (p, p.grad, state["exp_avg"], state["exp_avg_sq"], float(state["step"]))
                by_kind.setdefault((p.device, p.dtype), []).append(piece)
            for (device, dtype), pieces in by_kind.items():
                block_numel = self.block_numel or _BLOCK_NUMEL.get(device.type, _DEFAULT_BLOCK_NUMEL)
                fused = self.fused if self.fused is not None else device.type == "cuda"
                for block in _blocks(pieces, block_numel):
                    _adamw_fp32(block, group, in_place=dtype == torch.float32, fused=fused)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by this optimiser, keeping the moments in fp32.

        ``torch.optim.Optimizer.load_state_dict`` casts every floating-point state tensor to its parameter's dtype,
        which would turn the moments of bf16 weights into bf16; they are taken again from ``state_dict``, in fp32 on
        the parameter's device.

        Args:
            state_dict: what :meth:`state_dict` returned (``exp_avg``/``exp_avg_sq`` in any floating dtype).
        """
        super().load_state_dict(state_dict)
        saved_ids = (i for group in state_dict["param_groups"] for i in group["params"])
        params = (p for group in self.param_groups for p in group["params"])
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if isinstance(saved.get(key), torch.Tensor):
                    self.state[p][key] = saved[key].to(device=p.device, dtype=torch.float32)


def _blocks(pieces: list[_Piece], block_numel: int) -> Iterable[list[_Piece]]:
    """Regroup the parameters' pieces into blocks of at most ``block_numel`` elements, splitting large parameters.

    A parameter whose weight, gradient and moments are not all contiguous plain tensors (a DTensor shard, a
    channels-last weight) is not split: it makes a block of its own, whatever its size.
    """
    block: list[_Piece] = []
    size = 0
    for weight, grad, exp_avg, exp_avg_sq, step in pieces:
        tensors = (weight, grad, exp_avg, exp_avg_sq)
        if not all(type(t.data) is torch.Tensor and t.is_contiguous() for t in tensors):
            yield [(weight, grad, exp_avg, exp_avg_sq, step)]
            continue
        flat = [t.view(-1) for t in tensors]
        start, numel = 0, weight.numel()
        while start < numel:
            take = min(block_numel - size, numel - start)
            block.append((*(t[start : start + take] for t in flat), step))  # type: ignore[arg-type]
            size += take
            start += take
            if size == block_numel:
                yield block
                block, size = [], 0
    if block:
        yield block


def _adamw_fp32(block: list[_Piece], group: dict[str, Any], *, in_place: bool, fused: bool) -> None:
    """One AdamW step on a block: torch's AdamW (fused or foreach) on fp32 copies, rounded into the weights once."""
    weights = [piece[0] for piece in block]
    work = weights if in_place else [w.float() for w in weights]
    grads = [piece[1].float() for piece in block]
    beta1, beta2 = group["betas"]
    # the fused kernel walks each tensor's memory in order: weight, gradient and moments must share one layout (a
    # transposed weight's gradient may be contiguous); a block whose weight and moments differ runs foreach
    fused = fused and all(w.stride() == m.stride() == v.stride() for w, (_, _, m, v, _) in zip(work, block))
    if fused:
        grads = [g if g.stride() == w.stride() else torch.empty_like(w).copy_(g) for g, w in zip(grads, work)]
    # the fused kernel reads the step counts on the weights' device, foreach on the CPU
    steps = torch.tensor([piece[4] - 1.0 for piece in block], dtype=torch.float32)
    if fused:
        steps = steps.to(weights[0].device, non_blocking=True)
    torch_adamw(
        work,
        grads,
        [piece[2] for piece in block],
        [piece[3] for piece in block],
        [],
        # torch's AdamW counts the step itself: it gets copies at the step before (the state's own `step` was counted
        # once per parameter, which may span several blocks)
        list(steps.unbind()),
        foreach=not fused,
        fused=fused,
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=False,
    )
    if not in_place:
        for weight, updated in zip(weights, work):
            weight.copy_(updated)


def build_optimizer(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    state_dtype: Literal["param", "float32"] = "param",
) -> torch.optim.Optimizer:
    """AdamW over two groups: weight decay on matrices, none on biases and norm weights (as the HF Trainer).

    With ``state_dtype="float32"`` and any parameter not in fp32: :class:`AdamWFp32State` (fp32 moments on bf16
    weights, the reference runs' numerics). Otherwise ``torch.optim.AdamW``, with its fused kernel when every
    parameter is a floating-point tensor on the CPU or a CUDA device (one pass over weight, gradient and moments;
    without it torch runs its single-tensor loop on CPU and its foreach kernels on CUDA), else torch's own choice.
    The choice follows the parameters' devices when this is called: Lightning calls ``configure_optimizers`` after
    moving the model. On fp32 weights the fused kernel agrees with the loop to fp32 rounding; on bf16 weights with
    bf16 moments it computes each step in fp32 and rounds weight and moments once, where the loop rounds after
    every operation.

    Args:
        named_parameters: ``(name, parameter)`` pairs; names ending in ``.bias`` and parameters of fewer than two
            dimensions get no weight decay.
        lr: learning rate.
        weight_decay: decoupled weight decay of the matrices.
        state_dtype: ``"param"``: moments in the parameters' dtype (torch's behaviour); ``"float32"``: fp32 moments.

    Returns:
        The optimiser.
    """
    decay, no_decay = [], []
    for name, param in named_parameters:
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    params = decay + no_decay
    if state_dtype == "float32" and any(p.dtype != torch.float32 for p in params):
        return AdamWFp32State(groups, lr=lr)
    if not (params and all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params)):
        return torch.optim.AdamW(groups, lr=lr)
    optimizer = torch.optim.AdamW(groups, lr=lr, fused=True)
    optimizer.register_load_state_dict_post_hook(_keep_fused)
    return optimizer


def _keep_fused(optimizer: torch.optim.Optimizer) -> None:
    """Keep the fused kernel after loading a state saved without it (a checkpoint from before issue 13).

    Loading restores the saved groups' ``fused``/``foreach`` flags, and leaves ``step`` where the unfused loop keeps
    it (on the CPU); the fused kernel wants it in fp32 on the parameter's device.
    """
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


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
