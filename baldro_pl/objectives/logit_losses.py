"""Forget losses on the full next-token distribution: CEU and UNDIAL (:class:`~.base.LogitForgetLoss`).

Both score every answer token against a *target distribution* over the vocabulary rather than the target log-prob
alone, so they take the forget batch's ``[B, L, V]`` logits (and UNDIAL the frozen reference model's), which the
training module computes with :func:`baldro_pl.forward.teacher_forced_logits`. Each has a functional twin on
``[N, V]`` rows (:func:`ceu_token_loss`, :func:`undial_token_loss`); the classes pick the rows, lay the values out per
token and leave the reduction to the aggregator (``Mean``: the token mean of the batch, as published).

Notation: at a scored position with logits ``z`` (policy) and ``z^ref`` (frozen reference model) and target token
``y``: ``p = softmax(z)``.

Reference code: locuslab/open-unlearning ``src/trainer/unlearn/ceu.py`` (``cross_entropy_unlearning_loss``,
``compute_batch_ceu``) and ``src/trainer/utils.py`` (``compute_undial_loss``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from baldro_pl.labels import shift_labels
from baldro_pl.objectives.base import ForgetLosses, LogitForgetLoss
from baldro_pl.objectives.logprobs import TokenLogProbs, upcast

UndialPositions = Literal["answer_tokens", "reference"]


def ceu_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """CE-U loss of each position: ``-sum_{v != y} q_v log p_v`` with ``q = softmax(z.detach() with z_y = -inf)``.

    Cross Entropy Unlearning (Yang et al. 2025, "CE-U: Cross Entropy Unlearning", arXiv 2503.01224, Eq. 2): the
    cross-entropy of the model's distribution against the target distribution that moves the target token's mass
    onto the others in proportion to the model's own probabilities. ``q`` is a constant, so the gradient on the
    logits is ``p - q``: ``+p_y`` on the target token and ``-p_v p_y / (1 - p_y)`` on the others, bounded unlike
    gradient ascent's. The value is ``H(q) - log(1 - p_y)``: it rises with ``p_y`` but also with the entropy of the
    other tokens.

    Args:
        logits: ``[..., V]`` policy logits of the scored positions (upcast to at least fp32).
        targets: ``[...]`` target token ids.

    Returns:
        ``[...]`` losses.

    Logits ``(0, 0, log 2)`` give ``p = (1/4, 1/4, 1/2)``; for target 2 the mass goes to ``q = (1/2, 1/2, 0)`` and the
    loss is ``-log(1/4) = log 4``; for target 0, ``q = (0, 1/3, 2/3)`` and the loss is ``(4/3) log 2``.

    >>> import math
    >>> logits = torch.tensor([[0.0, 0.0, math.log(2)]] * 2)
    >>> ceu_token_loss(logits, torch.tensor([2, 0]))
    tensor([1.3863, 0.9242])
    """
    logits = upcast(logits)
    log_p = F.log_softmax(logits, dim=-1)
    target_logits = logits.detach().scatter(-1, targets.unsqueeze(-1), float("-inf"))
    q = F.softmax(target_logits, dim=-1)
    return -(q * log_p).sum(-1)


def undial_token_loss(logits: Tensor, reference_logits: Tensor, targets: Tensor, beta: float) -> Tensor:
    """UNDIAL loss of each position: ``-sum_v q_v log p_v`` with ``q = softmax(z^ref - beta * e_y)``.

    Self-distillation with adjusted logits (Dong et al., NAACL 2025, "UNDIAL: Self-Distillation with Adjusted Logits
    for Robust Unlearning in Large Language Models", arXiv 2402.10052, Eq. 1-2): the student is pulled towards the
    frozen original model's distribution with the target token's logit lowered by ``beta``. The target ``q`` is
    fixed (no gradient), so the loss is ``H(q) + KL(q || p)``, lowest (``H(q)``) when the model reaches ``q``.

    Args:
        logits: ``[..., V]`` policy logits (upcast to at least fp32).
        reference_logits: ``[..., V]`` logits of the frozen reference model (the teacher).
        targets: ``[...]`` target token ids.
        beta: the strength of the penalty on the target token (> 0).

    Returns:
        ``[...]`` losses.

    Uniform teacher logits over ``V = 3`` lowered by ``beta = log 2`` on target 0 give ``q = (1/5, 2/5, 2/5)``;
    against a uniform student the loss is ``log 3``, against ``p = (1/2, 1/4, 1/4)`` it is ``(9/5) log 2``.

    >>> import math
    >>> teacher, target = torch.zeros(2, 3), torch.tensor([0, 0])
    >>> undial_token_loss(torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0]]), teacher, target, math.log(2))
    tensor([1.0986, 1.2477])
    """
    log_p = F.log_softmax(upcast(logits), dim=-1)
    teacher = upcast(reference_logits).detach()
    index = targets.unsqueeze(-1)
    adjusted = teacher.scatter(-1, index, teacher.gather(-1, index) - beta)
    q = F.softmax(adjusted, dim=-1)
    return -(q * log_p).sum(-1)


def _on_rows(mask: Tensor, values: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, T']`` tensor holding ``values`` (one per True of ``mask``, row-major) and 0 elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_scatter(mask, values.to(dtype))


class CEU(LogitForgetLoss):
    """Cross Entropy Unlearning: :func:`ceu_token_loss` at every answer token but the first ``n``; token mean.

    As open-unlearning's ``CEU`` trainer, which has no retain term (use ``alpha: 0``). BalDRO applies: the
    per-sample value is the mean of the sample's token losses and the hardness is ``-avg NLL`` as for every loss;
    but the loss value ``H(q) - log(1 - p_y)`` also grows with the entropy of the non-target tokens, so a high value
    does not only mean "still remembered". ``BalDROG`` and ``BalDRODV(score="nll")`` rank by the average NLL instead.

    Args:
        ignore_first_n_answer_tokens: the first ``n`` answer tokens of every sample are not scored (the CE-U paper's
            footnote in its Training Settings; open-unlearning's ``configs/trainer/CEU.yaml``: 1). An integer >= 0.
    """

    reduction = "token"

    def __init__(self, *, ignore_first_n_answer_tokens: int = 1) -> None:
        n = ignore_first_n_answer_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"CEU: ignore_first_n_answer_tokens must be an integer >= 0, got {n!r}")
        self.ignore_first_n_answer_tokens = n

    def __call__(
        self,
        policy: TokenLogProbs,
        reference_nll: Tensor | None = None,
        *,
        logits: Tensor | None = None,
        labels: Tensor | None = None,
        reference_logits: Tensor | None = None,
    ) -> ForgetLosses:
        """Per-token CE-U losses of the scored answer tokens (token mean over the batch)."""
        logits, labels = self._check_logits(logits, labels)
        targets, mask = shift_labels(labels)
        if self.ignore_first_n_answer_tokens:
            mask = mask & (mask.cumsum(-1) > self.ignore_first_n_answer_tokens)
        values = ceu_token_loss(logits[:, :-1][mask], targets[mask])
        return self._token_losses(policy, _on_rows(mask, values, policy.logp.dtype), mask)


class UNDIAL(LogitForgetLoss):
    """UNDIAL: self-distillation towards the frozen original model with the target token's logit lowered by beta.

    :func:`undial_token_loss` per position, token mean over the batch. The teacher is a frozen copy of the initial
    model kept beside the one being trained (:attr:`needs_reference_logits`), not a cache of its logits: a cache
    holds ``[N, T', V]`` values (TOFU forget10 answers with Llama-2's 32k vocabulary: about 2 GB in bf16, the prompts
    too for ``positions="reference"``; a MUSE forget corpus of 2048-token windows: tens of GB), while the frozen
    copy costs one forward pass without gradient per step and one model's weights.

    Args:
        beta: the strength of the penalty on the target token, > 0 (open-unlearning ``configs/trainer/UNDIAL.yaml``:
            10; its README suggests 3 to 30).
        positions: ``"answer_tokens"`` (default): only the positions that predict an answer token, so that each
            sample's value is the mean over its own answer, independent of prompt and padding. ``"reference"``: as
            open-unlearning's ``compute_undial_loss``: every position of the padded batch (prompt, answer, padding and
            the last one), averaged over batch size x (sequence length - 1). That code also lowers, at every unscored
            position, the logit of token ``V - 100`` (its label -100 indexes from the end of the vocabulary): this
            mode does the same, so that a published configuration transfers exactly. Its per-sample values are then
            dominated by prompt and padding positions, which BalDRO cannot weigh meaningfully: BalDRO aggregators
            are refused with ``positions="reference"``.
    """

    reduction = "token"
    needs_reference_logits = True

    def __init__(self, *, beta: float = 10.0, positions: UndialPositions = "answer_tokens") -> None:
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not beta > 0:
            raise ValueError(f"UNDIAL: beta must be a number > 0, got {beta!r}")
        if positions not in ("answer_tokens", "reference"):
            raise ValueError(f"UNDIAL: positions must be 'answer_tokens' or 'reference', got {positions!r}")
        self.beta = float(beta)
        self.positions = positions

    @property
    def needs_all_positions(self) -> bool:
        """Whether the forget logits must cover every position (``positions="reference"``)."""
        return self.positions == "reference"

    @property
    def supports_dro(self) -> bool:  # type: ignore[override]
        """False for ``positions="reference"``: the per-sample values mix in prompt and padding positions."""
        return self.positions == "answer_tokens"

    def __call__(
        self,
        policy: TokenLogProbs,
        reference_nll: Tensor | None = None,
        *,
        logits: Tensor | None = None,
        labels: Tensor | None = None,
        reference_logits: Tensor | None = None,
    ) -> ForgetLosses:
        """Per-token UNDIAL losses against the frozen reference model's ``reference_logits`` (required).

        Raises:
            ValueError: ``reference_logits`` is missing or of another shape than ``logits``; or
                ``positions="reference"`` with logits that do not cover every position.
        """
        logits, labels_kept = self._check_logits(logits, labels)
        if reference_logits is None:
            raise ValueError("UNDIAL needs reference_logits: the frozen reference model's logits on the forget batch")
        if reference_logits.shape != logits.shape:
            raise ValueError(
                f"UNDIAL: reference_logits {tuple(reference_logits.shape)} and logits {tuple(logits.shape)} differ"
            )
        targets, mask = shift_labels(labels_kept)
        if self.positions == "reference":
            if logits.shape[1] != labels.shape[1]:
                raise ValueError(
                    f"UNDIAL(positions='reference') averages over every position: it needs logits for all "
                    f"{labels.shape[1]} positions, got {logits.shape[1]}"
                )
            targets = labels[:, 1:].remainder(logits.shape[-1])  # -100 -> V - 100, as the reference code indexes
            mask = torch.ones_like(mask)
        values = undial_token_loss(logits[:, :-1][mask], reference_logits[:, :-1][mask], targets[mask], self.beta)
        return self._token_losses(policy, _on_rows(mask, values, policy.logp.dtype), mask)
