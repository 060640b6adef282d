"""Membership-inference scores, their ROC-AUC and PrivLeak (metrics-spec §4).

All scores are loss-like: higher means "less likely a member". Members are the forget set (label 0), non-members
the holdout set (label 1), so ``AUC = P(score_holdout > score_forget)`` with ties counting 1/2 (§4.2, P7).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc


def min_k_scores(values: Tensor, mask: Tensor, k: float = 0.4) -> Tensor:
    """Min-k% score per sample: ``-mean`` of the lowest ``max(1, floor(k * n))`` masked values; 0 if ``n = 0``.

    Used on token log-probs for ``mia_min_k`` and on z-scores for ``mia_min_k_plus_plus`` (metrics-spec §4.1).
    Vectorised over the batch (no per-sample loop).

    Args:
        values: ``[B, T]`` per-token values (log-probs or z-scores).
        mask: ``[B, T]`` bool, True on the tokens that count (primitive B: last target dropped).
        k: fraction of tokens kept.

    Returns:
        ``[B]`` float64 scores.

    Example:
        Five tokens, k = 0.4: the two lowest log-probs (-3 and -2) are averaged and negated:

        >>> import torch
        >>> values = torch.tensor([[-0.5, -3.0, -1.0, -2.0, -0.1]])
        >>> min_k_scores(values, torch.ones(1, 5, dtype=torch.bool), k=0.4)
        tensor([2.5000], dtype=torch.float64)
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"min-k fraction must lie in (0, 1], got {k}")
    if values.shape[-1] == 0:
        return torch.zeros(values.shape[:-1], dtype=torch.float64, device=values.device)
    values = values.to(torch.float64).masked_fill(~mask, float("inf"))
    ordered, _ = values.sort(dim=-1)
    n = mask.sum(-1)
    num_k = torch.floor(n.to(torch.float64) * k).long().clamp(min=1)
    finite = torch.where(torch.isinf(ordered), torch.zeros_like(ordered), ordered)
    csum = finite.cumsum(-1)
    picked = csum.gather(-1, (num_k - 1).unsqueeze(-1)).squeeze(-1)
    scores = -picked / num_k.to(torch.float64)
    return torch.where(n > 0, scores, torch.zeros_like(scores))


def min_k_plus_plus_z(target_logp: Tensor, mu: Tensor, var: Tensor) -> Tensor:
    """Min-k++ token z-scores ``(log p(x_t) - mu_t) / sqrt(max(var_t, 1e-6))`` (metrics-spec §4.1).

    ``mu_t = Σ_v p_v log p_v`` and ``var_t = Σ_v p_v (log p_v)^2 - mu_t^2`` come from the full-vocabulary
    distribution at the same position (:func:`baldro_pl.metrics.likelihood.vocab_statistics`).
    """
    return (target_logp.double() - mu.double()) / torch.sqrt(torch.clamp(var.double(), min=1e-6))


def zlib_entropy(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (the zlib attack's normaliser)."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_scores(avg_loss: Tensor, texts: Sequence[str]) -> Tensor:
    """``avg_loss / zlib_entropy(text)`` per sample, text = decoded target tokens (metrics-spec §4.1)."""
    sizes = torch.tensor([zlib_entropy(t) for t in texts], dtype=torch.float64, device=avg_loss.device)
    return avg_loss.to(torch.float64) / sizes


def mia_auc(forget_scores: Tensor, holdout_scores: Tensor) -> float:
    """ROC-AUC with forget = 0 and holdout = 1 (metrics-spec §4.2), through ``torchmetrics`` (exact, no bins).

    torchmetrics applies a sigmoid to predictions outside [0, 1], which would saturate large scores (gradnorm) into
    false ties; the scores are therefore replaced by their dense ranks scaled to [0, 1] first. That transform is
    strictly monotone and keeps ties, so the AUC is unchanged.

    Example:
        Of the four (forget, holdout) pairs, three have the holdout score higher and one is a tie (counts 1/2):

        >>> import torch
        >>> mia_auc(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 3.0]))
        0.875
    """
    forget_scores = torch.as_tensor(forget_scores, dtype=torch.float64).reshape(-1)
    holdout_scores = torch.as_tensor(holdout_scores, dtype=torch.float64).reshape(-1)
    if forget_scores.numel() == 0 or holdout_scores.numel() == 0:
        raise ValueError("mia_auc: both the forget and the holdout scores must be non-empty")
    scores = torch.cat([forget_scores, holdout_scores]).cpu()
    if torch.isnan(scores).any():
        raise ValueError("mia_auc: NaN score (a sample without target tokens?)")
    uniq, ranks = torch.unique(scores, return_inverse=True)
    preds = ranks.to(torch.float64) / max(uniq.numel() - 1, 1)
    target = torch.cat([torch.zeros(forget_scores.numel()), torch.ones(holdout_scores.numel())]).long()
    # torchmetrics divides integer TP/FP counts, which yields the default float dtype: float32 would round the
    # AUC at ~1e-8, so the ROC is built under float64 default (the published AUCs are float64, sklearn).
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return float(binary_auroc(preds, target, thresholds=None))
    finally:
        torch.set_default_dtype(previous)


def privleak(auc: float, reference_auc: float | None = None) -> float:
    """PrivLeak in percent (metrics-spec §4.3): ``(s - ref) / (ref + 1e-10) * 100`` with ``s = 1 - AUC``.

    Args:
        auc: the evaluated model's ``mia_min_k`` AUC.
        reference_auc: the retain / retrain model's ``mia_min_k`` AUC; None uses open-unlearning's default 0.5.

    Example:
        AUC 0.4 against the default reference: ``(0.6 - 0.5) / 0.5 * 100``:

        >>> round(privleak(0.4), 6)
        20.0
    """
    ref = 1.0 - (0.5 if reference_auc is None else float(reference_auc))
    return (1.0 - float(auc) - ref) / (ref + 1e-10) * 100.0
