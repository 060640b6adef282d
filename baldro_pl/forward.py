"""The teacher-forced forward pass of a causal LM: the one place where a model is called on a labelled batch.

Training (:meth:`baldro_pl.modules.base.CausalLMModule.batch_logits`), the reference cache, the likelihood metrics
and gradnorm all call :func:`teacher_forced_logits` (or :func:`forward_logprobs` on top of it), so that
``logits_to_keep`` (the LM head applied only from the earliest target position on) and the call's arguments exist
once. The objectives (:mod:`baldro_pl.objectives`) never call a model: they take these logits or log-probs.

:func:`forward_logprobs` with ``chunk_size`` is the lean variant: the model's LM head is stood in for, during the
one call, by a module that turns the final hidden states into the target log-probs chunk by chunk
(:func:`~baldro_pl.objectives.logprobs.chunked_token_logprobs`), so the ``[B, L, V]`` logits never exist.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from baldro_pl.labels import IGNORE_INDEX
from baldro_pl.objectives.logprobs import TokenLogProbs, chunked_token_logprobs, token_logprobs


def logits_to_keep_for(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """How many trailing positions need logits so that every target token of the batch is scored.

    The LM head over a 50k-150k vocabulary is a large share of a step; prompts need no logits. Returns the
    number of last positions to keep (Hugging Face ``logits_to_keep``), at least 2.
    """
    (first,) = _first_target_positions([labels], ignore_index)
    return _keep_from_first(first, labels.shape[1])


def teacher_forced_logits(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, *, all_positions: bool = False
) -> Tensor:
    """Logits of one teacher-forced forward pass (no KV cache).

    From the earliest target position of ``labels`` on (:func:`logits_to_keep_for`), or at every position with
    ``all_positions`` (prompt and padding included).

    Returns:
        ``[B, L, V]``; ``logits[:, j]`` belongs to sequence position ``T - L + j`` (what
        :func:`~baldro_pl.objectives.logprobs.token_logprobs` aligns the labels to).
    """
    return _call(model, input_ids, attention_mask, 0 if all_positions else logits_to_keep_for(labels)).logits


def _call(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, keep: int):
    """The model's teacher-forced call: no KV cache, the LM head over the last ``keep`` positions (0: all)."""
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep)


def check_chunk_size(value: object, setting: str = "chunk_size") -> int | None:
    """``value`` if it is a valid log-prob chunk size (a positive int, or None for the full logits), else raise.

    Args:
        value: the setting's value.
        setting: its name, for the error message.

    Raises:
        ValueError: ``value`` is neither None nor an int > 0 (a bool is refused too).
    """
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ValueError(
        f"{setting} must be a positive int (target tokens whose logits are computed at once) or None (the whole "
        f"batch's logits at once), got {value!r}"
    )


class _LogProbHead(torch.nn.Module):
    """Stands in for a causal LM's head during one forward call: hidden states in, target log-probs out.

    Receives the final hidden states ``[B, L, H]`` (already cut by ``logits_to_keep``) and returns the ``[B, L - 1]``
    target log-probs of :func:`~baldro_pl.objectives.logprobs.chunked_token_logprobs`, which the model hands back
    as its ``.logits``. The real head is used inside it (an ``nn.Linear`` through its weight and bias, which the
    backward reads again, as ``nn.Linear``'s own backward does; any other head module is called per chunk) but is
    not registered as a submodule: the model's parameters stay where they are. Under FSDP1
    (:mod:`baldro_pl.strategies`) the head's weight is gathered for the forward of the unit that owns it and
    gathered again by that unit's pre-backward hook (on its outputs, these log-probs among them) before the backward
    reads it.
    """

    def __init__(self, head: torch.nn.Module, labels: Tensor, chunk_size: int, ignore_index: int) -> None:
        super().__init__()
        self.__dict__["head"] = head  # not a submodule
        self.labels = labels
        self.chunk_size = chunk_size
        self.ignore_index = ignore_index
        self.result: TokenLogProbs | None = None
        self.version = -1

    def forward(self, hidden: Tensor) -> Tensor:
        """``[B, L - 1]`` log p of each target token (0 off the targets), from ``[B, L, H]`` hidden states."""
        if self.result is not None:
            raise RuntimeError("the log-prob head was called twice in one forward pass")
        self.result = chunked_token_logprobs(hidden, self.head, self.labels, self.chunk_size, self.ignore_index)
        self.version = self.result.logp._version
        return self.result.logp

    def take(self, model: torch.nn.Module, logits: Tensor) -> TokenLogProbs:
        """The log-probs, once checked to be what the model returned as ``.logits``, untouched.

        Raises:
            ValueError: the model never called its head, or changed its output (soft-capping, scaling, ...).
        """
        name = type(getattr(model, "module", model)).__name__
        result = self.result
        if result is None:
            raise ValueError(f"{name}: the forward pass did not call get_output_embeddings(); chunk_size needs it")
        if logits is not result.logp or logits._version != self.version:
            raise ValueError(
                f"{name} post-processes its LM head's output (e.g. logit soft-capping or scaling), which the "
                f"chunked log-probs cannot reproduce: use chunk_size=None (logprob_chunk_size: null) with this model"
            )
        return result


