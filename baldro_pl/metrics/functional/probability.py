"""Length-normalised probabilities of TOFU (metrics-spec §0 and §1.7).

``P̃(a|q) = exp(-avg_loss)`` is the per-token geometric-mean probability that open-unlearning calls ``prob``.
The aggregates take probabilities (not losses) so that they can be recomputed exactly from the ``prob`` values
stored in a log.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-10


def length_normalised_probability(avg_loss: Tensor) -> Tensor:
    """``exp(-avg_loss)`` in float64, elementwise (metrics-spec §0).

    Example:
        >>> import math, torch
        >>> length_normalised_probability(torch.tensor([0.0, math.log(4.0)]))
        tensor([1.0000, 0.2500], dtype=torch.float64)
    """
    return torch.exp(-torch.as_tensor(avg_loss, dtype=torch.float64))


def mean_probability(prob: Tensor) -> Tensor:
    """Aggregate of the ``probability`` metric: mean over options (if ``[N, K]``), then over samples (spec §1.7).

    A sample without targets has ``avg_loss = NaN``, hence ``prob = NaN``; as in open-unlearning it makes the mean NaN.

    Example:
        Two samples with two options each: the option means 0.3 and 0.7, then their mean:

        >>> import torch
        >>> mean_probability(torch.tensor([[0.2, 0.4], [0.6, 0.8]]))
        tensor(0.5000, dtype=torch.float64)
    """
    prob = torch.as_tensor(prob, dtype=torch.float64)
    if prob.ndim > 1:
        prob = prob.flatten(1).mean(-1)
    return prob.mean()


def answer_and_options(correct: Tensor, options: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """``[N]`` per-answer and ``[N, K]`` per-option values as float64 (a ``[N]`` options vector is one option each).

    Raises:
        ValueError: the two do not have the same number of rows (``what`` names the caller in the message).
    """
    correct = torch.as_tensor(correct, dtype=torch.float64)
    options = torch.as_tensor(options, dtype=torch.float64)
    if options.ndim == 1:
        options = options.unsqueeze(-1)
    if options.shape[0] != correct.shape[0]:
        raise ValueError(f"{what}: {correct.shape[0]} answers but {options.shape[0]} rows of options")
    return correct, options


def normalised_probability(correct_prob: Tensor, wrong_prob: Tensor, eps: float = _EPS) -> Tensor:
    """Per-sample ``P̃(a) / (P̃(a) + Σ_k P̃(pert_k) + eps)`` (``probability_w_options``, metrics-spec §1.7).

    Args:
        correct_prob: ``[N]`` length-normalised probability of the answer.
        wrong_prob: ``[N, K]`` length-normalised probability of each perturbed answer.
        eps: 1e-10 in open-unlearning; the original TOFU aggregation script uses 0.

    Returns:
        ``[N]`` normalised probabilities in float64; their mean is ``ra_/wf_Q_A_Prob_normalised``.

    Example:
        ``0.6 / (0.6 + 0.1 + 0.2 + 0.1)`` with eps 0:

        >>> import torch
        >>> normalised_probability(torch.tensor([0.6]), torch.tensor([[0.1, 0.2, 0.1]]), eps=0.0)
        tensor([0.6000], dtype=torch.float64)
    """
    correct, wrong = answer_and_options(correct_prob, wrong_prob, "normalised_probability")
    return correct / (correct + wrong.sum(-1) + eps)
