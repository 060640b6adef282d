"""Truth ratio of TOFU (metrics-spec §2.3) and its two aggregators.

Per sample ``i`` with ``K`` perturbed (wrong) answers::

    P_correct = exp(-avg_loss(correct_i))
    P_wrong   = exp(-mean_k avg_loss(pert_ik))      # geometric mean of the K per-token probabilities (P5)
    TR_i      = P_wrong / (P_correct + 1e-10)

"correct" is the paraphrased answer on forget/retain and the answer itself on real authors / world facts.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from baldro_pl.metrics.functional.probability import answer_and_options

TruthRatioAggregator = Literal["closer_to_1_better", "true_better"]

_EPS = 1e-10


def truth_ratio(correct_avg_loss: Tensor, wrong_avg_loss: Tensor) -> Tensor:
    """Per-sample truth ratio ``P_wrong / (P_correct + 1e-10)`` (metrics-spec §2.3), in float64.

    Args:
        correct_avg_loss: ``[N]`` average NLL of the correct (paraphrased) answer.
        wrong_avg_loss: ``[N, K]`` average NLL of each perturbed answer.

    Returns:
        ``[N]`` truth ratios (the ``score`` of ``value_by_index`` in open-unlearning logs).

    Example:
        Correct answer at average NLL ln 2 (P = 1/2); wrong answers at ln 2 and ln 8, geometric mean P = 1/4:

        >>> import math, torch
        >>> tr = truth_ratio(torch.tensor([math.log(2)]), torch.tensor([[math.log(2), math.log(8)]]))
        >>> round(tr.item(), 8)
        0.5
    """
    correct, wrong = answer_and_options(correct_avg_loss, wrong_avg_loss, "truth_ratio")
    p_correct = torch.exp(-correct)
    p_wrong = torch.exp(-wrong.mean(-1))
    return p_wrong / (p_correct + _EPS)


def closer_to_1_better(tr: Tensor) -> Tensor:
    """Forget aggregate ``mean_i min(TR_i, 1 / (TR_i + 1e-10))`` (metrics-spec §2.3); 1: para, pert equally likely.

    Example:
        TR 0.5 and TR 2 both count as 0.5:

        >>> import torch
        >>> round(closer_to_1_better(torch.tensor([0.5, 2.0])).item(), 8)
        0.5
    """
    tr = torch.as_tensor(tr, dtype=torch.float64)
    return torch.minimum(tr, 1.0 / (tr + _EPS)).mean()


def true_better(tr: Tensor) -> Tensor:
    """Retain / RA / WF aggregate ``mean_i max(0, 1 - TR_i)`` (metrics-spec §2.3); higher = correct answer preferred.

    Example:
        ``(0.75 + 0) / 2``:

        >>> import torch
        >>> true_better(torch.tensor([0.25, 2.0]))
        tensor(0.3750, dtype=torch.float64)
    """
    tr = torch.as_tensor(tr, dtype=torch.float64)
    return torch.clamp(1.0 - tr, min=0.0).mean()


def aggregate_truth_ratio(tr: Tensor, aggregator: TruthRatioAggregator) -> Tensor:
    """Apply the named truth-ratio aggregator (``closer_to_1_better`` or ``true_better``)."""
    if aggregator == "closer_to_1_better":
        return closer_to_1_better(tr)
    if aggregator == "true_better":
        return true_better(tr)
    raise ValueError(f"unknown truth-ratio aggregator {aggregator!r}: use 'closer_to_1_better' or 'true_better'")
