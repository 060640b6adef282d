"""BalDRO-G's two-pass step (issue 13): a no-grad pass for the hardness, then the gradient pass on the kept rows only.

``UnlearningModule.compute_step`` must give the value, the weights and the gradients of the one-pass form (the
gradient pass over every row, the unkept ones at zero weight), for every kind of forget loss: log-probs only (NPO, a
sample mean; SimNPO, a token mean), logits (CE-U), hidden states (RMU) and alternative answers (IdkDPO, IdkNLL); and the
model must really see the whole batch once without a graph and then only the ``k`` kept rows.
"""

from __future__ import annotations

import copy

import pytest
import torch
from toy_task import random_side

from baldro_pl.modules import UnlearningModule
from baldro_pl.modules.unlearning import select_rows
from baldro_pl.objectives import CEU, NLL, NPO, RMU, BalDROG, EmbedDiff, IdkDPO, IdkNLL, SimNPO
from baldro_pl.toy import tiny_llama

VOCAB, ROWS, LENGTH = 64, 8, 14


def _side(seed: int, rows: int = ROWS, length: int = LENGTH) -> dict[str, torch.Tensor]:
    """Right-padded rows with prompts of 2-4 tokens and answers of 2-9 tokens (so the kept rows can be trimmed)."""
    return random_side(seed, vocab=VOCAB, rows=rows, length=length, prompt=(2, 5), answer=(2, length - 4))


BATCH = {"forget": {**_side(1), "alternate": _side(3, length=8)}, "retain": _side(2)}
MODEL = tiny_llama(VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, seed=1)
LOSSES = {
    "npo": (lambda: NPO(beta=0.5), NLL),
    "simnpo_token": (lambda: SimNPO(beta=2.0), NLL),
    "ceu_logits": (lambda: CEU(), NLL),
    "rmu_hidden": (lambda: RMU(layer=1, steering_coeff=5.0, trainable=[r"model\.layers\.[01]\..*"]), EmbedDiff),
    "idkdpo_alternate": (lambda: IdkDPO(beta=0.5), NLL),
    "idknll_no_policy_grad": (lambda: IdkNLL(), NLL),  # the first pass's log-probs are reused, not recomputed
}


def _module(name: str, aggregator: BalDROG) -> UnlearningModule:
    forget_loss, retain_loss = LOSSES[name]
    module = UnlearningModule(copy.deepcopy(MODEL), forget_loss(), aggregator, retain_loss(), alpha=0.5)
    module.configure_model()
    if module.objective.needs_reference_nll:
        module.reference_cache.build(module.model, [BATCH["forget"]], torch.device("cpu"))
    if module.objective.needs_reference_alternate_nll:
        module.reference_cache_alternate.build(module.model, [BATCH["forget"]["alternate"]], torch.device("cpu"))
    return module


def _step(module: UnlearningModule) -> tuple:
    out, whole = module.compute_step(BATCH)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return out, whole, grads


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_two_passes_give_the_one_pass_value_weights_and_gradients(name: str, ratio: float) -> None:
    two, whole_two, grads_two = _step(_module(name, BalDROG(ratio=ratio, subsample_retain=False)))
    one, whole_one, grads_one = _step(_module(name, BalDROG(ratio=ratio, subsample_retain=False, passes="one")))
    assert two.forget_loss.item() == pytest.approx(one.forget_loss.item(), rel=1e-5, abs=1e-6)
    assert two.loss.item() == pytest.approx(one.loss.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(two.weights, one.weights, rtol=1e-5, atol=1e-7)
    assert int((two.weights > 0).sum()) == max(1, int(ROWS * ratio))
    torch.testing.assert_close(two.hardness, one.hardness, rtol=1e-5, atol=1e-6)  # every row's, from the first pass
    torch.testing.assert_close(two.avg_nll, one.avg_nll, rtol=1e-5, atol=1e-6)
    assert two.per_sample_loss.shape == (max(1, int(ROWS * ratio)),)  # the kept rows' losses
    torch.testing.assert_close(two.per_sample_loss, one.per_sample_loss[one.weights > 0], rtol=1e-5, atol=1e-6)
    assert whole_two.logp.shape[0] == ROWS and not whole_two.logp.requires_grad
    assert grads_two.keys() == grads_one.keys() and grads_one
    for key, value in grads_one.items():
        torch.testing.assert_close(grads_two[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_the_model_sees_the_whole_batch_without_graph_then_only_the_kept_rows() -> None:
    module = _module("npo", BalDROG(ratio=0.25, subsample_retain=True, seed=0))
    calls: list[tuple[int, int, bool]] = []
    hook = module.model.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(
            (kwargs["input_ids"].shape[0], kwargs["input_ids"].shape[1], torch.is_grad_enabled())
        ),
        with_kwargs=True,
    )
    try:
        module.compute_step(BATCH)
    finally:
        hook.remove()
    forget_rows, length = ROWS, LENGTH
    (rows0, len0, grad0), (rows1, len1, grad1) = calls
    assert (rows0, len0, grad0) == (forget_rows, length, False)  # the selection pass
    # one gradient pass: the k = 2 kept rows and the k random retain rows (forward_logprobs_joint)
    assert (rows1, grad1) == (2 + 2, True) and len1 <= length
    assert len(calls) == 2


def test_a_ratio_above_two_thirds_keeps_the_one_pass() -> None:
    assert BalDROG(ratio=0.5).selects_rows(8) and BalDROG(ratio=2 / 3).selects_rows(8)
    assert not BalDROG(ratio=0.75).selects_rows(8) and not BalDROG(ratio=1.0).selects_rows(8)


def test_passes_overrides_the_ratio_rule() -> None:
    assert not BalDROG(ratio=0.25, passes="one").selects_rows(8)
    assert BalDROG(ratio=0.9, passes="two").selects_rows(8)
    assert "passes='two'" in repr(BalDROG(passes="two"))
    assert "passes" not in repr(BalDROG())  # the default is not shown
    with pytest.raises(ValueError, match="BalDROG: passes must be 'auto', 'one' or 'two', got 'three'"):
        BalDROG(passes="three")


@pytest.mark.parametrize("passes", ["one", "two"])
def test_passes_decides_which_rows_the_gradient_pass_sees(passes: str) -> None:
    module = _module("npo", BalDROG(ratio=0.75, subsample_retain=False, passes=passes))
    calls: list[tuple[int, bool]] = []
    hook = module.model.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((kwargs["input_ids"].shape[0], torch.is_grad_enabled())),
        with_kwargs=True,
    )
    try:
        module.compute_step(BATCH)
    finally:
        hook.remove()
    k = int(ROWS * 0.75)
    # forget and retain rows in one gradient pass (forward_logprobs_joint), after a no-grad pass with "two"
    assert calls == ([(ROWS + ROWS, True)] if passes == "one" else [(ROWS, False), (k + ROWS, True)])


def test_select_rows_trims_the_padding_only_the_kept_rows_needed() -> None:
    side = BATCH["forget"]
    lengths = side["attention_mask"].sum(-1)
    rows = torch.argsort(lengths)[:2]  # the two shortest rows
    picked = select_rows(side, rows)
    assert picked["input_ids"].shape == (2, int(lengths[rows].max()))
    torch.testing.assert_close(picked["index"], side["index"][rows])
    assert picked["alternate"]["input_ids"].shape[0] == 2
    torch.testing.assert_close(picked["labels"], side["labels"][rows, : picked["labels"].shape[1]])
