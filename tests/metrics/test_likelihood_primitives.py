"""Batched scoring on a tiny model equals a direct per-sample computation (plain fp32 log_softmax, no padding)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from baldro_pl.datamodules.formatting import PromptFormat, encode_completion, encode_qa
from baldro_pl.forward import logits_to_keep_for
from baldro_pl.metrics.likelihood import batch_scores, gradnorm_scores, score_samples, vocab_statistics
from baldro_pl.objectives.logprobs import token_logprobs

QUESTIONS = [
    ("Where was Jaime Vasquez born?", "Jaime Vasquez was born in Santiago, Chile."),
    ("What genre does Jaime Vasquez write?", "True crime."),
    ("What is the capital of France?", "The capital of France is Paris, a city on the Seine with many museums."),
    ("Which river flows through Cairo?", "The Nile."),
    ("Who wrote the book?", "A famous author wrote it in 1990 while the cat slept on the warm mat."),
]


@pytest.fixture
def samples(toy_tokenizer):
    fmt = PromptFormat.llama2_chat()
    out = [encode_qa(toy_tokenizer, q, a, fmt, index=i) for i, (q, a) in enumerate(QUESTIONS)]
    out.append(
        encode_completion(toy_tokenizer, "The quick brown fox", "jumps over the lazy dog", insert_space=True, index=9)
    )
    out.append(encode_completion(toy_tokenizer, "", "The cat sleeps on the warm mat.", index=10))
    return out


def _direct(model, sample, k=0.4) -> dict[str, float]:
    """One sample, no padding, the formulas of metrics-spec §1.5 / §4.1 / §5 written out with loops."""
    ids = torch.tensor([sample.input_ids])
    with torch.no_grad():
        logp_all = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)  # [T, V]
    labels = sample.labels
    targets = [(t - 1, labels[t]) for t in range(1, len(labels)) if labels[t] != -100]  # (predicting position, token)
    nll = [-logp_all[p, y].item() for p, y in targets]
    b = targets[:-1]  # primitive B: last target dropped
    lp_b = [logp_all[p, y].item() for p, y in b]
    num_k = max(1, int(len(b) * k))
    z = []
    for p, y in b:
        probs = logp_all[p].exp()
        mu = (probs * logp_all[p]).sum().item()
        var = max((probs * logp_all[p] ** 2).sum().item() - mu**2, 1e-6)
        z.append((logp_all[p, y].item() - mu) / math.sqrt(var))
    preds = [int(logp_all[p].argmax()) for p, _ in b]
    ys = [y for _, y in b]
    es_k = 0
    for es_k in range(len(b)):  # noqa: B007
        if preds[es_k:] == ys[es_k:]:
            break
    return {
        "avg_loss": sum(nll) / len(nll),
        "min_k": -float(np.mean(sorted(lp_b)[:num_k])) if b else 0.0,
        "min_k_plus_plus": -float(np.mean(sorted(z)[:num_k])) if b else 0.0,
        "exact_memorization": sum(p == y for p, y in zip(preds, ys)) / len(b) if b else float("nan"),
        "extraction_strength": 1 - es_k / len(b) if b else 0.0,
    }


@pytest.mark.parametrize(("batch_size", "sort"), [(1, False), (3, True), (4, False), (32, True)])
def test_score_samples_equals_direct(tiny_model, toy_tokenizer, samples, batch_size, sort) -> None:
    tiny_model.eval()
    got = score_samples(
        tiny_model,
        samples,
        pad_token_id=toy_tokenizer.pad_token_id,
        batch_size=batch_size,
        vocab=True,
        sort_by_length=sort,
    )
    for i, sample in enumerate(samples):
        want = _direct(tiny_model, sample)
        for key, value in want.items():
            assert got[key][i].item() == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), (i, key)
        assert got["n_targets"][i].item() == sample.n_targets


def test_vocab_flags_select_rows(tiny_model, toy_tokenizer, samples) -> None:
    tiny_model.eval()
    flags = [i % 2 == 0 for i in range(len(samples))]
    got = score_samples(tiny_model, samples, pad_token_id=toy_tokenizer.pad_token_id, batch_size=4, vocab=flags)
    full = score_samples(tiny_model, samples, pad_token_id=toy_tokenizer.pad_token_id, batch_size=4, vocab=True)
    for i, flag in enumerate(flags):
        for key in ("min_k_plus_plus", "exact_memorization", "extraction_strength"):
            if flag:
                assert got[key][i].item() == pytest.approx(full[key][i].item(), abs=1e-12)
            else:
                assert math.isnan(got[key][i].item())
        assert got["avg_loss"][i].item() == pytest.approx(full["avg_loss"][i].item(), abs=1e-12)


def test_vocab_statistics_with_trimmed_logits(tiny_model, toy_tokenizer, samples) -> None:
    """Statistics from ``logits_to_keep`` logits equal those from full logits; log-probs equal ``token_logprobs``."""
    from baldro_pl.datamodules.collate import pad_samples

    tiny_model.eval()
    batch = pad_samples(samples[:4], toy_tokenizer.pad_token_id)
    with torch.no_grad():
        full = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    keep = logits_to_keep_for(labels)
    assert keep < labels.shape[1]
    trimmed = full[:, -keep:]
    lp_full, lp_trim = token_logprobs(full, labels), token_logprobs(trimmed, labels)
    stats_full = vocab_statistics(full, labels)
    stats_trim = vocab_statistics(trimmed, labels, chunk_tokens=7)
    t = stats_trim.mask.shape[1]
    torch.testing.assert_close(stats_full.mu[:, -t:], stats_trim.mu)
    torch.testing.assert_close(stats_full.var[:, -t:], stats_trim.var)
    assert torch.equal(stats_full.argmax[:, -t:], stats_trim.argmax)
    assert torch.equal(stats_full.mask[:, -t:], lp_trim.mask)
    # argmax / mu computed directly
    logp = torch.log_softmax(full[:, :-1].float(), -1)
    m = stats_full.mask
    torch.testing.assert_close(stats_full.mu[m], (logp.exp() * logp).sum(-1)[m])
    assert torch.equal(stats_full.argmax[m], logp.argmax(-1)[m])
    out_full = batch_scores(full, labels, vocab_rows=torch.ones(4, dtype=torch.bool))
    out_trim = batch_scores(trimmed, labels, vocab_rows=torch.ones(4, dtype=torch.bool))
    for key in out_full:
        torch.testing.assert_close(out_full[key], out_trim[key], equal_nan=True)
    torch.testing.assert_close(lp_full.avg_nll, lp_trim.avg_nll)


def _direct_gradnorm(model, sample) -> float:
    """open-unlearning's GradNormAttack on one sample, transcribed."""
    model.train()
    model.zero_grad()
    ids = torch.tensor([sample.input_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0, :-1]
    target = logp.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
    labels = torch.tensor(sample.labels)
    idx = (labels != -100).nonzero(as_tuple=True)[0][:-1]
    lps = target[idx[0] - 1 : idx[-1]]
    (-lps.mean()).backward()
    value = torch.stack([p.grad.norm(p=2) for p in model.parameters() if p.grad is not None]).mean().item()
    model.zero_grad()
    model.eval()
    return value


def test_gradnorm_equals_direct_and_leaves_model_untouched(tiny_model, samples) -> None:
    tiny_model.eval()
    tiny_model.model.layers[0].train()  # a mixed mode must be restored exactly
    first = next(tiny_model.parameters())
    first.grad = torch.full_like(first, 0.5)  # a pending gradient must survive
    weights = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    got = gradnorm_scores(tiny_model, samples[:3])
    assert torch.equal(first.grad, torch.full_like(first, 0.5))
    assert all(p.grad is None for p in list(tiny_model.parameters())[1:])
    assert not tiny_model.training and tiny_model.model.layers[0].training
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in weights.items())
    first.grad = None
    want = [_direct_gradnorm(tiny_model, s) for s in samples[:3]]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    with torch.inference_mode():  # Lightning's test loop runs in inference mode
        again = gradnorm_scores(tiny_model, samples[:1])
    assert again[0].item() == pytest.approx(got[0].item(), rel=1e-6)
    with pytest.raises(ValueError, match="p must be"):
        gradnorm_scores(tiny_model, samples[:1], p=3)
