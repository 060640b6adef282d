"""Lean target log-probs (issue 13, items 3 and 6): the fused cross-entropy, and the LM head in chunks.

Two measurements:

* ``formula``: forward + backward time of :func:`baldro_pl.objectives.logprobs.token_logprobs` (minus the per-token
  fused cross-entropy, ``F.cross_entropy(..., reduction="none")``) against the formula it replaced (gather minus
  ``logsumexp`` of the upcast logits), on random fp32 logits ``[B, T, V]`` with the first quarter of each row masked
  as prompt. The two are timed alternately, ``--repeats`` times each; the median wall-clock and CPU time
  (``time.process_time``) of each is reported.
* ``lean``: peak memory and step time (forward + backward of the batch's summed NLL) of a Llama built from a config
  at Llama-3's vocabulary (128,256) through :func:`baldro_pl.forward.forward_logprobs`: the full-logits path
  (``chunk_size=None``: ``logits_to_keep`` from the earliest target, then ``[B, L, V]`` fp32 logits) against the
  chunked path (the LM head and the cross-entropy on ``chunk_size`` target tokens at a time, recomputed in the
  backward). The batch is ragged: prompts of 3T/8 to T/2 tokens, answers of 3T/8 to T/2 tokens, right padding.
  Each case runs in a fresh subprocess; the cases alternate, ``--rounds`` times. Peak memory on CPU is the growth of
  the process's peak RSS (``ru_maxrss``) over a baseline taken after the model, its gradients (allocated up front, so
  they are not counted) and the batch exist; on CUDA it is ``torch.cuda.max_memory_allocated`` over the same
  baseline. Step time is the median of ``--steps`` steps after one warm-up step, as wall-clock time and as the
  process's CPU time (``time.process_time``: on a shared CPU box it is less disturbed by the other jobs).

Usage::

    python benchmarks/lean_logprobs.py formula                      # B=8, T=128, V=32000, fp32, CPU
    python benchmarks/lean_logprobs.py lean                         # hidden 256, 2 layers, 8 x 256 tokens, CPU
    python benchmarks/lean_logprobs.py lean --chunk-sizes 64 256 1024 --rounds 3 --steps 3
    python benchmarks/lean_logprobs.py lean --generic-chunk-sizes 128 512   # also the per-chunk checkpoint path
    python benchmarks/lean_logprobs.py lean --device cuda --hidden 2048 --layers 4 --batch 8 --length 1024
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from baldro_pl.forward import forward_logprobs
from baldro_pl.labels import IGNORE_INDEX
from baldro_pl.objectives.logprobs import token_logprobs
from baldro_pl.toy import tiny_llama

LLAMA3_VOCAB = 128_256


def gather_minus_logsumexp(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The former ``token_logprobs``: gather minus logsumexp over the shifted, upcast logits, 0 off the mask."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logits = logits[:, :-1].float()
    picked = logits.gather(-1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return (picked - torch.logsumexp(logits, dim=-1)).masked_fill(~mask, 0.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_formula(args: argparse.Namespace) -> None:
    """Time forward + backward of the fused cross-entropy and of gather minus logsumexp, alternately."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    base = torch.randn(args.batch, args.length, args.vocab, generator=g, device=device)
    labels = torch.randint(0, args.vocab, (args.batch, args.length), generator=g, device=device)
    labels[:, : args.length // 4] = IGNORE_INDEX
    paths = {
        "gather - logsumexp (before)": gather_minus_logsumexp,
        "fused cross_entropy (token_logprobs)": lambda x, y: token_logprobs(x, y).logp,
    }
    results: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    values = {}
    for rep in range(args.repeats + 1):  # the first round is a warm-up
        for name, fn in paths.items():
            logits = base.detach().clone().requires_grad_()
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            logp = fn(logits, labels)
            logp.sum().backward()
            _sync(device)
            if rep:
                results[name].append(1000 * (time.perf_counter() - start))
                cpu[name].append(1000 * (time.process_time() - cpu_start))
            values[name] = logp.detach()
            del logits, logp
    after = statistics.median(results[list(paths)[1]])
    after_cpu = statistics.median(cpu[list(paths)[1]])
    diff = (values[next(iter(paths))] - values[list(paths)[1]]).abs().max().item()
    print(
        f"B={args.batch} T={args.length} V={args.vocab} fp32, {args.device}, {args.threads} thread(s), "
        f"forward + backward, median of {args.repeats} alternating repeats; max |difference| {diff:.2e}"
    )
    print("| formula | ms | vs fused | CPU ms | vs fused |")
    print("|---|---:|---:|---:|---:|")
    for name in paths:
        ms, cpu_ms = statistics.median(results[name]), statistics.median(cpu[name])
        print(f"| {name} | {ms:.1f} | {ms / after:.2f} | {cpu_ms:.1f} | {cpu_ms / after_cpu:.2f} |")
    for name in paths:
        print(f"({name}, all runs, ms: {[round(x, 1) for x in results[name]]})")


def _lean_batch(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    """Ragged rows: a prompt of 3T/8..T/2 tokens, an answer of 3T/8..T/2 tokens, right padding to T."""
    g = torch.Generator().manual_seed(args.seed)
    length = args.length
    ids = torch.randint(3, args.vocab, (args.batch, length), generator=g)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    low, high = 3 * length // 8, length // 2
    for row in range(args.batch):
        prompt = int(torch.randint(low, high + 1, (1,), generator=g))
        answer = int(torch.randint(low, high + 1, (1,), generator=g))
        end = prompt + answer
        labels[row, prompt:end] = ids[row, prompt:end]
        mask[row, :end] = 1
        ids[row, end:] = 0
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


class _WrappedHead(torch.nn.Module):
    """The LM head inside another module: ``chunked_token_logprobs`` then takes its generic (checkpoint) path."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped head's logits."""
        return self.head(x)


def _rss_mb() -> float:
    """Current resident set size of this process, MB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(args: argparse.Namespace) -> None:
    """One case in this (fresh) process: build, take the memory baseline, time the steps, print one JSON line."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    chunk_size = args.case_chunk_size or None
    model = tiny_llama(
        args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 128),
        intermediate_size=4 * args.hidden,
        max_position_embeddings=max(512, args.length),
        seed=args.seed,
    ).to(device)
    model.train()
    if args.case_generic:
        model.set_output_embeddings(_WrappedHead(model.get_output_embeddings()))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # allocated before the baseline: both paths need them alike
    batch = _lean_batch(args, device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base_current = _rss_mb()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times, cpu_times, losses = [], [], []
    for step in range(args.steps + 1):
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        lp = forward_logprobs(model, **batch, chunk_size=chunk_size)
        loss = lp.nll.sum()
        loss.backward()
        _sync(device)
        if step:
            times.append(1000 * (time.perf_counter() - start))
            cpu_times.append(1000 * (time.process_time() - cpu_start))
        losses.append(loss.item())
        del lp, loss
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20 - base
        note = ""
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
        note = f"baseline RSS {base_current:.0f} MB, peak RSS before the steps {base:.0f} MB"
    labels = batch["labels"]
    has_target = (labels[:, 1:] != IGNORE_INDEX).any(0)
    first = int(has_target.nonzero()[0, 0]) + 1
    result = {
        "chunk_size": chunk_size,
        "generic": args.case_generic,
        "peak_mb": peak,
        "ms": statistics.median(times),
        "cpu_ms": statistics.median(cpu_times),
        "loss": losses[-1],
        "targets": int((labels[:, 1:] != IGNORE_INDEX).sum()),
        "kept_positions": labels.shape[1] - first + 1,
        "note": note,
    }
    print(json.dumps(result))


def run_lean(args: argparse.Namespace) -> None:
    """Run each case in a fresh subprocess, the cases alternating, and print the table."""
    cases = [(0, False), *((size, False) for size in args.chunk_sizes)]
    cases += [(size, True) for size in args.generic_chunk_sizes]
    common = [
        "--vocab", str(args.vocab), "--hidden", str(args.hidden), "--layers", str(args.layers),
        "--batch", str(args.batch), "--length", str(args.length), "--steps", str(args.steps),
        "--threads", str(args.threads), "--device", args.device, "--seed", str(args.seed),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    runs: dict[tuple[int, bool], list[dict]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case in cases:
            size, generic = case
            flags = ["--case-chunk-size", str(size), *(["--case-generic"] if generic else [])]
            out = subprocess.run(
                [sys.executable, __file__, "_case", *flags, *common],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            ).stdout
            runs[case].append(json.loads(out.strip().splitlines()[-1]))
    full = runs[cases[0]]
    first = full[0]
    print(
        f"Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab:,}, batch {args.batch} x {args.length} "
        f"tokens ({first['targets']} target tokens, logits_to_keep {first['kept_positions']}), fp32, {args.device}, "
        f"{args.threads} thread(s); forward + backward of the summed NLL, median of {args.steps} steps after 1 "
        f"warm-up; {args.rounds} round(s), each case in a fresh process, cases alternating"
    )
    memory = "peak CUDA memory growth" if args.device.startswith("cuda") else "peak RSS growth"
    print(
        f"| path | {memory}, MB (per round) | ms/step (per round) | CPU ms/step (per round) | memory vs full "
        "| time vs full | CPU time vs full | loss |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    full_mb = statistics.median(r["peak_mb"] for r in full)
    full_ms = statistics.median(r["ms"] for r in full)
    full_cpu = statistics.median(r["cpu_ms"] for r in full)
    for case in cases:
        rs = runs[case]
        size, generic = case
        name = f"chunked ({'checkpoint' if generic else 'fused Linear'} path), chunk_size={size}"
        name = "full logits (chunk_size=None)" if size == 0 else name
        mb = statistics.median(r["peak_mb"] for r in rs)
        ms = statistics.median(r["ms"] for r in rs)
        per_mb = ", ".join(f"{r['peak_mb']:.0f}" for r in rs)
        cpu = statistics.median(r["cpu_ms"] for r in rs)
        per_ms = ", ".join(f"{r['ms']:.0f}" for r in rs)
        per_cpu = ", ".join(f"{r['cpu_ms']:.0f}" for r in rs)
        print(
            f"| {name} | {per_mb} | {per_ms} | {per_cpu} | {mb / full_mb:.2f} | {ms / full_ms:.2f} | "
            f"{cpu / full_cpu:.2f} | {rs[-1]['loss']:.4f} |"
        )
    notes = {r["note"] for rs in runs.values() for r in rs if r["note"]}
    for note in sorted(notes):
        print(f"  ({note})")


def main() -> None:
    """Parse the command line and run the chosen measurement."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["formula", "lean", "_case"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=None, help="tokens per row (formula: 128, lean: 256)")
    parser.add_argument("--vocab", type=int, default=None, help=f"formula: 32000, lean: {LLAMA3_VOCAB}")
    parser.add_argument("--repeats", type=int, default=10, help="formula: timed repeats of each")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="lean: timed steps per case")
    parser.add_argument("--rounds", type=int, default=2, help="lean: rounds over the cases")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument(
        "--generic-chunk-sizes",
        type=int,
        nargs="*",
        default=[],
        help="lean: chunk sizes to run also with the head wrapped in a module (the per-chunk checkpoint path)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case-chunk-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--case-generic", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.what == "formula":
        args.length = args.length or 128
        args.vocab = args.vocab or 32000
        run_formula(args)
    else:
        args.length = args.length or 256
        args.vocab = args.vocab or LLAMA3_VOCAB
        (run_lean if args.what == "lean" else run_case)(args)


if __name__ == "__main__":
    main()
