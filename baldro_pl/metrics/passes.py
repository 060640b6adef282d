"""Each prompt run once for everything that follows it: the answers scored after it and the generation from it.

TOFU scores up to seven answers after the same question (answer, paraphrase, five perturbed answers) and generates
from that question too. :func:`score_and_generate` groups the work by prompt: the tokens before each sample's first
target (its *context*) are keyed, the samples and generation prompts with the same context share one prefill of it
(:func:`~baldro_pl.metrics.prefix.prefill`, all but its last token), and each answer and the greedy decoding continue
from the cached keys and values (:func:`~baldro_pl.metrics.prefix.continue_rows`,
:func:`~baldro_pl.metrics.generation.decode_greedy`). Scores and texts equal those of
:func:`~baldro_pl.metrics.likelihood.score_samples` and :func:`~baldro_pl.metrics.generation.greedy_generate` up to
floating-point rounding (P13).

Contexts are taken ``generation_batch_size`` at a time (one prefill, then that many prompts decoded together; by
default as many as a KV-cache budget holds, :func:`~baldro_pl.metrics.prefix.generation_rows`), those with the longest
answers first; their answers are scored ``batch_size`` at a time, longest first. A sample goes
through :func:`score_samples` instead when it has no target, when its context has fewer than two tokens or when no
other sample or prompt shares its context (a prefill of its own would not pay). When the model returns no cache whose
rows can be selected (transformers < 4.56), the whole call falls back to :func:`score_samples` and
:func:`greedy_generate` (the first chunk's prefill is then the only extra call), and so do the prompts when decoding
is not plain greedy (:func:`~baldro_pl.metrics.generation.plain_greedy`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from baldro_pl.datamodules.formatting import EncodedSample
from baldro_pl.labels import IGNORE_INDEX
from baldro_pl.metrics.generation import decode_greedy, greedy_generate, greedy_settings
from baldro_pl.metrics.likelihood import (
    SCORE_KEYS,
    CallContext,
    batch_scores,
    length_sorted_batches,
    model_device,
    score_samples,
)
from baldro_pl.metrics.prefix import PromptBatch, continue_rows, generation_rows, prefill


@dataclass
class _Context:
    """The tokens before the first target that some samples and prompts share."""

    ids: tuple[int, ...]
    samples: list[int] = field(default_factory=list)
    prompts: list[int] = field(default_factory=list)


def _first_target(sample: EncodedSample) -> int | None:
    return next((i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX), None)


@torch.no_grad()
def score_and_generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[EncodedSample],
    prompts: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    max_new_tokens: int,
    batch_size: int = 32,
    generation_batch_size: int | None = None,
    vocab: Sequence[bool] | bool = False,
    k: float = 0.4,
    sort_by_length: bool = True,
    call_context: CallContext | None = None,
) -> tuple[dict[str, Tensor], list[str]]:
    """:func:`score_samples` of ``samples`` and :func:`greedy_generate` of ``prompts``, each context run once.

    Args:
        model: a Hugging Face causal LM in eval mode.
        tokenizer: its tokenizer (pad token, decoding).
        samples: tokenised samples to score (:func:`~baldro_pl.datamodules.formatting.encode_qa`).
        prompts: prompt token ids to generate from; a prompt equal to a sample's context shares its prefill.
        pad_token_id: id used for padding (the attention masks come from the true lengths).
        max_new_tokens: the generation budget.
        batch_size: answers scored per forward pass.
        generation_batch_size: contexts prefilled, and prompts decoded, together (None: as many as the KV-cache budget
            of :func:`~baldro_pl.metrics.prefix.generation_rows` holds).
        vocab: per sample (or for all) whether to compute the full-vocabulary statistics.
        k: min-k fraction.
        sort_by_length: take longer contexts and continuations first (less padding).
        call_context: factory of a context manager entered around each chunk's model calls.

    Returns:
        ``{key: [N] float64 CPU tensor}`` for :data:`~baldro_pl.metrics.likelihood.SCORE_KEYS` in the order of
        ``samples``, and the generated texts in the order of ``prompts``.
    """
    n = len(samples)
    flags = [bool(vocab)] * n if isinstance(vocab, bool) else [bool(v) for v in vocab]
    if len(flags) != n:
        raise ValueError(f"score_and_generate: {n} samples but {len(flags)} vocab flags")
    greedy = greedy_settings(model, tokenizer, max_new_tokens=max_new_tokens) if prompts else None
    pad_id = pad_token_id
    common = {"batch_size": batch_size, "sort_by_length": sort_by_length, "call_context": call_context}
    contexts: dict[tuple[int, ...], _Context] = {}
    plain: list[int] = []
    for i, sample in enumerate(samples):
        first = _first_target(sample)
        if first is None or first < 2:
            plain.append(i)
            continue
        key = tuple(sample.input_ids[:first])
        contexts.setdefault(key, _Context(key)).samples.append(i)
    plain_prompts: list[int] = []
    for j, prompt in enumerate(prompts):
        if len(prompt) < 2 or not greedy.own_loop:  # type: ignore[union-attr] (prompts: greedy is set)
            plain_prompts.append(j)
            continue
        key = tuple(prompt)
        contexts.setdefault(key, _Context(key)).prompts.append(j)

    # a context that only one sample reads gains nothing from its own prefill: the whole-sequence pass is cheaper
    plain += [c.samples[0] for c in contexts.values() if len(c.samples) == 1 and not c.prompts]
    order = [c for c in contexts.values() if len(c.samples) > 1 or c.prompts]
    scores = {key: torch.full((n,), float("nan"), dtype=torch.float64) for key in SCORE_KEYS}
    texts = [""] * len(prompts)
    # contexts with long answers first: the answers of a chunk are then of similar lengths (little padding where most
    # of the work is); the prompts of a chunk differ more, but each is run once
    longest = [max((len(samples[i].input_ids) - len(c.ids) for i in c.samples), default=0) for c in order]
    if generation_batch_size is None:
        widest = max([len(c.ids) for c in order] + [len(p) for p in prompts], default=0)
        # the cache of a chunk holds its prompts and their decoding, or its answers (batch_size at a time) after them
        tail = max(max_new_tokens if prompts else 0, max(longest, default=0))
        generation_batch_size = generation_rows(model, widest + tail, limit=max(len(order), len(prompts)))
    chunks = length_sorted_batches(longest, generation_batch_size, sort=sort_by_length)
    device = model_device(model)
    context = call_context or contextlib.nullcontext
    for number, chunk_idx in enumerate(chunks):
        chunk = [order[i] for i in chunk_idx]
        with context():
            contexts_ids = [c.ids[:-1] for c in chunk]
            batch = prefill(model, contexts_ids, pad_token_id=pad_id, device=device, batch_size=batch_size)
            if number == 0 and not batch.selectable:  # no per-layer cache: score and generate the plain way
                plain = list(range(n))
                plain_prompts = list(range(len(prompts)))
                break
            _score_chunk(model, batch, chunk, samples, flags, k, scores, batch_size, sort_by_length, pad_id)
            rows = [r for r, c in enumerate(chunk) if c.prompts]
            if rows and greedy is not None:
                generating = batch.select(rows) if len(rows) < len(chunk) else batch
                pending = torch.tensor([chunk[r].ids[-1] for r in rows], device=device)
                for r, ids in zip(rows, decode_greedy(model, tokenizer, generating, greedy, pending=pending)):
                    for j in chunk[r].prompts:
                        texts[j] = greedy.text(tokenizer, ids)
    if plain:
        values = score_samples(
            model, [samples[i] for i in plain], pad_token_id=pad_id, vocab=[flags[i] for i in plain], k=k, **common
        )
        for key in SCORE_KEYS:
            scores[key][torch.tensor(plain)] = values[key]
    if plain_prompts:
        generated = greedy_generate(
            model,
            tokenizer,
            [prompts[j] for j in plain_prompts],
            max_new_tokens=max_new_tokens,
            batch_size=generation_batch_size,
            sort_by_length=sort_by_length,
            call_context=call_context,
        )
        for j, text in zip(plain_prompts, generated):
            texts[j] = text
    return scores, texts


def _score_chunk(
    model: torch.nn.Module,
    batch: PromptBatch,
    chunk: Sequence[_Context],
    samples: Sequence[EncodedSample],
    flags: Sequence[bool],
    k: float,
    scores: dict[str, Tensor],
    batch_size: int,
    sort_by_length: bool,
    pad_id: int,
) -> None:
    """Score the samples of ``chunk``'s contexts after their prefill, ``batch_size`` at a time (into ``scores``)."""
    jobs = [(row, i) for row, c in enumerate(chunk) for i in c.samples]
    if not jobs:
        return
    # the continuation starts with the context's last token, whose logits predict the first target
    starts = [len(chunk[row].ids) - 1 for row, _ in jobs]
    lengths = [len(samples[i].input_ids) - start for (_, i), start in zip(jobs, starts)]
    device = batch.attention_mask.device
    for idx in length_sorted_batches(lengths, batch_size, sort=sort_by_length):
        width = max(lengths[j] for j in idx)
        tokens = torch.full((len(idx), width), pad_id, dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, j in enumerate(idx):
            sample, start = samples[jobs[j][1]], starts[j]
            tokens[r, : lengths[j]] = torch.tensor(sample.input_ids[start:], dtype=torch.long)
            labels[r, : lengths[j]] = torch.tensor(sample.labels[start:], dtype=torch.long)
            mask[r, : lengths[j]] = 1
        rows = [jobs[j][0] for j in idx]
        logits, _ = continue_rows(model, batch.select(rows), tokens.to(device), mask.to(device))
        labels = labels.to(device)
        vocab_rows = torch.tensor([flags[jobs[j][1]] for j in idx], device=device)
        values = batch_scores(logits, labels, vocab_rows=vocab_rows, k=k)
        where = torch.tensor([jobs[j][1] for j in idx])
        for key in SCORE_KEYS:
            scores[key][where] = values[key].detach().to("cpu", torch.float64)
