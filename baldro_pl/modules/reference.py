"""The cache of reference log-likelihoods of the forget set (design.md §3.2).

NPO needs ``ref_i``, the summed NLL of forget sample ``i`` under the model *before* unlearning. It is a constant of the
forget set, so it is computed once, before the first optimiser step, with the initial weights, stored per dataset
index, saved in the checkpoint and restored on resume (never recomputed from unlearned weights). This removes the
frozen reference model the public code runs every step (open-unlearning issue #179; TRL's precompute_ref_log_probs).
The per-sample token counts are kept as well, so training can track how far each sample's per-token NLL moved.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from baldro_pl.distributed import AllGather, gather_ragged
from baldro_pl.forward import forward_logprobs

_CAUSE = (
    "the forget set changed after the cache was computed, or the datamodule's reference_dataloader() does not cover"
    " every forget sample"
)


def _table_dtype(device: torch.device) -> torch.dtype:
    """fp64 (the tables' checkpoint dtype), or fp32 on MPS, which has no fp64."""
    return torch.float32 if device.type == "mps" else torch.float64


class ReferenceCache:
    """Reference NLL ``ref_i`` and target-token count ``n_i`` per forget-set index (design.md §3.2).

    The tables live on one device (the model's: :meth:`build` puts them there, a lookup from another device moves
    them there once), so that a training step's :meth:`lookup` is a gather on the device, without a device-to-host
    sync. The checkpoint form (:meth:`state_dict`) is CPU fp64 tables ``nll``, ``n_tokens`` and ``filled``.
    """

    def __init__(self) -> None:
        self.nll = torch.empty(0, dtype=torch.float64)
        self.n_tokens = torch.empty(0, dtype=torch.float64)
        self.filled = torch.empty(0, dtype=torch.bool)
        self._size = 0  # number of filled rows, kept on the host so that len() and is_empty never sync
        self._missing: Tensor | None = None  # device flag: a lookup since the last verify() missed (see _rows)

    def __len__(self) -> int:
        return self._size

    @property
    def is_empty(self) -> bool:
        """True until the cache has been computed or restored."""
        return self._size == 0

    @property
    def device(self) -> torch.device:
        """Where the tables are."""
        return self.nll.device

    def to(self, device: torch.device | str) -> ReferenceCache:
        """Move the tables to ``device`` (returns ``self``)."""
        device = torch.device(device)
        dtype = _table_dtype(device)
        self.nll = self.nll.to(device=device, dtype=dtype)
        self.n_tokens = self.n_tokens.to(device=device, dtype=dtype)
        self.filled = self.filled.to(device)
        return self

    def build(
        self,
        model: torch.nn.Module,
        batches: Iterable[dict[str, Tensor]],
        device: torch.device,
        *,
        all_gather: AllGather | None = None,
        chunk_size: int | None = None,
    ) -> None:
        """Score this process's forget batches with ``model``, gather every process's rows, store them on ``device``.

        Args:
            model: the model before unlearning (run in eval mode, without gradients; its mode is restored).
            batches: this process's shard of the forget set (``input_ids``, ``attention_mask``, ``labels``,
                ``index``), e.g. ``UnlearningDataModule.reference_dataloader()``.
            device: the model's device; the tables are kept there.
            all_gather: the strategy's all-gather (``LightningModule.all_gather``); default ``torch.distributed``'s
                (see :func:`baldro_pl.distributed.gather_ragged`).
            chunk_size: the module's ``logprob_chunk_size`` (None: the whole batch's logits at once).
        """
        index, nll, n_tokens = compute_reference_nll(model, batches, device, chunk_size=chunk_size)
        self.add(*gather_ragged(index, nll, n_tokens, all_gather=all_gather))

    def add(self, index: Tensor, nll: Tensor, n_tokens: Tensor) -> None:
        """Store values for the dataset rows ``index`` (growing the tables as needed).

        An empty cache takes the device of ``index``. Syncs with the device (a build-time call, not a step's).

        Raises:
            ValueError: an index is negative.
        """
        index = index.detach().long()
        if index.numel() == 0:
            return
        if self.is_empty and self.filled.numel() == 0:
            self.to(index.device)
        index = index.to(self.device)
        if int(index.min()) < 0:
            raise ValueError("ReferenceCache: forget samples need their dataset index (got a negative index)")
        size = int(index.max()) + 1
        if size > self.filled.numel():
            grow = size - self.filled.numel()
            self.nll = torch.cat([self.nll, self.nll.new_zeros(grow)])
            self.n_tokens = torch.cat([self.n_tokens, self.n_tokens.new_zeros(grow)])
            self.filled = torch.cat([self.filled, self.filled.new_zeros(grow)])
        # as fp64 first (the checkpointed values), then to the table's dtype
        self.nll[index] = nll.detach().double().to(self.device).to(self.nll.dtype)
        self.n_tokens[index] = n_tokens.detach().double().to(self.device).to(self.n_tokens.dtype)
        self.filled[index] = True
        self._size = int(self.filled.sum())

    def check(self, index: Tensor) -> None:
        """Raise unless every row of ``index`` is cached (reads ``index`` on the host).

        Raises:
            KeyError: some indices have no reference NLL (the forget set changed after the cache was computed, or
                ``reference_dataloader()`` does not cover every forget sample).
        """
        rows = index.detach().long().cpu()
        filled = self.filled.cpu()
        if rows.numel() and (int(rows.max()) >= filled.numel() or int(rows.min()) < 0 or not bool(filled[rows].all())):
            missing = [int(i) for i in rows if not 0 <= int(i) < filled.numel() or not bool(filled[i])]
            raise KeyError(
                f"ReferenceCache: no reference NLL for forget indices {missing[:10]} (cache holds {len(self)} samples);"
                f" {_CAUSE}"
            )

    def verify(self) -> None:
        """Raise if a lookup on an accelerator since the last call asked for an index the cache does not hold.

        Lookups on an accelerator check on the device, without reading back to the host; this reads the result (one
        sync), so call it rarely (the module does at the end of every training epoch).

        Raises:
            KeyError: such a lookup happened.
        """
        missing, self._missing = self._missing, None
        if missing is not None and bool(missing):
            raise KeyError(
                f"ReferenceCache: forget indices without a reference NLL were looked up (cache holds {len(self)} "
                f"samples); {_CAUSE}"
            )

    def _rows(self, index: Tensor) -> Tensor:
        """``index`` as row numbers on the tables' device.

        Checked at once on the CPU (where that costs no sync); on an accelerator the check is recorded on the device
        for :meth:`verify`, and missing rows read a clamped, meaningless entry instead of failing the step.
        """
        if index.device != self.device:
            self.to(index.device)  # once: the tables then stay on the device of the batches
        if index.device.type == "cpu":
            self.check(index)
            return index.detach().long()
        rows = index.detach().long()
        size = self.filled.numel()
        clamped = rows.clamp(0, max(size - 1, 0))
        missing = ((rows != clamped) | ~self.filled[clamped]).any()
        self._missing = missing if self._missing is None else self._missing | missing
        return clamped

    def lookup(self, index: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[B]`` reference NLL ``ref_i`` of the rows ``index``, on ``index``'s device (no host sync)."""
        return self.nll[self._rows(index)].to(dtype=dtype)

    def lookup_avg(self, index: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[B]`` reference per-token NLL ``ref_i / max(n_i, 1)`` of the rows ``index`` (no host sync)."""
        rows = self._rows(index)
        return (self.nll[rows] / self.n_tokens[rows].clamp(min=1)).to(dtype=dtype)

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors to put into a checkpoint: CPU tables ``nll`` and ``n_tokens`` (fp64) and ``filled`` (bool)."""
        return {
            "nll": self.nll.detach().double().cpu().clone(),
            "n_tokens": self.n_tokens.detach().double().cpu().clone(),
            "filled": self.filled.detach().bool().cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore from :meth:`state_dict` output (kept on the current device of the tables)."""
        device = self.device
        self.nll = state["nll"].double().cpu()
        self.n_tokens = state["n_tokens"].double().cpu()
        self.filled = state["filled"].bool().cpu()
        self._size = int(self.filled.sum())
        self.to(device)


@torch.no_grad()
def compute_reference_nll(
    model: torch.nn.Module, batches: Iterable[dict[str, Tensor]], device: torch.device, *, chunk_size: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the model (in eval mode, no grad) over forget batches: returns ``(index, nll, n_tokens)`` on ``device``.

    ``nll`` is ``NLL_i = sum_t c_t`` and ``n_tokens`` is ``n_i`` (design.md §1.1), both fp64, from the one
    teacher-forced forward of :func:`baldro_pl.forward.forward_logprobs` (``chunk_size`` target tokens at a time if
    set). The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    indices, nlls, counts = [], [], []
    try:
        for batch in batches:
            lp = forward_logprobs(
                model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                batch["labels"].to(device),
                chunk_size=chunk_size,
            )
            indices.append(batch["index"].to(device))
            nlls.append(lp.nll.double())
            counts.append(lp.n_tokens.double())
    finally:
        model.train(was_training)
    if not indices:
        empty = torch.empty(0, device=device)
        return empty.long(), empty.double(), empty.double()
    return torch.cat(indices), torch.cat(nlls), torch.cat(counts)
