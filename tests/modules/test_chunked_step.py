"""``logprob_chunk_size`` in training (issue 13, item 3): the step's value and gradients do not change.

With a chunk size the forget log-probs (both BalDRO-G passes, the alternative answers), the NLL retain term and the
reference NLL are computed from the final hidden states a few target tokens at a time, never from the whole
``[B, L, V]`` logits (``baldro_pl.forward.forward_logprobs``); the fine-tuning module's loss too.
"""

from __future__ import annotations

import copy

import pytest
import torch
from toy_task import random_side

from baldro_pl.modules import FinetuneModule, UnlearningModule
from baldro_pl.objectives import NLL, NPO, BalDRODV, BalDROG, IdkDPO, Mean
from baldro_pl.toy import tiny_llama

VOCAB, ROWS, LENGTH = 96, 6, 16


def _side(seed: int, length: int = LENGTH) -> dict[str, torch.Tensor]:
    return random_side(seed, vocab=VOCAB, rows=ROWS, length=length, prompt=(2, 6), answer=(2, length - 6))


BATCH = {"forget": {**_side(1), "alternate": _side(3, length=10)}, "retain": _side(2)}
MODEL = tiny_llama(VOCAB, hidden_size=32, intermediate_size=64, seed=2)
OBJECTIVES = {
    "npo_dv_nll_sequence": (NPO(beta=0.5), BalDRODV(temperature=2.0), NLL(per="sequence")),
    "npo_g_two_pass": (NPO(beta=0.5), BalDROG(ratio=0.5, subsample_retain=False), NLL()),
    "idkdpo": (IdkDPO(beta=0.5), Mean(), NLL()),
}


def _run(name: str, chunk: int | None) -> tuple[float, dict[str, torch.Tensor], torch.Tensor]:
    forget_loss, aggregator, retain_loss = (copy.deepcopy(part) for part in OBJECTIVES[name])
    module = UnlearningModule(
        copy.deepcopy(MODEL), forget_loss, aggregator, retain_loss, alpha=0.7, logprob_chunk_size=chunk
    )
    module.configure_model()
    cpu = torch.device("cpu")
    if module.objective.needs_reference_nll:
        module.reference_cache.build(module.model, [BATCH["forget"]], cpu, chunk_size=chunk)
    if module.objective.needs_reference_alternate_nll:
        module.reference_cache_alternate.build(module.model, [BATCH["forget"]["alternate"]], cpu, chunk_size=chunk)
    out, _ = module.compute_step(BATCH)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return out.loss.item(), grads, module.reference_cache.nll.clone()


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_chunked_log_probs_give_the_same_step(name: str) -> None:
    loss, grads, reference = _run(name, None)
    chunked_loss, chunked_grads, chunked_reference = _run(name, 3)  # 3 does not divide the answer token count
    assert chunked_loss == pytest.approx(loss, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(chunked_reference, reference, rtol=1e-5, atol=1e-5)
    assert chunked_grads.keys() == grads.keys() and grads
    for key, value in grads.items():
        torch.testing.assert_close(chunked_grads[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_the_nll_retain_term_never_asks_the_model_for_logits() -> None:
    """With a chunk size the LM head is swapped for the chunked scorer: the model returns no [B, L, V] logits."""
    module = UnlearningModule(copy.deepcopy(MODEL), NPO(beta=0.5), Mean(), NLL(), logprob_chunk_size=4)
    module.configure_model()
    module.reference_cache.build(module.model, [BATCH["forget"]], torch.device("cpu"))
    widths: list[int] = []
    hook = module.model.register_forward_hook(lambda m, args, out: widths.append(out.logits.shape[-1]))
    try:
        module.compute_step(BATCH)
    finally:
        hook.remove()
    assert len(widths) == 1 and all(width != VOCAB for width in widths)  # forget and retain rows in one pass


def test_finetuning_loss_is_the_same_with_chunks() -> None:
    batch = {k: v for k, v in BATCH["retain"].items() if k != "index"}
    losses = []
    for chunk in (None, 5):
        module = FinetuneModule(copy.deepcopy(MODEL), logprob_chunk_size=chunk)
        module.configure_model()
        losses.append(module.training_step(batch, 0).item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
