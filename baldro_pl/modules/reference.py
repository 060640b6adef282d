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

from baldro_pl.forward import forward_logprobs


class ReferenceCache:
    """Reference NLL and target-token count per forget-set index."""

    def __init__(self) -> None:
        self.nll = torch.empty(0, dtype=torch.float64)
        self.n_tokens = torch.empty(0, dtype=torch.float64)
        self.filled = torch.empty(0, dtype=torch.bool)

    def __len__(self) -> int:
        return int(self.filled.sum())

    @property
    def is_empty(self) -> bool:
        """True until the cache has been computed or restored."""
        return len(self) == 0

    def add(self, index: Tensor, nll: Tensor, n_tokens: Tensor) -> None:
        """Store values for the dataset rows ``index`` (growing the tables as needed)."""
        index = index.detach().long().cpu()
        if index.numel() == 0:
            return
        if int(index.min()) < 0:
            raise ValueError("ReferenceCache: forget samples need their dataset index (got a negative index)")
        size = int(index.max()) + 1
        if size > self.filled.numel():
            grow = size - self.filled.numel()
            self.nll = torch.cat([self.nll, torch.zeros(grow, dtype=torch.float64)])
            self.n_tokens = torch.cat([self.n_tokens, torch.zeros(grow, dtype=torch.float64)])
            self.filled = torch.cat([self.filled, torch.zeros(grow, dtype=torch.bool)])
        self.nll[index] = nll.detach().double().cpu()
        self.n_tokens[index] = n_tokens.detach().double().cpu()
        self.filled[index] = True

    def _rows(self, index: Tensor) -> Tensor:
        rows = index.detach().long().cpu()
        if rows.numel() and (int(rows.max()) >= self.filled.numel() or not bool(self.filled[rows].all())):
            missing = [int(i) for i in rows if int(i) >= self.filled.numel() or not bool(self.filled[i])]
            raise KeyError(
                f"ReferenceCache: no reference NLL for forget indices {missing[:10]} (cache holds {len(self)} samples);"
                " the forget set changed after the cache was computed, or the datamodule's reference_dataloader()"
                " does not cover every forget sample"
            )
        return rows

    def lookup(self, index: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[B]`` reference NLL of the rows ``index``, on ``index``'s device."""
        return self.nll[self._rows(index)].to(device=index.device, dtype=dtype)

    def lookup_avg(self, index: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[B]`` reference per-token NLL of the rows ``index``."""
        rows = self._rows(index)
        return (self.nll[rows] / self.n_tokens[rows].clamp(min=1)).to(device=index.device, dtype=dtype)

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors to put into a checkpoint."""
        return {"nll": self.nll.clone(), "n_tokens": self.n_tokens.clone(), "filled": self.filled.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore from :meth:`state_dict` output."""
        self.nll = state["nll"].double().cpu()
        self.n_tokens = state["n_tokens"].double().cpu()
        self.filled = state["filled"].bool().cpu()


@torch.no_grad()
def compute_reference_nll(
    model: torch.nn.Module, batches: Iterable[dict[str, Tensor]], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the model (in eval mode, no grad) over forget batches: returns ``(index, nll, n_tokens)``.

    The model's train/eval mode is restored afterwards.
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
