"""Membership-inference AUC as a torchmetrics class (metrics-spec §4.2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from baldro_pl.metrics.functional.mia import mia_auc
from baldro_pl.metrics.indexed import deduplicate

MIA_ATTACKS: tuple[str, ...] = ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm")
"""The membership-inference attacks of both suites, in log order (metrics-spec §4.2)."""

MIA_SCORE_KEYS: dict[str, str] = {
    "mia_loss": "avg_loss",
    "mia_zlib": "zlib",
    "mia_min_k": "min_k",
    "mia_min_k_plus_plus": "min_k_plus_plus",
    "mia_gradnorm": "gradnorm",
}
"""The per-row score each attack reads (keys of :func:`~baldro_pl.metrics.likelihood.score_samples` plus ``zlib`` and
``gradnorm``)."""


class MIAAUC(Metric):
    """ROC-AUC of loss-like scores with the forget set (members) labelled 0 and the holdout set labelled 1.

    Scores of both sets are kept per dataset index (``cat`` states, de-duplicated in ``compute``), so the padded
    repeats of a distributed evaluation count once.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None  # 0.5 = indistinguishable; ~1 = forget set remembered

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("forget_index", "forget_score", "holdout_index", "holdout_score"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor | list[int], scores: Tensor, *, member: bool) -> None:
        """Add scores of forget rows (``member=True``) or holdout rows (``member=False``)."""
        index = torch.as_tensor(index, device=self.device).reshape(-1).long()
        scores = torch.as_tensor(scores, device=self.device).detach().reshape(-1).to(torch.float64)
        if index.numel() != scores.numel():
            raise ValueError(f"MIAAUC.update: {index.numel()} indices but {scores.numel()} scores")
        prefix = "forget" if member else "holdout"
        getattr(self, f"{prefix}_index").append(index)
        getattr(self, f"{prefix}_score").append(scores)

    def _side(self, prefix: str) -> tuple[Tensor, Tensor]:
        index, score = getattr(self, f"{prefix}_index"), getattr(self, f"{prefix}_score")
        if isinstance(index, list) and not index:
            raise RuntimeError(f"MIAAUC: no {prefix} scores (call update with member={prefix == 'forget'})")
        return deduplicate(dim_zero_cat(index), dim_zero_cat(score))

    def _deduplicated(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {"forget": self._side("forget"), "holdout": self._side("holdout")}

    def per_sample(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{"forget": (index, score), "holdout": (index, score)}`` gathered and de-duplicated (collective)."""
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            return self._deduplicated()

    def compute(self) -> Tensor:
        """The AUC as a float64 tensor."""
        sides = self._deduplicated()
        return torch.tensor(mia_auc(sides["forget"][1], sides["holdout"][1]), dtype=torch.float64)
