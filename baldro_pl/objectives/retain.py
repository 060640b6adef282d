"""Retain losses (design.md §1.2): keep what the model knows outside the forget set."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from baldro_pl.objectives.base import RetainLoss
from baldro_pl.objectives.logprobs import IGNORE_INDEX, TokenLogProbs, shift_labels, token_logprobs, upcast


def _target_rows(logits: Tensor, labels: Tensor) -> Tensor:
    """``[N, V]`` fp32 logits of the N scored positions (labels aligned to possibly trimmed logits)."""
    labels = labels[:, labels.shape[1] - logits.shape[1] :]
    _, mask = shift_labels(labels, IGNORE_INDEX)
    return upcast(logits[:, :-1][mask])


def nll_retain_loss(logits: Tensor, labels: Tensor, per: Literal["token", "sequence"] = "token") -> Tensor:
    """NLL of the retain batch.

    ``per="token"``: the mean over all target tokens of the batch (what a Hugging Face model returns as ``loss``).
    ``per="sequence"``: the mean over samples of each sample's *summed* NLL, which is what the reference code's
    DrNPO and DrSatImp use as their retain loss (``compute_batch_nll(model, retain).mean()``).

    Args:
        logits: ``[B, L, V]`` policy logits (possibly only the last ``L`` positions).
        labels: ``[B, T]`` labels, ``IGNORE_INDEX`` on unscored positions.
        per: ``"token"`` or ``"sequence"``.

    Uniform logits over ``V = 4`` give every target token the NLL ``log 4``: the token mean is ``log 4`` and the
    mean of the summed NLL of the one sample with two targets ``2 log 4``.

    >>> import torch
    >>> logits, labels = torch.zeros(1, 3, 4), torch.tensor([[-100, 1, 2]])
    >>> round(nll_retain_loss(logits, labels).item(), 4), round(nll_retain_loss(logits, labels, "sequence").item(), 4)
    (1.3863, 2.7726)
    """
    return nll_from_logprobs(token_logprobs(logits, labels), per)


def nll_from_logprobs(retain: TokenLogProbs, per: Literal["token", "sequence"] = "token") -> Tensor:
    """:func:`nll_retain_loss` from the target log-probs: the token mean, or the mean of the summed NLL (``per``)."""
    if per == "sequence":
        return retain.nll.mean()
    return -retain.logp.sum() / retain.mask.sum().clamp(min=1)


KLNormalise = Literal["answer_tokens", "reference"]


def kl_retain_loss(
    logits: Tensor, reference_logits: Tensor, labels: Tensor, normalise: KLNormalise = "answer_tokens"
) -> Tensor:
    """``KL(p_ref || p_theta)`` of the next-token distributions, averaged as ``normalise`` says.

    ``"answer_tokens"``: the mean over the positions that predict an answer token (labels shifted, prompt and
    padding masked), so the value does not depend on padding or prompt length; ``logits`` may be trimmed to the last
    positions (``logits_to_keep``). ``"reference"``: open-unlearning's ``compute_kl_divergence``
    (``kl_div(log p_theta.view(-1, V), log p_ref.view(-1, V), reduction="batchmean", log_target=True)``): the sum
    over every position of the padded batch (prompt, answer, padding and the last position) divided by
    ``batch size x sequence length``; it needs the logits of every position.

    Args:
        logits: ``[B, L, V]`` policy logits.
        reference_logits: ``[B, L, V]`` logits of the frozen reference model.
        labels: ``[B, T]`` labels, ``IGNORE_INDEX`` on unscored positions.
        normalise: ``"answer_tokens"`` or ``"reference"``.

    Raises:
        ValueError: ``normalise="reference"`` with logits that do not cover every position.

    One scored position where the reference predicts ``(3/4, 1/4)`` and the policy ``(1/2, 1/2)``:
    ``KL = 3/4 log(3/2) + 1/4 log(1/2) = 0.1308``.

    >>> import math, torch
    >>> reference = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]]])
    >>> round(kl_retain_loss(torch.zeros(1, 2, 2), reference, torch.tensor([[-100, 1]])).item(), 4)
    0.1308
    """
    if normalise == "reference":
        width = labels.shape[1]
        if logits.shape[1] != width or reference_logits.shape[1] != width:
            raise ValueError(
                f"KL(normalise='reference') averages over every position: it needs logits for all {width} positions, "
                f"got {logits.shape[1]} (policy) and {reference_logits.shape[1]} (reference)"
            )
        vocab = logits.shape[-1]
        policy = F.log_softmax(upcast(logits).reshape(-1, vocab), dim=-1)
        reference = F.log_softmax(upcast(reference_logits).reshape(-1, vocab), dim=-1)
        return F.kl_div(policy, reference, reduction="batchmean", log_target=True)
    policy = F.log_softmax(_target_rows(logits, labels), dim=-1)
    reference = F.log_softmax(_target_rows(reference_logits, labels), dim=-1)
    if policy.shape[0] == 0:
        return logits.sum() * 0.0
    return F.kl_div(policy, reference, reduction="sum", log_target=True) / policy.shape[0]


class NLL(RetainLoss):
    """Negative log-likelihood of the retain answers.

    Args:
        per: ``"token"`` (default): token mean over the batch, as the Hugging Face ``loss`` and the reference
            code's NPO, SimNPO, SatImp, their BalDRO-G variants and DrSimNPO. ``"sequence"``: mean over samples of the
            summed NLL, as the reference code's DrNPO and DrSatImp compute it (a larger scale: about the answer
            length times the token mean), needed to reproduce their published configurations.
    """

    def __init__(self, *, per: Literal["token", "sequence"] = "token") -> None:
        if per not in ("token", "sequence"):
            raise ValueError(f"NLL: per must be 'token' or 'sequence', got {per!r}")
        self.per = per

    takes_logprobs = True

    def __call__(self, logits: Tensor, labels: Tensor, reference_logits: Tensor | None = None) -> Tensor:
        """:func:`nll_retain_loss` of the retain batch (``reference_logits`` is not used)."""
        return nll_retain_loss(logits, labels, self.per)

    def from_logprobs(self, retain: TokenLogProbs) -> Tensor:
        """:func:`nll_from_logprobs` of the retain batch's target log-probs."""
        return nll_from_logprobs(retain, self.per)


