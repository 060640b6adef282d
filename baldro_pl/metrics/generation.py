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

The loop itself (:func:`decode_greedy`) is a plain greedy loop over Hugging Face's KV cache, not ``generate``: it
computes what ``generate`` computes (the prompt batch once, then one token per step for every unfinished row, the
argmax of the last logits) but drops a row from the batch as soon as it has produced EOS, where ``generate`` keeps
feeding it padding until the last row ends; those padding tokens are skipped when decoding, so the texts are the same.
The stop strings are checked on the same virtual sequences (ended rows continued with padding). ``generate`` is still
used when the model's generation config asks for anything besides plain greedy decoding (a repetition penalty, a
minimum length, a special cache...), under ``synced_gpus`` (FSDP: every process must step together) and for a model
that returns no KV cache.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from baldro_pl.datamodules.collate import pad_samples
from baldro_pl.datamodules.formatting import EncodedSample
from baldro_pl.labels import IGNORE_INDEX, scored_ids
from baldro_pl.metrics.likelihood import CallContext, length_sorted_batches, model_device
from baldro_pl.metrics.prefix import PromptBatch, continue_rows, prefill


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


#: Generation-config fields with the values that leave greedy decoding plain (no logits processor, the default
#: cache, one sequence per prompt). Any other value sends :func:`greedy_generate` to ``generate``.
_PLAIN_GREEDY: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "forced_decoder_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "max_time": (None,),
    "stop_strings": (None,),
    "cache_implementation": (None,),
    "num_return_sequences": (None, 1),
    "prompt_lookup_num_tokens": (None,),
    "assistant_early_exit": (None,),
    "low_memory": (None, False),
}


def plain_greedy(config: Any) -> bool:
    """Whether ``generate`` with ``config`` (greedy, one beam) is argmax decoding and nothing else."""
    return all(getattr(config, name, None) in values for name, values in _PLAIN_GREEDY.items())


def _stop_strings_fire(
    criteria: Sequence[BatchStopString], generated: Sequence[Sequence[int]], steps: int, pad_token_id: int
) -> bool:
    """The batch-level stop-string check on every row's last tokens (ended rows continued with padding)."""
    width = min(steps, max(c.lookback for c in criteria))
    tails = torch.full((len(generated), width), pad_token_id, dtype=torch.long)
    for row, tokens in enumerate(generated):
        tail = list(tokens) + [pad_token_id] * (steps - len(tokens))
        tails[row] = torch.tensor(tail[-width:], dtype=torch.long)
    fired = False
    for criterion in criteria:  # every criterion is called at every step (their done flags are sticky), then OR-ed
        fired = bool(criterion(tails).all()) or fired
    return fired


