"""Base forget losses (design.md §1.2), each with a functional twin.

Minimising a loss forgets, but "a higher loss = still remembered" holds only for some of them:

* GradAscent (``-avg_i``) and SimNPO (decreasing in ``avg_i``) are monotone in the per-token NLL;
* NPO is decreasing in ``NLL_i - ref_i``, the rise of the *summed* NLL since unlearning began: every sample has the
  same loss ``(2/beta) log 2`` at the start, and a long sample's loss falls faster than a short one's for the same
  per-token rise;
* SatImp's and WGA's token losses ``-w(p_t) c_t`` are non-monotone in ``p_t = e^{-c_t}``: near 0 both for tokens the
  model still predicts (``p -> 1``) and for tokens already forgotten (``p -> 0``). SatImp (beta1 5, beta2 1) is
  lowest, -0.018, at ``p ~ 0.69``; WGA is lowest, ``-1 / (e beta)``, at ``c = 1/beta``.

So an aggregator that weighs by the loss (BalDRO-DV's default) does not weigh "what is still remembered" for every
loss; :attr:`ForgetLosses.hardness` (``-avg NLL``) does, and is what BalDRO-G and ``BalDRODV(score="nll")`` use.

Notation: for sample ``i`` with target tokens ``T_i``: ``c_t = -log p(y_t | y_<t, x)`` (token NLL),
``NLL_i = sum_t c_t``, ``n_i = |T_i|``, ``avg_i = NLL_i / n_i``, ``ref_i`` = ``NLL_i`` under the model before
unlearning.

Reference code: nxZhai/BalDRO ``src/trainer/utils.py`` and ``src/trainer/unlearn/{npo,simnpo,satimp}.py`` at 12a0b0c
(itself open-unlearning's).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from baldro_pl.objectives.base import ForgetLoss, ForgetLosses, safe_mean_nll
from baldro_pl.objectives.logprobs import TokenLogProbs


def _positive(name: str, value: float, cls: str) -> None:
    if not value > 0:
        raise ValueError(f"{cls}: {name} must be > 0, got {value!r}")


def npo_loss(nll: Tensor, reference_nll: Tensor, beta: float) -> Tensor:
    """NPO per-sample loss ``-(2/beta) * log sigmoid(beta * (NLL_i - ref_i))`` (Zhang et al. 2024, Eq. 3).

    Args:
        nll: ``[B]`` summed NLL under the current model.
        reference_nll: ``[B]`` summed NLL under the reference model.
        beta: inverse temperature (> 0).

    Returns:
        ``[B]`` losses; ``(2/beta) log 2`` where the NLL has not moved from the reference.

    >>> import torch
    >>> npo_loss(torch.tensor([3.0]), torch.tensor([3.0]), beta=2.0)  # (2/2) log 2
    tensor([0.6931])
    """
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - reference_nll))


def simnpo_loss(avg_nll: Tensor, beta: float, delta: float = 0.0) -> Tensor:
    """SimNPO per-sample loss ``-(2/beta) * log sigmoid(beta * (avg_i - delta))`` (Fan et al. 2024, Eq. 4).

    Args:
        avg_nll: ``[B]`` per-token average NLL ``avg_i`` under the current model.
        beta: inverse temperature (> 0).
        delta: reward margin.

    >>> import torch
    >>> simnpo_loss(torch.tensor([1.0]), beta=2.0, delta=1.0)  # avg_i = delta: (2/2) log 2
    tensor([0.6931])
    """
    return -(2.0 / beta) * F.logsigmoid(beta * (avg_nll - delta))


def satimp_token_loss(token_nll: Tensor, beta1: float, beta2: float) -> Tensor:
    """SatImp per-token loss ``-w_t c_t`` with ``w_t = p_t^beta1 (1 - p_t)^beta2`` and ``p_t = e^{-c_t}``.

    No gradient flows through ``w`` (Yang et al. 2025, "Exploring criteria of loss reweighting"). Non-monotone in
    ``p_t``: 0 at ``p_t = 1`` and towards ``p_t -> 0``, lowest in between (beta1 5, beta2 1: -0.018 at
    ``p_t ~ 0.69``; beta1 6: -0.013 at ``p_t ~ 0.73``).

    Args:
        token_nll: ``[B, T']`` per-token NLL ``c_t``.
        beta1: exponent of the saturation weight ``p^beta1``.
        beta2: exponent of the importance weight ``(1 - p)^beta2``.

    >>> import math, torch
    >>> satimp_token_loss(torch.tensor([math.log(2)]), beta1=1.0, beta2=1.0)  # p = 1/2, w = 1/4: -(log 2) / 4
    tensor([-0.1733])
    """
    p = (-token_nll).exp().detach()
    weight = p.pow(beta1) * (1.0 - p).pow(beta2)
    return -weight * token_nll


def wga_token_loss(token_nll: Tensor, beta: float) -> Tensor:
    """WGA per-token loss ``-w_t c_t`` with ``w_t = p_t^beta`` (no gradient through ``w``).

    Non-monotone in ``c_t``: it falls from 0 at ``c_t = 0`` to ``-1 / (e beta)`` at ``c_t = 1/beta`` (``p_t =
    e^{-1/beta}``) and rises back towards 0 as ``c_t`` grows.

    Args:
        token_nll: ``[B, T']`` per-token NLL ``c_t``.
        beta: exponent of the confidence weight.

    >>> import torch
    >>> wga_token_loss(torch.tensor([0.0, 1.0]), beta=1.0)  # 0, and the minimum -1/e at c = 1/beta
    tensor([-0.0000, -0.3679])
    """
    weight = (-token_nll).exp().detach().pow(beta)
    return -weight * token_nll


class GradAscent(ForgetLoss):
    """Gradient ascent: ``l_t = -c_t`` per token, batch loss ``-sum_i NLL_i / sum_i n_i`` (the negated HF loss).

    With the NLL retain loss this is GradDiff.
    """

    reduction = "token"

    def __call__(self, policy: TokenLogProbs, reference_nll: Tensor | None = None) -> ForgetLosses:
        """Per-token losses ``l_t = -c_t`` (token mean over the batch)."""
        return self._token_losses(policy, -policy.token_nll)


class NPO(ForgetLoss):
    """Negative Preference Optimization, ``l_i = -(2/beta) log sigmoid(beta (NLL_i - ref_i))``; sample mean.

    Args:
        beta: inverse temperature (> 0); open-unlearning's NPO config uses 0.1.
    """

    needs_reference = True

    def __init__(self, *, beta: float = 0.1) -> None:
        _positive("beta", beta, "NPO")
        self.beta = beta

    def __call__(self, policy: TokenLogProbs, reference_nll: Tensor | None = None) -> ForgetLosses:
        """Per-sample :func:`npo_loss` of ``NLL_i`` against the cached ``reference_nll`` (required)."""
        reference_nll = self._check_reference(reference_nll)
        return self._sample_losses(policy, npo_loss(policy.nll, reference_nll.to(policy.nll), self.beta))


class SimNPO(ForgetLoss):
    """Simple NPO, reference-free and length-normalised: ``l_i = -(2/beta) log sigmoid(beta (avg_i - delta))``.

    Args:
        beta: inverse temperature (> 0); open-unlearning's SimNPO config uses 4.5.
        delta: reward margin; 0 in the reference configs.
    """

    def __init__(self, *, beta: float = 4.5, delta: float = 0.0) -> None:
        _positive("beta", beta, "SimNPO")
        self.beta = beta
        self.delta = delta

    def __call__(self, policy: TokenLogProbs, reference_nll: Tensor | None = None) -> ForgetLosses:
        """Per-sample :func:`simnpo_loss` of the average NLL (no reference needed)."""
        return self._sample_losses(policy, simnpo_loss(safe_mean_nll(policy), self.beta, self.delta))


class SatImp(ForgetLoss):
    """Saturation-importance reweighted gradient ascent (token level, token mean over the batch).

    Args:
        beta1: exponent of the saturation weight ``p^beta1`` (>= 0); 5 in the reference code.
        beta2: exponent of the importance weight ``(1-p)^beta2`` (>= 0); 1 in the reference code.
    """

    reduction = "token"

    def __init__(self, *, beta1: float = 5.0, beta2: float = 1.0) -> None:
        for name, value in (("beta1", beta1), ("beta2", beta2)):
            if not value >= 0:
                raise ValueError(f"SatImp: {name} must be >= 0, got {value!r}")
        self.beta1 = beta1
        self.beta2 = beta2

    def __call__(self, policy: TokenLogProbs, reference_nll: Tensor | None = None) -> ForgetLosses:
        """Per-token :func:`satimp_token_loss` (token mean over the batch)."""
        return self._token_losses(policy, satimp_token_loss(policy.token_nll, self.beta1, self.beta2))


class WGA(ForgetLoss):
    """Weighted gradient ascent (token level): ``l_t = -p_t^beta c_t``, token mean over the batch.

    Args:
        beta: exponent of the confidence weight (>= 0).
    """

    reduction = "token"

    def __init__(self, *, beta: float = 1.0) -> None:
        if not beta >= 0:
            raise ValueError(f"WGA: beta must be >= 0, got {beta!r}")
        self.beta = beta

    def __call__(self, policy: TokenLogProbs, reference_nll: Tensor | None = None) -> ForgetLosses:
        """Per-token :func:`wga_token_loss` (token mean over the batch)."""
        return self._token_losses(policy, wga_token_loss(policy.token_nll, self.beta))
