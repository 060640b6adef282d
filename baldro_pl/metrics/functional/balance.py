"""Forgetting balance (baldro-pl's own metric; not in open-unlearning).

BalDRO's motivation is that samples forget at different speeds. This metric asks, per forget sample, whether its
truth ratio (metrics-spec §2.3) lies inside the central 90% of the retain model's per-sample truth ratios on the
same forget split. Below the 5th percentile the model still prefers the true answer more than a model that never
saw the sample does (*under-forgotten*); above the 95th it prefers the perturbed answers more than such a model
(*over-forgotten*). A retain model scores about (0.05, 0.90, 0.05) against its own log.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from baldro_pl.metrics.functional.forget_quality import as_float64_array

BALANCE_KEYS: tuple[str, ...] = ("forget_balance_under", "forget_balance_within", "forget_balance_over")


def forgetting_balance(
    truth_ratios: Tensor | np.ndarray | list[float],
    reference_truth_ratios: Tensor | np.ndarray | list[float],
    *,
    lower_percentile: float = 5.0,
    upper_percentile: float = 95.0,
) -> dict[str, float]:
    """Fractions of forget samples below, inside and above the reference's central range of truth ratios.

    The range is ``[percentile(ref, lower), percentile(ref, upper)]`` (numpy's default linear interpolation),
    bounds included in "within".

    Returns:
        ``{"forget_balance_under": ..., "forget_balance_within": ..., "forget_balance_over": ...}`` (sums to 1).

    Example:
        The reference's 5th and 95th percentiles of 0, 1, ..., 100 are 5 and 95; one sample of four lies below, two
        inside, one above:

        >>> balance = forgetting_balance([1.0, 5.0, 50.0, 99.0], list(range(101)))
        >>> [round(balance[key], 2) for key in BALANCE_KEYS]
        [0.25, 0.5, 0.25]
    """
    if not 0.0 <= lower_percentile < upper_percentile <= 100.0:
        raise ValueError(f"need 0 <= lower < upper <= 100, got {lower_percentile}, {upper_percentile}")
    tr, ref = as_float64_array(truth_ratios), as_float64_array(reference_truth_ratios)
    if tr.size == 0 or ref.size == 0:
        raise ValueError("forgetting_balance: both truth-ratio samples must be non-empty")
    low, high = np.percentile(ref, [lower_percentile, upper_percentile])
    under = float(np.mean(tr < low))
    over = float(np.mean(tr > high))
    return dict(zip(BALANCE_KEYS, (under, 1.0 - under - over, over)))
