"""TOFU (Maini et al. 2024, ``locuslab/TOFU``): forget/retain training sets and the evaluation splits.

Split pairing and evaluation splits follow metrics-spec §2.1: ``forget01 ↔ retain99 ↔ holdout01``,
``forget05 ↔ retain95 ↔ holdout05``, ``forget10 ↔ retain90 ↔ holdout10``; forget-side metrics read
``forgetXX_perturbed``, the retain-side ones the fixed 400-row ``retain_perturbed`` (pitfall P12).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from baldro_pl.datamodules.base import UnlearningDataModule
from baldro_pl.datamodules.encoding import encode_qa_rows
from baldro_pl.datamodules.records import (
    DataError,
    check_fields,
    looks_like_local_path,
    read_hub_dataset,
    read_records,
    read_saved_dataset,
)

FORGET_SPLITS = {
    "forget01": ("retain99", "holdout01"),
    "forget05": ("retain95", "holdout05"),
    "forget10": ("retain90", "holdout10"),
}
RETAIN_SPLITS = ("retain99", "retain95", "retain90")
HOLDOUT_SPLITS = ("holdout01", "holdout05", "holdout10")
EVALUATION_KEYS = ("forget", "retain", "real_authors", "world_facts", "holdout")
_SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json")


def _splits_present(directory: Path) -> str:
    """Names of the TOFU-style splits in a directory, for messages (``"forget01, forget05, ..."``)."""
    names = sorted(
        {p.stem for p in directory.iterdir() if p.is_file() and p.suffix in (".jsonl", ".json")}
        | {p.name for p in directory.iterdir() if p.is_dir() and any((p / m).is_file() for m in _SAVED_MARKERS)}
    )
    if not names:
        return "none"
    return ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")


def locate_tofu_split(directory: Path, split: str) -> Path:
    """The file (or ``save_to_disk`` folder) holding ``split`` in a local TOFU directory.

    Raises:
        DataError: the split is not there (the message lists the splits present, and points at a ``tofu/``
            subfolder when ``directory`` is its parent), or ``<split>.jsonl`` / ``<split>.json`` is a directory.
    """
    for candidate in (directory / f"{split}.jsonl", directory / f"{split}.json"):
        if candidate.is_file():
            return candidate
        if candidate.is_dir():
            raise DataError(
                f"{candidate}: is a directory; expected the {candidate.suffix} file of TOFU split {split!r}"
            )
    folder = directory / split
    if folder.is_dir():
        return folder
    hint = ""
    if (directory / "tofu").is_dir():
        hint = f"; did you mean data_dir: {directory / 'tofu'}?"
    raise DataError(
        f"{directory}: TOFU split {split!r} not found (expected {split}.jsonl, {split}.json or a {split}/ folder "
        f"written by datasets' save_to_disk; splits present: {_splits_present(directory)}){hint}"
    )


def load_tofu_split(data_dir: str | Path, split: str) -> tuple[list[dict], str]:
    """Rows of one TOFU split and a label naming where they came from.

    ``data_dir`` is either a local directory holding ``<split>.jsonl`` (the layout of ../shared/data/tofu),
    ``<split>.json`` (a JSON array) or ``<split>/`` (a ``datasets`` ``save_to_disk`` folder), or a hub dataset
    name (``locuslab/TOFU``: one configuration per split, each with a single split ``train``).

    Raises:
        DataError: the split is not there, or its file is unreadable.
    """
    source = str(data_dir)
    path = Path(source).expanduser()
    if path.is_dir():
        location = locate_tofu_split(path, split)
        if location.is_dir():
            return read_saved_dataset(location, "train"), str(location)
        return read_records(location), str(location)
    if looks_like_local_path(source) or path.exists():
        what = "it is a file" if path.is_file() else "it does not exist"
        raise DataError(
            f"TOFU data_dir {source!r} is not a directory ({what}); expected a directory holding <split>.jsonl files"
        )
    return read_hub_dataset(source, split, "train"), f"{source}/{split}"


class TOFUDataModule(UnlearningDataModule):
    """TOFU forget/retain training data and evaluation rows.

    Args:
        data_dir: local directory (see :func:`load_tofu_split`) or hub dataset name (default ``locuslab/TOFU``,
            needs the network or the local cache).
        forget_split: ``"forget01"``, ``"forget05"`` or ``"forget10"``.
        retain_split: retain training split (None: the complement of the forget split, e.g. ``retain90``).
        holdout_split: holdout split for MIA (None: the one paired with the forget split, e.g. ``holdout10``).
        question_key: question field of the training rows (``paraphrased_question`` is possible on the
            ``*_perturbed`` splits only).
        answer_key: answer field of the training rows.
        alternate_answers: a file of alternative ("I don't know") answers (e.g. ``<tofu dir>/idontknow.jsonl``, one
            per line; :func:`~baldro_pl.datamodules.alternate.read_alternate_answers`) for IdkNLL and IdkDPO: each
            forget row gets one, drawn from ``seed`` and fixed for the run, and training batches carry it as
            ``batch["forget"]["alternate"]``. None (default): no alternate side.
        alternate_answer_key: field read from lines of ``alternate_answers`` that are JSON objects.
        **kwargs: the :class:`UnlearningDataModule` arguments (``tokenizer``, ``prompt_format``, ``max_length``,
            ``batch_size``, ...).

    Raises:
        ValueError: an unknown split name (the message lists the valid ones).
    """

    benchmark = "tofu"

    def __init__(
        self,
        *,
        data_dir: str = "locuslab/TOFU",
        forget_split: Literal["forget01", "forget05", "forget10"] = "forget10",
        retain_split: Literal["retain99", "retain95", "retain90"] | None = None,
        holdout_split: Literal["holdout01", "holdout05", "holdout10"] | None = None,
        question_key: str = "question",
        answer_key: str = "answer",
        alternate_answers: str | None = None,
        alternate_answer_key: str = "answer",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.alternate_answers = alternate_answers
        self.alternate_answer_key = alternate_answer_key
        if forget_split not in FORGET_SPLITS:
            raise ValueError(f"TOFU forget_split {forget_split!r} is unknown; valid: {', '.join(FORGET_SPLITS)}")
        if retain_split is not None and retain_split not in RETAIN_SPLITS:
            raise ValueError(f"TOFU retain_split {retain_split!r} is unknown; valid: {', '.join(RETAIN_SPLITS)}")
        if holdout_split is not None and holdout_split not in HOLDOUT_SPLITS:
            raise ValueError(f"TOFU holdout_split {holdout_split!r} is unknown; valid: {', '.join(HOLDOUT_SPLITS)}")
        self.data_dir = data_dir
        self.forget_split = forget_split
        self.retain_split = retain_split or FORGET_SPLITS[forget_split][0]
        self.holdout_split = holdout_split or FORGET_SPLITS[forget_split][1]
        self.question_key = question_key
        self.answer_key = answer_key
        self._evaluation_labels: dict[str, str] = {}

    def evaluation_splits(self) -> dict[str, str]:
        """Which TOFU split each evaluation key reads (metrics-spec §2.1)."""
        return {
            "forget": f"{self.forget_split}_perturbed",
            "retain": "retain_perturbed",
            "real_authors": "real_authors_perturbed",
            "world_facts": "world_facts_perturbed",
            "holdout": self.holdout_split,
        }

    def prepare_data(self) -> None:
        """Download the splits once (process 0) when ``data_dir`` is a hub name; nothing for a local directory."""
        if not Path(self.data_dir).expanduser().is_dir():
            for split in (self.forget_split, self.retain_split, *self.evaluation_splits().values()):
                load_tofu_split(self.data_dir, split)

    def _check_sources(self) -> None:
        path = Path(self.data_dir).expanduser()
        if path.is_dir():
            for split in (self.forget_split, self.retain_split):
                locate_tofu_split(path, split)

    def _encode_split(self, split: str) -> Dataset:
        rows, label = load_tofu_split(self.data_dir, split)
        return encode_qa_rows(
            rows,
            self.tokenizer,
            self.prompt_format,
            source=label,
            question_key=self.question_key,
            answer_key=self.answer_key,
            max_length=self.max_length,
        )

    def _build_forget(self) -> Dataset:
        return self._encode_split(self.forget_split)

    def _build_retain(self) -> Dataset:
        return self._encode_split(self.retain_split)

    def _forget_qa_rows(self) -> tuple[list[dict], str, str]:
        rows, label = load_tofu_split(self.data_dir, self.forget_split)
        return rows, label, self.question_key

    def _load_evaluation_rows(self) -> dict[str, list[dict]]:
        out = {}
        for key, split in self.evaluation_splits().items():
            rows, label = load_tofu_split(self.data_dir, split)
            self._evaluation_labels[key] = label
            if not rows:
                raise DataError(f"{label}: the evaluation split {split!r} is empty")
            if key in ("forget", "retain"):
                check_fields(
                    rows,
                    label,
                    strings=("question", "answer", "paraphrased_answer"),
                    string_lists=("perturbed_answer",),
                    non_empty=("perturbed_answer",),
                )
            elif key == "holdout":
                check_fields(rows, label, strings=("question", "answer"))
            else:
                check_fields(rows, label, strings=("question", "answer"), string_lists=("perturbed_answer",))
            out[key] = rows
        return out

    def _build_validation(self) -> list[Dataset]:
        """Forget and retain evaluation sets for ``validate``/``test``.

        The QA pairs of ``forgetXX_perturbed`` and ``retain_perturbed`` (no retain training set needed).
        """
        self._ensure_tokenizer()
        rows = self.evaluation_rows()
        return [
            encode_qa_rows(
                rows[key],
                self.tokenizer,
                self.prompt_format,
                source=self._evaluation_labels.get(key, self.evaluation_splits()[key]),
                question_key="question",
                answer_key="answer",
                max_length=self.max_length,
            )
            for key in ("forget", "retain")
        ]
