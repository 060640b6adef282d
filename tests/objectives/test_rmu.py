"""RMU's losses (baldro_pl.objectives.representation) against hand-computed values and the published formula."""

from __future__ import annotations

import pytest
import torch

from baldro_pl.objectives import (
    NLL,
    NPO,
    RMU,
    BalDRODV,
    EmbedDiff,
    Mean,
    TokenLogProbs,
    UnlearningObjective,
    activation_mse,
    rmu_direction,
)


def _policy(labels: torch.Tensor) -> TokenLogProbs:
    mask = labels[:, 1:] != -100
    logp = torch.full(mask.shape, -1.0).masked_fill(~mask, 0.0)
    return TokenLogProbs(logp=logp, mask=mask)


def reference_activation_loss(activation1, activation2, mask):
    """open-unlearning's compute_activation_loss (src/trainer/unlearn/rmu.py), written out literally."""
    squared_diff = torch.nn.functional.mse_loss(activation1, activation2, reduction="none")
    expanded_mask = mask.unsqueeze(-1).expand_as(squared_diff)
    squared_diff_sum = (squared_diff * expanded_mask).mean(dim=2).sum(dim=(1))
    num_tokens = mask.sum(dim=-1, keepdim=True)
    return (squared_diff_sum / num_tokens).mean()


def test_activation_mse_by_hand() -> None:
    # sample 0: positions 0 and 1 scored, (0 + 4) / 2 over d=2 -> ((0+0)/2 + (4+0)/2) / 2 = 1
    # sample 1: one scored position (2, 3) vs (1, 1): (1 + 4) / 2 = 2.5
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 1.0], [9.0, 9.0]], [[5.0, 5.0], [2.0, 3.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [False, True, False]])
    assert torch.allclose(activation_mse(hidden, torch.ones(2), mask), torch.tensor([1.0, 2.5]))
    # a sample with no scored position gives 0, not NaN
    assert activation_mse(hidden, torch.ones(2), torch.zeros(2, 3, dtype=torch.bool)).tolist() == [0.0, 0.0]


def test_direction_is_the_references_uniform_vector_fixed_by_the_seed() -> None:
    direction = rmu_direction(16, 6.5, seed=3)
    torch.manual_seed(123)  # the global generator plays no part
    again = rmu_direction(16, 6.5, seed=3)
    assert torch.equal(direction, again)
    assert not torch.equal(direction, rmu_direction(16, 6.5, seed=4))
    # open-unlearning: random_vector = torch.rand(1, 1, dim); random_vector / torch.norm(random_vector) * coeff
    random_vector = torch.rand(1, 1, 16, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(direction, (random_vector / torch.norm(random_vector) * 6.5).flatten())
    assert abs(direction.norm().item() - 6.5) < 1e-5 and bool((direction >= 0).all())


def test_the_reference_batch_mean_broadcasts_over_token_counts() -> None:
    # compute_activation_loss divides [b] sums by [b, 1] counts: a [b, b] matrix, so its batch value is
    # mean_i(sum_i) * mean_j(1 / n_j), the mean of the per-sample means only when every n_j is the same
    hidden = torch.zeros(2, 3, 1)
    hidden[0, 0] = 2.0  # sample 0: one scored position, squared error 4 -> per-sample mean 4
    mask = torch.tensor([[True, False, False], [True, True, False]])  # sample 1: two positions, error 0
    assert torch.allclose(activation_mse(hidden, torch.zeros(1), mask), torch.tensor([4.0, 0.0]))
    assert reference_activation_loss(hidden, torch.zeros_like(hidden), mask).item() == pytest.approx(2.0 * 0.75)


def test_rmu_forget_loss_matches_the_published_formula() -> None:
    torch.manual_seed(0)
    # every sample with 2 scored positions, where the reference's batch mean is the mean of the per-sample means
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 4, 3, -100, -100], [-100, -100, -100, 9, 2]])
    hidden = torch.randn(3, 5, 8, requires_grad=True)
    loss = RMU(layer=0, steering_coeff=4.0, seed=1)
    losses = loss(_policy(labels), hidden=hidden, labels=labels)
    assert losses.reduction == "sample" and losses.per_token is None
    control_vec = loss.direction.view(1, 1, 8).expand_as(hidden)
    expected = reference_activation_loss(hidden, control_vec, labels != -100)
    objective = UnlearningObjective(loss, Mean(), alpha=0.0)
    out = objective(_policy(labels), forget_hidden=hidden, forget_labels=labels)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    (grad,) = torch.autograd.grad(out.loss, hidden)
    (expected_grad,) = torch.autograd.grad(expected, hidden)
    assert torch.allclose(grad, expected_grad, atol=1e-6)
    # per sample: the mean over the sample's own scored (unshifted) positions of ||h - c u||^2 / d
    for i in range(3):
        rows = hidden[i][labels[i] != -100]
        assert torch.allclose(losses.per_sample[i], ((rows - loss.direction) ** 2).mean(-1).mean(), atol=1e-6)
    assert torch.allclose(losses.hardness, torch.tensor([-1.0, -1.0, -1.0]))


