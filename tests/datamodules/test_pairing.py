"""Forget/retain pairing: coverage of the forget set, seeded retain draws, the cycle option, and DDP shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from baldro_pl.datamodules import ForgetRetainDataset, ForgetSampler, JsonDataModule

N_FORGET, N_RETAIN = 21, 13


def _write_qa(path: Path, n: int, who: str) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"Where was {who} {i} born?", "answer": f"{who} {i} was born in Paris."}))
            f.write("\n")
    return path


@pytest.fixture
def data_files(tmp_path):
    return _write_qa(tmp_path / "forget.jsonl", N_FORGET, "author"), _write_qa(
        tmp_path / "retain.jsonl", N_RETAIN, "poet"
    )


def _datamodule(data_files, toy_tokenizer, **kwargs) -> JsonDataModule:
    forget, retain = data_files
    dm = JsonDataModule(forget=str(forget), retain=str(retain), tokenizer=toy_tokenizer, **kwargs)
    dm.setup("fit")
    return dm


def _epoch_pairs(dm: JsonDataModule, epoch: int) -> list[tuple[int, int]]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)  # what Lightning does at the start of every epoch
    pairs = []
    for batch in loader:
        pairs += list(zip(batch["forget"]["index"].tolist(), batch["retain"]["index"].tolist()))
    return pairs


def test_epoch_walks_every_forget_sample_once(data_files, toy_tokenizer):
    dm = _datamodule(data_files, toy_tokenizer, batch_size=4)
    for epoch in range(3):
        forget = [f for f, _ in _epoch_pairs(dm, epoch)]
        assert sorted(forget) == list(range(N_FORGET))
    assert len(dm.train_dataloader()) == 6  # ceil(21 / 4), the last batch partial


def test_forget_order_is_shuffled_and_seeded(data_files, toy_tokenizer):
    a = [f for f, _ in _epoch_pairs(_datamodule(data_files, toy_tokenizer, batch_size=4, seed=1), 0)]
    b = [f for f, _ in _epoch_pairs(_datamodule(data_files, toy_tokenizer, batch_size=4, seed=1), 0)]
    c = [f for f, _ in _epoch_pairs(_datamodule(data_files, toy_tokenizer, batch_size=4, seed=1), 1)]
    assert a == b and a != c and a != list(range(N_FORGET))
    unshuffled = _datamodule(data_files, toy_tokenizer, batch_size=4, shuffle=False)
    assert [f for f, _ in _epoch_pairs(unshuffled, 0)] == list(range(N_FORGET))


def test_retain_draws_reproducible_and_change_across_epochs(data_files, toy_tokenizer):
    dm = _datamodule(data_files, toy_tokenizer, batch_size=4, seed=3)
    epoch0, epoch1 = dict(_epoch_pairs(dm, 0)), dict(_epoch_pairs(dm, 1))
    again = dict(_epoch_pairs(_datamodule(data_files, toy_tokenizer, batch_size=4, seed=3), 0))
    other_seed = dict(_epoch_pairs(_datamodule(data_files, toy_tokenizer, batch_size=4, seed=4), 0))
    assert epoch0 == again
    assert epoch0 != epoch1
    assert epoch0 != other_seed
    assert all(0 <= r < N_RETAIN for r in epoch0.values())
    # the draw depends only on (seed, epoch, forget index), not on the order or the batch it lands in
    ds = dm.train_dataset()
    assert all(ds.retain_indices(f, 0) == [r] for f, r in epoch0.items())


def test_retain_draws_do_not_depend_on_workers(data_files, toy_tokenizer):
    single = _epoch_pairs(_datamodule(data_files, toy_tokenizer, batch_size=4, seed=5), 2)
    workers = _epoch_pairs(_datamodule(data_files, toy_tokenizer, batch_size=4, seed=5, num_workers=2), 2)
    assert single == workers


def test_retain_draws_are_uniform():
    ds = ForgetRetainDataset(list(range(2000)), list(range(10)), seed=0)
    counts = [0] * 10
    for i in range(2000):
        counts[ds.retain_indices(i, 0)[0]] += 1
    assert min(counts) > 150 and max(counts) < 250  # expected 200 each; 5 sigma is about ±65


def test_cycle_visits_every_retain_sample(data_files, toy_tokenizer):
    dm = _datamodule(data_files, toy_tokenizer, batch_size=4, pairing="cycle", seed=2)
    # N_RETAIN = 13 retain samples need ceil(13 / 21) = 1 epoch: every one appears, none twice more than others
    retain = [r for _, r in _epoch_pairs(dm, 0)]
    assert set(retain) == set(range(N_RETAIN))
    assert max(retain.count(r) for r in range(N_RETAIN)) == 2  # 21 draws: one full cycle of 13 plus 8
    ds = ForgetRetainDataset(list(range(5)), list(range(12)), seed=0, pairing="cycle")
    visited = [ds.retain_indices(i, epoch)[0] for epoch in range(3) for i in range(5)]
    assert sorted(visited[:12]) == list(range(12))  # the first 12 positions are one permutation
    assert visited[:12] != list(range(12))


def test_retain_batch_size_differs_from_forget(data_files, toy_tokenizer):
    dm = _datamodule(data_files, toy_tokenizer, batch_size=4, retain_batch_size=6)
    batches = list(dm.train_dataloader())
    assert [b["forget"]["input_ids"].shape[0] for b in batches] == [4, 4, 4, 4, 4, 1]
    assert [b["retain"]["input_ids"].shape[0] for b in batches] == [6, 6, 6, 6, 6, 2]
    smaller = list(_datamodule(data_files, toy_tokenizer, batch_size=4, retain_batch_size=2).train_dataloader())
    assert [b["retain"]["input_ids"].shape[0] for b in smaller] == [2, 2, 2, 2, 2, 1]


@pytest.mark.parametrize(("n", "world", "batch"), [(21, 2, 4), (40, 3, 8), (400, 8, 8), (7, 4, 2)])
def test_sampler_shards_disjoint_and_complete(n, world, batch):
    for epoch in range(2):
        shards = []
        for rank in range(world):
            sampler = ForgetSampler(n, batch_size=batch, seed=0, num_replicas=world, rank=rank)
            sampler.set_epoch(epoch)
            keys = list(sampler)
            assert len(keys) == len(sampler) and all(e == epoch for _, e in keys)
            shards.append([i for i, _ in keys])
        assert sorted(i for s in shards for i in s) == list(range(n))  # disjoint and complete
        assert len({-(-len(s) // batch) for s in shards}) == 1  # equal batch counts: DDP stays in step


def test_sampler_pads_only_to_keep_batch_counts_equal():
    # 17 samples over 2 processes with batch size 8: shards of 9 and 8 would give 2 and 1 batches (a DDP hang)
    shards = [ForgetSampler(17, batch_size=8, seed=0, num_replicas=2, rank=r).shard(0) for r in range(2)]
    assert [len(s) for s in shards] == [9, 9]
    assert sorted(set(shards[0]) | set(shards[1])) == list(range(17))
    assert shards[1][-1] == shards[1][0]  # the one repeated sample


def test_reference_loader_covers_forget_once_in_row_order(data_files, toy_tokenizer):
    dm = _datamodule(data_files, toy_tokenizer, eval_batch_size=8)
    indices = [i for b in dm.reference_dataloader() for i in b["index"].tolist()]
    assert indices == list(range(N_FORGET))
    shards = []
    for rank in range(3):
        dm.data_parallel_rank = lambda rank=rank: (rank, 3)  # as under a 3-process strategy
        shards.append([i for b in dm.reference_dataloader() for i in b["index"].tolist()])
    assert shards[0] == list(range(0, N_FORGET, 3))
    assert sorted(sum(shards, [])) == list(range(N_FORGET))


def test_ddp_forget_shards_disjoint_and_complete(data_files, toy_tokenizer, tmp_path):
    """Two CPU processes under Lightning's ``strategy="ddp"``.

    Mechanism: ``ddp_pairing_worker.py`` runs in a subprocess and calls ``Trainer(accelerator="cpu", devices=2,
    strategy="ddp").fit`` (gloo). The "ddp" strategy starts rank 1 by re-running that script, which a pytest process
    cannot do for itself; spawn-based strategies would need this test module to be importable by the children.
    Each rank writes the indices it saw; here we check, per epoch, that the forget shards are disjoint and complete,
    that the retain draws are the seeded ones, and that the reference-loader shards partition the forget set.
    """
    forget, _ = data_files
    toy_tokenizer.save_pretrained(tmp_path / "tokenizer")
    out = tmp_path / "out"
    out.mkdir()
    script = Path(__file__).with_name("ddp_pairing_worker.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run(
        [sys.executable, str(script), str(forget), str(tmp_path / "tokenizer"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    reference = [r["epochs"]["-1"]["reference"] for r in ranks]
    assert reference == [list(range(0, N_FORGET, 2)), list(range(1, N_FORGET, 2))]
    # the worker pairs the forget file with itself as retain set, seed 7, batch size 4
    paired = ForgetRetainDataset(list(range(N_FORGET)), list(range(N_FORGET)), seed=7)
    for epoch in ("0", "1"):
        shards = [r["epochs"][epoch]["forget"] for r in ranks]
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(N_FORGET))
        for r in ranks:
            pairs = zip(r["epochs"][epoch]["forget"], r["epochs"][epoch]["retain"])
            assert all(paired.retain_indices(f, int(epoch)) == [x] for f, x in pairs)
    assert ranks[0]["epochs"]["0"]["forget"] != ranks[0]["epochs"]["1"]["forget"]