@contextmanager
def logprob_head(
    model: torch.nn.Module, labels: Tensor, chunk_size: int, ignore_index: int = IGNORE_INDEX
) -> Iterator[_LogProbHead]:
    """Within the block, ``model``'s LM head returns the target log-probs of ``labels`` instead of logits.

    The head (``model.get_output_embeddings()``) is replaced with ``model.set_output_embeddings`` and put back on
    leaving the block, even on error. The model is then called as usual inside its own ``forward`` (which under
    FSDP gathers the head's weight), and ``.take(model, output.logits)`` returns the checked
    :class:`~baldro_pl.objectives.logprobs.TokenLogProbs`.

    Args:
        model: a Hugging Face causal LM (possibly FSDP-wrapped) whose forward passes its head's output on unchanged.
        labels: ``[B, T]`` labels of the batch, ``ignore_index`` on unscored positions.
        chunk_size: target tokens per chunk (:func:`~baldro_pl.objectives.logprobs.chunked_token_logprobs`).
        ignore_index: label value of unscored positions.

    Raises:
        ValueError: the model has no output embedding.
    """
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if head is None:
        name = type(getattr(model, "module", model)).__name__
        raise ValueError(f"{name} has no output embedding (get_output_embeddings()): chunk_size needs an LM head")
    stand_in = _LogProbHead(head, labels, chunk_size, ignore_index)
    model.set_output_embeddings(stand_in)
    try:
        yield stand_in
    finally:
        model.set_output_embeddings(head)


def forward_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    trim_logits: bool = True,
    chunk_size: int | None = None,
) -> TokenLogProbs:
    """One teacher-forced forward pass, returning the target log-probs (fp32, shifted, masked).

    With ``trim_logits`` the LM head is applied only from the earliest target position on (``logits_to_keep``),
    which gives identical values and saves the prompt part of the ``[B, T, V]`` logits.

    With ``chunk_size`` the ``[B, L, V]`` logits are never materialised: during the call the model's head is stood
    in for by :func:`logprob_head`, which applies the real head and the cross-entropy to the target tokens' hidden
    states only, ``chunk_size`` of them at a time, recomputing each chunk in the backward
    (:func:`~baldro_pl.objectives.logprobs.chunked_token_logprobs`). Same values and gradients as without it
    (within fp32 rounding); the model's forward must pass its head's output through unchanged (Llama, Mistral,
    Qwen2/3, Phi-3, OLMo-2 and SmolLM3 do in transformers 5.24; Gemma-2's soft-capping, Cohere's or Granite's
    scaling do not: the call then fails with an error naming the model class, checked on the output itself).

    Args:
        model: a Hugging Face causal LM.
        input_ids: ``[B, T]`` token ids.
        attention_mask: ``[B, T]`` 1 on real tokens.
        labels: ``[B, T]`` labels, ``IGNORE_INDEX`` on unscored positions.
        trim_logits: score only from the earliest target position on (else every position is run through the head).
        chunk_size: None (the whole batch's logits at once) or the number of target tokens whose logits exist at
            once.

    Returns:
        :class:`~baldro_pl.objectives.logprobs.TokenLogProbs` of shape ``[B, L - 1]``.

    Raises:
        ValueError: a bad ``chunk_size``, or a model whose forward post-processes its head's output.
    """
    check_chunk_size(chunk_size)
    keep = logits_to_keep_for(labels) if trim_logits else 0
    return _logprobs_keeping(model, input_ids, attention_mask, labels, keep, chunk_size)


