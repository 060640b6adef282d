"""The lean target log-probs: ``token_logprobs`` through the fused cross-entropy, and ``chunked_token_logprobs``.

Both are checked against the formula they replace, written out here: ``log p(y) = logits[y] - logsumexp(logits)``
on the shifted, fp32-upcast logits, 0 off the target mask.
"""

from __future__ import annotations

import pytest
import torch

from baldro_pl.labels import IGNORE_INDEX
from baldro_pl.objectives.logprobs import chunked_token_logprobs, token_logprobs


def gather_minus_logsumexp(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The former ``token_logprobs``: ``[B, T-1]`` gather minus logsumexp over the upcast logits, 0 off the mask."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logits = logits[:, :-1]
    logits = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    picked = logits.gather(-1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return (picked - torch.logsumexp(logits, dim=-1)).masked_fill(~mask, 0.0)


def _labels(batch: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """Random targets with ragged prompts (first 2-5 positions masked), right padding, and one row without any."""
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    for row in range(batch):
        prompt = 2 + row % 4
        end = length - (row * 3) % 7
        labels[row, :prompt] = IGNORE_INDEX
        labels[row, end:] = IGNORE_INDEX
    labels[1] = IGNORE_INDEX  # a row with no target token
    return labels


def _values_and_grad(fn, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor):
    x = logits.detach().clone().requires_grad_()
    logp = fn(x, labels)
    (grad,) = torch.autograd.grad((logp * weights).sum(), x)
    return logp.detach(), grad


def test_token_logprobs_equals_gather_minus_logsumexp_in_fp64() -> None:
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(4, 17, 50, generator=g, dtype=torch.float64)
    labels = _labels(4, 17, 50, g)
    weights = torch.randn(4, 16, generator=g, dtype=torch.float64)
    new, new_grad = _values_and_grad(lambda x, y: token_logprobs(x, y).logp, logits, labels, weights)
    old, old_grad = _values_and_grad(gather_minus_logsumexp, logits, labels, weights)
    assert new.dtype == torch.float64
    torch.testing.assert_close(new, old, rtol=0, atol=1e-12)
    torch.testing.assert_close(new_grad, old_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_matches_the_old_formula_in_fp32(dtype: torch.dtype) -> None:
    """Llama-2-sized vocabulary: values within 1e-6 relative (fp32 rounding: both sit ~1 ulp from fp64) and the
    gradient within 1e-6; the error against the fp64 value is no larger than the old formula's."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 40, 32000, generator=g).to(dtype)
    labels = _labels(2, 40, 32000, g)
    weights = torch.randn(2, 39, generator=g)
    new, new_grad = _values_and_grad(lambda x, y: token_logprobs(x, y).logp, logits, labels, weights)
    old, old_grad = _values_and_grad(gather_minus_logsumexp, logits, labels, weights)
    assert new.dtype == torch.float32
    torch.testing.assert_close(new, old, rtol=1e-6, atol=0)
    torch.testing.assert_close(new_grad, old_grad, rtol=0, atol=1e-6)
    exact = gather_minus_logsumexp(logits.double(), labels)
    assert (new.double() - exact).abs().max() <= (old.double() - exact).abs().max() + 1e-6
    assert (new.double() - exact).abs().max() < 2e-6


def test_token_logprobs_exact_zero_off_the_mask_and_keeps_the_alignment_check() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 9, 11, generator=g, requires_grad=True)
    labels = _labels(3, 9, 11, g)
    lp = token_logprobs(logits, labels)
    assert lp.mask.tolist() == (labels[:, 1:] != IGNORE_INDEX).tolist()
    off = lp.logp[~lp.mask]
    assert off.numel() > 0 and bool((off == 0).all()) and not bool(torch.signbit(off).any())  # +0.0, not -0.0
    assert bool((lp.logp[lp.mask] < 0).all())
    lp.logp.sum().backward()
    assert bool((logits.grad[1] == 0).all())  # the row without targets gets no gradient
    trimmed = token_logprobs(logits[:, 1:], labels)  # the first target of the batch sits at position 2
    torch.testing.assert_close(trimmed.logp, lp.logp[:, 1:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="truncated before a target"):
        token_logprobs(logits[:, 2:], labels)


class _Head(torch.nn.Module):
    """A linear LM head with a bias, counting the rows it is called on (to see what is computed)."""

    def __init__(self, hidden: int, vocab: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden, vocab, dtype=dtype)
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[1])
        return self.linear(x)


def _head(hidden: int, vocab: int, dtype: torch.dtype, fused: bool) -> torch.nn.Module:
    """A plain ``nn.Linear`` (the fused path) or the counting wrapper around one (the per-chunk checkpoint path)."""
    return torch.nn.Linear(hidden, vocab, dtype=dtype) if fused else _Head(hidden, vocab, dtype)


def _linear(head: torch.nn.Module) -> torch.nn.Linear:
    return head if isinstance(head, torch.nn.Linear) else head.linear


def _head_grads(
    head: torch.nn.Module, hidden: torch.Tensor, logp: torch.Tensor, weights: torch.Tensor
) -> list[torch.Tensor]:
    linear = _linear(head)
    return list(torch.autograd.grad((logp * weights).sum(), [hidden, linear.weight, linear.bias]))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "checkpoint"])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 31, 1000])
def test_chunked_equals_full_logits_values_and_gradients(chunk_size: int, fused: bool) -> None:
    """fp64 so that only the formula is compared: 31 target tokens, chunk sizes that do and do not divide it;
    gradients with respect to the hidden states and the head's weight and bias."""
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    head = _head(8, 23, torch.float64, fused)
    hidden = torch.randn(4, 12, 8, generator=g, dtype=torch.float64, requires_grad=True)
    labels = _labels(4, 12, 23, g)
    n_targets = int((labels[:, 1:] != IGNORE_INDEX).sum())
    weights = torch.randn(4, 11, generator=g, dtype=torch.float64)
    full = token_logprobs(head(hidden), labels)
    full_grads = _head_grads(head, hidden, full.logp, weights)
    if not fused:
        head.rows.clear()
    lean = chunked_token_logprobs(hidden, head, labels, chunk_size)
    lean_grads = _head_grads(head, hidden, lean.logp, weights)
    assert torch.equal(lean.mask, full.mask) and lean.logp.dtype == torch.float64
    torch.testing.assert_close(lean.logp, full.logp, rtol=0, atol=1e-12)
    assert bool((lean.logp[~lean.mask] == 0).all())
    for got, want in zip(lean_grads, full_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    if not fused:  # forward: each target row once, in chunks; backward: each chunk recomputed once
        forward_rows = [min(chunk_size, n_targets - s) for s in range(0, n_targets, chunk_size)]
        assert sorted(head.rows) == sorted(forward_rows * 2)


def test_fused_path_with_a_frozen_head_and_without_bias() -> None:
    g = torch.Generator().manual_seed(7)
    head = torch.nn.Linear(6, 29, bias=False, dtype=torch.float64).requires_grad_(False)
    hidden = torch.randn(3, 9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    labels = _labels(3, 9, 29, g)
    weights = torch.randn(3, 8, generator=g, dtype=torch.float64)
    full = token_logprobs(head(hidden), labels)
    lean = chunked_token_logprobs(hidden, head, labels, 5)
    (want,) = torch.autograd.grad((full.logp * weights).sum(), hidden)
    (got,) = torch.autograd.grad((lean.logp * weights).sum(), hidden)
    torch.testing.assert_close(lean.logp, full.logp, rtol=0, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["autocast", "bf16_weights"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "checkpoint"])
def test_chunked_in_bf16(fused: bool, mode: str) -> None:
    """Under bf16 autocast, or with bf16 weights, the head runs in bf16 on every path: the same bf16 logits, so the
    same log-probs (fp32) and hidden-state gradient; the weight and bias gradients differ by bf16 rounding (summed
    over chunks, or in one matmul)."""
    torch.manual_seed(8)
    dtype = torch.bfloat16 if mode == "bf16_weights" else torch.float32
    head = _head(16, 300, dtype, fused)
    hidden = torch.randn(3, 20, 16, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 300, (3, 20))
    labels[:, :4] = IGNORE_INDEX
    weights = torch.randn(3, 19)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
        full = token_logprobs(head(hidden), labels)
        lean = chunked_token_logprobs(hidden, head, labels, 7)
    assert lean.logp.dtype == torch.float32
    torch.testing.assert_close(lean.logp, full.logp, rtol=0, atol=1e-6)
    full_grads = _head_grads(head, hidden, full.logp, weights)
    lean_grads = _head_grads(head, hidden, lean.logp, weights)
    assert [g.dtype for g in lean_grads] == [dtype] * 3
    torch.testing.assert_close(lean_grads[0], full_grads[0], rtol=0, atol=1e-6)
    for got, want in zip(lean_grads[1:], full_grads[1:]):
        torch.testing.assert_close(got, want, rtol=2**-6, atol=2**-6)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "checkpoint"])
def test_chunked_without_grad_and_from_trimmed_hidden_states(fused: bool) -> None:
    g = torch.Generator().manual_seed(5)
    head = _head(6, 13, torch.float32, fused)
    hidden = torch.randn(3, 10, 6, generator=g)
    labels = _labels(3, 10, 13, g)
    full = token_logprobs(head(hidden), labels)
    with torch.no_grad():
        lean = chunked_token_logprobs(hidden, head, labels, 3)
    assert lean.logp.dtype == torch.float32 and not lean.logp.requires_grad
    torch.testing.assert_close(lean.logp, full.logp, rtol=0, atol=1e-6)
    trimmed = chunked_token_logprobs(hidden[:, 1:], head, labels, 3)  # the first target of the batch sits at 2
    torch.testing.assert_close(trimmed.logp, full.logp[:, 1:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="truncated before a target"):
        chunked_token_logprobs(hidden[:, 2:], head, labels, 3)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "checkpoint"])
def test_chunked_batch_without_targets_gives_zeros_and_zero_gradient(fused: bool) -> None:
    head = _head(5, 7, torch.float32, fused)
    hidden = torch.randn(2, 6, 5, requires_grad=True)
    labels = torch.full((2, 6), IGNORE_INDEX)
    lean = chunked_token_logprobs(hidden, head, labels, 4)
    assert lean.logp.shape == (2, 5) and not bool(lean.mask.any()) and bool((lean.logp == 0).all())
    lean.logp.sum().backward()
    assert bool((hidden.grad == 0).all()) and bool((_linear(head).weight.grad == 0).all())


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "checkpoint"])
def test_chunked_forward_saves_no_logits_for_the_backward(fused: bool) -> None:
    """The full path keeps ``[B, L, V]`` (its log-softmax) for the backward; the chunked paths keep nothing as
    large as one chunk's logits (the hidden states, the head's weight and, fused, ``[N]`` logsumexps)."""
    vocab, hidden_size, chunk_size = 1000, 4, 8
    g = torch.Generator().manual_seed(6)
    head = _head(hidden_size, vocab, torch.float32, fused)
    hidden = torch.randn(4, 20, hidden_size, generator=g, requires_grad=True)
    labels = _labels(4, 20, vocab, g)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logprobs(head(hidden), labels)
    assert max(saved) >= 4 * 19 * vocab  # the full path: the whole [B, L, V] log-softmax
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_token_logprobs(hidden, head, labels, chunk_size)
    assert 0 < max(saved) < chunk_size * vocab


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "8", None])
def test_chunked_refuses_a_bad_chunk_size(bad: object) -> None:
    head = _Head(4, 5, torch.float32)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        chunked_token_logprobs(torch.randn(1, 3, 4), head, torch.tensor([[-100, 1, 2]]), bad)  # type: ignore[arg-type]
