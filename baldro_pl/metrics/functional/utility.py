"""Model utility of TOFU: harmonic mean of nine aggregates (metrics-spec §2.4, P14)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import hmean

MODEL_UTILITY_COMPONENTS: tuple[str, ...] = (
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
)


def harmonic_mean(values: Sequence[float]) -> float:
    """``scipy.stats.hmean`` (0 if any value is 0; negative values raise, as in open-unlearning).

    Example:
        ``3 / (1/1 + 1/0.5 + 1/0.25) = 3/7``:

        >>> round(harmonic_mean([1.0, 0.5, 0.25]), 12)
        0.428571428571
        >>> harmonic_mean([0.4, 0.0])
        0.0
    """
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("harmonic_mean: no values")
    if np.any(arr < 0):
        raise ValueError(f"harmonic_mean: negative input {arr.tolist()}")
    return float(hmean(arr))


def model_utility(components: Mapping[str, float]) -> float:
    """Harmonic mean of the nine model-utility components, read by their open-unlearning names.

    Raises:
        KeyError: naming the missing component(s).

    Example:
        Nine components of 0.5 have harmonic mean 0.5:

        >>> model_utility({name: 0.5 for name in MODEL_UTILITY_COMPONENTS})
        0.5
    """
    missing = [k for k in MODEL_UTILITY_COMPONENTS if components.get(k) is None]
    if missing:
        raise KeyError(f"model_utility needs {list(MODEL_UTILITY_COMPONENTS)}; missing {missing}")
    return harmonic_mean([float(components[k]) for k in MODEL_UTILITY_COMPONENTS])
