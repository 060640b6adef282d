"""Prompts encoded once and continued many times: a left-padded prompt batch with its KV cache.

The suites score several answers after the same prompt (TOFU: the answer, its paraphrase and five perturbed answers)
and generate from that prompt too. A causal LM's states at the prompt positions do not depend on what follows, so
the prompt is run once (:func:`prefill`) and every continuation (an answer to score, :func:`continue_rows`, or
greedy decoding, :func:`baldro_pl.metrics.generation.decode_greedy`) attends to the cached keys and values.

Prompts are left-padded as Hugging Face ``generate`` pads them, with the same position ids (the attention mask's
cumulative sum, so that padding does not shift the positions); a continuation is right-padded after them. The
results equal those of the whole sequences run at once up to floating-point rounding (P13 numerics).

How many prompts go together is :func:`generation_rows`: as many as a KV-cache memory budget holds.

The cache is the one the model returns (Hugging Face's ``DynamicCache``); selecting rows into a new cache needs its
per-layer objects (transformers >= 4.56), and the callers fall back to
whole-sequence passes when it is not there (:attr:`PromptBatch.selectable`).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from baldro_pl.datamodules.collate import pad_samples
from baldro_pl.datamodules.formatting import EncodedSample
from baldro_pl.labels import IGNORE_INDEX

_CACHE_KEYWORDS: dict[type, str] = {}


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword under which ``model.forward`` takes the KV cache (``cache`` from transformers 5.x on)."""
    kind = type(model)
    if kind not in _CACHE_KEYWORDS:
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):  # pragma: no cover (a C-level or otherwise opaque forward)
            params = {}
        _CACHE_KEYWORDS[kind] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KEYWORDS[kind]


def _output_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _selectable(cache: Any) -> bool:
    """Whether rows of ``cache`` can be selected into a new cache without touching it (per-layer objects)."""
    layers = getattr(cache, "layers", None)
    return isinstance(layers, list) and hasattr(cache, "batch_select_indices")


@dataclass
class PromptBatch:
    """A left-padded batch of prompts after one forward pass.

    Attributes:
        cache: the KV cache of every prompt position (padding included, masked).
        attention_mask: ``[G, P]`` 1 on the prompt tokens, 0 on the left padding.
        lengths: ``[G]`` true prompt lengths, i.e. the position id of the token that follows each prompt.
        last_logits: ``[G, V]`` the logits at each prompt's last token (they predict the first continuation token).
    """

    cache: Any
    attention_mask: Tensor
    lengths: Tensor
    last_logits: Tensor

    @property
    def selectable(self) -> bool:
        """Whether :meth:`select` works: the cache is Hugging Face's per-layer ``Cache`` (transformers >= 4.56)."""
        return _selectable(self.cache)

    @property
    def size(self) -> int:
        """Number of prompts."""
        return int(self.lengths.shape[0])

    def select(self, rows: Tensor | Sequence[int]) -> PromptBatch:
        """A batch of the prompts ``rows`` (repeats allowed); this batch's cache is left as it is."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.lengths.device)
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        cache.batch_select_indices(rows.to(self.attention_mask.device))
        return PromptBatch(cache, self.attention_mask[rows], self.lengths[rows], self.last_logits[rows])


def prefill(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    device: torch.device,
    batch_size: int | None = None,
) -> PromptBatch:
    """Run the left-padded ``prompts`` once and keep their KV cache and last logits.

    The position ids are those of Hugging Face ``generate``: the cumulative sum of the attention mask minus one
    (1 on the padding, which is masked).

    With ``batch_size`` smaller than the number of prompts, the prompts run ``batch_size`` at a time, shortest
    first, and the caches are joined (each left-padded to the longest prompt): a large generation batch then costs
    the prompts' own tokens in the layers, not its longest prompt times its size. The padding stays in the joined
    cache, masked, where attention reads it. Models whose cache layers are not Hugging Face's plain
    ``DynamicLayer`` (sliding windows, ...) run the prompts in one pass.
    """
    if batch_size is not None and len(prompts) > batch_size and _joinable(model):
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        parts = [
            prefill(
                model, [prompts[i] for i in order[start : start + batch_size]], pad_token_id=pad_token_id, device=device
            )
            for start in range(0, len(order), batch_size)
        ]
        if all(_joinable_cache(part.cache) for part in parts):
            return _join(parts, order)
    samples = [EncodedSample(list(p), [IGNORE_INDEX] * len(p)) for p in prompts]
    batch = pad_samples(samples, pad_token_id, side="left")
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    return PromptBatch(_output_cache(out), mask, mask.sum(-1), out.logits[:, -1])


def _joinable(model: torch.nn.Module) -> bool:
    """Whether the model's config has no sliding window (whose cache layers keep a window state of their own)."""
    config = getattr(model, "config", None)
    types = getattr(config, "layer_types", None) or ()
    if any(kind != "full_attention" for kind in types):
        return False
    return not (getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))


