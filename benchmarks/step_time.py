"""Training step time of NPO with and without BalDRO, of the public code's patterns, and of the field's other methods.

``--methods field`` times GradDiff, CE-U, UNDIAL, IdkNLL, IdkDPO and RMU, each composed as its preset, against NPO.

Each step is a forward pass on a forget batch and a retain batch, the objective, backward and an AdamW step, on a
randomly initialised Llama built from a config (no download). baldro-pl's path is ``UnlearningModule.compute_step``:
forget and retain rows in one forward pass (``forward_logprobs_joint``), the reference NLL read from the cache,
BalDRO-G running a no-grad pass over the forget batch, then the gradient pass on the kept rows (and, for comparison,
``passes="one"``: the gradient pass over every row, the unkept ones at zero weight). The public pattern
(nxZhai/BalDRO, open-unlearning) runs the frozen reference model on every forget batch, and BalDRO-G runs an extra
selection pass (with graph) before a subset pass.

    python benchmarks/step_time.py                    # tiny model on CPU
    python benchmarks/step_time.py --hidden 2048 --layers 22 --device cuda --dtype bfloat16   # ~1.1B, GPU
    python benchmarks/step_time.py --methods field    # NPO and the other methods, each as its preset composes it
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import (
    CEU,
    NLL,
    NPO,
    RMU,
    UNDIAL,
    BalDRODV,
    BalDROG,
    EmbedDiff,
    GradAscent,
    IdkDPO,
    IdkNLL,
    Mean,
)
from baldro_pl.toy import tiny_llama


def _batch(n: int, length: int, vocab: int, prompt: int, device) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab, (n, length), device=device)
    labels = ids.clone()
    labels[:, :prompt] = -100
    # ragged answers: right padding on a random tail of each row
    lengths = torch.randint(prompt + 8, length + 1, (n,), device=device)
    pad = torch.arange(length, device=device)[None, :] >= lengths[:, None]
    ids[pad] = 0
    labels[pad] = -100
    return {
        "input_ids": ids,
        "attention_mask": (~pad).long(),
        "labels": labels,
        "index": torch.arange(n, device=device),
    }


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _public_nll(model, side):
    logits = model(input_ids=side["input_ids"], attention_mask=side["attention_mask"]).logits
    return F.cross_entropy(
        logits[:, :-1].float().transpose(-1, -2), side["labels"][:, 1:], ignore_index=-100, reduction="none"
    ).sum(-1)


def _public_step(model, reference, forget, retain, kind: str, beta: float, tau: float, ratio: float):
    """The compute pattern of the reference trainers (NPO / GroupNPO / DrNPO)."""
    if kind == "group":
        with torch.enable_grad():  # the reference's selection pass keeps its graph
            nll = _public_nll(model, forget)
        counts = (forget["labels"][:, 1:] != -100).sum(-1).clamp(min=1)
        k = max(1, int(forget["input_ids"].shape[0] * ratio))
        top = torch.topk(-nll / counts, k).indices
        forget = {key: v.index_select(0, top) for key, v in forget.items()}
        rows = torch.randperm(retain["input_ids"].shape[0], device=top.device)[:k]
        retain = {key: v.index_select(0, rows) for key, v in retain.items()}
    nll = _public_nll(model, forget)
    with torch.no_grad():
        ref = _public_nll(reference, forget)
    per = -2 / beta * F.logsigmoid(beta * (nll - ref))
    forget_loss = -tau * torch.log(torch.mean(torch.exp(-per / tau))) if kind == "dv" else per.mean()
    retain_loss = _public_nll(model, retain).sum() / (retain["labels"][:, 1:] != -100).sum()
    return forget_loss + retain_loss


def _passes(aggregator: BalDROG) -> str:
    """How baldro-pl runs this BalDRO-G: a no-grad selection pass then the kept rows, or one pass (ratio > 2/3)."""
    return "two passes" if aggregator.selects_rows(8) else "one pass"


def run(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """Time every pattern: ``(name, median ms per step, peak GiB on CUDA or NaN)`` per pattern."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    base = tiny_llama(
        args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 256),
        intermediate_size=int(args.hidden * 2.75),
        max_position_embeddings=max(512, args.length),
    ).to(device=device, dtype=dtype)
    forget = _batch(args.batch, args.length, args.vocab, args.prompt, device)
    retain = _batch(args.batch, args.length, args.vocab, args.prompt, device)
    batch = {"forget": forget, "retain": retain}
    beta, tau, ratio = 0.1, 1.0, 0.5

    def ours(aggregator, forget_loss=None, retain_loss=None, alpha=1.0):
        forget_loss = NPO(beta=beta) if forget_loss is None else forget_loss
        retain_loss = NLL() if retain_loss is None else retain_loss
        module = UnlearningModule(copy.deepcopy(base), forget_loss, aggregator, retain_loss, alpha=alpha).to(device)
        module.configure_model()  # UNDIAL, RMU: the frozen copy; RMU: the direction and the trainable parameters
        if module.objective.needs_reference_nll:
            module.reference_cache.build(module.model, [forget], device)
        if module.objective.needs_reference_alternate_nll:
            module.reference_cache_alternate.build(module.model, [idk_batch["forget"]["alternate"]], device)
        params = [p for p in module.model.parameters() if p.requires_grad]
        step_batch = idk_batch if module.objective.needs_alternate else batch
        return lambda: module.compute_step(step_batch)[0].loss, params

    def public(kind, rho=ratio):
        model = copy.deepcopy(base)
        reference = copy.deepcopy(base).eval().requires_grad_(False)
        return lambda: _public_step(model, reference, forget, retain, kind, beta, tau, rho), list(model.parameters())

    # the idk methods' alternative answers: a short answer per forget row, indexed like the forget rows
    alternate = _batch(args.batch, args.prompt + 16, args.vocab, args.prompt, device)
    idk_batch = {"forget": {**forget, "alternate": alternate}, "retain": retain}
    layer = min(7, args.layers - 1)  # RMU as its preset: a layer and the down-projections of it and the two before
    layers = "|".join(str(i) for i in range(max(0, layer - 2), layer + 1))
    trainable = [rf"model\.layers\.({layers})\.mlp\.down_proj\.weight"]
    field = [
        ("GradDiff (GradAscent + NLL retain)", lambda: ours(Mean(), GradAscent())),
        ("CE-U (alpha 0)", lambda: ours(Mean(), CEU(), alpha=0.0)),
        ("UNDIAL (frozen teacher, alpha 0)", lambda: ours(Mean(), UNDIAL(beta=10.0, positions="reference"), alpha=0.0)),
        ("IdkNLL (+ NLL retain)", lambda: ours(Mean(), IdkNLL())),
        ("IdkDPO (both reference NLLs cached)", lambda: ours(Mean(), IdkDPO(beta=0.1))),
        (
            f"RMU (layer {layer}, 3 down_proj trained, EmbedDiff)",
            lambda: ours(Mean(), RMU(layer=layer, steering_coeff=300.0, trainable=trainable), EmbedDiff(), 1000.0),
        ),
    ]
    dro = []
    for rho in (0.5, 0.25, 0.75):
        dro += [
            (
                f"NPO + BalDRO-G {rho} (baldro-pl, {_passes(BalDROG(ratio=rho))})",
                lambda rho=rho: ours(BalDROG(ratio=rho)),
            ),
            (f"NPO + BalDRO-G {rho} (one pass, zero weights)", lambda rho=rho: ours(BalDROG(ratio=rho, passes="one"))),
            (f"NPO + BalDRO-G {rho} (public pattern)", lambda rho=rho: public("group", rho)),
        ]
    dro += [
        ("NPO + BalDRO-DV (baldro-pl)", lambda: ours(BalDRODV(temperature=tau))),
        ("NPO (public pattern: reference model every step)", lambda: public("mean")),
        ("NPO + BalDRO-DV (public pattern)", lambda: public("dv")),
    ]
    cases = [("NPO (baldro-pl, cached reference)", lambda: ours(Mean()))]
    cases += {"dro": dro, "field": field, "all": dro + field}[args.methods]
    if args.only:
        cases = [case for case in cases if case is cases[0] or args.only in case[0]]
    results = []
    for name, build in cases:
        loss_fn, params = build()
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        times = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for step in range(args.warmup + args.steps):
            _sync(device)
            start = time.perf_counter()
            loss = loss_fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        results.append((name, 1000 * statistics.median(times), peak))
        del loss_fn, params, optimizer
    return results


def main() -> None:
    """Parse the settings, run the patterns and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=8, help="forget and retain batch size")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=32, help="masked prompt tokens per row")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default=None, help="run only the patterns whose name contains this (and NPO)")
    parser.add_argument(
        "--methods",
        choices=("dro", "field", "all"),
        default="dro",
        help="dro: BalDRO and the public patterns; field: GradDiff, CE-U, UNDIAL, IdkNLL, IdkDPO, RMU; all: both",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args)
    npo = results[0][1]
    print(f"model: hidden {args.hidden}, layers {args.layers}, vocab {args.vocab}; batch {args.batch}x{args.length}")
    print(f"{'pattern':58s} {'ms/step':>9s} {'vs NPO':>7s} {'peak GiB':>9s}")
    for name, ms, peak in results:
        print(f"{name:58s} {ms:9.1f} {ms / npo:7.2f} {peak:9.2f}")


if __name__ == "__main__":
    main()
