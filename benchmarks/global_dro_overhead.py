"""Overhead of BalDRO over the global batch (``scope="global"``) against per-process BalDRO, on 2 CPU processes.

Two gloo processes, each a DistributedDataParallel copy of the ``benchmarks/step_time.py`` model (randomly initialised
Llama, hidden 256, 4 layers, vocab 8000) running ``UnlearningModule.compute_step`` on its own forget and retain rows,
backward (with DDP's gradient all-reduce) and an AdamW step. The two scopes are timed in alternating blocks, so that a
busy machine slows both alike. Also the aggregator alone (gather, DV or G, backward) on ``[batch]`` losses.

    python benchmarks/global_dro_overhead.py                 # batch 4 per process (global 8), as the TOFU presets
    python benchmarks/global_dro_overhead.py --batch 2 --rounds 10
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).parent))
from step_time import _batch  # noqa: E402

from baldro_pl.modules import UnlearningModule  # noqa: E402
from baldro_pl.objectives import NLL, NPO, BalDRODV, BalDROG, ForgetLosses  # noqa: E402
from baldro_pl.toy import tiny_llama  # noqa: E402


class Step(nn.Module):
    """One DDP forward = ``UnlearningModule.compute_step`` (forget pass, retain pass, objective)."""

    def __init__(self, module: UnlearningModule, batch: dict) -> None:
        super().__init__()
        self.module = module
        self.batch = batch

    def forward(self) -> torch.Tensor:
        """The step's total loss on this process's rows."""
        return self.module.compute_step(self.batch)[0].loss


def _aggregators(scope: str) -> dict[str, object]:
    return {"DV": BalDRODV(temperature=1.0, scope=scope), "G": BalDROG(ratio=0.5, scope=scope)}


def _worker(rank: int, init_file: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    base = tiny_llama(
        args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=1,
        intermediate_size=int(args.hidden * 2.75),
    )
    torch.manual_seed(1 + rank)  # each process its own rows
    forget = _batch(args.batch, args.length, args.vocab, args.prompt, "cpu")
    retain = _batch(args.batch, args.length, args.vocab, args.prompt, "cpu")
    steps = {}
    for name, aggregator in _aggregators("device").items():
        for scope in ("device", "global"):
            module = UnlearningModule(copy.deepcopy(base), NPO(beta=0.1), copy.deepcopy(aggregator), NLL())
            module.objective.aggregator.scope = scope
            module.configure_model()
            module.reference_cache.build(module.model, [forget], torch.device("cpu"))
            ddp = DistributedDataParallel(Step(module, {"forget": forget, "retain": retain}))
            steps[name, scope] = (ddp, torch.optim.AdamW(ddp.parameters(), lr=1e-5))
    times: dict = {key: [] for key in steps}
    for block in range(args.rounds + 1):  # block 0 warms up
        for key, (ddp, optimizer) in steps.items():
            for _ in range(args.steps):
                dist.barrier()
                start = time.perf_counter()
                ddp().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if block:
                    times[key].append(time.perf_counter() - start)
    # the aggregator alone: gather (global), aggregate, backward
    agg_times: dict = {}
    mask = torch.ones(args.batch, 8, dtype=torch.bool)
    for scope in ("device", "global"):
        for name, aggregator in _aggregators(scope).items():
            samples = []
            for rep in range(args.agg_reps + 20):
                values = torch.randn(args.batch, requires_grad=True)
                losses = ForgetLosses(values, None, mask, "sample", torch.randn(args.batch))
                dist.barrier()
                start = time.perf_counter()
                aggregator(losses).loss.backward()
                if rep >= 20:
                    samples.append(time.perf_counter() - start)
            agg_times[name, scope] = samples
    if rank == 0:
        torch.save({"step": times, "aggregator": agg_times}, out)
    dist.destroy_process_group()


def main() -> None:
    """Parse the settings, run the two processes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=4, help="forget and retain rows per process")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="steps per block")
    parser.add_argument("--rounds", type=int, default=4, help="timed blocks per (aggregator, scope), alternating")
    parser.add_argument("--agg-reps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/times.pt"
        mp.spawn(_worker, args=(f"{tmp}/init", args, out), nprocs=2, join=True)
        results = torch.load(out)
    print(
        f"2 gloo processes x batch {args.batch} (global {2 * args.batch}); model hidden {args.hidden}, "
        f"layers {args.layers}, vocab {args.vocab}, length {args.length}; rank 0's times"
    )
    print(f"{'':24s} {'device ms':>10s} {'global ms':>10s} {'overhead':>9s}")
    for kind, unit in (("step", 1e3), ("aggregator", 1e6)):
        for name in ("DV", "G"):
            device = statistics.median(results[kind][name, "device"]) * unit
            global_ = statistics.median(results[kind][name, "global"]) * unit
            label = f"{kind} {name}" + (" (us)" if kind == "aggregator" else "")
            print(f"{label:24s} {device:10.1f} {global_:10.1f} {global_ - device:+9.1f}")


if __name__ == "__main__":
    main()
