"""Batched greedy generation with left padding, KV cache, a token budget and stop strings (metrics-spec §1.6).

Semantics reproduced from open-unlearning's ``eval_text_similarity``:

1. Greedy decoding (``do_sample=False``) of a left-padded prompt batch with ``max_new_tokens`` and the KV cache.
   The attention mask comes from the true prompt lengths; Hugging Face ``generate`` derives the position ids from it.
2. Stop strings act as a *batch-level* stopping criterion: one criterion per string, looking back over the last
   ``len(tok(stop)) + 2`` generated tokens; a criterion fires once **every** row of the batch has contained its
   string, and the criteria are OR-ed (rows that ended with EOS keep padding until then).
3. The new tokens are decoded (special tokens skipped, tokenisation spaces cleaned up) and cut post hoc at the
   first occurrence of ``decode([eos])`` and then of each stop string, in that order, then stripped (P9).

The batch-level criterion only decides when the loop ends; the text is re-truncated afterwards, so the output does not
depend on batch composition (up to numerics, P13). Prompts are sorted by length before batching.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from baldro_pl.datamodules.collate import pad_samples
from baldro_pl.datamodules.formatting import EncodedSample
from baldro_pl.labels import IGNORE_INDEX, scored_ids
from baldro_pl.metrics.likelihood import CallContext, length_sorted_batches, model_device


class BatchStopString(StoppingCriteria):
    """Stop the whole batch once every row's generated text has contained ``stop`` (metrics-spec §1.6 step 5).

    The ``done`` flag of a row is sticky. The lookback decodes the last ``len(tok(stop)) + 2`` generated tokens
    without skipping special tokens, as lm-evaluation-harness / open-unlearning do.
    """

    def __init__(self, stop: str, tokenizer: PreTrainedTokenizerBase, prompt_length: int, batch_size: int) -> None:
        self.stop = stop
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.lookback = len(tokenizer.encode(stop, add_special_tokens=False)) + 2
        self.done = [False] * batch_size

    def __call__(self, input_ids: Tensor, scores: Tensor | None = None, **kwargs) -> Tensor:
        """Per row: whether every row of the batch has contained the stop string by now."""
        tail = input_ids[:, self.prompt_length :][:, -self.lookback :]
        texts = self.tokenizer.batch_decode(tail)
        for i, text in enumerate(texts):
            if not self.done[i]:
                self.done[i] = self.stop in text
        return torch.full((input_ids.shape[0],), all(self.done), dtype=torch.bool, device=input_ids.device)


def truncate_generation(text: str, stops: Sequence[str]) -> str:
    """Cut ``text`` at the first occurrence of each stop string in turn, then strip (metrics-spec §1.6 step 2)."""
    for stop in stops:
        if stop and stop in text:
            text = text.split(stop)[0]
    return text.strip()


def clean_up_tokenization(text: str) -> str:
    """The ``clean_up_tokenization_spaces=True`` post-processing of transformers 4.x (the reference run used 4.45.1).

    transformers 5 ignores that flag for BPE tokenizers, so it is applied here explicitly to keep the decoded
    generations and ground truths identical to the reference runs.
    """
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """``decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)`` as in transformers 4.x."""
    return clean_up_tokenization(
        tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    )


def reference_text(tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[int], target_ids: Sequence[int]) -> str:
    """The ground truth as open-unlearning recovers it: ``decode(target).replace(decode(prompt), "").strip()``.

    ``target_ids`` is the whole tokenised conversation for QA rows (§1.2 generation mode) and the continuation tokens
    for completions (§1.3); both decodes skip special tokens and clean up tokenisation spaces (:func:`decode`).
    """
    return decode(tokenizer, target_ids).replace(decode(tokenizer, prompt_ids), "").strip()


def target_text(tokenizer: PreTrainedTokenizerBase, sample: EncodedSample) -> str:
    """Decoded target tokens, special tokens skipped (the zlib attack's text, metrics-spec §4.1).

    open-unlearning decodes with ``tokenizer.decode(ids, skip_special_tokens=True)``, so the tokenizer's own
    ``clean_up_tokenization_spaces`` default decides whether tokenisation spaces are cleaned up: False for the Llama-2
    tokenizers of the published TOFU and MUSE logs, True for the Llama-3.x ones. transformers 5 ignores that setting
    for BPE tokenizers, so the transformers 4.x clean-up of the reference runs is applied here explicitly
    (:func:`clean_up_tokenization`).
    """
    text = tokenizer.decode(scored_ids(sample.labels), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return clean_up_tokenization(text) if getattr(tokenizer, "clean_up_tokenization_spaces", False) else text


def _eos_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> int | list[int] | None:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    return eos if eos is not None else tokenizer.eos_token_id


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_strings: Sequence[str] = (),
    batch_size: int = 32,
    sort_by_length: bool = True,
    synced_gpus: bool = False,
    call_context: CallContext | None = None,
) -> list[str]:
    """Greedy continuations of token-id prompts, truncated as in metrics-spec §1.6.

    Args:
        model: a Hugging Face causal LM in eval mode.
        tokenizer: its tokenizer (decoding, stop-string lookback).
        prompts: prompt token ids (special tokens included), one list per row.
        max_new_tokens: generation budget (200 TOFU, 128 MUSE VerbMem, 32 MUSE KnowMem).
        stop_strings: strings that end a generation (MUSE KnowMem), applied after ``decode([eos])``.
        batch_size: rows per ``generate`` call.
        sort_by_length: batch prompts of similar length together.
        synced_gpus: keep stepping until every process is done (needed when the forward is a collective, FSDP).
        call_context: factory of a context manager entered around each ``generate`` call.

    Returns:
        The generated texts, in the order of ``prompts``.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("greedy_generate: the tokenizer has neither a pad nor an EOS token")
    eos = _eos_ids(model, tokenizer)
    config = copy.deepcopy(model.generation_config)
    for name in ("temperature", "top_p", "top_k", "min_p", "typical_p"):  # sampling knobs are unused when greedy
        if hasattr(config, name):
            setattr(config, name, None)
    config.do_sample = False
    config.num_beams = 1
    config.max_new_tokens = max_new_tokens
    config.use_cache = True
    config.pad_token_id = pad_id
    config.eos_token_id = eos
    # open-unlearning drops every cut string when the tokenizer has no EOS; here only the EOS string is absent then.
    cuts = ([tokenizer.decode([tokenizer.eos_token_id])] if tokenizer.eos_token_id is not None else []) + list(
        stop_strings
    )
    device = model_device(model)
    context = call_context or contextlib.nullcontext
    texts: list[str] = [""] * len(prompts)
    for idx in length_sorted_batches([len(p) for p in prompts], batch_size, sort=sort_by_length):
        samples = [EncodedSample(list(prompts[i]), [IGNORE_INDEX] * len(prompts[i])) for i in idx]
        batch = pad_samples(samples, pad_id, side="left")
        input_ids = batch["input_ids"].to(device)
        criteria = StoppingCriteriaList(
            [BatchStopString(s, tokenizer, input_ids.shape[1], len(idx)) for s in stop_strings]
        )
        with context():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=batch["attention_mask"].to(device),
                generation_config=config,
                stopping_criteria=criteria,
                synced_gpus=synced_gpus,
            )
        for i, row in zip(idx, output[:, input_ids.shape[1] :].tolist()):
            texts[i] = truncate_generation(decode(tokenizer, row), cuts)
    return texts
