"""``JsonDataModule``: forget/retain sets from any local record file or Hugging Face dataset.

Sources: a local ``.json`` (array), ``.jsonl``, ``.csv`` or ``.parquet`` file, a folder written by
``datasets``' ``save_to_disk``, or a hub dataset name with an optional configuration and split
(:func:`~baldro_pl.datamodules.records.load_rows`). How rows become samples (QA, completion or pretraining windows,
and which fields) is one :class:`~baldro_pl.datamodules.row_format.RowFormat`.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from baldro_pl.datamodules.base import UnlearningDataModule
from baldro_pl.datamodules.encoding import encode_rows
from baldro_pl.datamodules.records import DataError, load_rows, looks_like_local_path
from baldro_pl.datamodules.row_format import DEFAULT_ROW_FORMAT, RowFormat


class JsonDataModule(UnlearningDataModule):
    """Custom forget/retain data with configurable field names.

    Args:
        forget: forget set source (file, ``save_to_disk`` folder or hub dataset name).
        retain: retain set source, or None for forget-only methods (batches then have only a ``"forget"`` side).
        forget_config: hub configuration of ``forget``.
        forget_split: hub split (or ``DatasetDict`` split) of ``forget``.
        retain_config: hub configuration of ``retain``.
        retain_split: hub split (or ``DatasetDict`` split) of ``retain``.
        row_format: how rows become samples: the mode and the field names (default: QA rows with ``question``
            and ``answer``); rows that are bare strings are read as its ``text_key`` field.
        evaluation: extra evaluation sets, name → local file, returned raw by :meth:`evaluation_rows`.
        alternate_answers: a file of alternative ("I don't know") answers, one per line, for IdkNLL and IdkDPO (QA
            rows only; see :class:`~baldro_pl.datamodules.TOFUDataModule`): each forget row gets one, drawn from
            ``seed`` and fixed for the run, carried as ``batch["forget"]["alternate"]``. None (default): none.
        alternate_answer_key: field read from lines of ``alternate_answers`` that are JSON objects.
        **kwargs: the :class:`UnlearningDataModule` arguments (``tokenizer``, ``prompt_format``, ``max_length``, ...).
    """

    benchmark = "custom"

    def __init__(
        self,
        *,
        forget: str,
        retain: str | None = None,
        forget_config: str | None = None,
        forget_split: str = "train",
        retain_config: str | None = None,
        retain_split: str = "train",
        row_format: RowFormat = DEFAULT_ROW_FORMAT,
        evaluation: dict[str, str] | None = None,
        alternate_answers: str | None = None,
        alternate_answer_key: str = "answer",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(row_format, RowFormat):
            raise ValueError(f"row_format must be a RowFormat, got {type(row_format).__name__}")
        if alternate_answers is not None and row_format.mode != "qa":
            raise ValueError(
                f"alternate_answers needs row_format.mode 'qa' (an alternative answer replaces a QA row's answer), "
                f"got {row_format.mode!r}"
            )
        self.alternate_answers = alternate_answers
        self.alternate_answer_key = alternate_answer_key
        self.forget = forget
        self.retain = retain
        self.forget_config = forget_config
        self.forget_split = forget_split
        self.retain_config = retain_config
        self.retain_split = retain_split
        self.row_format = row_format
        self.evaluation = dict(evaluation or {})

    def prepare_data(self) -> None:
        """Read (and for hub names, download) the sources once on process 0 so that failures show early."""
        self._read(self.forget, self.forget_config, self.forget_split)
        if self.retain is not None:
            self._read(self.retain, self.retain_config, self.retain_split)

    def _check_sources(self) -> None:
        for source in (self.forget, self.retain):
            if source is not None and looks_like_local_path(source) and not Path(source).expanduser().exists():
                raise DataError(f"{source}: no such file or directory")

    def _read(self, source: str, config: str | None = None, split: str = "train") -> tuple[list[dict], str]:
        """Rows of one source (bare strings read as the row format's ``text_key``) and a label naming it."""
        return load_rows(source, config=config, split=split, string_field=self.row_format.text_key)

    def _encode(self, source: str, config: str | None, split: str) -> Dataset:
        rows, label = self._read(source, config, split)
        return encode_rows(
            rows,
            self.tokenizer,
            self.prompt_format,
            source=label,
            row_format=self.row_format,
            max_length=self.max_length,
        )

    def _build_forget(self) -> Dataset:
        return self._encode(self.forget, self.forget_config, self.forget_split)

    def _build_retain(self) -> Dataset | None:
        if self.retain is None:
            return None
        return self._encode(self.retain, self.retain_config, self.retain_split)

    def _forget_qa_rows(self) -> tuple[list[dict], str, str]:
        rows, label = self._read(self.forget, self.forget_config, self.forget_split)
        return rows, label, self.row_format.question_key

    def _load_evaluation_rows(self) -> dict[str, list[dict]]:
        return {name: self._read(path)[0] for name, path in self.evaluation.items()}
