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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

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


def align_labels(labels: Tensor, length: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The labels of the last ``length`` positions of the sequence, to score logits (or hidden states) cut there.

    Hugging Face ``logits_to_keep`` keeps only the last ``L`` positions; the labels are aligned to them, which is exact
    as long as no target lies before them (position ``T - L`` itself predicts nothing that is dropped).

    Args:
        labels: ``[B, T]`` token ids, ``ignore_index`` on positions that are not scored.
        length: ``L <= T``, the number of trailing positions kept.
        ignore_index: label value of unscored positions.

    Returns:
        ``[B, L]``: ``labels[:, T - L:]``.

    Raises:
        ValueError: a target token lies before the kept positions (``logits_to_keep`` too small).
    """
    if length < labels.shape[1]:
        dropped = labels[:, : labels.shape[1] - length + 1]
        if bool((dropped[:, 1:] != ignore_index).any()):
            raise ValueError("token_logprobs: logits were truncated before a target token (logits_to_keep too small)")
        labels = labels[:, labels.shape[1] - length :]
    return labels


def token_logprobs(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> TokenLogProbs:
    """Per-token log-probabilities of ``labels`` under ``logits`` (fp32, shifted, masked).

    ``log p(y_{t+1} | y_<=t) = logits[t, y_{t+1}] - logsumexp_v logits[t, v]``, computed as minus the per-token
    cross-entropy (``F.cross_entropy(..., reduction="none")``, one fused log-softmax + NLL kernel: about half the
    forward + backward time of a gather minus a ``logsumexp``; same values within fp32 rounding). The last position
    gets the target ``ignore_index`` so that the kernel runs on the contiguous ``[B * L, V]`` logits (no copy of the
    ``logits[:, :-1]`` slice).

    ``logits`` may cover only the last ``L`` positions of the sequence (Hugging Face ``logits_to_keep``):
    the labels are then aligned to those positions (:func:`align_labels`).

    Args:
        logits: ``[B, L, V]`` with ``L <= T``; logits[:, j] belongs to sequence position ``T - L + j``.
        labels: ``[B, T]`` token ids, ``ignore_index`` on positions that are not scored.
        ignore_index: label value of unscored positions.

    Returns:
        :class:`TokenLogProbs` of shape ``[B, L - 1]``.
    """
    batch, length = logits.shape[:2]
    labels = align_labels(labels, length, ignore_index)
    targets = labels[:, 1:]
    mask = targets != ignore_index
    padded = torch.cat([targets, targets.new_full((batch, 1), ignore_index)], dim=1)
    nll = F.cross_entropy(
        upcast(logits).flatten(0, 1), padded.flatten(), ignore_index=ignore_index, reduction="none"
    ).view(batch, length)
    return TokenLogProbs(nll[:, :-1].neg().masked_fill(~mask, 0.0), mask)


def _target_logp(head: Callable[[Tensor], Tensor], hidden: Tensor, targets: Tensor) -> Tensor:
    """``[n]`` log p(target) of ``n`` rows: the head's logits (upcast) and minus their cross-entropy."""
    return F.cross_entropy(upcast(head(hidden)), targets, reduction="none").neg()


def _cast(x: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``x`` in ``dtype`` as autocast casts it (fp64 is left alone)."""
    return x if x is None or x.dtype == torch.float64 else x.to(dtype)


class _LinearHeadTargetLogProbs(torch.autograd.Function):
    """``log p(target)`` of ``N`` rows through a linear LM head, ``chunk_size`` rows at a time, logits never kept.

    Forward: per chunk, ``z = h W^T + b`` (upcast), ``lse = logsumexp(z)`` and ``logp = z[target] - lse``; only
    ``lse`` (``[N]``) is kept. Backward, per chunk: ``z`` is recomputed, ``p = exp(z - lse)`` in place, and with the
    upstream gradient ``g``, ``dlogp/dz = g (onehot(target) - p)`` gives ``dh = dz W``, ``dW += dz^T h``
    (accumulated into one buffer in the weight's dtype, in place when the matmul runs in that dtype) and
    ``db += sum(dz)``. At most one chunk's ``[chunk_size, V]`` logits exist at a time (plus their copy in the
    compute dtype under autocast). ``compute_dtype`` is what the head's matmul runs in (autocast's dtype, else the
    weight's), as ``F.linear`` under the caller's autocast would.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        chunk_size: int,
        compute_dtype: torch.dtype,
    ) -> Tensor:
        """``[N]`` log-probs of ``targets`` (``[N]``) given ``hidden`` (``[N, H]``)."""
        with torch.autocast(hidden.device.type, enabled=False):
            h, w, b = _cast(hidden, compute_dtype), _cast(weight, compute_dtype), _cast(bias, compute_dtype)
            n_rows = h.shape[0]
            out_dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32
            values = torch.empty(n_rows, dtype=out_dtype, device=h.device)
            lse = torch.empty(n_rows, dtype=out_dtype, device=h.device)
            for start in range(0, n_rows, chunk_size):
                rows = slice(start, start + chunk_size)
                logits = upcast(F.linear(h[rows], w, b))
                picked = logits.gather(-1, targets[rows, None]).squeeze(-1)
                # logsumexp as torch.logsumexp computes it, in place (no second [chunk_size, V] buffer)
                top = logits.amax(-1)
                top = top.masked_fill(top.isinf(), 0.0)
                chunk_lse = logits.sub_(top[:, None]).exp_().sum(-1).log_().add_(top)
                lse[rows] = chunk_lse
                values[rows] = picked - chunk_lse
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size = chunk_size
        ctx.compute_dtype = compute_dtype
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        """Gradients with respect to ``hidden``, ``weight`` and ``bias``, chunk by chunk."""
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype = ctx.compute_dtype
        with torch.autocast(hidden.device.type, enabled=False):
            h, w, b = _cast(hidden, dtype), _cast(weight, dtype), _cast(bias, dtype)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros_like(weight) if need_w else None  # in the parameter's dtype, as autograd gives it
            grad_b = torch.zeros_like(bias) if need_b else None
            for start in range(0, h.shape[0], ctx.chunk_size):
                rows = slice(start, start + ctx.chunk_size)
                g = grad[rows].to(lse.dtype)
                dz = upcast(F.linear(h[rows], w, b))  # recomputed logits, turned into their gradient in place
                dz.sub_(lse[rows, None]).exp_().mul_(-g[:, None])  # -g p
                dz.scatter_add_(-1, targets[rows, None], g[:, None])  # + g onehot(target)
                if need_b:
                    grad_b += dz.sum(0)
                dz_c = dz.to(w.dtype)
                if need_h:
                    grad_h[rows] = dz_c @ w
                if need_w:
                    if dz_c.dtype == grad_w.dtype:
                        grad_w.addmm_(dz_c.T, h[rows])
                    else:
                        grad_w += dz_c.T @ h[rows]
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
            None,
        )


