"""``forward_logprobs(chunk_size=...)`` on a tiny random Llama: the lean path equals the full-logits path.

Values and gradients with respect to every parameter of the model are compared with today's
``token_logprobs(teacher_forced_logits(...))``, on a ragged right-padded batch with one row that has no target.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaForCausalLM

from baldro_pl.forward import forward_logprobs, teacher_forced_logits
from baldro_pl.labels import IGNORE_INDEX
from baldro_pl.modules.finetune import FinetuneModule
from baldro_pl.objectives.logprobs import TokenLogProbs, token_logprobs
from baldro_pl.toy import tiny_llama

VOCAB = 97


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """4 rows of 14 tokens: prompts of 3-6 tokens, right padding of 0-5, row 2 without any target (all prompt)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (4, 14), generator=g)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    for row, (prompt, pad) in enumerate([(3, 0), (5, 3), (6, 2), (4, 5)]):
        labels[row, :prompt] = IGNORE_INDEX
        if pad:
            attention_mask[row, -pad:] = 0
            labels[row, -pad:] = IGNORE_INDEX
            input_ids[row, -pad:] = 0
    labels[2] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_llama(VOCAB, hidden_size=32, num_hidden_layers=2, seed=3)


def _run(model: torch.nn.Module, batch: dict[str, torch.Tensor], lp_fn) -> tuple[TokenLogProbs, dict]:
    model.zero_grad(set_to_none=True)
    lp = lp_fn(model, batch)
    weights = torch.linspace(0.5, 1.5, lp.logp.shape[1])  # a loss that weighs positions differently
    (-(lp.logp * weights).sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return lp, grads


def _full(model: torch.nn.Module, batch: dict[str, torch.Tensor], all_positions: bool = False) -> TokenLogProbs:
    logits = teacher_forced_logits(model, **batch, all_positions=all_positions)
    return token_logprobs(logits, batch["labels"])


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 40])
@pytest.mark.parametrize("trim_logits", [True, False])
def test_chunked_forward_equals_full_logits(model: LlamaForCausalLM, chunk_size: int, trim_logits: bool) -> None:
    """22 target tokens: chunk sizes 4 and 7 do not divide them; 40 is one chunk."""
    batch = _batch()
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == 22
    full, full_grads = _run(model, batch, lambda m, b: _full(m, b, all_positions=not trim_logits))
    lean, lean_grads = _run(
        model, batch, lambda m, b: forward_logprobs(m, **b, trim_logits=trim_logits, chunk_size=chunk_size)
    )
    assert lean.logp.shape == full.logp.shape == ((4, 11) if trim_logits else (4, 13))  # from position 2 on
    assert torch.equal(lean.mask, full.mask)
    torch.testing.assert_close(lean.logp, full.logp, rtol=0, atol=1e-5)
    assert bool((lean.logp[2] == 0).all())
    assert lean_grads.keys() == full_grads.keys() and len(full_grads) == len(list(model.parameters()))
    for name, grad in full_grads.items():
        torch.testing.assert_close(lean_grads[name], grad, rtol=0, atol=1e-5, msg=name)
    assert isinstance(model.lm_head, torch.nn.Linear)  # the head is back