def test_embed_diff_retain_loss_matches_the_published_formula() -> None:
    torch.manual_seed(1)
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, 4, 5]])
    hidden, frozen = torch.randn(2, 4, 6, requires_grad=True), torch.randn(2, 4, 6)
    value = EmbedDiff()(hidden, labels, frozen)
    assert torch.allclose(value, reference_activation_loss(hidden, frozen, labels != -100), atol=1e-6)
    # alpha * retain added to gamma * forget
    forget_labels = torch.tensor([[-100, 1, 2, 3]])
    forget_hidden = torch.randn(1, 4, 6)
    rmu = RMU(layer=0, steering_coeff=2.0)
    objective = UnlearningObjective(rmu, Mean(), EmbedDiff(), gamma=0.5, alpha=100.0)
    assert objective.needs_reference_model and objective.needs_retain_hidden and objective.hidden_layer == 0
    assert not objective.needs_reference_retain_logits
    out = objective(
        _policy(forget_labels),
        forget_hidden=forget_hidden,
        forget_labels=forget_labels,
        retain_hidden=hidden,
        retain_labels=labels,
        reference_retain_hidden=frozen,
    )
    forget = reference_activation_loss(forget_hidden, rmu.direction.expand_as(forget_hidden), forget_labels != -100)
    assert torch.allclose(out.loss, 0.5 * forget + 100.0 * value, atol=1e-5)


def test_baldro_weighs_rmu_per_sample_values() -> None:
    labels = torch.tensor([[-100, 1, 2], [-100, 3, 4]])
    hidden = torch.zeros(2, 3, 4)
    hidden[1] = 5.0  # sample 1 is far from the direction
    objective = UnlearningObjective(RMU(layer=0, steering_coeff=1.0), BalDRODV(), alpha=0.0)
    out = objective(_policy(labels), forget_hidden=hidden, forget_labels=labels)
    assert out.weights[1] > out.weights[0]


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"steering_coeff": 0.0}, "steering_coeff"),
        ({"steering_coeff": -3.0}, "steering_coeff"),
        ({"layer": -1}, "layer"),
        ({"layer": 1.5}, "layer"),
        ({"trainable": "model.*"}, "trainable"),
        ({"trainable": ["("]}, "trainable"),
    ],
)
def test_bad_rmu_settings_fail_at_construction(kwargs, setting) -> None:
    with pytest.raises(ValueError, match=setting):
        RMU(**kwargs)


def test_embed_diff_needs_a_forget_loss_with_a_layer() -> None:
    with pytest.raises(ValueError, match="retain_loss"):
        UnlearningObjective(NPO(), Mean(), EmbedDiff())
    UnlearningObjective(RMU(), Mean(), NLL())  # RMU with an NLL retain term (open-unlearning retain_loss_type NLL)
