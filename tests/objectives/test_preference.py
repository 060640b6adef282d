"""IdkDPO and IdkNLL (issue 12): hand-computed values, and parity with open-unlearning's compute_dpo_loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baldro_pl.objectives import BalDRODV, BalDROG, Mean, TokenLogProbs, npo_loss, token_logprobs
from baldro_pl.objectives.preference import IdkDPO, IdkNLL, dpo_loss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_dpo_loss_hand_values_and_gradients() -> None:
    """beta = 0.5; chosen/rejected NLL (2, 3) and (4, 1) against references (3, 3) and (4, 2).

    Row 0: margin m = (3 - 2) - (3 - 3) = 1, loss = -(2/0.5) log sigmoid(0.5) = 4 log(1 + e^-0.5) = 1.896308.
    Row 1: m = (4 - 4) - (2 - 1) = -1, loss = 4 log(1 + e^0.5) = 3.896308.
    dl/dm = -2 sigmoid(-beta m); m falls by 1 per unit of chosen NLL and rises by 1 per unit of rejected NLL, so
    dl/d chosen = 2 sigmoid(-beta m) = (0.755081, 1.244919) and dl/d rejected = -(0.755081, 1.244919).
    """
    chosen = torch.tensor([2.0, 4.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([3.0, 1.0], dtype=torch.float64, requires_grad=True)
    ref_chosen = torch.tensor([3.0, 4.0], dtype=torch.float64)
    ref_rejected = torch.tensor([3.0, 2.0], dtype=torch.float64)
    losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    torch.testing.assert_close(losses, torch.tensor([1.896308, 3.896308], dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        losses.detach(), torch.tensor([4 * math.log1p(math.exp(-0.5)), 4 * math.log1p(math.exp(0.5))]).double()
    )
    losses.sum().backward()
    expected = torch.tensor([2 * _sigmoid(-0.5), 2 * _sigmoid(0.5)], dtype=torch.float64)
    torch.testing.assert_close(expected, torch.tensor([0.755081, 1.244919], dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(chosen.grad, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(rejected.grad, -expected, rtol=0, atol=1e-12)


def test_dpo_without_movement_is_2_over_beta_log_2_and_without_chosen_term_is_npo() -> None:
    nll = torch.tensor([5.0, 1.5])
    torch.testing.assert_close(dpo_loss(nll, nll, nll, nll, beta=0.1), torch.full((2,), 20 * math.log(2)))
    # chosen answer unmoved from the reference: DPO reduces to NPO on the rejected (original) answer
    rejected, ref_rejected = torch.tensor([7.0, 2.0]), torch.tensor([4.0, 3.0])
    torch.testing.assert_close(
        dpo_loss(nll, rejected, nll, ref_rejected, beta=0.7), npo_loss(rejected, ref_rejected, 0.7)
    )


# ------------------------------------------------------------------ open-unlearning, written out literally
def _reference_compute_batch_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """open-unlearning ``src/trainer/utils.py`` ``compute_batch_nll``, from logits instead of ``model(**inputs)``."""
    shifted_labels = labels[..., 1:].contiguous()
    logits = logits[..., :-1, :].contiguous()
    loss_function = nn.CrossEntropyLoss(ignore_index=-100, reduction="none")
    return loss_function(logits.transpose(-1, -2), shifted_labels).sum(dim=-1)


def _reference_compute_dpo_loss(win, win_ref, lose, lose_ref, beta):
    """open-unlearning ``compute_dpo_loss`` (``win`` = alternate, ``lose`` = original, as ``unlearn/dpo.py`` has it)."""
    win_loss = _reference_compute_batch_nll(*win)
    with torch.no_grad():
        win_ref_loss = _reference_compute_batch_nll(*win_ref)
    win_log_ratio = -(win_loss - win_ref_loss)
    lose_loss = _reference_compute_batch_nll(*lose)
    with torch.no_grad():
        lose_ref_loss = _reference_compute_batch_nll(*lose_ref)
    lose_log_ratio = -(lose_loss - lose_ref_loss)
    return -2 / beta * F.logsigmoid(beta * (win_log_ratio - lose_log_ratio)).mean()


def _labels(batch: int, length: int, vocab: int, answer_starts: list[int], ends: list[int]) -> torch.Tensor:
    labels = torch.randint(0, vocab, (batch, length))
    for row, (start, end) in enumerate(zip(answer_starts, ends, strict=True)):
        labels[row, :start] = -100  # prompt
        labels[row, end:] = -100  # right padding
    return labels


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.5])
def test_idkdpo_matches_open_unlearning_values_and_gradients(beta: float) -> None:
    gen = torch.Generator().manual_seed(7)
    B, V = 3, 11
    original = torch.randn(B, 9, V, dtype=torch.float64, generator=gen, requires_grad=True)
    alternate = torch.randn(B, 7, V, dtype=torch.float64, generator=gen, requires_grad=True)
    ref_original = torch.randn(B, 9, V, dtype=torch.float64, generator=gen)
    ref_alternate = torch.randn(B, 7, V, dtype=torch.float64, generator=gen)
    lose_labels = _labels(B, 9, V, [3, 2, 4], [9, 6, 8])
    win_labels = _labels(B, 7, V, [3, 2, 4], [6, 7, 5])

    expected = _reference_compute_dpo_loss(
        (alternate, win_labels), (ref_alternate, win_labels), (original, lose_labels), (ref_original, lose_labels), beta
    )
    grads_expected = torch.autograd.grad(expected, (original, alternate))

    policy, alt = token_logprobs(original, lose_labels), token_logprobs(alternate, win_labels)
    losses = IdkDPO(beta=beta)(
        policy,
        token_logprobs(ref_original, lose_labels).nll,
        alternate=alt,
        reference_alternate_nll=token_logprobs(ref_alternate, win_labels).nll,
    )
    ours = Mean()(losses).loss
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    for got, want in zip(torch.autograd.grad(ours, (original, alternate)), grads_expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # hardness: -avg NLL of the original (rejected) answers, detached
    torch.testing.assert_close(losses.hardness, -(policy.nll / policy.n_tokens).detach())
    assert not losses.hardness.requires_grad and losses.reduction == "sample"


def test_idkdpo_composes_with_baldro() -> None:
    policy = TokenLogProbs(
        torch.tensor([[-1.0, -1.0], [-3.0, 0.0], [-0.2, -0.2]]), torch.tensor([[1, 1], [1, 0], [1, 1]]).bool()
    )
    alt = TokenLogProbs(torch.tensor([[-2.0], [-0.5], [-4.0]]), torch.ones(3, 1, dtype=torch.bool))
    losses = IdkDPO(beta=1.0)(
        policy, torch.tensor([2.0, 3.0, 0.4]), alternate=alt, reference_alternate_nll=torch.tensor([2.0, 2.0, 2.0])
    )
    # margins: (2 - 2) - (2 - 2) = 0, (2 - 0.5) - (3 - 3) = 1.5, (2 - 4) - (0.4 - 0.4) = -2
    torch.testing.assert_close(losses.per_sample, -2 * F.logsigmoid(torch.tensor([0.0, 1.5, -2.0])))
    g = BalDROG(ratio=0.34)(losses)  # k = 1: the best remembered original answer (row 2, avg NLL 0.2)
    torch.testing.assert_close(g.weights, torch.tensor([0.0, 0.0, 1.0]))
    dv = BalDRODV(temperature=1.0)(losses)
    torch.testing.assert_close(dv.weights, torch.softmax(losses.per_sample, 0))


def test_idknll_hand_values() -> None:
    """Alternate token log-probs (-1, -2) and (-0.5): per token c = (1, 2) and (0.5); token mean 3.5 / 3 = 7/6."""
    policy = TokenLogProbs(
        torch.tensor([[-0.4, -0.2, -0.3], [-2.0, 0.0, 0.0]]), torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
    )
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    alt = TokenLogProbs(logp, torch.tensor([[True, True], [True, False]]))
    losses = IdkNLL()(policy, alternate=alt)
    assert losses.reduction == "token"
    torch.testing.assert_close(losses.per_token, torch.tensor([[1.0, 2.0], [0.5, 0.0]]))
    torch.testing.assert_close(losses.per_sample, torch.tensor([1.5, 0.5]))
    torch.testing.assert_close(losses.hardness, torch.tensor([-0.3, -2.0]))
    out = Mean()(losses)
    torch.testing.assert_close(out.loss, torch.tensor(7 / 6))
    torch.testing.assert_close(out.weights, torch.tensor([2 / 3, 1 / 3]))
    out.loss.backward()
    # the token mean of -logp: d/d logp = -1/3 on each of the 3 target tokens, 0 on padding
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 3, -1 / 3], [-1 / 3, 0.0]]))


def test_flags_and_bad_inputs() -> None:
    assert IdkDPO.needs_reference and IdkDPO.needs_alternate and IdkDPO.needs_reference_alternate
    assert IdkNLL.needs_alternate and not IdkNLL.needs_reference and not IdkNLL.needs_policy_grad
    with pytest.raises(ValueError, match="IdkDPO: beta must be > 0, got 0"):
        IdkDPO(beta=0)
    policy = TokenLogProbs(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="IdkNLL needs the alternate answers' log-probs"):
        IdkNLL()(policy)
    with pytest.raises(ValueError, match="IdkNLL: 1 alternate rows for 2 forget rows"):
        IdkNLL()(policy, alternate=TokenLogProbs(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)))
    with pytest.raises(ValueError, match="IdkDPO needs reference_nll"):
        IdkDPO()(policy, alternate=policy, reference_alternate_nll=torch.zeros(2))
    with pytest.raises(ValueError, match="IdkDPO needs reference_alternate_nll"):
        IdkDPO()(policy, torch.zeros(2), alternate=policy)
