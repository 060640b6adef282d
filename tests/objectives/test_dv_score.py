"""BalDRO-DV's ``score``: what its weights are a softmax of (the base loss, or the per-token NLL as BalDRO-G).

Hand-made batches throughout. The batch of :func:`_batch` has per-token average NLLs 0.3, 2.0 and 0.9, so its
hardness ``-avg NLL`` is ``[-0.3, -2.0, -0.9]``: sample 0 is the best remembered, sample 1 the most forgotten.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from baldro_pl.objectives import NPO, WGA, BalDRODV, ForgetLosses, GradAscent, SatImp, SimNPO, TokenLogProbs
from baldro_pl.objectives.forget import satimp_token_loss, wga_token_loss

REFERENCE_NLL = torch.tensor([0.5, 2.0, 0.9])  # summed NLL before unlearning; NPO(beta=1) losses 1.2888, 0.0363, 1.3863


def _batch(requires_grad: bool = False) -> TokenLogProbs:
    logp = torch.tensor([[-0.2, -0.4, 0.0], [-1.0, -2.0, -3.0], [-0.9, 0.0, 0.0]], requires_grad=requires_grad)
    mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    return TokenLogProbs(logp, mask)


@pytest.mark.parametrize(
    ("emphasis", "expected"),
    [
        # softmax([-0.3, -2.0, -0.9] / 0.5): exp(-0.6), exp(-4), exp(-1.8) over their sum 0.732427
        ("hard", [0.749306, 0.025007, 0.225687]),
        # softmax([0.3, 2.0, 0.9] / 0.5): exp(0.6), exp(4), exp(1.8) over their sum 62.469917
        ("easy", [0.029168, 0.873991, 0.096841]),
    ],
)
def test_nll_score_weights_are_a_softmax_of_hardness(emphasis: str, expected: list[float]) -> None:
    losses = NPO(beta=1.0)(_batch(), REFERENCE_NLL)
    torch.testing.assert_close(losses.hardness, torch.tensor([-0.3, -2.0, -0.9]))
    out = BalDRODV(temperature=0.5, emphasis=emphasis, score="nll")(losses)
    torch.testing.assert_close(out.weights, torch.tensor(expected), rtol=0, atol=2e-6)
    # the loss is the weighted sum of the base losses (NPO, beta 1: -2 log sigmoid(NLL_i - ref_i))
    npo = [-2.0 * math.log(1.0 / (1.0 + math.exp(-(n - r)))) for n, r in [(0.6, 0.5), (6.0, 2.0), (0.9, 0.9)]]
    assert npo == pytest.approx([1.288793, 0.036300, 1.386294], abs=1e-6)
    assert out.loss.item() == pytest.approx(sum(w * v for w, v in zip(expected, npo, strict=True)), abs=1e-5)
    assert out.loss.dtype == torch.float32


def test_nll_score_gradient_flows_only_through_the_base_loss() -> None:
    # on a hand-made ForgetLosses whose hardness *could* carry a gradient: the aggregator must cut it
    per_sample = torch.tensor([1.0, -0.5, 2.0], requires_grad=True)
    hardness = torch.tensor([-0.3, -2.0, -0.9], requires_grad=True)
    losses = ForgetLosses(per_sample, None, torch.ones(3, 1, dtype=torch.bool), "sample", hardness)
    out = BalDRODV(temperature=0.5, score="nll")(losses)
    out.loss.backward()
    torch.testing.assert_close(per_sample.grad, out.weights)  # d loss / d l_i = w_i
    torch.testing.assert_close(per_sample.grad, torch.tensor([0.749306, 0.025007, 0.225687]), rtol=0, atol=2e-6)
    assert hardness.grad is None  # no path through the NLL the weights come from
    assert not out.weights.requires_grad

    # through a real base loss: the gradient wrt the log-probs is sum_i w_i grad l_i with w held constant
    batch = _batch(requires_grad=True)
    out = BalDRODV(temperature=0.5, score="nll")(NPO(beta=1.0)(batch, REFERENCE_NLL))
    (grad,) = torch.autograd.grad(out.loss, batch.logp)
    twin = _batch(requires_grad=True)
    frozen = torch.tensor([0.749306, 0.025007, 0.225687])
    (expected,) = torch.autograd.grad((frozen * NPO(beta=1.0)(twin, REFERENCE_NLL).per_sample).sum(), twin.logp)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
    # ... and not the gradient of the same sum with live weights softmax(-avg / tau)
    live = _batch(requires_grad=True)
    live_weights = torch.softmax(-(live.nll / live.n_tokens) / 0.5, 0)
    (through_weights,) = torch.autograd.grad(
        (live_weights * NPO(beta=1.0)(live, REFERENCE_NLL).per_sample).sum(), live.logp
    )
    assert not torch.allclose(grad, through_weights, atol=1e-3)


def test_nll_score_satimp_hard_weighs_the_lowest_nll_sample_most() -> None:
    # three samples of two tokens: still predicted (p = 0.99), half-way (p = 0.7), forgotten (p = 0.05)
    p = torch.tensor([0.99, 0.7, 0.05])
    logp = p.log()[:, None].expand(3, 2).clone()
    losses = SatImp(beta1=5.0, beta2=1.0)(TokenLogProbs(logp, torch.ones(3, 2, dtype=torch.bool)))
    # SatImp's loss is non-monotone: about 0 at both ends, lowest half-way
    torch.testing.assert_close(losses.per_sample, satimp_token_loss(-p.log(), 5.0, 1.0))
    assert losses.per_sample[1] < losses.per_sample[0] < 0 and losses.per_sample[1] < losses.per_sample[2] <= 0
    hard = BalDRODV(temperature=0.1, score="nll")(losses).weights
    assert hard.argmax().item() == 0 and hard.argmin().item() == 2  # remembered most, forgotten least
    assert (hard[0] > hard[1] > hard[2]).item()
    easy = BalDRODV(temperature=0.1, emphasis="easy", score="nll")(losses).weights
    assert easy.argmax().item() == 2
    # what score="loss" does instead: "hard" weighs both ends alike, "easy" the middle
    by_loss = BalDRODV(temperature=0.1, score="loss")(losses).weights
    assert by_loss[0].item() == pytest.approx(by_loss[2].item(), rel=2e-3)
    assert by_loss.argmin().item() == 1
    assert BalDRODV(temperature=0.1, emphasis="easy")(losses).weights.argmax().item() == 1
    # at tau = 1 SatImp's DV weights stay within 2% of uniform (its token loss lies in [-0.018, 0])
    at_one = BalDRODV(temperature=1.0, emphasis="easy", score="loss")(losses).weights
    assert (at_one * 3 - 1).abs().max().item() < 0.02


def test_satimp_and_wga_token_losses_are_non_monotone() -> None:
    """The numbers the BalDRODV docstring quotes."""
    p = torch.linspace(1e-6, 1 - 1e-9, 200_001, dtype=torch.float64)
    satimp = satimp_token_loss(-p.log(), 5.0, 1.0)
    assert satimp.min().item() == pytest.approx(-0.0180, abs=1e-4)
    assert p[satimp.argmin()].item() == pytest.approx(0.694, abs=1e-3)
    assert abs(satimp[0].item()) < 1e-20 and abs(satimp[-1].item()) < 1e-12
    assert math.exp(-satimp.min().item()) < 1.02  # the largest weight ratio at tau 1
    for beta in (0.5, 1.0, 2.0):
        c = torch.linspace(0, 20, 400_001, dtype=torch.float64)
        wga = wga_token_loss(c, beta)
        assert c[wga.argmin()].item() == pytest.approx(1 / beta, abs=1e-3)
        assert wga.min().item() == pytest.approx(-1 / (math.e * beta), rel=1e-6)


def test_gradascent_loss_score_equals_nll_score() -> None:
    """GradAscent's per-sample loss is -avg NLL = the hardness: both scores give the same weights and gradient."""
    grads = {}
    for score in ("loss", "nll"):
        batch = _batch(requires_grad=True)
        out = BalDRODV(temperature=0.5, score=score)(GradAscent()(batch))
        (grads[score],) = torch.autograd.grad(out.loss, batch.logp)
        torch.testing.assert_close(out.weights, torch.tensor([0.749306, 0.025007, 0.225687]), rtol=0, atol=2e-6)
    torch.testing.assert_close(grads["loss"], grads["nll"])