def _linear_head_logp(head: torch.nn.Linear, hidden: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
    """``[N]`` log p(target) through the linear ``head``, in :class:`_LinearHeadTargetLogProbs`."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device) and head.weight.dtype != torch.float64:
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = head.weight.dtype
    return _LinearHeadTargetLogProbs.apply(hidden, head.weight, head.bias, targets, chunk_size, dtype)


def chunked_token_logprobs(
    hidden: Tensor,
    head: Callable[[Tensor], Tensor],
    labels: Tensor,
    chunk_size: int,
    ignore_index: int = IGNORE_INDEX,
) -> TokenLogProbs:
    """:func:`token_logprobs` of ``head(hidden)`` without ever holding the logits of the whole batch.

    Same values and gradients as ``token_logprobs(head(hidden), labels)`` (within fp32 rounding), but the LM head
    and the cross-entropy run only on the hidden states of the target tokens (prompt and padding rows get no
    logits at all), ``chunk_size`` target tokens at a time, and each chunk's ``[chunk_size, V]`` logits are freed
    after the forward and recomputed in the backward (one more LM-head matmul per target token). Two paths:

    * ``head`` exactly a ``torch.nn.Linear``: one autograd function (:class:`_LinearHeadTargetLogProbs`) keeps only
      the ``[N]`` logsumexps; forward and backward each hold one chunk's logits at a time (about ``chunk_size * V``
      floats, turned in place into their gradient ``g (onehot(y) - softmax)``) and the weight gradient accumulates
      in place. Forward hooks of the Linear are not run (its weight is read directly).
    * any other callable (a wrapped or adapted head): each chunk is an activation checkpoint
      (:func:`torch.utils.checkpoint.checkpoint`, non-reentrant) around ``head`` and the cross-entropy: about
      ``3 * chunk_size * V`` floats at once (logits, log-softmax, gradient) plus one ``[V, H]`` weight gradient
      per chunk before autograd sums them.

    Args:
        hidden: ``[B, L, H]`` final hidden states; ``hidden[:, j]`` belongs to sequence position ``T - L + j``.
        head: the LM head, mapping ``[n, H]`` hidden states to ``[n, V]`` logits (called once per chunk, and again
            in the backward).
        labels: ``[B, T]`` token ids (``T >= L``), ``ignore_index`` on positions that are not scored.
        chunk_size: target tokens per chunk (> 0).
        ignore_index: label value of unscored positions.

    Returns:
        :class:`TokenLogProbs` of shape ``[B, L - 1]`` (fp32, or fp64 for fp64 logits), exactly 0 off the mask.

    Raises:
        ValueError: ``chunk_size`` is not a positive int, or a target lies before the ``L`` positions.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int (target tokens per chunk), got {chunk_size!r}")
    labels = align_labels(labels, hidden.shape[1], ignore_index)
    targets, mask = shift_labels(labels, ignore_index)
    rows = hidden[:, :-1][mask]  # [N, H], the target tokens' hidden states in row-major order
    picked = targets[mask]
    if type(head) is torch.nn.Linear:  # exactly a Linear: its forward is F.linear, the fused path applies
        values = _linear_head_logp(head, rows, picked, chunk_size)
    elif picked.numel() == 0:
        values = _target_logp(head, rows, picked)  # empty, but keeps the graph connected
    elif not torch.is_grad_enabled():
        values = torch.cat([_target_logp(head, h, t) for h, t in zip(rows.split(chunk_size), picked.split(chunk_size))])
    else:
        values = torch.cat(
            [
                checkpoint(_target_logp, head, h, t, use_reentrant=False)
                for h, t in zip(rows.split(chunk_size), picked.split(chunk_size))
            ]
        )
    return TokenLogProbs(values.new_zeros(mask.shape).masked_scatter(mask, values), mask)