class KL(RetainLoss):
    """KL divergence ``KL(p_ref || p_theta)`` from the frozen reference model's next-token distributions.

    The only loss here that keeps a live copy of the model before unlearning.

    Args:
        normalise: ``"answer_tokens"`` (default): the mean over the retain answer tokens. ``"reference"``: as the
            reference code (open-unlearning's ``compute_kl_divergence``): the sum over every position of the padded
            retain batch, prompt and padding included, divided by batch size x sequence length. The two differ by
            about the fraction of answer tokens in the padded batch, and the KL at prompt and padding positions, so a
            published ``alpha`` for the KL retain loss transfers only with ``"reference"`` (and the same padding).
    """

    needs_reference_model = True

    def __init__(self, *, normalise: KLNormalise = "answer_tokens") -> None:
        if normalise not in ("answer_tokens", "reference"):
            raise ValueError(f"KL: normalise must be 'answer_tokens' or 'reference', got {normalise!r}")
        self.normalise = normalise

    @property
    def needs_all_positions(self) -> bool:
        """Whether the module must compute the logits of every position (not only from the first answer token)."""
        return self.normalise == "reference"

    def __call__(self, logits: Tensor, labels: Tensor, reference_logits: Tensor | None = None) -> Tensor:
        """:func:`kl_retain_loss` of the retain batch against the frozen reference model's logits.

        Raises:
            ValueError: ``reference_logits`` is missing.
        """
        if reference_logits is None:
            raise ValueError("KL retain loss needs reference_logits from the frozen reference model")
        with torch.no_grad():
            reference_logits = reference_logits.detach()
        return kl_retain_loss(logits, reference_logits, labels, self.normalise)
