"""The torchmetrics classes: de-duplication by index, one batch vs several, agreement with the functional forms."""

from __future__ import annotations

import math

import pytest
import torch

from baldro_pl.metrics import (
    MIAAUC,
    ROUGE,
    ExactMemorization,
    ForgetQuality,
    ForgettingBalance,
    NormalisedProbability,
    Probability,
    TruthRatio,
)
from baldro_pl.metrics.functional import (
    closer_to_1_better,
    forget_quality,
    forgetting_balance,
    mia_auc,
    normalised_probability,
    rouge_score,
    true_better,
    truth_ratio,
)
from baldro_pl.metrics.indexed import deduplicate

N, K = 23, 5


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(7)
    return {
        "index": torch.arange(N),
        "correct": torch.rand(N, generator=g, dtype=torch.float64) * 3,
        "wrong": torch.rand(N, K, generator=g, dtype=torch.float64) * 3 + 0.5,
        "scores": torch.randn(N, generator=g, dtype=torch.float64),
    }


def test_deduplicate_keeps_first_occurrence() -> None:
    index, value = deduplicate(torch.tensor([3, 1, 3, 0, 1]), torch.tensor([30.0, 10.0, 31.0, 0.0, 11.0]))
    assert index.tolist() == [0, 1, 3] and value.tolist() == [0.0, 10.0, 30.0]
    with pytest.raises(ValueError, match="indices"):
        deduplicate(torch.tensor([1, 2]), torch.tensor([1.0]))


def _feed(metric, chunks, fn) -> None:
    for rows in chunks:
        fn(metric, rows)


# each row set: one batch; three batches; three batches with padded repeats (as a distributed sampler would add)
CHUNKINGS = [
    [list(range(N))],
    [list(range(0, 8)), list(range(8, 16)), list(range(16, N))],
    [list(range(0, 12)), [0, 1], list(range(12, N)), [5]],
]


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_classes_agree_with_functional_forms(data, chunks) -> None:
    c, w, s = data["correct"], data["wrong"], data["scores"]
    tr = truth_ratio(c, w)
    expected = {
        "prob": torch.exp(-c).mean().item(),
        "pert": torch.exp(-w).mean(-1).mean().item(),
        "normalised": normalised_probability(torch.exp(-c), torch.exp(-w)).mean().item(),
        "tr_forget": closer_to_1_better(tr).item(),
        "tr_retain": true_better(tr).item(),
        "fq": forget_quality(tr, tr * 1.5),
        "balance": list(forgetting_balance(tr, tr * 1.5).values()),
        "auc": mia_auc(s[:12], s[12:]),
    }
    metrics = {
        "prob": Probability(),
        "pert": Probability(),
        "normalised": NormalisedProbability(),
        "tr_forget": TruthRatio("closer_to_1_better"),
        "tr_retain": TruthRatio("true_better"),
        "fq": ForgetQuality(tr * 1.5),
        "balance": ForgettingBalance(tr * 1.5),
        "auc": MIAAUC(),
    }
    for rows in chunks:
        idx = torch.tensor(rows)
        metrics["prob"].update(idx, c[idx])
        metrics["pert"].update(idx, w[idx])
        metrics["normalised"].update(idx, c[idx], w[idx])
        for name in ("tr_forget", "tr_retain", "fq", "balance"):
            metrics[name].update(idx, c[idx], w[idx])
        members = idx[idx < 12]
        holdout = idx[idx >= 12]
        metrics["auc"].update(members, s[members], member=True)
        metrics["auc"].update(holdout, s[holdout], member=False)
    for name, metric in metrics.items():
        value = metric.compute()
        assert value.dtype == torch.float64
        if name == "balance":
            assert value.tolist() == pytest.approx(expected[name], abs=1e-15)
        else:
            assert value.item() == pytest.approx(expected[name], rel=1e-13), name
    index, values = metrics["tr_forget"].per_sample()
    assert index.tolist() == list(range(N))
    torch.testing.assert_close(values, tr)
    sides = metrics["auc"].per_sample()
    assert sides["forget"][0].tolist() == list(range(12)) and sides["holdout"][0].tolist() == list(range(12, N))


def test_rouge_class_single_and_multiple_references() -> None:
    preds = ["The capital of France is Paris.", "Cairo lies on the Nile river", "nothing"]
    refs = ["Paris is the capital of France.", "The Nile flows through Cairo.", "something else"]
    metric = ROUGE("rougeL_recall")
    metric.update([0, 1], preds[:2], refs[:2])
    metric.update([2, 0], preds[2:] + preds[:1], refs[2:] + ["ignored: repeat of row 0"])
    expected = sum(rouge_score(p, r)["rougeL_recall"] for p, r in zip(preds, refs)) / 3
    assert metric.compute().item() == pytest.approx(expected, abs=1e-15)
    multi = ROUGE("rougeL_f1")
    options = [["Paris.", "Lyon is big"], ["Cairo", "river Nile"], ["else", "nothing at all"]]
    multi.update([0, 1, 2], preds, options)
    per_row = [sum(rouge_score(p, o)["rougeL_f1"] for o in opts) / 2 for p, opts in zip(preds, options)]
    assert multi.compute().item() == pytest.approx(sum(per_row) / 3, abs=1e-15)
    index, values = multi.per_sample()
    assert values.shape == (3, 2, 3)
    with pytest.raises(ValueError, match="rouge_type"):
        ROUGE("rouge2")


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_sample_mean_skips_nan_and_errors() -> None:
    em = ExactMemorization()
    em.update([0, 1, 2], torch.tensor([1.0, float("nan"), 0.5]))
    assert em.compute().item() == 0.75
    with pytest.raises(ValueError, match="indices"):
        em.update([0, 1], torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match="no samples"):
        ExactMemorization().compute()
    with pytest.raises(ValueError, match="aggregator"):
        TruthRatio("mean")
    auc = MIAAUC()
    auc.update([0], torch.tensor([1.0]), member=True)
    with pytest.raises(RuntimeError, match="holdout"):
        auc.compute()
    assert math.isfinite(mia_auc(torch.tensor([1.0]), torch.tensor([2.0])))


@pytest.mark.parametrize(("n", "world"), [(7, 2), (40, 3), (5, 8), (1, 2), (12, 4)])
def test_shards_match_distributed_sampler(n: int, world: int) -> None:
    from torch.utils.data import DistributedSampler

    from baldro_pl.distributed import shard_indices

    shards = [shard_indices(n, rank, world) for rank in range(world)]
    for rank, shard in enumerate(shards):
        sampler = DistributedSampler(list(range(n)), num_replicas=world, rank=rank, shuffle=False)
        assert shard == list(sampler)
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of calls
    assert sorted({i for s in shards for i in s}) == list(range(n))
    with pytest.raises(ValueError, match="invalid rank"):
        shard_indices(n, world, world)
