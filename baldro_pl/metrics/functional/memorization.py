"""Exact memorisation and extraction strength under teacher forcing (metrics-spec §5, P10).

Both use primitive B: the argmax prediction at each target position with the last target token dropped.
Vectorised over the batch; the target span need not start at the same column in every row.
"""

from __future__ import annotations

import torch
from torch import Tensor


def exact_memorization(correct: Tensor, mask: Tensor) -> Tensor:
    """EM per sample: the fraction of target tokens whose argmax prediction is right; NaN if there is none.

    Args:
        correct: ``[B, T]`` bool, argmax == target.
        mask: ``[B, T]`` bool target positions (last target dropped).

    Returns:
        ``[B]`` float64 (NaN stands for open-unlearning's ``None``, skipped in the mean).

    Example:
        Three of four target tokens right; a row without targets is NaN:

        >>> import torch
        >>> correct = torch.tensor([[True, False, True, True], [True, True, False, False]])
        >>> mask = torch.tensor([[True, True, True, True], [False, False, False, False]])
        >>> exact_memorization(correct, mask)
        tensor([0.7500,    nan], dtype=torch.float64)
    """
    n = mask.sum(-1).to(torch.float64)
    hits = (correct & mask).sum(-1).to(torch.float64)
    return torch.where(n > 0, hits / n.clamp(min=1), torch.full_like(n, float("nan")))


def extraction_strength(correct: Tensor, mask: Tensor) -> Tensor:
    """ES per sample: ``1 - k / L`` with ``k`` the start of the shortest all-correct suffix (metrics-spec §5).

    As in open-unlearning, the empty suffix is never tested: if even the last token is wrong, ``k = L - 1`` and
    ES = 1/L, not 0 (P10). ``L = 0`` gives 0.

    Example:
        Four targets, the second wrong: the all-correct suffix starts at ``k = 2``, so ES = 1 - 2/4. All wrong gives
        1/L, all right 1:

        >>> import torch
        >>> mask = torch.ones(3, 4, dtype=torch.bool)
        >>> correct = torch.tensor([[True, False, True, True], [False] * 4, [True] * 4])
        >>> extraction_strength(correct, mask)
        tensor([0.5000, 0.2500, 1.0000], dtype=torch.float64)
    """
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    wrong = mask & ~correct
    last_wrong = torch.where(wrong, positions, -1).amax(-1, keepdim=True)  # -1 when all correct
    # k = number of target tokens up to and including the last wrong one
    k = (mask & (positions <= last_wrong)).sum(-1)
    n = mask.sum(-1)
    k = torch.minimum(k, (n - 1).clamp(min=0))
    es = 1.0 - k.to(torch.float64) / n.clamp(min=1).to(torch.float64)
    return torch.where(n > 0, es, torch.zeros_like(es))
