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

Under data parallelism both take ``scope``: ``"global"`` (default) weighs or selects over the micro-batch of every
process together (``n = devices x batch_size``), ``"device"`` over each process's own micro-batch. Why ``"global"`` is
the default: :class:`BalDRODV`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from baldro_pl.distributed import gather_ragged, gather_rows_with_grad, rank_world
from baldro_pl.objectives.base import Aggregated, Aggregator, ForgetLosses, Selection

Scope = Literal["device", "global"]
"""Which samples a DRO aggregator weighs together: each process's micro-batch, or the micro-batch of all processes."""


def check_scope(owner: str, scope: object) -> None:
    """Raise the one-line error of a bad ``scope`` setting of ``owner`` (an aggregator name)."""
    if scope not in ("device", "global"):
        raise ValueError(f"{owner}: scope must be 'device' or 'global', got {scope!r}")


class GlobalBatch(NamedTuple):
    """The per-sample quantities of the global micro-batch (every process's rows, in rank order).

    Attributes:
        per_sample: ``[N]`` base losses, differentiable (:func:`~baldro_pl.distributed.gather_rows_with_grad`).
        hardness: ``[N]`` detached ``-avg NLL``.
        n_tokens: ``[N]`` detached number of target tokens.
        local: this process's rows in them.
    """

    per_sample: Tensor
    hardness: Tensor
    n_tokens: Tensor
    local: slice