def _joinable_cache(cache: Any) -> bool:
    """Whether every layer of ``cache`` is a plain ``DynamicLayer`` (keys and values, nothing else to join)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover (transformers < 4.56: no per-layer cache objects)
        return False
    layers = getattr(cache, "layers", None)
    return isinstance(layers, list) and all(type(layer) is DynamicLayer for layer in layers)


def _join(parts: Sequence[PromptBatch], order: Sequence[int]) -> PromptBatch:
    """One batch of the ``parts`` (prompts ``order[0]``, ``order[1]``, ... in turn), rows back in prompt order."""
    width = max(part.attention_mask.shape[1] for part in parts)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.as_tensor(order)] = torch.arange(len(order))
    inverse = inverse.to(parts[0].attention_mask.device)

    def joined(tensors: Sequence[Tensor], dim: int) -> Tensor:  # left-pad each along ``dim``, stack the rows
        padded = []
        for t in tensors:
            pad = [0, 0] * (t.dim() - 1 - dim) + [width - t.shape[dim], 0]
            padded.append(torch.nn.functional.pad(t, pad))
        return torch.cat(padded).index_select(0, inverse.to(padded[0].device))

    cache = copy.copy(parts[0].cache)
    cache.layers = [copy.copy(layer) for layer in parts[0].cache.layers]
    for number, layer in enumerate(cache.layers):
        layer.keys = joined([part.cache.layers[number].keys for part in parts], 2)
        layer.values = joined([part.cache.layers[number].values for part in parts], 2)
    mask = joined([part.attention_mask for part in parts], 1)
    lengths = torch.cat([part.lengths for part in parts]).index_select(0, inverse)
    last_logits = torch.cat([part.last_logits for part in parts]).index_select(
        0, inverse.to(parts[0].last_logits.device)
    )
    return PromptBatch(cache, mask, lengths, last_logits)


def continue_rows(
    model: torch.nn.Module, prompts: PromptBatch, tokens: Tensor, mask: Tensor, *, logits_to_keep: int = 0
) -> tuple[Tensor, Any]:
    """One forward pass of right-padded continuations ``tokens`` after the (already selected) ``prompts``.

    Args:
        model: the model that made ``prompts``.
        prompts: one prompt per continuation row (:meth:`PromptBatch.select`); its cache grows by the new tokens.
        tokens: ``[n, S]`` continuation token ids, right-padded.
        mask: ``[n, S]`` 1 on the continuation tokens.
        logits_to_keep: Hugging Face ``logits_to_keep`` (0: every position).

    Returns:
        The logits ``[n, S', V]`` and the grown cache.
    """
    steps = torch.arange(tokens.shape[1], device=tokens.device)
    positions = prompts.lengths.to(tokens.device).unsqueeze(-1) + steps
    out = model(
        input_ids=tokens,
        attention_mask=torch.cat([prompts.attention_mask, mask.to(prompts.attention_mask)], dim=1),
        position_ids=positions,
        use_cache=True,
        logits_to_keep=logits_to_keep,
        **{cache_keyword(model): prompts.cache},
    )
    return out.logits, prompts.cache


#: KV-cache memory a generation batch may take when ``generation_batch_size`` is left to :func:`generation_rows`, on
#: an accelerator: this fraction of its free memory.
ACCELERATOR_CACHE_FRACTION = 0.25
#: On the CPU: the size of one layer's key (or value) tensor. Hugging Face's dynamic cache grows each of them with
#: ``torch.cat`` at every decoding step, a new block each time, and glibc serves blocks above 32 MiB with fresh pages
#: that the copy then faults in: on the 2-core box, 1,017 TOFU prompts x 200 tokens of the tiny Llama took 25.7 s in
#: one batch (44 MB tensors), 8.7-9.1 s in batches of 128-385 (5-16 MB), 13.3 s in batches of 32 (2026-12-04).
CPU_LAYER_CACHE_BYTES = 16 * 1024**2


def _kv_shape(model: torch.nn.Module) -> tuple[int, int] | None:
    """(layers, bytes of one layer's keys for one token) from the Hugging Face config, None if it is unknown."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not layers or not heads:
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "hidden_size", 0) // heads
    if not head_dim:
        return None
    element = next(model.parameters()).element_size()
    return int(layers), int(kv_heads) * int(head_dim) * element


def kv_bytes_per_token(model: torch.nn.Module) -> int | None:
    """Bytes of KV cache one token takes in ``model`` (keys and values of every layer), None if its config is unknown.

    ``2 * layers * key_value_heads * head_dim * bytes per element``, from the Hugging Face config (``head_dim`` where
    the config has it, else ``hidden_size / num_attention_heads``; ``num_key_value_heads`` for grouped-query
    attention) and the dtype of the model's parameters.
    """
    shape = _kv_shape(model)
    return None if shape is None else 2 * shape[0] * shape[1]


def generation_rows(model: torch.nn.Module, tokens_per_row: int, *, limit: int, budget_bytes: int | None = None) -> int:
    """How many prompts to prefill and decode together: as many as ``limit`` whose KV cache fits the budget.

    Decoding is one forward pass per new token whatever the batch, so its cost per prompt falls with the batch while
    the step is bound by reading the weights (a GPU, a larger model on the CPU) or by per-call overhead (a small
    model); the scoring batch (32 in open-unlearning) is below that. The budget: on an accelerator
    :data:`ACCELERATOR_CACHE_FRACTION` of its free memory for the whole cache (:func:`kv_bytes_per_token` per token);
    on the CPU :data:`CPU_LAYER_CACHE_BYTES` for each layer's keys. A row costs ``tokens_per_row`` tokens (its
    longest prompt plus the generation budget). ``budget_bytes`` overrides the whole-cache budget.

    >>> from baldro_pl.toy import tiny_llama
    >>> model = tiny_llama(32, hidden_size=16, num_attention_heads=2, num_key_value_heads=1)
    >>> kv_bytes_per_token(model)  # 2 (keys, values) x 2 layers x 1 head x 8 dims x 4 bytes
    128
    >>> generation_rows(model, 200, limit=5000, budget_bytes=128 * 200 * 300)
    300
    >>> generation_rows(model, 200, limit=5000)  # CPU: 16 MiB of keys per layer, 32 bytes a token
    2621
    """
    if limit < 1:
        return 1
    shape = _kv_shape(model)
    if shape is None:
        return limit
    layers, layer_bytes = shape
    if budget_bytes is not None:
        per_row = 2 * layers * layer_bytes * tokens_per_row
    elif next(model.parameters()).device.type == "cuda":
        device = next(model.parameters()).device
        budget_bytes = int(ACCELERATOR_CACHE_FRACTION * torch.cuda.mem_get_info(device)[0])
        per_row = 2 * layers * layer_bytes * tokens_per_row
    else:
        budget_bytes, per_row = CPU_LAYER_CACHE_BYTES, layer_bytes * tokens_per_row
    return max(1, min(limit, budget_bytes // max(1, per_row)))
