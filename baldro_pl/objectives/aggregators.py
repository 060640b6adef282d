"""Aggregators: how a batch of forget losses becomes one scalar (design.md §1.3). This is the BalDRO part.

Every aggregator returns the loss and the per-sample weights ``w`` (summing to 1) that it applied, so that the
module can log how concentrated the effort was (effective sample size ``1 / sum w_i^2``).

BalDRO (Shao et al., WWW 2026, arXiv 2601.09172) replaces the empirical mean of the forget losses by a worst case
over distributions near the empirical one, ``sup_{Q: KL(Q||P) <= eta} E_Q[l]``:

* :class:`BalDRODV` uses the Donsker-Varadhan dual of the KL-regularised sup,
  ``A(l) = tau * (logsumexp(l / tau) - log n)``, whose gradient weights are ``softmax(l / tau)``. Which samples
  that favours depends on the base loss (a high loss means "still remembered" only for GradAscent, NPO and SimNPO;
  see :class:`BalDRODV`); ``score="nll"`` weighs by the per-token NLL instead, the same for every base loss;
* :class:`BalDROG` is its discrete GroupDRO approximation: the mean over the ``k = max(1, floor(rho n))`` samples
  that are still best remembered (lowest per-token NLL).
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import torch
from torch import Tensor

from baldro_pl.objectives.base import Aggregated, Aggregator, ForgetLosses


def reduction_weights(losses: ForgetLosses, keep: Tensor | None = None) -> Tensor:
    """``[B]`` weights of the published batch mean: ``1/B`` per sample, or ``n_i / sum n`` for token-level losses.

    Args:
        losses: the batch.
        keep: optional ``[B]`` bool mask of the samples that take part.
    """
    if losses.reduction == "token":
        mass = losses.n_tokens
    else:
        mass = torch.ones_like(losses.per_sample)
    if keep is not None:
        mass = mass * keep.to(mass.dtype)
    return (mass / mass.sum().clamp(min=1e-12)).detach()


def dv_aggregate(values: Tensor, temperature: float, emphasis: Literal["hard", "easy"] = "hard") -> Tensor:
    """Donsker-Varadhan aggregate of ``values`` ``[N]`` (BalDRO Eq. for the KL-regularised sup).

    ``"hard"``: ``tau * (logsumexp(v / tau) - log N)``, gradient ``softmax(v / tau)`` (the paper's worst case).
    ``"easy"``: ``-tau * (logsumexp(-v / tau) - log N)``, gradient ``softmax(-v / tau)`` (the reference code's sign).
    Computed through a max-shifted logsumexp in float64 (the vectors are tiny), so it stays finite for small ``tau``
    and large losses and does not lose the mean to cancellation for large ``tau``; ``tau -> inf`` gives the mean,
    ``tau -> 0`` the max ("hard") or the min ("easy"). Returned in fp32.

    Args:
        values: ``[N]`` losses (or scores).
        temperature: ``tau > 0``.
        emphasis: ``"hard"`` (the paper's sup) or ``"easy"`` (the reference code's sign).

    Returns:
        Scalar fp32 aggregate, between the mean and the max ("hard") or the min ("easy").

    For ``v = (0, log 3)`` and ``tau = 1``: "hard" is ``log(1 + 3) - log 2 = log 2``, above the mean
    ``(log 3) / 2 = 0.5493``; "easy" is ``-(log(1 + 1/3) - log 2) = log 1.5``, below it.

    >>> values = torch.tensor([0.0, math.log(3)])
    >>> round(dv_aggregate(values, 1.0).item(), 4), round(dv_aggregate(values, 1.0, "easy").item(), 4)
    (0.6931, 0.4055)
    >>> round(dv_aggregate(values, 1e4).item(), 4)  # tau -> inf: the mean
    0.5493
    """
    sign = 1.0 if emphasis == "hard" else -1.0
    work = torch.float32 if values.device.type == "mps" else torch.float64
    z = sign * values.to(work)
    top = z.detach().max()
    shifted = torch.logsumexp((z - top) / temperature, dim=0) - math.log(z.numel())
    return (sign * (top + temperature * shifted)).to(torch.float32)


class Mean(Aggregator):
    """The empirical mean (ERM): the base method exactly as published (sample mean or token mean).

    A sample-level loss is averaged over samples (weights ``1/B``); a token-level one over all target tokens of the
    batch (weights ``n_i / sum_j n_j``). Gradient ascent on two samples with token log-probs ``(-1, -2)`` and
    ``(-0.5)``: the token mean ``-(1 + 2 + 0.5) / 3``, and sample weights ``2/3`` and ``1/3``.

    >>> from baldro_pl.objectives import GradAscent, TokenLogProbs
    >>> policy = TokenLogProbs(torch.tensor([[-1.0, -2.0], [-0.5, 0.0]]), torch.tensor([[True, True], [True, False]]))
    >>> out = Mean()(GradAscent()(policy))
    >>> round(out.loss.item(), 4), [round(w, 4) for w in out.weights.tolist()]
    (-1.1667, [0.6667, 0.3333])
    """

    def __call__(self, losses: ForgetLosses) -> Aggregated:
        """The sample mean or the token mean of the batch, as ``losses.reduction`` says."""
        weights = reduction_weights(losses)
        if losses.reduction == "token":
            loss = losses.per_token.sum() / losses.mask.sum().clamp(min=1)
        else:
            loss = losses.per_sample.mean()
        return Aggregated(loss, weights)


class BalDRODV(Aggregator):
    """BalDRO-DV: soft worst-case weighting of the forget losses through the Donsker-Varadhan dual.

    With ``score="loss"`` (default) this is the paper's DV over the base loss ``l``: the value
    ``tau * (logsumexp(l / tau) - log n)`` (``"hard"``) or ``-tau * (logsumexp(-l / tau) - log n)`` (``"easy"``),
    whose gradient weights are ``softmax(+-l / tau)``. With ``score="nll"`` the weights are
    ``w = softmax(+-h / tau)`` of the detached hardness ``h_i = -avg_i`` (minus the per-token average NLL, the quantity
    BalDRO-G ranks by), and the loss is ``sum_i w_i l_i``: the weights are constants, so the gradient
    ``sum_i w_i grad l_i`` flows only through the base loss. ``"hard"`` then favours the samples the model still
    predicts best (lowest average NLL), whatever the base loss.

    A high base loss means "still remembered" only for GradAscent, NPO and SimNPO. SatImp's and WGA's token losses
    ``-w(p) c`` are non-monotone in the token probability ``p = e^{-c}``: SatImp's (beta1 5, beta2 1) is about 0 both
    at ``p -> 1`` and at ``p -> 0`` and lowest (-0.018) at ``p ~ 0.69``; WGA's is lowest (``-1 / (e beta)``) at
    ``c = 1/beta`` (``p = e^{-1/beta}``) and rises towards 0 on both sides. The samples each choice weighs most:

    ==========  =================================  ==============================  ========================
    base loss   score="loss", hard                 score="loss", easy              score="nll", hard / easy
    ==========  =================================  ==============================  ========================
    GradAscent  lowest avg NLL (1)                 highest avg NLL                 lowest / highest avg NLL
    NPO         smallest NLL rise since start (2)  largest NLL rise                lowest / highest avg NLL
    SimNPO      lowest avg NLL (3)                 highest avg NLL                 lowest / highest avg NLL
    SatImp      both ends: p ~ 1 and p ~ 0 (4)     the middle, p ~ 0.7 (4)         lowest / highest avg NLL
    WGA         both ends: p ~ 1 and c >> 1/beta   the middle, c ~ 1/beta          lowest / highest avg NLL
    ==========  =================================  ==============================  ========================

    (1) ``l_i = -avg_i``: the same weights and gradient as ``score="nll"``.
    (2) NPO's ``l_i`` falls as ``NLL_i - ref_i`` grows: the rise of the *summed* NLL since unlearning began, not of
    the per-token NLL BalDRO-G ranks by. At step 0 every ``l_i`` is ``(2/beta) log 2``: uniform weights.
    (3) SimNPO's ``l_i`` falls as ``avg_i`` grows, but ``0 < l_i < 2 log 2 / beta``: at tau 1 and beta 4.5 no two
    weights differ by more than a factor 1.36.
    (4) Samples (``unit="sample"``: the token mean) or tokens (``unit="token"``) at these probabilities. SatImp's
    ``-0.018 <= l <= 0`` (beta1 5, beta2 1) keeps the weights at tau 1 within 2% of uniform, so DV-SatImp at tau 1,
    the reference's DrSatImp among them, is plain SatImp up to that 2%.

    Args:
        temperature: ``tau > 0``. Large values approach the mean; small values the worst (or best) sample.
            Called ``beta_dv_forget`` (DrNPO) and ``sigma_forget`` (DrSimNPO, DrSatImp) in the reference code.
            It acts on the scale of the score: the base loss's range differs per base loss (see the table), the
            average NLL's is a few nats.
        emphasis: ``"hard"`` (default, the paper's sup: weights ``softmax(score / tau)``; for ``score="loss"`` the
            samples of highest base loss, for ``score="nll"`` those of lowest average NLL) or ``"easy"`` (the
            reference code's ``-tau log mean exp(-l / tau)``: weights ``softmax(-score / tau)``), kept to reproduce
            its published configurations.
        unit: ``"sample"`` (default) weighs samples; ``"token"`` weighs every target token of a token-level loss,
            which is what the reference code's DrSatImp does. Only with ``score="loss"``.
        score: what the weights are a softmax of: ``"loss"`` (default, the paper's DV over the base loss) or
            ``"nll"`` (the detached per-sample hardness ``-avg NLL``, so that ``"hard"`` means "still remembered"
            for every base loss). ``score="nll"`` needs ``unit="sample"``: the weights rank samples by their average
            NLL, and a sample without target tokens gets weight 0 (unless every sample of the batch is empty).

    Two samples with losses ``0`` and ``log 3`` at ``tau = 1``: the loss is ``log(1 + 3) - log 2 = log 2`` and the
    weights are ``softmax(0, log 3) = (1/4, 3/4)``.

    >>> from baldro_pl.objectives import ForgetLosses
    >>> losses = ForgetLosses(
    ...     per_sample=torch.tensor([0.0, math.log(3)]),
    ...     per_token=None,
    ...     mask=torch.ones(2, 1, dtype=torch.bool),
    ...     reduction="sample",
    ...     hardness=torch.tensor([-1.0, -2.0]),
    ... )
    >>> out = BalDRODV(temperature=1.0)(losses)
    >>> round(out.loss.item(), 4), [round(w, 4) for w in out.weights.tolist()]
    (0.6931, [0.25, 0.75])
    """

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        emphasis: Literal["hard", "easy"] = "hard",
        unit: Literal["sample", "token"] = "sample",
        score: Literal["loss", "nll"] = "loss",
    ) -> None:
        if not (isinstance(temperature, int | float) and temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"BalDRODV: temperature must be a finite number > 0, got {temperature!r}")
        if emphasis not in ("hard", "easy"):
            raise ValueError(f"BalDRODV: emphasis must be 'hard' or 'easy', got {emphasis!r}")
        if unit not in ("sample", "token"):
            raise ValueError(f"BalDRODV: unit must be 'sample' or 'token', got {unit!r}")
        if score not in ("loss", "nll"):
            raise ValueError(f"BalDRODV: score must be 'loss' or 'nll', got {score!r}")
        if score == "nll" and unit != "sample":
            raise ValueError(
                f"BalDRODV: score='nll' weighs samples by their average NLL and needs unit='sample', got unit={unit!r}"
            )
        self.temperature = float(temperature)
        self.emphasis = emphasis
        self.unit = unit
        self.score = score

    def __call__(self, losses: ForgetLosses) -> Aggregated:
        """The DV aggregate of the batch and its gradient weights (per sample, or summed per sample for tokens).

        Raises:
            ValueError: ``unit="token"`` with a sample-level forget loss.
        """
        sign = 1.0 if self.emphasis == "hard" else -1.0
        if self.score == "nll":
            return self._nll_weighted(losses, sign)
        if self.unit == "sample":
            loss = dv_aggregate(losses.per_sample, self.temperature, self.emphasis)
            weights = torch.softmax(sign * losses.per_sample.detach().float() / self.temperature, dim=0)
            return Aggregated(loss, weights)
        if losses.per_token is None:
            raise ValueError("BalDRODV(unit='token') needs a token-level forget loss (SatImp, WGA, GradAscent)")
        token_values = losses.per_token[losses.mask]
        loss = dv_aggregate(token_values, self.temperature, self.emphasis)
        token_weights = torch.softmax(sign * token_values.detach().float() / self.temperature, dim=0)
        weights = torch.zeros(losses.mask.shape, dtype=token_weights.dtype, device=token_weights.device)
        weights[losses.mask] = token_weights
        return Aggregated(loss, weights.sum(-1))

    def _nll_weighted(self, losses: ForgetLosses, sign: float) -> Aggregated:
        """``score="nll"``: ``sum_i w_i l_i`` with constant ``w = softmax(sign * hardness / tau)``."""
        logits = sign * losses.hardness.detach().float() / self.temperature
        empty = losses.mask.sum(-1) == 0  # hardness 0 (the "best remembered" value): leave such samples out
        logits = logits.masked_fill(empty & ~empty.all(), -math.inf)  # no host sync; all empty: uniform
        weights = torch.softmax(logits, dim=0)
        return Aggregated((weights * losses.per_sample.float()).sum(), weights)

    def __setstate__(self, state: dict) -> None:
        state.setdefault("score", "loss")  # pickled (checkpointed) before score existed
        self.__dict__.update(state)


class BalDROG(Aggregator):
    """BalDRO-G: the mean of the base loss over the ``k = max(1, floor(ratio * B))`` hardest forget samples.

    Hardness is ``-avg NLL`` (no gradient), so the kept samples are those the model still predicts best. The
    selection is made from the forward pass the step already ran (same value and gradient as the reference code's
    extra selection pass followed by a subset pass).

    Args:
        ratio: the kept fraction, in ``(0, 1]``.
        subsample_retain: also keep only ``min(k, B_retain)`` random retain samples, as the reference code does.
        seed: seed of the retain subsampling (None: the global torch RNG, as the reference code). With a seed, the
            draws of optimiser step ``s`` come from a generator seeded by ``(seed, s)`` (and the draw's number within
            the step, for gradient accumulation), so a run resumed from a checkpoint draws what the uninterrupted run
            drew.

    >>> from baldro_pl.objectives import ForgetLosses
    >>> losses = ForgetLosses(
    ...     per_sample=torch.tensor([1.0, 2.0, 3.0, 4.0]),
    ...     per_token=None,
    ...     mask=torch.ones(4, 1, dtype=torch.bool),
    ...     reduction="sample",
    ...     hardness=torch.tensor([-0.5, -3.0, -0.1, -2.0]),  # samples 0 and 2 are the best remembered
    ... )
    >>> out = BalDROG(ratio=0.5)(losses)  # k = 2: the mean of the losses of samples 0 and 2, (1 + 3) / 2
    >>> out.loss.item(), out.weights.tolist()
    (2.0, [0.5, 0.0, 0.5, 0.0])
    """

    def __init__(self, *, ratio: float = 0.5, subsample_retain: bool = True, seed: int | None = None) -> None:
        if not (isinstance(ratio, int | float) and 0 < ratio <= 1):
            raise ValueError(f"BalDROG: ratio must be in (0, 1], got {ratio!r}")
        self.ratio = float(ratio)
        self.subsample_retain = subsample_retain
        self.seed = seed
        self._draw_step: int | None = None  # the step of the last seeded draw and the number of draws made in it
        self._draws = 0

    def group_size(self, batch_size: int) -> int:
        """``k = max(1, floor(ratio * batch_size))``."""
        return max(1, int(batch_size * self.ratio))

    def __call__(self, losses: ForgetLosses) -> Aggregated:
        """The mean of the base loss over the ``k`` samples of highest hardness (lowest average NLL)."""
        k = self.group_size(losses.per_sample.shape[0])
        top = torch.topk(losses.hardness, k=k, largest=True, sorted=False).indices
        keep = torch.zeros_like(losses.per_sample, dtype=torch.bool)
        keep[top] = True
        weights = reduction_weights(losses, keep)
        if losses.reduction == "token":
            loss = losses.per_token[keep].sum() / losses.mask[keep].sum().clamp(min=1)
        else:
            loss = losses.per_sample[keep].mean()
        return Aggregated(loss, weights)

    def retain_rows(
        self, n_forget: int, n_retain: int, device: torch.device | None = None, *, step: int = 0
    ) -> Tensor | None:
        """``min(k, n_retain)`` distinct random retain rows (None without ``subsample_retain``).

        Without a seed they come from the global torch RNG on ``device`` (the reference code's
        ``torch.randperm``); with one, from :meth:`generator` ``(step)``.
        """
        if not self.subsample_retain:
            return None
        k = min(self.group_size(n_forget), n_retain)
        if self.seed is None:
            return torch.randperm(n_retain, device=device)[:k]
        return torch.randperm(n_retain, generator=self.generator(step))[:k].to(device)

    def generator(self, step: int) -> torch.Generator:
        """A CPU generator for the next seeded draw of optimiser step ``step``.

        Seeded by a hash of ``(seed, step, j)``, where ``j`` counts the draws already made in this step (0 unless
        gradient accumulation runs several micro-batches per step): the stream depends on the step, not on how many
        draws this object made before, so a resumed run continues it.

        Raises:
            ValueError: the aggregator has no seed.
        """
        if self.seed is None:
            raise ValueError("BalDROG: generator() needs a seed (seed=None draws from the global torch RNG)")
        if step != self._draw_step:
            self._draw_step, self._draws = step, 0
        digest = hashlib.blake2b(f"{self.seed}/{step}/{self._draws}".encode(), digest_size=8).digest()
        self._draws += 1
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)

    def __getstate__(self) -> dict:
        return {k: v for k, v in vars(self).items() if k not in ("_draw_step", "_draws")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._draw_step = None
        self._draws = 0

    def __repr__(self) -> str:
        return f"BalDROG(ratio={self.ratio!r}, subsample_retain={self.subsample_retain!r}, seed={self.seed!r})"
