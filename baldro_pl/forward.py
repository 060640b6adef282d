"""The teacher-forced forward pass of a causal LM: the one place where a model is called on a labelled batch.

Training (:meth:`baldro_pl.modules.base.CausalLMModule.batch_logits`), the reference cache, the likelihood metrics
and gradnorm all call :func:`teacher_forced_logits` (or :func:`forward_logprobs` on top of it), so that
``logits_to_keep`` (the LM head applied only from the earliest target position on) and the call's arguments exist
once. The objectives (:mod:`baldro_pl.objectives`) never call a model: they take these logits or log-probs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from baldro_pl.labels import IGNORE_INDEX
from baldro_pl.objectives.logprobs import TokenLogProbs, token_logprobs


def logits_to_keep_for(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """How many trailing positions need logits so that every target token of the batch is scored.

    The LM head over a 50k-150k vocabulary is a large share of a step; prompts need no logits. Returns the
    number of last positions to keep (Hugging Face ``logits_to_keep``), at least 2.
    """
    has_target = (labels[:, 1:] != ignore_index).any(0)
    if not bool(has_target.any()):
        return labels.shape[1]
    first_target = int(has_target.nonzero()[0, 0]) + 1  # sequence position of the earliest target
    return max(2, labels.shape[1] - first_target + 1)


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
    keep = 0 if all_positions else logits_to_keep_for(labels)
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep).logits


def forward_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    trim_logits: bool = True,
) -> TokenLogProbs:
    """One teacher-forced forward pass, returning the target log-probs (fp32, shifted, masked).

    With ``trim_logits`` the LM head is applied only from the earliest target position on (``logits_to_keep``),
    which gives identical values and saves the prompt part of the ``[B, T, V]`` logits.
    """
    logits = teacher_forced_logits(model, input_ids, attention_mask, labels, all_positions=not trim_logits)
    return token_logprobs(logits, labels)
