"""Forget/retain pairing for training: which retain samples accompany each forget sample, and in which order.

open-unlearning's ``ForgetRetainDataset(anchor="forget")`` (``src/data/unlearn.py``; style-guide §3.4) walks the
forget set once per epoch and pairs each forget row with one retain row drawn uniformly at random with replacement,
using the global torch RNG inside ``__getitem__``, so its draws depend on worker seeding (ecosystem-notes §2.7,
"Sampling"). Here:

* **Forget order** is set by :class:`ForgetSampler`, a seeded shuffle (a fresh permutation each epoch, drawn
  from ``(seed, epoch)``, like the HF Trainer's ``RandomSampler`` but independent of the global RNG). Under data
  parallelism each process takes the strided shard ``permutation[rank::world_size]``: the shards are disjoint and
  together cover the forget set. The sampler subclasses ``DistributedSampler`` so Lightning keeps it as it is
  (``use_distributed_sampler`` would otherwise replace it with one that pads shards with repeated samples).
* **Retain draws** are a pure function of ``(seed, epoch, forget index)`` (:class:`ForgetRetainDataset`): the same
  on every worker and process, reproducible for a seed, and new in every epoch. The sampler hands the epoch to the
  dataset inside each key ``(forget_index, epoch)``, so persistent workers see the epoch change too.
  ``pairing="random"`` draws uniformly with replacement (the reference behaviour); ``pairing="cycle"`` walks
  seeded permutations of the retain set one after another, so every retain sample is visited once per
  ``ceil(len(retain) / len(forget))`` epochs.
* **Alternative answers** (IdkNLL, IdkDPO; :mod:`.alternate`): with an ``alternate`` set aligned with the forget set,
  each item also carries its row's alternate sample and :class:`ForgetRetainCollator` pads them into
  ``batch["forget"]["alternate"]`` (same rows, same order as the forget side). Without it nothing changes.
* **Retain batch size** may differ from the forget batch size: each forget item carries
  ``ceil(retain_batch_size / batch_size)`` retain draws and :class:`ForgetRetainCollator` keeps as many as the
  batch needs (all of the first draw, then the second...). With equal sizes this is exactly one per forget sample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from baldro_pl.datamodules.collate import pad_samples
from baldro_pl.datamodules.formatting import EncodedSample

log = logging.getLogger(__name__)

Pairing = Literal["random", "cycle"]

# Independent random streams derived from one seed (numpy SeedSequence mixes the whole entropy list).
_STREAM_ORDER, _STREAM_RETAIN, _STREAM_CYCLE = 0x0F0, 0x4E7, 0xC1C


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng([int(x) for x in entropy])


def forget_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The epoch's order of the forget indices ``0..n-1`` before sharding (a seeded permutation, or identity)."""
    if not shuffle:
        return list(range(n))
    return _rng(seed, _STREAM_ORDER, epoch).permutation(n).tolist()