def test_npo_loss_score_is_uniform_at_the_start_and_ranks_by_the_summed_rise() -> None:
    batch = _batch()
    at_start = BalDRODV(temperature=1.0)(NPO(beta=0.1)(batch, batch.nll))
    torch.testing.assert_close(at_start.weights, torch.full((3,), 1 / 3))
    # same per-token rise (0.5 nats): the 3-token sample's summed rise is three times the 1-token one's, so
    # score="loss", hard, weighs the 1-token sample (2) most, while score="nll" weighs the lowest avg NLL (0) most
    rise = 0.5 * batch.n_tokens
    losses = NPO(beta=0.1)(batch, batch.nll - rise)
    by_loss = BalDRODV(temperature=0.1)(losses).weights
    assert by_loss.argmax().item() == 2 and by_loss.argmin().item() == 1
    assert BalDRODV(temperature=0.1, score="nll")(losses).weights.argmax().item() == 0


def test_simnpo_loss_score_ranks_like_nll_within_a_narrow_range() -> None:
    losses = SimNPO(beta=4.5)(_batch())
    by_loss = BalDRODV(temperature=1.0)(losses).weights
    by_nll = BalDRODV(temperature=1.0, score="nll")(losses).weights
    assert torch.equal(by_loss.argsort(), by_nll.argsort())
    assert (by_loss.max() / by_loss.min()).item() < math.exp(2 * math.log(2) / 4.5)  # < 1.36


