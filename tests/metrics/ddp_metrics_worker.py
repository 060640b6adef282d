"""Run by test_metrics_ddp.py through ``torch.multiprocessing.spawn`` (not a test itself).

Each of two gloo processes updates the metric classes with its shard of the rows (padded with repeats like a
distributed sampler) and runs :func:`evaluate_tofu` on its shard; what every rank computes is written to
``<out>/rank<r>.json`` for the test to compare with one process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist


def metric_inputs(n: int) -> dict[str, torch.Tensor]:
    """Deterministic per-row inputs shared by the worker and the single-process reference."""
    g = torch.Generator().manual_seed(11)
    return {
        "correct": torch.rand(n, generator=g, dtype=torch.float64) * 3,
        "wrong": torch.rand(n, 5, generator=g, dtype=torch.float64) * 3 + 0.5,
        "scores": torch.randn(n, generator=g, dtype=torch.float64),
        "em": torch.rand(n, generator=g, dtype=torch.float64),
    }


def metric_results(rows_per_update: list[list[int]], n: int) -> dict:
    """Update every metric class with the given row lists, then compute (collective when distributed)."""
    from baldro_pl.metrics import (
        MIAAUC,
        ROUGE,
        ExactMemorization,
        ForgetQuality,
        NormalisedProbability,
        Probability,
        TruthRatio,
    )

    x = metric_inputs(n)
    texts = [f"answer number {i} about Paris" for i in range(n)]
    metrics = {
        "prob": Probability(),
        "normalised": NormalisedProbability(),
        "tr": TruthRatio("true_better"),
        "fq": ForgetQuality(torch.linspace(0.1, 3.0, n)),
        "em": ExactMemorization(),
        "rouge": ROUGE("rougeL_recall"),
        "auc": MIAAUC(),
    }
    for rows in rows_per_update:
        idx = torch.tensor(rows, dtype=torch.long)
        metrics["prob"].update(idx, x["wrong"][idx])
        metrics["normalised"].update(idx, x["correct"][idx], x["wrong"][idx])
        metrics["tr"].update(idx, x["correct"][idx], x["wrong"][idx])
        metrics["fq"].update(idx, x["correct"][idx], x["wrong"][idx])
        metrics["em"].update(idx, x["em"][idx])
        metrics["rouge"].update(idx, [texts[(i + 1) % n] for i in rows], [texts[i] for i in rows])
        members = idx[idx % 3 == 0]
        metrics["auc"].update(members, x["scores"][members], member=True)
        others = idx[idx % 3 != 0]
        metrics["auc"].update(others, x["scores"][others], member=False)
    out = {name: float(m.compute()) for name, m in metrics.items()}
    index, values = metrics["tr"].per_sample()
    out["tr_index"] = index.tolist()
    out["tr_values"] = values.tolist()
    return out


def main(rank: int, world_size: int, out: str, model_dir: str, n_metric_rows: int, n_tofu_rows: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world_size)
    try:
        from suites import evaluate_tofu
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from baldro_pl.distributed import shard_indices

        shard = shard_indices(n_metric_rows, rank, world_size)
        result = {"shard": shard, "metrics": metric_results([shard[:2], shard[2:]], n_metric_rows)}
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        rows = json.loads(Path(out, "rows.json").read_text())
        evaluation = evaluate_tofu(model, tokenizer, rows, max_new_tokens=6, batch_size=2)
        result["logs"] = evaluation.logs
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()
