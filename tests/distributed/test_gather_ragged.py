"""gather_ragged under a real gloo process group of two CPU processes (ranks with 2 and 3 rows)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from baldro_pl.distributed import gather_ragged


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        n = 2 + rank
        index = torch.arange(n) + 10 * rank
        values = torch.arange(n, dtype=torch.float64) / (rank + 1)
        gathered = gather_ragged(index, values)
        torch.save(gathered, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_of_different_lengths_gather_everything_in_rank_order(tmp_path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        index, values = torch.load(tmp_path / f"rank{rank}.pt")
        assert index.tolist() == [0, 1, 10, 11, 12]
        assert values.tolist() == [0.0, 1.0, 0.0, 0.5, 1.0] and values.dtype == torch.float64