def gather_global(losses: ForgetLosses) -> GlobalBatch | None:
    """The global micro-batch of ``losses``, or None in one process (``scope="global"`` is then ``"device"``).

    One differentiable gather of the ``[B, 3]`` columns (loss, hardness, token count): only the loss carries a
    gradient, which flows back to the process that computed it (see :func:`gather_rows_with_grad` for why every
    process back-propagating the same global loss gives DDP the single-process gradient).
    """
    if rank_world()[1] == 1:
        return None
    dtype = torch.promote_types(losses.per_sample.dtype, torch.float32)
    columns = torch.stack([losses.per_sample, losses.hardness.detach(), losses.n_tokens.detach()], dim=1).to(dtype)
    rows, local = gather_rows_with_grad(columns)
    return GlobalBatch(rows[:, 0], rows[:, 1].detach(), rows[:, 2].detach(), local)


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
        scope: the set the weights are a softmax over under data parallelism. ``"global"`` (default): the
            micro-batch of every process together, ``N = devices x batch_size`` samples (gathered with their
            gradient, :func:`gather_global`); every process computes the same loss over them and back-propagates it,
            which gives each process the gradient of its own samples' share, so that after DDP's (or FSDP's)
            gradient average, 2 processes x 4 samples give the loss and the update of 1 process x 8 samples.
            ``"device"``: each process's own micro-batch (what every version before this option did). In one
            process (no process group, or world size 1) the two are the same. With gradient accumulation the set is
            the micro-batch of all processes at one accumulation step, never several steps together. The returned
            ``weights`` are then those of the global micro-batch (``[N]``, rank order, sum 1), so that the logged
            effective sample size is the global one.

    Why ``"global"`` is the default: the objective then depends only on the global micro-batch, not on how it is split
    over devices, so a preset means the same method on 1, 2 or 8 GPUs. ``"device"`` silently changes the method with
    the hardware: a 7B model under FSDP often fits only 1 or 2 samples per device, and over 1 sample the DV weight is
    1 (plain ERM); over 2 samples BalDRO-G's ``k = floor(0.5 x 2) = 1`` is a hard max. To keep the reference's DRO set
    of 8 on 4 GPUs, run ``batch_size`` 2 (``4 x 2 = 8``) and keep the accumulation. The cost is a gather of the
    lengths and one of 3 floats per sample forward, and an all-reduce of those 3 floats per sample backward
    (``unit="token"`` adds one float per target token each way; ``docs/presets.md``, "Scope of the DRO set").

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
        scope: Scope = "global",
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
        check_scope("BalDRODV", scope)
        self.temperature = float(temperature)
        self.emphasis = emphasis
        self.unit = unit
        self.score = score
        self.scope = scope

    def __call__(self, losses: ForgetLosses) -> Aggregated:
        """The DV aggregate of the batch and its gradient weights (per sample, or summed per sample for tokens).

        Raises:
            ValueError: ``unit="token"`` with a sample-level forget loss.
        """
        sign = 1.0 if self.emphasis == "hard" else -1.0
        if self.scope == "global" and (batch := gather_global(losses)) is not None:
            return self._global(losses, batch, sign)
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

    def _global(self, losses: ForgetLosses, batch: GlobalBatch, sign: float) -> Aggregated:
        """``scope="global"`` under a process group: the same three forms over the gathered micro-batch."""
        tau = self.temperature
        if self.score == "nll":
            logits = sign * batch.hardness / tau
            empty = batch.n_tokens == 0
            weights = torch.softmax(logits.masked_fill(empty & ~empty.all(), -math.inf), dim=0)
            return Aggregated((weights * batch.per_sample).sum().float(), weights.float())
        if self.unit == "sample":
            loss = dv_aggregate(batch.per_sample, tau, self.emphasis)
            return Aggregated(loss, torch.softmax(sign * batch.per_sample.detach().float() / tau, dim=0))
        if losses.per_token is None:
            raise ValueError("BalDRODV(unit='token') needs a token-level forget loss (SatImp, WGA, GradAscent)")
        # every target token of every process: this process's tokens in row-major order, then gathered in rank order,
        # so that token t belongs to sample repeat_interleave(arange(N), n_tokens)[t]
        tokens, _ = gather_rows_with_grad(losses.per_token[losses.mask])
        loss = dv_aggregate(tokens, tau, self.emphasis)
        token_weights = torch.softmax(sign * tokens.detach().float() / tau, dim=0)
        samples = torch.arange(batch.n_tokens.numel(), device=tokens.device)
        owner = torch.repeat_interleave(samples, batch.n_tokens.long())
        weights = token_weights.new_zeros(batch.n_tokens.shape).index_add_(0, owner, token_weights)
        return Aggregated(loss, weights)

    def __repr__(self) -> str:
        scope = "" if self.scope == "global" else f", scope={self.scope!r}"  # shown when not the default
        return (
            f"BalDRODV(temperature={self.temperature!r}, emphasis={self.emphasis!r}, unit={self.unit!r}, "
            f"score={self.score!r}{scope})"
        )

    def __setstate__(self, state: dict) -> None:
        state.setdefault("score", "loss")  # pickled (checkpointed) before score existed
        state.setdefault("scope", "device")  # pickled before scope existed: aggregated per process
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
        scope: ``"global"`` (default) selects the ``k = max(1, floor(ratio * N))`` hardest samples of the micro-batch
            of all ``W`` processes together (``N = W x B``, every process with the same ``B``), ``"device"`` the ``k``
            hardest of each process's own ``B``; the same in one process. Why ``"global"`` is the default, and how the
            loss and gradient are shared between processes: :class:`BalDRODV`. The kept samples of a token-level
            loss are averaged over all their tokens, wherever they are. Retain rows (:meth:`retain_rows`): the
            reference keeps ``k`` random retain rows, drawn independently of which forget samples were kept; under
            ``"global"`` the ``k`` of the global micro-batch are split as evenly as possible over the processes
            (process ``r`` keeps ``k // W + (r < k % W)`` random rows of its own, at least one), so that DDP's
            average of the per-process retain losses is the mean over ``k`` retain rows (exactly so when ``W``
            divides ``k`` and the retain loss is a sample mean). The rows are random either way; their number does
            not follow where the kept forget samples are.
        passes: how a step runs (the value and gradients are the same): ``"two"``, a no-grad forward pass over the
            whole forget batch picks the ``k`` rows, then the gradient pass runs on those rows alone (``B + 3k``
            forward-equivalents, activations of ``k`` rows); ``"one"``, one gradient pass over the whole batch, the
            unkept rows weighted 0 (``3B``); ``"auto"`` (default), ``"two"`` for ``ratio <= 2/3``, where it does
            less arithmetic. Where kernel launches rather than arithmetic set the time (a GPU at a small
            micro-batch), the extra pass of ``"two"`` costs more than it saves: on an H200, 1.1B Llama, 8 + 8 rows
            of 256 tokens, ``"one"`` was the faster (docs/benchmarks.md, "GPU suite").

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

    def __init__(
        self,
        *,
        ratio: float = 0.5,
        subsample_retain: bool = True,
        seed: int | None = None,
        scope: Scope = "global",
        passes: Literal["auto", "one", "two"] = "auto",
    ) -> None:
        if not (isinstance(ratio, int | float) and 0 < ratio <= 1):
            raise ValueError(f"BalDROG: ratio must be in (0, 1], got {ratio!r}")
        check_scope("BalDROG", scope)
        if passes not in ("auto", "one", "two"):
            raise ValueError(f"BalDROG: passes must be 'auto', 'one' or 'two', got {passes!r}")
        self.passes = passes
        self.ratio = float(ratio)
        self.subsample_retain = subsample_retain
        self.seed = seed
        self.scope = scope
        self._draw_step: int | None = None  # the step of the last seeded draw and the number of draws made in it
        self._draws = 0

    def group_size(self, batch_size: int) -> int:
        """``k = max(1, floor(ratio * batch_size))``."""
        return max(1, int(batch_size * self.ratio))

    def selects_rows(self, batch_size: int) -> bool:
        """Whether the module runs the two-pass step: a no-grad pass for the hardness, the gradient pass on ``k`` rows.

        The two passes cost about ``1 + 3 k / B`` forward-equivalents against ``3`` for one gradient pass over the
        whole batch whose unkept rows get zero weight: they win when ``k <= 2/3 B`` (measured: docs/benchmarks.md,
        "BalDRO-G: two passes"), which covers the published ratio 0.5; above it the one pass is kept. Decided by
        ``ratio <= 2/3`` alone, not by ``B``, so that every process takes the same path (the two paths' collectives
        differ under ``scope="global"``) even when the last micro-batches differ in size. ``passes`` ``"one"`` or
        ``"two"`` decides instead.
        """
        if self.passes != "auto":
            return self.passes == "two"
        return self.ratio <= 2 / 3

    def select(self, hardness: Tensor) -> Selection:
        """The rows to keep: the ``k`` of highest ``hardness`` (``-avg NLL``, detached), as :meth:`__call__` keeps.

        Under ``scope="global"`` with several processes, the hardness of every process's rows is gathered (no
        gradient; one collective on every process) and the ``k`` of the global micro-batch are kept; a process none of
        whose rows is among them runs one stand-in row with zero weight (:class:`Selection`).

        >>> sel = BalDROG(ratio=0.5).select(torch.tensor([-0.5, -3.0, -0.1, -2.0]))
        >>> sel.rows.tolist(), sel.size
        ([0, 2], 4)
        """
        hardness = hardness.detach()
        n = hardness.shape[0]
        rank, world = rank_world()
        if self.scope != "global" or world == 1:
            rows = torch.topk(hardness, k=self.group_size(n), largest=True, sorted=False).indices.sort().values
            return Selection(rows, torch.ones_like(rows, dtype=torch.bool), rows, n)
        owner, everyone = gather_ragged(torch.full((n,), rank, device=hardness.device), hardness)
        start = int((owner < rank).sum())
        top = torch.topk(everyone, k=self.group_size(everyone.shape[0]), largest=True, sorted=False).indices
        mine = top[(top >= start) & (top < start + n)].sort().values
        if mine.numel() == 0:  # a stand-in row, so that this process's backward reaches the model (zero weight)
            rows = hardness.argmax().reshape(1)
            live = torch.zeros(1, dtype=torch.bool, device=rows.device)
            return Selection(rows, live, rows.new_full((1,), -1), everyone.shape[0])
        return Selection(mine - start, torch.ones_like(mine, dtype=torch.bool), mine, everyone.shape[0])

    def aggregate_selected(self, losses: ForgetLosses, selection: Selection) -> Aggregated:
        """The BalDRO-G loss from the losses of the kept rows only (the gradient pass of the two-pass step).

        The same value and gradient as :meth:`__call__` on the whole batch: the (sample or token) mean over the kept
        rows; under ``scope="global"`` over the kept rows of every process, gathered with gradient
        (:func:`~baldro_pl.distributed.gather_rows_with_grad`, whose backward gives DDP the single-process gradient).

        Args:
            losses: :class:`ForgetLosses` of the rows ``selection.rows``, in that order.
            selection: what :meth:`select` returned.

        Returns:
            The loss and the ``[selection.size]`` weights (zero off the kept rows).
        """
        token = losses.reduction == "token"
        live = selection.live
        mass = (losses.n_tokens if token else torch.ones_like(losses.per_sample)) * live.to(losses.per_sample.dtype)
        dtype = torch.promote_types(losses.per_sample.dtype, torch.float32)
        value = torch.where(live, losses.per_sample, torch.zeros_like(losses.per_sample)).to(dtype)
        columns = torch.stack([value, mass.detach().to(dtype), selection.positions.to(dtype)], dim=1)
        if self.scope == "global":  # one process: unchanged
            columns, _ = gather_rows_with_grad(columns)
        value, weight, position = columns[:, 0], columns[:, 1].detach(), columns[:, 2].detach()
        total = weight.sum().clamp(min=1)
        loss = (value * weight).sum() / total
        weights = torch.zeros(selection.size, dtype=torch.float32, device=value.device)
        kept = position >= 0
        weights[position[kept].long()] = (weight[kept] / total).float()
        return Aggregated(loss.float(), weights)

    def __call__(self, losses: ForgetLosses) -> Aggregated:
        """The mean of the base loss over the ``k`` samples of highest hardness (lowest average NLL)."""
        if self.scope == "global" and (batch := gather_global(losses)) is not None:
            return self._global(losses, batch)
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

    def _global(self, losses: ForgetLosses, batch: GlobalBatch) -> Aggregated:
        """``scope="global"`` under a process group: the ``k`` hardest of the gathered micro-batch.

        A token-level loss is the token mean over the kept samples, ``sum_kept l_i n_i / sum_kept n_i`` (``l_i`` is
        the sample's token mean, so ``l_i n_i`` is its token sum).
        """
        k = self.group_size(batch.per_sample.shape[0])
        top = torch.topk(batch.hardness, k=k, largest=True, sorted=False).indices
        keep = torch.zeros_like(batch.hardness, dtype=torch.bool)
        keep[top] = True
        if losses.reduction == "token":
            mass = batch.n_tokens * keep
            loss = (batch.per_sample * mass).sum() / mass.sum().clamp(min=1)
        else:
            mass = keep.to(batch.per_sample.dtype)
            loss = batch.per_sample[keep].mean()
        return Aggregated(loss.float(), (mass / mass.sum().clamp(min=1e-12)).float())

    def retain_rows(
        self, n_forget: int, n_retain: int, device: torch.device | None = None, *, step: int = 0
    ) -> Tensor | None:
        """``min(k, n_retain)`` distinct random retain rows (None without ``subsample_retain``).

        Without a seed they come from the global torch RNG on ``device`` (the reference code's
        ``torch.randperm``); with one, from :meth:`generator` ``(step)``. Under ``scope="global"`` with ``W > 1``
        processes, ``k`` is :meth:`retain_share` of the global ``k``.
        """
        if not self.subsample_retain:
            return None
        rank, world = rank_world()
        if self.scope == "global" and world > 1:
            k = min(self.retain_share(n_forget, rank, world), n_retain)
        else:
            k = min(self.group_size(n_forget), n_retain)
        if self.seed is None:
            return torch.randperm(n_retain, device=device)[:k]
        return torch.randperm(n_retain, generator=self.generator(step))[:k].to(device)

    def retain_share(self, n_forget: int, rank: int, world: int) -> int:
        """Process ``rank``'s share of the global ``k = max(1, floor(ratio * world * n_forget))`` retain rows.

        ``max(1, k // world + (rank < k % world))``: the shares differ by at most one and sum to ``k``, except that
        every process keeps at least one row (an empty retain batch has no loss) when ``k < world``.

        >>> [BalDROG(ratio=0.5).retain_share(3, r, 2) for r in range(2)]  # k = floor(0.5 x 6) = 3
        [2, 1]
        """
        k = self.group_size(world * n_forget)
        return max(1, k // world + int(rank < k % world))

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
        state.setdefault("scope", "device")  # pickled before scope existed: selected per process
        state.setdefault("passes", "auto")
        self.__dict__.update(state)
        self._draw_step = None
        self._draws = 0

    def __repr__(self) -> str:
        scope = "" if self.scope == "global" else f", scope={self.scope!r}"  # shown when not the default
        passes = "" if self.passes == "auto" else f", passes={self.passes!r}"
        return (
            f"BalDROG(ratio={self.ratio!r}, subsample_retain={self.subsample_retain!r}, seed={self.seed!r}{scope}"
            f"{passes})"
        )
