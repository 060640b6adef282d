"""forward_logprobs_joint: several batches in one forward pass give what each batch gives alone."""

from __future__ import annotations

import copy

import pytest
import torch
from toy_task import random_side

from baldro_pl.forward import forward_logprobs, forward_logprobs_joint
from baldro_pl.labels import IGNORE_INDEX
from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import NLL, NPO, BalDRODV, BalDROG, SatImp
from baldro_pl.toy import tiny_llama

VOCAB = 97


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_llama(VOCAB).double()


def _side(seed: int, rows: int, length: int, prompt: tuple[int, int], answer: tuple[int, int]) -> dict:
    side = random_side(seed, vocab=VOCAB, rows=rows, length=length, prompt=prompt, answer=answer)
    return {k: v for k, v in side.items() if k != "index"}


def _alone(model, side, chunk_size=None):
    return forward_logprobs(model, side["input_ids"], side["attention_mask"], side["labels"], chunk_size=chunk_size)


def _no_targets(rows: int, length: int) -> dict:
    side = _side(9, rows, length, (2, 4), (1, 3))
    side["labels"] = torch.full_like(side["labels"], IGNORE_INDEX)
    return side


def _last_token_only(rows: int, length: int) -> dict:
    side = _side(10, rows, length, (2, 4), (1, 3))
    side["attention_mask"] = torch.ones_like(side["attention_mask"])
    side["labels"] = torch.full_like(side["labels"], IGNORE_INDEX)
    side["labels"][:, -1] = side["input_ids"][:, -1]
    return side


CASES = {
    # sides of different lengths and prompt lengths: the joint window starts at the earliest target of either
    "longer forget": lambda: [_side(1, 3, 20, (3, 8), (2, 10)), _side(2, 2, 12, (6, 9), (1, 3))],
    "longer retain": lambda: [_side(3, 2, 9, (5, 6), (1, 3)), _side(4, 4, 17, (1, 3), (4, 12))],
    "equal": lambda: [_side(5, 2, 16, (2, 5), (3, 9)), _side(6, 2, 16, (2, 5), (3, 9))],
    "three sides": lambda: [
        _side(7, 1, 11, (2, 3), (2, 6)),
        _side(8, 3, 14, (4, 9), (1, 4)),
        _side(11, 2, 6, (1, 2), (1, 3)),
    ],
    # sides whose columns the joint pass never scores: zeros and False, in the shape a call alone returns
    "a side without targets": lambda: [_side(12, 2, 15, (5, 8), (2, 6)), _no_targets(2, 10)],
    "a side scoring only its last token": lambda: [_side(13, 2, 18, (2, 3), (2, 8)), _last_token_only(2, 6)],
}


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_each_side_gets_what_it_gets_alone(model, case: str, chunk_size: int | None) -> None:
    sides = CASES[case]()
    joint = forward_logprobs_joint(model, sides, chunk_size=chunk_size)
    assert len(joint) == len(sides)
    for side, got in zip(sides, joint):
        alone = _alone(model, side, chunk_size)
        assert got.logp.shape == alone.logp.shape and torch.equal(got.mask, alone.mask)
        torch.testing.assert_close(got.logp, alone.logp, rtol=1e-12, atol=1e-12)
        assert bool((got.logp[~got.mask] == 0).all())


def test_gradients_are_those_of_the_separate_passes(model) -> None:
    sides = CASES["longer retain"]()
    grads = []
    for joint in (True, False):
        m = copy.deepcopy(model)
        lps = forward_logprobs_joint(m, sides) if joint else [_alone(m, side) for side in sides]
        (lps[0].nll.sum() * 0.7 - lps[1].logp.exp().sum() * 0.3).backward()
        grads.append({name: p.grad.clone() for name, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, value in grads[0].items():
        torch.testing.assert_close(value, grads[1][name], rtol=1e-10, atol=1e-12, msg=name)


# ------------------------------------------------------------------ in the unlearning step
def _step(joint: bool, forget_loss, aggregator, monkeypatch) -> tuple[float, dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    module = UnlearningModule(tiny_llama(VOCAB), forget_loss, aggregator, NLL(), gamma=1.0, alpha=0.5)
    module.configure_model()
    batch = {
        "forget": random_side(21, vocab=VOCAB, rows=6, length=24, prompt=(3, 9), answer=(2, 14)),
        "retain": random_side(22, vocab=VOCAB, rows=6, length=19, prompt=(5, 7), answer=(3, 12)),
    }
    module.reference_cache.build(module.model, [batch["forget"]], torch.device("cpu"))
    if not joint:
        monkeypatch.setattr(UnlearningModule, "_joins_forget_and_retain", lambda self: False)
    calls = []
    hook = module.model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(torch.is_grad_enabled()), with_kwargs=True
    )
    try:
        out, _ = module.compute_step(batch)
        out.loss.backward()
    finally:
        hook.remove()
        monkeypatch.undo()
    grads = {name: p.grad.clone() for name, p in module.model.named_parameters() if p.grad is not None}
    return out.loss.item(), grads, calls.count(True)


@pytest.mark.parametrize(
    "objective",
    [
        pytest.param(lambda: (NPO(beta=0.5), BalDRODV(temperature=1.0)), id="npo-dv"),
        pytest.param(lambda: (SatImp(beta1=5.0, beta2=1.0), BalDRODV(temperature=1.0, unit="token")), id="satimp-dv"),
        pytest.param(lambda: (NPO(beta=0.5), BalDROG(ratio=0.5, seed=0)), id="npo-g-two-passes"),
    ],
)
def test_the_step_runs_one_gradient_pass_with_the_loss_and_gradients_of_two(objective, monkeypatch) -> None:
    loss, grads, passes = _step(True, *objective(), monkeypatch)
    separate_loss, separate_grads, separate_passes = _step(False, *objective(), monkeypatch)
    assert (passes, separate_passes) == (1, 2)
    assert loss == pytest.approx(separate_loss, rel=1e-6, abs=1e-7)
    assert grads.keys() == separate_grads.keys() and grads
    for name, value in grads.items():
        torch.testing.assert_close(value, separate_grads[name], rtol=1e-5, atol=1e-6, msg=name)