class _WrappedHead(torch.nn.Module):
    """The LM head inside another module: not exactly an ``nn.Linear``, so the per-chunk checkpoint path runs."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


@pytest.mark.parametrize("chunk_size", [3, 8])
def test_chunked_forward_with_a_generic_head(chunk_size: int) -> None:
    model = tiny_llama(VOCAB, hidden_size=32, num_hidden_layers=2, seed=5)
    model.set_output_embeddings(_WrappedHead(model.get_output_embeddings()))
    batch = _batch(3)
    full, full_grads = _run(model, batch, _full)
    lean, lean_grads = _run(model, batch, lambda m, b: forward_logprobs(m, **b, chunk_size=chunk_size))
    torch.testing.assert_close(lean.logp, full.logp, rtol=0, atol=1e-5)
    assert len(full_grads) == len(list(model.parameters()))
    for name, grad in full_grads.items():
        torch.testing.assert_close(lean_grads[name], grad, rtol=0, atol=1e-5, msg=name)
    assert isinstance(model.get_output_embeddings(), _WrappedHead)


def test_chunked_forward_without_grad_and_with_hf_gradient_checkpointing() -> None:
    model = tiny_llama(VOCAB, hidden_size=32, num_hidden_layers=2, seed=4)
    batch = _batch(1)
    full, full_grads = _run(model, batch, _full)
    with torch.no_grad():
        lean = forward_logprobs(model, **batch, chunk_size=5)
    torch.testing.assert_close(lean.logp, full.logp.detach(), rtol=0, atol=1e-5)
    model.activation_checkpointing_enable({"use_reentrant": False})
    assert model.is_activation_checkpointing
    model.train()
    lean, lean_grads = _run(model, batch, lambda m, b: forward_logprobs(m, **b, chunk_size=5))
    torch.testing.assert_close(lean.logp, full.logp, rtol=0, atol=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(lean_grads[name], grad, rtol=0, atol=1e-5, msg=name)


def test_the_head_is_restored_after_an_error(model: LlamaForCausalLM) -> None:
    head = model.get_output_embeddings()
    batch = _batch()
    batch["input_ids"][0, 0] = VOCAB + 5  # out of the embedding's range: the forward raises inside the swap
    with pytest.raises(IndexError):
        forward_logprobs(model, **batch, chunk_size=4)
    assert model.get_output_embeddings() is head
    assert "lm_head.weight" in dict(model.named_parameters())


def test_a_model_that_post_processes_its_logits_is_refused() -> None:
    """Gemma-2 soft-caps its logits: the stand-in's output would be changed, so the call fails naming the class."""
    config = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    assert config.final_logit_softcapping is not None
    gemma = Gemma2ForCausalLM(config)
    head = gemma.get_output_embeddings()
    with pytest.raises(ValueError, match="Gemma2ForCausalLM post-processes its LM head's output"):
        forward_logprobs(gemma, **_batch(), chunk_size=4)
    assert gemma.get_output_embeddings() is head
    forward_logprobs(gemma, **_batch(), chunk_size=None)  # the full path still works


class _ScaledInPlace(LlamaForCausalLM):
    """A Llama whose forward scales its logits in place (same tensor object, changed values)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits.mul_(0.5)
        return out


def test_an_in_place_change_of_the_logits_is_refused() -> None:
    model = _ScaledInPlace(tiny_llama(VOCAB, hidden_size=32, num_hidden_layers=1).config)
    with torch.no_grad(), pytest.raises(ValueError, match="_ScaledInPlace post-processes"):
        forward_logprobs(model, **_batch(), chunk_size=4)


def test_a_model_without_lm_head_is_refused(model: LlamaForCausalLM) -> None:
    with pytest.raises(ValueError, match="LlamaModel has no output embedding"):
        forward_logprobs(model.model, **_batch(), chunk_size=4)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "64"])
def test_forward_logprobs_refuses_a_bad_chunk_size(model: LlamaForCausalLM, bad: object) -> None:
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int .* or None"):
        forward_logprobs(model, **_batch(), chunk_size=bad)  # type: ignore[arg-type]


def test_module_option_is_saved_and_used(model: LlamaForCausalLM) -> None:
    module = FinetuneModule(model, logprob_chunk_size=3)
    assert module.hparams["logprob_chunk_size"] == 3 and module.logprob_chunk_size == 3
    batch = _batch(2)
    full, full_grads = _run(model, batch, _full)
    lean, lean_grads = _run(model, batch, module.batch_logprobs)
    torch.testing.assert_close(lean.logp, full.logp, rtol=0, atol=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(lean_grads[name], grad, rtol=0, atol=1e-5, msg=name)
    default = FinetuneModule(model)
    assert default.logprob_chunk_size is None and default.hparams.get("logprob_chunk_size") is None
    torch.testing.assert_close(default.batch_logprobs(model, batch).logp, full.logp, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [0, -8, 2.5, False, "512"])
def test_module_refuses_a_bad_chunk_size(model: LlamaForCausalLM, bad: object) -> None:
    with pytest.raises(ValueError, match=r"logprob_chunk_size must be a positive int .* or None"):
        FinetuneModule(model, logprob_chunk_size=bad)