class ForgetSampler(DistributedSampler):
    """Seeded, epoch-aware sampler over the forget set; yields ``(forget_index, epoch)`` keys.

    Each epoch: ``order = forget_order(n, seed, epoch)``; this process takes ``order[rank::num_replicas]``.
    Shards are disjoint and complete. When a shard would have one batch fewer than another (only if ``n`` is not a
    multiple of ``num_replicas`` and ``n // num_replicas`` is a multiple of ``batch_size``), DDP would hang on the
    missing step, so the short shards repeat their first sample once (a logged warning says so); this is the only
    case where a forget sample is seen twice in an epoch.

    Args:
        num_samples_total: size of the forget set.
        batch_size: per-process forget batch size (to keep batch counts equal across processes).
        seed: base seed of the permutations.
        shuffle: shuffle the forget order each epoch (default) or keep row order.
        num_replicas: number of data-parallel processes (default 1).
        rank: this process's rank among them (default 0).
    """

    def __init__(
        self,
        num_samples_total: int,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if num_samples_total < 1:
            raise ValueError("ForgetSampler: the forget set is empty")
        if batch_size < 1:
            raise ValueError(f"ForgetSampler: batch_size must be at least 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"ForgetSampler: invalid rank {rank} for {num_replicas} processes")
        # DistributedSampler's own state is set directly: its __init__ needs a dataset and (without explicit
        # arguments) an initialised process group, and would pad shards to equal length.
        self.dataset = None
        self.n = num_samples_total
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.drop_last = False
        self._resume: tuple[int, int] | None = None
        sizes = [len(range(r, self.n, num_replicas)) for r in range(num_replicas)]
        batches = [math.ceil(s / batch_size) for s in sizes]
        self.pad = max(batches) > min(batches) and batches[rank] < max(batches)
        self.num_samples = sizes[rank] + (1 if self.pad else 0)
        self.total_size = self.n
        if max(batches) > min(batches) and rank == 0:
            log.warning(
                "ForgetSampler: %d forget samples over %d processes with batch size %d give unequal batch counts; "
                "the shorter shards repeat one sample per epoch to keep the processes in step",
                self.n,
                num_replicas,
                batch_size,
            )

    def shard(self, epoch: int | None = None) -> list[int]:
        """The forget indices this process visits in ``epoch`` (default: the current epoch), in order."""
        epoch = self.epoch if epoch is None else epoch
        rows = forget_order(self.n, self.seed, epoch, self.shuffle)[self.rank :: self.num_replicas]
        return rows + rows[:1] if self.pad else rows

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        keys = [(i, epoch) for i in self.shard(epoch)]
        if self._resume is not None and self._resume[0] == epoch:
            keys = keys[self._resume[1] :]
        self._resume = None
        return iter(keys)

    def resume_from(self, epoch: int, consumed: int) -> None:
        """Skip the first ``consumed`` keys of ``epoch`` in the next pass (resuming a run stopped mid-epoch)."""
        self._resume = (epoch, consumed)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (Lightning calls this at the start of every training epoch)."""
        self.epoch = epoch


class ForgetRetainDataset(Dataset):
    """Forget samples, each with its seeded retain draws, keyed by ``(forget_index, epoch)``.

    Item: ``{"forget": EncodedSample, "retain": [EncodedSample, ...]}`` (``retain_per_forget`` retain samples,
    an empty list without a retain set), plus ``"alternate": EncodedSample`` (the same row with its alternative
    answer) when ``alternate`` is given. A plain integer key means epoch 0.

    Args:
        forget: forget samples.
        retain: retain samples, or None.
        seed: base seed of the draws.
        pairing: ``"random"`` (uniform with replacement, open-unlearning's behaviour) or ``"cycle"`` (seeded
            permutations of the retain set, one after another).
        retain_per_forget: retain draws carried by each forget item.
        alternate: samples aligned with ``forget`` (item ``i`` is forget row ``i`` with its alternative answer), or
            None.

    Raises:
        ValueError: an unknown ``pairing``, an empty retain set, or an ``alternate`` set of another length.
    """

    def __init__(
        self,
        forget: Dataset,
        retain: Dataset | None,
        *,
        seed: int = 0,
        pairing: Pairing = "random",
        retain_per_forget: int = 1,
        alternate: Dataset | None = None,
    ) -> None:
        if pairing not in ("random", "cycle"):
            raise ValueError(f"pairing must be 'random' or 'cycle', got {pairing!r}")
        if retain is not None and len(retain) == 0:
            raise ValueError("ForgetRetainDataset: the retain set is empty")
        if alternate is not None and len(alternate) != len(forget):
            raise ValueError(
                f"ForgetRetainDataset: the alternate set has {len(alternate)} samples; expected one per forget sample "
                f"({len(forget)})"
            )
        self.alternate = alternate
        self.forget = forget
        self.retain = retain
        self.seed = seed
        self.pairing = pairing
        self.retain_per_forget = retain_per_forget
        self._cycle_cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.forget)

    def retain_indices(self, forget_index: int, epoch: int = 0) -> list[int]:
        """The retain rows paired with ``forget_index`` in ``epoch`` (deterministic; no global RNG)."""
        if self.retain is None:
            return []
        n_retain, k = len(self.retain), self.retain_per_forget
        if self.pairing == "random":
            return _rng(self.seed, _STREAM_RETAIN, epoch, forget_index).integers(0, n_retain, size=k).tolist()
        first = (epoch * len(self.forget) + forget_index) * k
        return [self._cycle_position(p, n_retain) for p in range(first, first + k)]

    def _cycle_position(self, position: int, n_retain: int) -> int:
        cycle, offset = divmod(position, n_retain)
        perm = self._cycle_cache.get(cycle)
        if perm is None:
            if len(self._cycle_cache) > 4:
                self._cycle_cache.clear()
            perm = self._cycle_cache[cycle] = _rng(self.seed, _STREAM_CYCLE, cycle).permutation(n_retain)
        return int(perm[offset])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, EncodedSample | list[EncodedSample]]:
        forget_index, epoch = (key, 0) if isinstance(key, int) else key
        retain = [self.retain[j] for j in self.retain_indices(forget_index, epoch)] if self.retain is not None else []
        item = {"forget": self.forget[forget_index], "retain": retain}
        if self.alternate is not None:
            item["alternate"] = self.alternate[forget_index]
        return item


class ForgetRetainCollator:
    """Collate forget/retain items into ``{"forget": batch, "retain": batch}`` (right padding, :func:`pad_samples`).

    The retain side holds ``ceil(n * retain_batch_size / batch_size)`` samples for ``n`` forget samples (so
    ``retain_batch_size`` for a full batch), taken round-robin over the items' draws. Without retain draws the
    batch has only the ``"forget"`` side. Items with an ``"alternate"`` sample add ``batch["forget"]["alternate"]``.
    """

    def __init__(self, pad_token_id: int, batch_size: int, retain_batch_size: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size
        self.retain_batch_size = batch_size if retain_batch_size is None else retain_batch_size

    def __call__(self, items: Sequence[dict]) -> dict[str, dict[str, Tensor]]:
        """One ``{"forget": batch, "retain": batch}`` from the items of :class:`ForgetRetainDataset`."""
        batch = {"forget": pad_samples([it["forget"] for it in items], self.pad_token_id, side="right")}
        if items and "alternate" in items[0]:
            batch["forget"]["alternate"] = pad_samples([it["alternate"] for it in items], self.pad_token_id)
        if items and items[0]["retain"]:
            want = max(1, math.ceil(len(items) * self.retain_batch_size / self.batch_size))
            depth = len(items[0]["retain"])
            retain = [it["retain"][d] for d in range(depth) for it in items][:want]
            batch["retain"] = pad_samples(retain, self.pad_token_id, side="right")
        return batch
