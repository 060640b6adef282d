"""Forget quality of TOFU: two-sample Kolmogorov-Smirnov p-value (metrics-spec §2.5, P6)."""

from __future__ import annotations

import numpy as np
from scipy.stats import ks_2samp
from torch import Tensor


def as_float64_array(values: Tensor | np.ndarray | list[float]) -> np.ndarray:
    """A flat float64 numpy copy of per-sample values (tensor, array or list), for scipy and numpy statistics."""
    if isinstance(values, Tensor):
        values = values.detach().to("cpu").double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def forget_quality(
    truth_ratios: Tensor | np.ndarray | list[float], reference_truth_ratios: Tensor | np.ndarray | list[float]
) -> float:
    """``scipy.stats.ks_2samp(a, b).pvalue`` with scipy's defaults (two-sided, ``method='auto'`` = exact here).

    Args:
        truth_ratios: per-sample forget truth ratios of the evaluated model.
        reference_truth_ratios: the retain model's per-sample truth ratios on the *same* forget split
            (``forget_truth_ratio.value_by_index[*].score`` of its log).

    Returns:
        The p-value as a Python float (float64; values go down to ~1e-240, do not cast to float32).

    Raises:
        ValueError: if either sample is empty.

    Example:
        Identical samples cannot be told apart (p = 1); two disjoint samples of three give the exact two-sided
        p-value ``2 / C(6, 3) = 0.1``:

        >>> forget_quality([0.2, 0.5, 0.9], [0.2, 0.5, 0.9])
        1.0
        >>> round(forget_quality([0.1, 0.2, 0.3], [0.7, 0.8, 0.9]), 12)
        0.1
    """
    a, b = as_float64_array(truth_ratios), as_float64_array(reference_truth_ratios)
    if a.size == 0 or b.size == 0:
        raise ValueError("forget_quality: both truth-ratio samples must be non-empty")
    return float(ks_2samp(a, b).pvalue)
