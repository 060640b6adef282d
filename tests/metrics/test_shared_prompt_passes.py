"""Prompts run once: greedy decoding that drops ended rows, and answers scored after a cached prompt.

The fast paths must give what the plain ones give: the texts of Hugging Face ``generate`` (and of a full-length
decoding cut at EOS), and the scores of whole-sequence passes.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_greedy_generation import QUESTIONS as GENERATION_QUESTIONS
from test_greedy_generation import _count_calls

import baldro_pl.metrics.generation as generation
import baldro_pl.metrics.prefix as prefix
from baldro_pl.datamodules.formatting import EncodedSample, PromptFormat, encode_prompt, encode_qa
from baldro_pl.labels import IGNORE_INDEX
from baldro_pl.metrics.generation import decode, greedy_generate, truncate_generation
from baldro_pl.metrics.likelihood import SCORE_KEYS, score_samples
from baldro_pl.metrics.passes import score_and_generate
from baldro_pl.metrics.tofu import TOFUSuite

QUESTIONS = [*GENERATION_QUESTIONS, "Which river flows through Cairo?"]
FMT = PromptFormat.llama2_chat()


@pytest.fixture
def prompts(toy_tokenizer):
    return [encode_prompt(toy_tokenizer, q, FMT) for q in QUESTIONS]


def _full_length_ids(model, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens of one prompt, no cache, no stopping: the reference a cut at EOS is taken from."""
    ids, out = torch.tensor([prompt]), []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def _staggered_eos(model, prompts, n: int) -> list[int]:
    """Two tokens that end some rows early and leave at least one row running to the budget."""
    rows = [_full_length_ids(model, p, n) for p in prompts]
    candidates = sorted({t for row in rows for t in row[1:6]})
    for a in candidates:
        for b in candidates:
            ends = [next((i for i, t in enumerate(row) if t in (a, b)), None) for row in rows]
            early = [e for e in ends if e is not None]
            if len(early) >= 2 and len(set(early)) >= 2 and None in ends:
                return [a, b]
    pytest.skip("no pair of tokens staggers the rows of this random model")


def _generate_plain(monkeypatch, *args, **kwargs) -> list[str]:
    """``greedy_generate`` through Hugging Face ``generate`` (the fast loop switched off)."""
    with monkeypatch.context() as patch:
        patch.setattr(generation, "plain_greedy", lambda config: False)
        return greedy_generate(*args, **kwargs)


def test_ended_rows_leave_the_batch_with_the_texts_of_full_length_decoding(
    tiny_model, toy_tokenizer, prompts, monkeypatch
) -> None:
    tiny_model.eval()
    budget = 20
    eos = _staggered_eos(tiny_model, prompts, budget)
    tiny_model.generation_config.eos_token_id = eos
    counter = _count_calls(tiny_model)
    fast = greedy_generate(tiny_model, toy_tokenizer, prompts, max_new_tokens=budget, batch_size=len(prompts))
    fast_calls = counter[0]
    # the reference: each prompt alone, every one of the budget's tokens, cut after the first EOS
    expected = []
    for p in prompts:
        ids = _full_length_ids(tiny_model, p, budget)
        end = next((i for i, t in enumerate(ids) if t in eos), budget - 1)
        expected.append(truncate_generation(decode(toy_tokenizer, ids[: end + 1]), ["</s>"]))
    assert fast == expected
    counter[0] = 0
    assert fast == _generate_plain(
        monkeypatch, tiny_model, toy_tokenizer, prompts, max_new_tokens=budget, batch_size=len(prompts)
    )
    assert fast_calls == counter[0] == budget  # a row ran to the budget: as many forward passes as generate makes