def _logprobs_keeping(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, keep: int, chunk_size: int | None
) -> TokenLogProbs:
    """The forward pass of :func:`forward_logprobs` with its ``logits_to_keep`` already decided (0: all positions)."""
    if chunk_size is None:
        return token_logprobs(_call(model, input_ids, attention_mask, keep).logits, labels)
    with logprob_head(model, labels, chunk_size) as head:
        out = _call(model, input_ids, attention_mask, keep)
    return head.take(model, out.logits)


def forward_logprobs_joint(
    model: torch.nn.Module, sides: Sequence[dict[str, Tensor]], *, chunk_size: int | None = None
) -> list[TokenLogProbs]:
    """One forward pass over several labelled batches at once: each one's target log-probs, as if run alone.

    An unlearning step scores a forget batch and a retain batch with the same model. Run as two calls, a step pays
    every kernel launch and every FSDP weight gather twice; on a GPU at the presets' micro-batches that, not the
    arithmetic, sets the time (1.1B Llama, 8 + 8 rows of 256 tokens on an H200: one pass over the 16 rows 78-81 ms
    forward + backward, two passes of 8 rows 131-150 ms; docs/benchmarks.md, "GPU suite"). Here the sides are right
    padded to the longest (``attention_mask`` 0, label ``IGNORE_INDEX``: causal attention leaves every real position
    as it was), concatenated along the batch, scored by one :func:`forward_logprobs` call, and cut back into
    :class:`~baldro_pl.objectives.logprobs.TokenLogProbs` of exactly the shape a call on each side alone returns
    (same columns, same target positions; values equal within floating-point rounding of the larger matmuls).

    Args:
        model: a Hugging Face causal LM.
        sides: batches with ``input_ids``, ``attention_mask`` and ``labels`` (``[B_i, T_i]``); right padded, as the
            datamodules pad.
        chunk_size: as in :func:`forward_logprobs`.

    Returns:
        One :class:`~baldro_pl.objectives.logprobs.TokenLogProbs` per side, ``[B_i, keep_i - 1]`` with ``keep_i``
        :func:`logits_to_keep_for` of that side's labels.
    """
    check_chunk_size(chunk_size)
    length = max(side["labels"].shape[1] for side in sides)
    firsts = _first_target_positions([side["labels"] for side in sides])

    def padded(key: str, value: int) -> Tensor:
        return torch.cat([F.pad(side[key], (0, length - side[key].shape[1]), value=value) for side in sides])

    labels = padded("labels", IGNORE_INDEX)
    joint_first = min(firsts)
    keep = _keep_from_first(joint_first, length)
    whole = _logprobs_keeping(model, padded("input_ids", 0), padded("attention_mask", 0), labels, keep, chunk_size)
    out, start = [], 0
    for side, first in zip(sides, firsts):
        rows, side_length = side["labels"].shape
        side_keep = _keep_from_first(first, side_length)
        # column c of a side alone scores sequence position side_length - side_keep + 1 + c; of the joint pass,
        # length - keep + 1 + c: the side's columns start `offset` columns in (before the first when negative: a side
        # without targets, or whose only target is its last token, has columns the joint pass never scored: zeros)
        offset = (side_length - side_keep) - (length - keep)
        logp, mask = whole.logp[start : start + rows], whole.mask[start : start + rows]
        if offset < 0:
            logp, mask = F.pad(logp, (-offset, 0)), F.pad(mask, (-offset, 0))
            offset = 0
        out.append(TokenLogProbs(logp[:, offset : offset + side_keep - 1], mask[:, offset : offset + side_keep - 1]))
        start += rows
    return out


def _first_target_positions(labels: Sequence[Tensor], ignore_index: int = IGNORE_INDEX) -> list[int]:
    """Each batch's earliest target position (its length when it has none), with one device sync for all."""
    firsts = []
    for batch_labels in labels:
        none = torch.tensor(batch_labels.shape[1], device=batch_labels.device)
        if batch_labels.shape[1] < 2:  # no position can be a target
            firsts.append(none)
            continue
        has_target = (batch_labels[:, 1:] != ignore_index).any(0)
        firsts.append(torch.where(has_target.any(), has_target.int().argmax() + 1, none))
    return [int(first) for first in torch.stack(firsts).tolist()]


def _keep_from_first(first: int, length: int) -> int:
    """:func:`logits_to_keep_for` from a batch's earliest target position ``first`` (``length``: no target)."""
    return length if first >= length else max(2, length - first + 1)
