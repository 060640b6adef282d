"""The ``scope`` option of BalDRO-DV and BalDRO-G in one process (the two-process parity: tests/distributed).

Without a process group (or with one process) ``scope="global"`` must be ``scope="device"`` exactly: same loss, same
weights, same gradient, same retain rows. Also: the default, the error on a bad value, old pickles and the split of
BalDRO-G's retain rows over processes.
"""

from __future__ import annotations

import pickle

import pytest
import torch

import baldro_pl.objectives.aggregators as aggregators
from baldro_pl.objectives import NPO, BalDRODV, BalDROG, GradAscent, SatImp, TokenLogProbs
from baldro_pl.objectives.aggregators import gather_global

REFERENCE_NLL = torch.tensor([0.5, 2.0, 0.9, 1.1])


def _policy() -> TokenLogProbs:
    logp = torch.tensor(
        [[-0.2, -0.4, 0.0], [-1.0, -2.0, -3.0], [-0.9, 0.0, 0.0], [-0.1, -0.7, -0.3]], requires_grad=True
    )
    mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False], [True, True, True]])
    return TokenLogProbs(logp, mask)


CASES = [
    (NPO(beta=1.0), dict(cls=BalDRODV, temperature=0.5)),
    (NPO(beta=1.0), dict(cls=BalDRODV, temperature=0.5, emphasis="easy")),
    (NPO(beta=1.0), dict(cls=BalDRODV, temperature=0.5, score="nll")),
    (SatImp(), dict(cls=BalDRODV, temperature=0.01, unit="token")),
    (NPO(beta=1.0), dict(cls=BalDROG, ratio=0.5)),
    (GradAscent(), dict(cls=BalDROG, ratio=0.5)),  # a token-level loss: the token mean over the kept samples
]


@pytest.mark.parametrize(("forget_loss", "spec"), CASES)
def test_global_scope_without_a_process_group_is_device_scope(forget_loss, spec) -> None:
    spec = dict(spec)
    cls = spec.pop("cls")
    results = []
    for scope in ("device", "global"):
        policy = _policy()
        losses = forget_loss(policy, REFERENCE_NLL)
        assert gather_global(losses) is None
        out = cls(**spec, scope=scope)(losses)
        out.loss.backward()
        results.append((out.loss.detach(), out.weights, policy.logp.grad))
    (device_loss, device_w, device_g), (global_loss, global_w, global_g) = results
    assert torch.equal(global_loss, device_loss) and torch.equal(global_w, device_w)
    assert torch.equal(global_g, device_g) and device_g.abs().sum() > 0


def test_scope_default_is_global_and_a_bad_scope_is_refused() -> None:
    assert BalDRODV().scope == "global" and BalDROG().scope == "global"
    with pytest.raises(ValueError, match=r"^BalDRODV: scope must be 'device' or 'global', got 'gpu'$"):
        BalDRODV(scope="gpu")
    with pytest.raises(ValueError, match=r"^BalDROG: scope must be 'device' or 'global', got None$"):
        BalDROG(scope=None)
    assert repr(BalDROG(scope="device")) == "BalDROG(ratio=0.5, subsample_retain=True, seed=None, scope='device')"
    assert repr(BalDRODV(scope="device")).endswith("score='loss', scope='device')")
    assert "scope" not in repr(BalDRODV()) + repr(BalDROG())  # the default is not spelled out


def test_pickles_from_before_the_option_keep_per_process_aggregation() -> None:
    for aggregator in (BalDRODV(temperature=2.0), BalDROG(ratio=0.25, seed=3)):
        state = aggregator.__getstate__() if hasattr(aggregator, "__getstate__") else dict(vars(aggregator))
        state = {k: v for k, v in dict(state).items() if k != "scope"}
        old = type(aggregator).__new__(type(aggregator))
        old.__setstate__(state)
        assert old.scope == "device"
        assert pickle.loads(pickle.dumps(aggregator)).scope == "global"


@pytest.mark.parametrize(
    ("ratio", "n_forget", "world", "shares"),
    [(0.5, 4, 2, [2, 2]), (0.5, 3, 2, [2, 1]), (0.25, 5, 4, [2, 1, 1, 1])],
)
def test_retain_shares_split_the_global_k_over_processes(ratio, n_forget, world, shares) -> None:
    aggregator = BalDROG(ratio=ratio)
    assert [aggregator.retain_share(n_forget, r, world) for r in range(world)] == shares
    assert sum(shares) == max(1, int(ratio * world * n_forget))


def test_every_process_keeps_a_retain_row_when_the_global_k_is_smaller_than_the_world() -> None:
    assert [BalDROG(ratio=0.1).retain_share(2, r, 4) for r in range(4)] == [1, 1, 1, 1]  # k = 1 < 4 processes


def test_retain_rows_follow_the_scope_under_a_process_group(monkeypatch) -> None:
    # rank 1 of 2 with 3 forget rows and 8 retain rows at ratio 0.5: global k = 3, rank 1's share is 1; device k = 1
    monkeypatch.setattr(aggregators, "rank_world", lambda: (1, 2))
    assert BalDROG(ratio=0.5, seed=0).retain_rows(3, 8).numel() == 1
    monkeypatch.setattr(aggregators, "rank_world", lambda: (0, 2))
    assert BalDROG(ratio=0.5, seed=0).retain_rows(3, 8).numel() == 2  # rank 0: 3 // 2 + 1
    assert BalDROG(ratio=0.5, seed=0, scope="device").retain_rows(3, 8).numel() == 1
    assert BalDROG(ratio=0.5, seed=0).retain_rows(3, 1).numel() == 1  # never more than the retain batch
    # the rows themselves are the seeded draw of the device scope, only fewer or more of them
    rows = BalDROG(ratio=0.5, seed=0).retain_rows(3, 8, step=5)
    assert rows.tolist() == BalDROG(ratio=0.5, seed=0, scope="device").retain_rows(8, 8, step=5)[:2].tolist()