def test_nll_score_leaves_samples_without_targets_out() -> None:
    logp = torch.tensor([[-0.5, -0.5], [0.0, 0.0], [-2.0, 0.0]])
    mask = torch.tensor([[True, True], [False, False], [True, False]])
    out = BalDRODV(temperature=1.0, score="nll")(WGA(beta=1.0)(TokenLogProbs(logp, mask)))
    assert out.weights[1].item() == 0.0
    torch.testing.assert_close(out.weights[[0, 2]], torch.softmax(torch.tensor([-0.5, -2.0]), 0))
    empty = BalDRODV(score="nll")(WGA()(TokenLogProbs(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool))))
    torch.testing.assert_close(empty.weights, torch.full((2,), 0.5))
    assert torch.isfinite(empty.loss)


def test_score_validation_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"score must be 'loss' or 'nll', got 'avg_nll'"):
        BalDRODV(score="avg_nll")
    with pytest.raises(ValueError, match=r"score='nll' .* needs unit='sample', got unit='token'"):
        BalDRODV(score="nll", unit="token")
    assert BalDRODV().score == "loss"


def test_score_is_in_the_repr_and_survives_a_checkpoint() -> None:
    dv = BalDRODV(temperature=0.5, score="nll")
    assert repr(dv) == "BalDRODV(temperature=0.5, emphasis='hard', unit='sample', score='nll')"
    buffer = io.BytesIO()
    torch.save({"aggregator": dv}, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)["aggregator"]
    assert (restored.score, restored.temperature) == ("nll", 0.5)
    # an aggregator saved before `score` existed loads as the paper's DV over the loss
    old = BalDRODV(temperature=2.0)
    del old.__dict__["score"]
    buffer = io.BytesIO()
    torch.save({"aggregator": old}, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)["aggregator"]
    assert restored.score == "loss"
    assert restored(
        ForgetLosses(torch.tensor([1.0, 2.0]), None, torch.ones(2, 1, dtype=torch.bool), "sample", torch.zeros(2))
    ).loss.item() == pytest.approx(2.0 * math.log((math.e**0.5 + math.e) / 2))
