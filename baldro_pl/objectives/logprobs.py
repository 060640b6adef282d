"""Per-token log-probabilities of the target tokens: the one place where labels are shifted and logits upcast.

Training losses and evaluation metrics both start from :class:`TokenLogProbs`, so the conventions of
open-unlearning (metrics-spec §1.5) are implemented exactly once:

* logits at position ``t`` predict the label at ``t + 1`` (``logits[:, :-1]`` against ``labels[:, 1:]``);
* positions whose label is ``ignore_index`` (prompt, padding) are masked;
* the log-softmax is always taken in at least fp32 (metrics-spec P4), whatever the model's dtype.

Primitive A of the spec (``avg_loss``, all targets, EOS included) is :attr:`TokenLogProbs.avg_nll`; primitive B
(min-k, min-k++, EM, ES, gradnorm: the last target token dropped) is :meth:`TokenLogProbs.drop_last_target`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from baldro_pl.labels import IGNORE_INDEX, shift_labels


@dataclass(frozen=True)
class TokenLogProbs:
    """Log-probabilities of the target tokens of a batch, already shifted and in fp32.

    Attributes:
        logp: ``[B, T']`` log p(y_t | y_<t) (fp32, or fp64 for an fp64 model) at every shifted position; exactly 0
            where ``mask`` is False.
        mask: ``[B, T']`` bool, True on target (answer) tokens.
    """

    logp: Tensor
    mask: Tensor

    @property
    def n_tokens(self) -> Tensor:
        """``[B]`` number of target tokens per sample (as float, for division)."""
        return self.mask.sum(-1).to(self.logp.dtype)

    @property
    def nll(self) -> Tensor:
        """``[B]`` summed negative log-likelihood of each sample's targets (design.md 1.1, NLL_i)."""
        return -self.logp.sum(-1)

    @property
    def avg_nll(self) -> Tensor:
        """``[B]`` per-token average NLL (``avg_loss`` of metrics-spec §1.5 A). NaN for a sample without targets."""
        return self.nll / self.n_tokens

    @property
    def token_nll(self) -> Tensor:
        """``[B, T']`` per-token NLL, 0 off the mask."""
        return -self.logp

    def select(self, rows: Tensor) -> TokenLogProbs:
        """The rows ``rows`` (a 1-D index tensor) of this batch."""
        return TokenLogProbs(self.logp.index_select(0, rows), self.mask.index_select(0, rows))

    def drop_last_target(self) -> TokenLogProbs:
        """The same batch without each sample's last target token (metrics-spec §1.5 B and P2)."""
        positions = torch.arange(self.mask.shape[-1], device=self.mask.device)
        last = torch.where(self.mask, positions, -1).amax(-1, keepdim=True)
        mask = self.mask & (positions != last)
        return TokenLogProbs(self.logp.masked_fill(~mask, 0.0), mask)


def upcast(x: Tensor) -> Tensor:
    """``x`` in at least fp32 (bf16/fp16 are upcast; fp64 stays fp64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def token_logprobs(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> TokenLogProbs:
    """Per-token log-probabilities of ``labels`` under ``logits`` (fp32, shifted, masked).

    ``logits`` may cover only the last ``L`` positions of the sequence (Hugging Face ``logits_to_keep``):
    the labels are then aligned to those positions, which is exact as long as no target lies before them.

    Args:
        logits: ``[B, L, V]`` with ``L <= T``; logits[:, j] belongs to sequence position ``T - L + j``.
        labels: ``[B, T]`` token ids, ``ignore_index`` on positions that are not scored.
        ignore_index: label value of unscored positions.

    Returns:
        :class:`TokenLogProbs` of shape ``[B, L - 1]``.
    """
    if logits.shape[1] < labels.shape[1]:
        dropped = labels[:, : labels.shape[1] - logits.shape[1] + 1]
        if bool((dropped[:, 1:] != ignore_index).any()):
            raise ValueError("token_logprobs: logits were truncated before a target token (logits_to_keep too small)")
        labels = labels[:, labels.shape[1] - logits.shape[1] :]
    targets, mask = shift_labels(labels, ignore_index)
    logits = upcast(logits[:, :-1])
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    logp = picked - torch.logsumexp(logits, dim=-1)
    return TokenLogProbs(logp.masked_fill(~mask, 0.0), mask)
