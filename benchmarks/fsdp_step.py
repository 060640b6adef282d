"""Step time and peak memory of NPO + BalDRO-DV under Lightning's single-device strategy and under HFFSDPStrategy.

A Llama built from a config (random init, no download: ~1.1B parameters by default, the design's anchor model), bf16
weights, forget 8 x 256 + retain 8 x 256 tokens per step, through the real ``UnlearningModule`` and ``Trainer``.

    python benchmarks/fsdp_step.py                                   # on a GPU: both strategies, 20 steps each
    python benchmarks/fsdp_step.py --tiny --accelerator cpu --precision 32-true --steps 3   # smoke test on a CPU

Each strategy runs in its own process (``--strategy`` internally), so peak memory is measured from a clean start.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import NLL, NPO, BalDRODV
from baldro_pl.toy import tiny_llama, train_tokenizer

SIZES = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "1b": (2048, 22, 32, 4, 5632, 32000),
    "tiny": (64, 2, 4, 2, 128, 400),
}


def _side(n: int, length: int, vocab: int, offset: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab, (n, length))
    labels = ids.clone()
    labels[:, : length // 4] = -100
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "index": torch.arange(offset, offset + n),
    }


class RandomTokens(pl.LightningDataModule):
    """``steps`` forget/retain batches of random tokens (the reference cache covers their forget indices)."""

    def __init__(self, steps: int, batch: int, length: int, vocab: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.batches = [
            {"forget": _side(batch, length, vocab, i * batch), "retain": _side(batch, length, vocab, 0)}
            for i in range(steps)
        ]

    def train_dataloader(self) -> DataLoader:
        """The pre-built batches, one per step."""
        return DataLoader(self.batches, batch_size=None)

    def reference_dataloader(self) -> list[dict[str, torch.Tensor]]:
        """The forget sides, for the reference cache."""
        return [b["forget"] for b in self.batches]


class Timer(pl.Callback):
    """Median step time after two warm-up steps, and peak GPU memory."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Start the clock (after the device is idle)."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Stop the clock (after the device is idle)."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def run_one(args: argparse.Namespace) -> dict:
    """Fit the configured model for ``args.steps`` steps; median step time and peak memory."""
    hidden, layers, heads, kv, inter, vocab = SIZES["tiny" if args.tiny else "1b"]
    model_dir = Path(args.workdir) / "model"
    if not (model_dir / "config.json").exists():
        tok = train_tokenizer(["a b c d e f g h"], vocab_size=300)
        tiny_llama(
            vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            intermediate_size=inter,
            max_position_embeddings=2048,
        ).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    module = UnlearningModule(
        str(model_dir), NPO(beta=0.1), BalDRODV(temperature=1.0), NLL(), learning_rate=1e-5, warmup_steps=0
    )
    if args.strategy == "fsdp":
        from baldro_pl.strategies import HFFSDPStrategy

        strategy = HFFSDPStrategy(activation_checkpointing_layers=args.checkpointing)
    else:
        strategy = "auto"
        module.gradient_checkpointing = args.checkpointing
    timer = Timer()
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=1,
        strategy=strategy,
        precision=args.precision,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=RandomTokens(args.steps, args.batch, args.length, vocab))
    steady = sorted(timer.times[2:] or timer.times)
    return {
        "strategy": args.strategy,
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "ms_per_step": 1000 * steady[len(steady) // 2],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def main() -> None:
    """Parse the command line; run each strategy in its own process and print one table row per strategy."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="forget and retain rows per step")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--precision", default="bf16-true")
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing of decoder layers")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model instead of ~1.1B (smoke test)")
    parser.add_argument("--strategy", choices=["single", "fsdp"], help="run one strategy (used internally)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    if args.strategy:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    with tempfile.TemporaryDirectory() as workdir:
        results = []
        for strategy in ("single", "fsdp"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--strategy", strategy, "--workdir", workdir]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    print(f"{'strategy':10s} {'params':>12s} {'ms/step':>9s} {'peak GiB':>9s}  device")
    for r in results:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{r['strategy']:10s} {r['parameters']:12,d} {r['ms_per_step']:9.1f} {peak:>9s}  {r['device']}")


if __name__ == "__main__":
    main()
