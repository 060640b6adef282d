"""Label conventions shared by the data, the objectives and the metrics: defined here once.

* ``IGNORE_INDEX`` (-100, as in Hugging Face and PyTorch's ``cross_entropy``) marks the positions that are not scored
  (prompt, padding);
* logits at position ``t`` predict the label at ``t + 1`` (metrics-spec §1.5): :func:`shift_labels` aligns labels
  with ``logits[:, :-1]``.

Only torch: the floor of the package.
"""

from __future__ import annotations

from torch import Tensor

IGNORE_INDEX = -100
"""Label of a position that is not scored (prompt, padding)."""


def shift_labels(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Labels aligned with ``logits[:, :-1]``: returns ``(targets [B, T-1], mask [B, T-1])``.

    Masked targets are replaced by 0 so that they can be used as gather indices.
    """
    targets = labels[:, 1:]
    mask = targets != ignore_index
    return targets.masked_fill(~mask, 0), mask


def scored_ids(labels: list[int]) -> list[int]:
    """The label ids of one sample that are scored (not ``IGNORE_INDEX``), in order.

    >>> scored_ids([-100, -100, 5, 7])
    [5, 7]
    """
    return [t for t in labels if t != IGNORE_INDEX]