def test_stop_strings_end_the_batch_as_generate_does(tiny_model, toy_tokenizer, prompts, monkeypatch) -> None:
    tiny_model.eval()
    free = greedy_generate(tiny_model, toy_tokenizer, prompts, max_new_tokens=30)
    words = sorted({w for text in free for w in text.split() if len(w) >= 3})
    assert words, free
    counter = _count_calls(tiny_model)
    for stops in ([words[0]], [words[-1], words[len(words) // 2]], ["\n\n"]):
        counter[0] = 0
        fast = greedy_generate(tiny_model, toy_tokenizer, prompts, max_new_tokens=30, stop_strings=stops)
        fast_calls, counter[0] = counter[0], 0
        plain = _generate_plain(monkeypatch, tiny_model, toy_tokenizer, prompts, max_new_tokens=30, stop_strings=stops)
        assert fast == plain, stops
        assert fast_calls == counter[0], stops


def test_generation_config_with_a_logits_processor_uses_generate(tiny_model, toy_tokenizer, prompts) -> None:
    tiny_model.eval()
    tiny_model.generation_config.repetition_penalty = 1.3
    assert not generation.plain_greedy(tiny_model.generation_config)
    calls = []
    original = tiny_model.generate
    tiny_model.generate = lambda *a, **k: calls.append(1) or original(*a, **k)
    texts = greedy_generate(tiny_model, toy_tokenizer, prompts[:2], max_new_tokens=6)
    assert len(calls) == 1 and len(texts) == 2


def _tofu_like(toy_tokenizer, tofu_rows, n: int) -> tuple[list[EncodedSample], list[bool], list[list[int]]]:
    rows = tofu_rows(n)["forget"]
    samples, vocab, prompts = [], [], []
    for r in rows:
        for k, answer in enumerate([r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]]):
            samples.append(encode_qa(toy_tokenizer, r["question"], answer, FMT))
            vocab.append(k == 0)
        prompts.append(encode_prompt(toy_tokenizer, r["question"], FMT))
    return samples, vocab, prompts


@pytest.mark.parametrize(("batch_size", "generation_batch_size"), [(4, None), (32, 2), (5, 64)])
def test_score_and_generate_equals_the_separate_passes(
    tiny_model, toy_tokenizer, tofu_rows, batch_size, generation_batch_size
) -> None:
    tiny_model.eval()
    samples, vocab, prompts = _tofu_like(toy_tokenizer, tofu_rows, 4)
    prompts += [prompts[1], encode_prompt(toy_tokenizer, "A question nobody answers?", FMT)]  # a repeat, a loner
    no_target = EncodedSample([1, 5, 6, 7], [IGNORE_INDEX] * 4)
    short = EncodedSample([1, 9, 10], [IGNORE_INDEX, 9, 10])  # a context of one token: the whole-sequence pass
    samples += [no_target, short]
    vocab += [True, True]
    pad = toy_tokenizer.pad_token_id
    expected = score_samples(tiny_model, samples, pad_token_id=pad, batch_size=batch_size, vocab=vocab)
    texts_expected = greedy_generate(tiny_model, toy_tokenizer, prompts, max_new_tokens=12, batch_size=batch_size)
    scores, texts = score_and_generate(
        tiny_model,
        toy_tokenizer,
        samples,
        prompts,
        pad_token_id=pad,
        max_new_tokens=12,
        batch_size=batch_size,
        generation_batch_size=generation_batch_size,
        vocab=vocab,
    )
    assert texts == texts_expected
    for key in SCORE_KEYS:
        nan = torch.isnan(expected[key])
        assert torch.equal(torch.isnan(scores[key]), nan), key
        torch.testing.assert_close(scores[key][~nan], expected[key][~nan], rtol=1e-5, atol=1e-6, msg=key)
    assert scores["n_targets"].tolist()[-2:] == [0.0, 2.0]


def test_each_prompt_is_run_once(tiny_model, toy_tokenizer, tofu_rows) -> None:
    """The seven answers of a question and its generation share one pass over the question."""
    tiny_model.eval()
    samples, vocab, prompts = _tofu_like(toy_tokenizer, tofu_rows, 3)
    for j, sample in enumerate(samples):  # every answer follows its question's prompt token for token
        first = sample.labels.index(next(t for t in sample.labels if t != IGNORE_INDEX))
        assert sample.input_ids[:first] == prompts[j // 7]
    tokens = [0]
    tiny_model.register_forward_pre_hook(
        lambda module, args, kwargs: tokens.__setitem__(0, tokens[0] + int(kwargs["input_ids"].numel())),
        with_kwargs=True,
    )
    score_and_generate(tiny_model, toy_tokenizer, samples, prompts, pad_token_id=0, max_new_tokens=1, batch_size=64)
    # one prefill of the prompts but their last tokens (left-padded), one pass of all answers each after that last
    # token (right-padded), one decoding step of the prompts' last tokens
    width = max(len(p) for p in prompts) - 1
    answers = max(len(s.input_ids) - len(prompts[j // 7]) + 1 for j, s in enumerate(samples))
    assert tokens[0] == len(prompts) * width + len(samples) * answers + len(prompts)
    tokens[0] = 0
    score_samples(tiny_model, samples, pad_token_id=toy_tokenizer.pad_token_id, batch_size=64)
    greedy_generate(tiny_model, toy_tokenizer, prompts, max_new_tokens=1, batch_size=64)
    assert tokens[0] == len(samples) * max(len(s.input_ids) for s in samples) + len(prompts) * (width + 1)


def test_without_a_selectable_cache_the_separate_passes_run(tiny_model, toy_tokenizer, tofu_rows, monkeypatch) -> None:
    tiny_model.eval()
    samples, vocab, prompts = _tofu_like(toy_tokenizer, tofu_rows, 2)
    monkeypatch.setattr(prefix, "_selectable", lambda cache: False)
    counter = _count_calls(tiny_model)
    scores, texts = score_and_generate(
        tiny_model, toy_tokenizer, samples, prompts, pad_token_id=0, max_new_tokens=3, batch_size=32, vocab=vocab
    )
    # one prefill that finds no usable cache, one whole-sequence scoring pass, then the generation's 3 steps
    assert counter[0] == 1 + 1 + 3
    expected = score_samples(tiny_model, samples, pad_token_id=toy_tokenizer.pad_token_id, vocab=vocab)
    torch.testing.assert_close(scores["avg_loss"], expected["avg_loss"], rtol=1e-5, atol=0)
    assert texts == greedy_generate(tiny_model, toy_tokenizer, prompts, max_new_tokens=3)


def test_suite_generation_batch_size(tiny_model, toy_tokenizer, tofu_rows) -> None:
    from baldro_pl.datamodules.encoder import RowEncoder

    tiny_model.eval()
    rows = tofu_rows(5)
    with pytest.raises(ValueError, match="generation_batch_size must be >= 1"):
        TOFUSuite(generation_batch_size=0)
    results = []
    for size in (1, 64):
        suite = TOFUSuite(metrics=["model_utility", "forget_Q_A_ROUGE"], max_new_tokens=6, generation_batch_size=size)
        results.append(suite.connect(encoder=RowEncoder(toy_tokenizer, FMT, 512)).evaluate(tiny_model, rows))
    one, many = results
    for name in ("forget_Q_A_ROUGE", "retain_Q_A_ROUGE", "ra_Q_A_ROUGE", "wf_Q_A_ROUGE"):
        gens = [v["generation"] for v in one.logs[name]["value_by_index"].values()]
        assert gens == [v["generation"] for v in many.logs[name]["value_by_index"].values()], name
    assert math.isclose(one.summary["model_utility"], many.summary["model_utility"], rel_tol=1e-5)


def test_default_generation_batch_is_what_the_kv_cache_budget_holds(
    tiny_model, toy_tokenizer, tofu_rows, monkeypatch
) -> None:
    """Without ``generation_batch_size`` the prompts go together as far as the KV-cache budget allows, same results."""
    import baldro_pl.metrics.passes as passes

    tiny_model.eval()
    samples, vocab, prompts = _tofu_like(toy_tokenizer, tofu_rows, 6)
    sizes: list[int] = []
    real_prefill = passes.prefill
    monkeypatch.setattr(
        passes, "prefill", lambda model, ids, **kw: sizes.append(len(ids)) or real_prefill(model, ids, **kw)
    )
    per_token = prefix.kv_bytes_per_token(tiny_model)
    config = tiny_model.config
    assert per_token == 2 * config.num_hidden_layers * config.num_key_value_heads * 16 * 4  # hidden 64 / 4 heads
    widest = max(len(p) for p in prompts) + max(len(s.input_ids) - len(prompts[j // 7]) for j, s in enumerate(samples))
    pad = toy_tokenizer.pad_token_id
    expected = score_and_generate(
        tiny_model, toy_tokenizer, samples, prompts, pad_token_id=pad, max_new_tokens=8, generation_batch_size=1
    )
    sizes.clear()
    got = score_and_generate(tiny_model, toy_tokenizer, samples, prompts, pad_token_id=pad, max_new_tokens=8)
    assert sizes == [6]  # the default budget holds all six prompts: one prefill
    sizes.clear()
    monkeypatch.setattr(prefix, "CPU_LAYER_CACHE_BYTES", per_token // (2 * config.num_hidden_layers) * widest * 4)
    small = score_and_generate(tiny_model, toy_tokenizer, samples, prompts, pad_token_id=pad, max_new_tokens=8)
    assert sizes == [4, 2]  # four rows' cache fits the budget
    for scores, texts in (got, small):
        assert texts == expected[1]
        torch.testing.assert_close(scores["avg_loss"], expected[0]["avg_loss"], rtol=1e-5, atol=1e-6)


def test_prefill_in_sorted_parts_equals_one_pass(tiny_model, prompts) -> None:
    """Prompts run a few at a time, shortest first, and joined: the cache, mask and logits of one padded pass."""
    tiny_model.eval()
    cpu = torch.device("cpu")
    with torch.no_grad():
        whole = prefix.prefill(tiny_model, prompts, pad_token_id=0, device=cpu)
        parts = prefix.prefill(tiny_model, prompts, pad_token_id=0, device=cpu, batch_size=2)
    assert torch.equal(parts.attention_mask, whole.attention_mask)
    assert torch.equal(parts.lengths, whole.lengths)
    torch.testing.assert_close(parts.last_logits, whole.last_logits, rtol=1e-5, atol=1e-5)
    real = whole.attention_mask.bool()
    for joined, one in zip(parts.cache.layers, whole.cache.layers):
        assert joined.keys.shape == one.keys.shape
        for tensor, expected in ((joined.keys, one.keys), (joined.values, one.values)):
            # [rows, heads, positions, dims] at the prompt tokens (the padding is masked)
            torch.testing.assert_close(
                tensor.transpose(1, 2)[real], expected.transpose(1, 2)[real], rtol=1e-5, atol=1e-5
            )
