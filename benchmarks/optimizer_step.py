"""Time of one AdamW step on the parameters of a ~100M-parameter Llama: the optimiser paths before and after issue 13.

Three cases, each the optimiser ``build_optimizer`` returns for it now against the one it returned before:

* fp32 weights: torch's fused AdamW against ``torch.optim.AdamW()`` left to its default (the single-tensor loop on
  CPU, the foreach kernels on CUDA).
* bf16 weights, moments in bf16 (``optimizer_state_dtype: param``): the same two.
* bf16 weights, fp32 moments (``optimizer_state_dtype: float32``, the presets'): ``AdamWFp32State`` (torch's
  AdamW on fp32 working copies, block by block: foreach on the CPU, fused on CUDA) against the per-parameter loop it
  replaced, copied below.
* ``fp32-state-fused``: ``AdamWFp32State`` with torch's foreach kernels against it with torch's fused kernel.

The model is ``baldro_pl.toy.tiny_llama`` with a larger hidden size, built from a config (no download); every
parameter gets a fixed random gradient. Each timed step is one ``optimizer.step()``; the two paths alternate, so that
machine noise hits both alike, and the table gives the median over ``--steps`` steps after one untimed step (which
allocates the state).

    OMP_NUM_THREADS=1 python benchmarks/optimizer_step.py                 # CPU, ~100M parameters
    python benchmarks/optimizer_step.py --device cuda                     # GPU
    python benchmarks/optimizer_step.py --cases fp32-state --block-numel 65536   # one case, another block size
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from baldro_pl.modules.optim import AdamWFp32State, build_optimizer
from baldro_pl.toy import tiny_llama

CASES = ("fp32", "bf16-param", "fp32-state", "fp32-state-fused")


class PerParameterAdamWFp32State(torch.optim.Optimizer):
    """``AdamWFp32State`` as it was before issue 13: one parameter at a time, in Python."""

    def __init__(self, params, lr: float = 1e-5, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
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


def _groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The two parameter groups of ``build_optimizer`` (decay on matrices only)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith(".bias")]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n.endswith(".bias")]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _describe(optimizer: torch.optim.Optimizer) -> str:
    if isinstance(optimizer, PerParameterAdamWFp32State):
        return "per-parameter loop (before)"
    if isinstance(optimizer, AdamWFp32State):
        on_cuda = any(p.device.type == "cuda" for g in optimizer.param_groups for p in g["params"])
        fused = optimizer.fused if optimizer.fused is not None else on_cuda
        return f"AdamWFp32State ({'fused' if fused else 'foreach'} on fp32 copies)"
    if optimizer.defaults.get("fused"):
        return "torch AdamW fused"
    # torch's default: its foreach kernels where it has them (CUDA), else its single-tensor loop (CPU)
    on_cpu = all(p.device.type == "cpu" for g in optimizer.param_groups for p in g["params"])
    return "torch AdamW default (" + ("single-tensor" if on_cpu else "foreach") + ")"


def _time_pair(
    old: torch.optim.Optimizer, new: torch.optim.Optimizer, steps: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of one step of ``old`` and of ``new``, alternating."""

    def timed(optimizer: torch.optim.Optimizer) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed(old)  # allocates the state
    timed(new)
    old_times, new_times = [], []
    for _ in range(steps):
        old_times.append(timed(old))
        new_times.append(timed(new))
    return statistics.median(old_times), statistics.median(new_times)


def main() -> None:  # noqa: D103 - command-line entry point
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path (median)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=1728)
    parser.add_argument("--heads", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--block-numel", type=int, default=None, help="AdamWFp32State block (default: its own)")
    args = parser.parse_args()
    device = torch.device(args.device)

    model = tiny_llama(
        args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        intermediate_size=args.intermediate,
    )
    numel = sum(p.numel() for p in model.parameters())
    print(
        f"model: {numel / 1e6:.1f}M parameters in {len(list(model.parameters()))} tensors; device {device}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); median of {args.steps} steps"
    )

    rows = []
    for case in args.cases:
        dtype = torch.float32 if case == "fp32" else torch.bfloat16
        model.to(device=device, dtype=dtype)
        generator = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.grad = (torch.randn(p.shape, generator=generator) * 1e-3).to(device=device, dtype=dtype)
        builders: tuple[Callable[[], torch.optim.Optimizer], Callable[[], torch.optim.Optimizer]]
        if case == "fp32-state":
            builders = (
                lambda: PerParameterAdamWFp32State(_groups(model, args.weight_decay), lr=args.lr),
                lambda: AdamWFp32State(_groups(model, args.weight_decay), lr=args.lr, block_numel=args.block_numel),
            )
        elif case == "fp32-state-fused":
            builders = tuple(  # type: ignore[assignment]
                lambda fused=fused: AdamWFp32State(
                    _groups(model, args.weight_decay), lr=args.lr, block_numel=args.block_numel, fused=fused
                )
                for fused in (False, True)
            )
        else:
            builders = (
                lambda: torch.optim.AdamW(_groups(model, args.weight_decay), lr=args.lr),
                lambda: build_optimizer(model.named_parameters(), lr=args.lr, weight_decay=args.weight_decay),
            )
        old, new = (build() for build in builders)
        old_s, new_s = _time_pair(old, new, args.steps, device)
        rows.append((case, _describe(old), _describe(new), old_s, new_s))
        del old, new
        for p in model.parameters():
            p.grad = None

    print("| case | before | after | before ms | after ms | before / after |")
    print("|---|---|---|---:|---:|---:|")
    for case, old_name, new_name, old_s, new_s in rows:
        print(f"| {case} | {old_name} | {new_name} | {old_s * 1e3:.0f} | {new_s * 1e3:.0f} | {old_s / new_s:.2f} |")


if __name__ == "__main__":
    main()
