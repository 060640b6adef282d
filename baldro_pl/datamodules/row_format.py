"""``RowFormat``: how the rows of a record file become training or scoring samples.

One value that travels whole from YAML to the tokeniser, instead of six loose settings::

    data:
      class_path: baldro_pl.datamodules.JsonDataModule
      init_args:
        forget: forget.jsonl
        row_format: {mode: qa, question_key: q, answer_key: a}

The three modes (:func:`~baldro_pl.datamodules.encoding.encode_rows` applies them):

* ``"qa"``: ``question_key``/``answer_key`` through the prompt format, answer + EOS scored (metrics-spec §1.2);
* ``"completion"``: one sample per row, ``text_key`` scored after an optional ``prefix_key`` (metrics-spec §1.3);
* ``"pretraining"``: the ``text_key`` of all rows concatenated and cut into ``max_length``-token windows
  (open-unlearning's ``PretrainingDataset``, as for MUSE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Mode = Literal["qa", "completion", "pretraining"]
MODES: tuple[str, ...] = get_args(Mode)


@dataclass(frozen=True)
class RowFormat:
    """Which fields of a row are read, and how they become a sample.

    Args:
        mode: ``"qa"``, ``"completion"`` or ``"pretraining"`` (see the module docstring).
        question_key: question field (``"qa"``).
        answer_key: answer field (``"qa"``).
        text_key: text field (``"completion"``, ``"pretraining"``); rows that are bare strings are read as this field.
        prefix_key: prefix field for ``"completion"`` (None: no prefix, only the first token is masked).
        insert_space: put a space between prefix and text (``"completion"``; MUSE verbmem uses True).

    Raises:
        ValueError: ``mode`` is not one of the three modes.

    Example:
        >>> RowFormat(question_key="q", answer_key="a").mode
        'qa'
        >>> RowFormat(mode="chat")
        Traceback (most recent call last):
        ...
        ValueError: mode must be 'qa', 'completion' or 'pretraining', got 'chat'
    """

    mode: Mode = "qa"
    question_key: str = "question"
    answer_key: str = "answer"
    text_key: str = "text"
    prefix_key: str | None = None
    insert_space: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'qa', 'completion' or 'pretraining', got {self.mode!r}")


DEFAULT_ROW_FORMAT = RowFormat()
"""QA rows with ``question`` and ``answer`` fields (the default of every ``row_format`` setting)."""