@dataclass(frozen=True)
class Greedy:
    """How a model decodes greedily (:func:`greedy_settings`).

    Attributes:
        config: the generation config ``generate`` gets (greedy, one beam, the budget, pad and EOS set).
        pad_token_id: the pad token (the tokenizer's, else its EOS).
        eos_token_ids: the tokens that end a row (the model's generation config's, else the tokenizer's).
        stop_strings: strings that end the batch once every row has contained one.
        cuts: the strings a generation is cut at, in order (``decode([eos])`` first, then ``stop_strings``).
        own_loop: whether :func:`decode_greedy` computes what ``generate`` would (plain greedy decoding, no
            ``synced_gpus``).
    """

    config: Any
    pad_token_id: int
    eos_token_ids: tuple[int, ...]
    stop_strings: tuple[str, ...]
    cuts: tuple[str, ...]
    own_loop: bool

    @property
    def max_new_tokens(self) -> int:
        """The generation budget."""
        return int(self.config.max_new_tokens)

    def text(self, tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
        """The generation's text: decoded, cut at :attr:`cuts`, stripped (metrics-spec §1.6)."""
        return truncate_generation(decode(tokenizer, ids), self.cuts)


def greedy_settings(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_new_tokens: int,
    stop_strings: Sequence[str] = (),
    synced_gpus: bool = False,
) -> Greedy:
    """The greedy decoding of ``model``: its generation config made greedy, pad / EOS tokens, cut strings.

    Raises:
        ValueError: ``max_new_tokens`` < 1, or a tokenizer with neither a pad nor an EOS token.
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
    eos_ids = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    own_loop = not synced_gpus and plain_greedy(config)
    return Greedy(config, pad_id, eos_ids, tuple(stop_strings), tuple(cuts), own_loop)


def decode_greedy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: PromptBatch,
    greedy: Greedy,
    *,
    pending: Tensor | None = None,
) -> list[list[int]]:
    """Greedy continuations of prefilled prompts (:func:`~baldro_pl.metrics.prefix.prefill`), as token ids.

    Each row ends after its first EOS token (kept) or after ``greedy.max_new_tokens`` tokens; the whole batch ends
    once every row has contained one of the stop strings (:class:`BatchStopString`, checked as ``generate`` checks
    it). A row that has ended leaves the batch (its cache rows are dropped). ``prompts`` is consumed: its cache grows
    and loses rows.

    Args:
        model: the model that made ``prompts``.
        tokenizer: its tokenizer (the stop-string lookback).
        prompts: the prefilled prompts.
        greedy: :func:`greedy_settings` of the model.
        pending: ``[G]`` the prompts' last tokens when ``prompts`` holds all but them (they are run first); None
            when ``prompts`` holds whole prompts (their :attr:`~PromptBatch.last_logits` give the first tokens).

    Returns:
        The new token ids of each prompt, EOS included, nothing after it.
    """
    state, logits = prompts, prompts.last_logits
    if pending is not None:
        state, logits = _step(model, state, pending)
    eos = torch.tensor(greedy.eos_token_ids, dtype=torch.long, device=logits.device)
    generated: list[list[int]] = [[] for _ in range(prompts.size)]
    criteria = [BatchStopString(s, tokenizer, 0, prompts.size) for s in greedy.stop_strings]
    live = list(range(prompts.size))
    for step in range(greedy.max_new_tokens):
        tokens = logits.argmax(-1)
        for row, token in zip(live, tokens.tolist()):
            generated[row].append(token)
        if criteria and _stop_strings_fire(criteria, generated, step + 1, greedy.pad_token_id):
            break
        if step + 1 == greedy.max_new_tokens:
            break
        keep = (~torch.isin(tokens, eos)).nonzero().squeeze(-1)
        if keep.numel() == 0:
            break
        if keep.numel() < len(live):
            state.cache.batch_select_indices(keep)
            state = PromptBatch(state.cache, state.attention_mask[keep], state.lengths[keep], state.last_logits)
            tokens, live = tokens[keep], [live[i] for i in keep.tolist()]
        state, logits = _step(model, state, tokens)
    return generated


def _step(model: torch.nn.Module, state: PromptBatch, tokens: Tensor) -> tuple[PromptBatch, Tensor]:
    """Run one token per row after ``state``; the grown state and the last logits."""
    mask = state.attention_mask
    one = torch.ones((tokens.shape[0], 1), dtype=mask.dtype, device=mask.device)
    logits, cache = continue_rows(model, state, tokens.unsqueeze(-1), one, logits_to_keep=1)
    logits = logits[:, -1]
    return PromptBatch(cache, torch.cat([mask, one], dim=1), state.lengths + 1, logits), logits


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
        batch_size: prompts decoded together.
        sort_by_length: batch prompts of similar length together.
        synced_gpus: keep stepping until every process is done (needed when the forward is a collective, FSDP).
        call_context: factory of a context manager entered around each batch's decoding.

    Returns:
        The generated texts, in the order of ``prompts``.
    """
    greedy = greedy_settings(
        model, tokenizer, max_new_tokens=max_new_tokens, stop_strings=stop_strings, synced_gpus=synced_gpus
    )
    device = model_device(model)
    context = call_context or contextlib.nullcontext
    texts: list[str] = [""] * len(prompts)
    own_loop = greedy.own_loop
    for idx in length_sorted_batches([len(p) for p in prompts], batch_size, sort=sort_by_length):
        batch_prompts = [prompts[i] for i in idx]
        with context():
            if own_loop:
                batch = prefill(model, batch_prompts, pad_token_id=greedy.pad_token_id, device=device)
                own_loop = hasattr(batch.cache, "batch_select_indices")  # else generate() from now on
            if own_loop:
                rows = decode_greedy(model, tokenizer, batch, greedy)
            else:
                rows = _generate(model, tokenizer, batch_prompts, greedy, synced_gpus=synced_gpus, device=device)
        for i, row in zip(idx, rows):
            texts[i] = greedy.text(tokenizer, row)
    return texts


def _generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    greedy: Greedy,
    *,
    synced_gpus: bool,
    device: torch.device,
) -> list[list[int]]:
    """The new token ids of one left-padded batch from Hugging Face ``generate`` (padding after EOS included)."""
    samples = [EncodedSample(list(p), [IGNORE_INDEX] * len(p)) for p in prompts]
    batch = pad_samples(samples, greedy.pad_token_id, side="left")
    input_ids = batch["input_ids"].to(device)
    criteria = StoppingCriteriaList(
        [BatchStopString(s, tokenizer, input_ids.shape[1], len(prompts)) for s in greedy.stop_strings]
    )
    output = model.generate(
        input_ids=input_ids,
        attention_mask=batch["attention_mask"].to(device),
        generation_config=greedy.config,
        stopping_criteria=criteria,
        synced_gpus=synced_gpus,
    )
    return output[:, input_ids.shape[1] :].tolist()
