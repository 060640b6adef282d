"""Padding of tokenised samples into batches.

A batch is a dict of tensors: ``input_ids`` and ``labels`` ``[B, T]``, ``attention_mask`` ``[B, T]`` and ``index``
``[B]`` (each sample's dataset row, which keys the reference-likelihood cache and the per-sample metric logs).
Right padding for scoring and training, left padding for generation (metrics-spec §1.4).

The attention mask is built from the true lengths, not as ``input_ids != pad_token_id``: open-unlearning's form masks
real EOS tokens whenever pad == EOS (its issue #128, metrics-spec P1). For the Llama-2 template both give the same
scores (only the trailing EOS, from which nothing is predicted, differs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from baldro_pl.datamodules.formatting import EncodedSample
from baldro_pl.labels import IGNORE_INDEX


def pad_samples(
    samples: Sequence[EncodedSample],
    pad_token_id: int,
    *,
    side: Literal["right", "left"] = "right",
) -> dict[str, Tensor]:
    """Stack samples into a padded batch (see module docstring for the keys)."""
    if not samples:
        raise ValueError("pad_samples: empty batch")
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, cols] = torch.tensor(s.input_ids, dtype=torch.long)
        labels[row, cols] = torch.tensor(s.labels, dtype=torch.long)
        mask[row, cols] = 1
    index = torch.tensor([s.index for s in samples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": index}


class PadCollator:
    """A picklable ``collate_fn`` for DataLoaders of :class:`EncodedSample` (works with worker processes)."""

    def __init__(self, pad_token_id: int, side: Literal["right", "left"] = "right") -> None:
        self.pad_token_id = pad_token_id
        self.side = side

    def __call__(self, samples: Sequence[EncodedSample]) -> dict[str, Tensor]:
        """One padded batch of ``samples`` (:func:`pad_samples` on this collator's side)."""
        return pad_samples(samples, self.pad_token_id, side=self.side)
