"""MUSE (Shi et al. 2024; ``muse-bench/MUSE-News``, ``muse-bench/MUSE-Books``): corpora and evaluation rows.

Training data are raw text corpora (``raw/forget``, ``raw/retain1``) cut into fixed-length token windows
(:func:`~baldro_pl.datamodules.encoding.chunk_corpus`, open-unlearning's ``PretrainingDataset``, 2048 tokens in
the reference runs). Evaluation splits follow metrics-spec §3.1.

Locations are written as paths relative to the corpus folder, ``<config>/<split>.json``; on the hub the same path
names the dataset configuration and split (``raw/retain1.json`` → config ``raw``, split ``retain1``). The MUSE
texts are copyrighted (../shared/data/muse/SOURCE.md): keep them local, never copy them into a package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from baldro_pl.datamodules.base import UnlearningDataModule
from baldro_pl.datamodules.encoding import encode_qa_rows, encode_rows
from baldro_pl.datamodules.formatting import PromptFormat
from baldro_pl.datamodules.records import DataError, check_fields, looks_like_local_path, read_hub_dataset, read_records
from baldro_pl.datamodules.row_format import RowFormat

HUB_NAMES = {"news": "MUSE-News", "books": "MUSE-Books"}

# evaluation key -> candidate locations (the shared copy has the older names retain2_qa*, the hub retain_qa*)
EVALUATION_FILES: dict[str, tuple[str, ...]] = {
    "verbmem_forget": ("verbmem/forget.json",),
    "knowmem_forget_qa": ("knowmem/forget_qa.json",),
    "knowmem_forget_qa_icl": ("knowmem/forget_qa_icl.json",),
    "knowmem_retain_qa": ("knowmem/retain_qa.json", "knowmem/retain2_qa.json"),
    "knowmem_retain_qa_icl": ("knowmem/retain_qa_icl.json", "knowmem/retain2_qa_icl.json"),
    "privleak_forget": ("privleak/forget.json",),
    "privleak_holdout": ("privleak/holdout.json",),
}
EVALUATION_FIELDS = {"verbmem": ("prompt", "gt"), "knowmem": ("question", "answer"), "privleak": ("text",)}
VERBMEM_ROWS = RowFormat(mode="completion", text_key="gt", prefix_key="prompt", insert_space=True)
"""verbmem rows as scored continuations: ``prompt`` masked, a space, ``gt`` scored (metrics-spec §1.3)."""


class MUSEDataModule(UnlearningDataModule):
    r"""MUSE forget/retain corpora (token windows) and evaluation rows.

    Args:
        data_dir: a local folder holding ``news/`` and/or ``books/`` (the layout of ../shared/data/muse), or the
            corpus folder itself; or a hub organisation (default ``muse-bench``: ``muse-bench/MUSE-News``...).
        corpus: ``"news"`` or ``"books"``.
        forget_file: forget corpus, relative to the corpus folder (or an absolute path to a local file).
        retain_file: retain corpus, same convention (default ``raw/retain1.json``; the shared copy lacks it, and
            ``privleak/retain2.json`` can stand in for tests).
        text_key: text field of corpus rows that are objects (rows that are plain strings are used as they are).
        max_length: tokens per training window (2048 in the reference runs).
        **kwargs: the :class:`UnlearningDataModule` arguments; ``prompt_format`` defaults to
            ``Question: q\nAnswer: `` (MUSE knowmem, metrics-spec §1.1).
    """

    benchmark = "muse"

    def __init__(
        self,
        *,
        data_dir: str = "muse-bench",
        corpus: Literal["news", "books"] = "news",
        forget_file: str = "raw/forget.json",
        retain_file: str = "raw/retain1.json",
        text_key: str = "text",
        max_length: int = 2048,
        **kwargs,
    ) -> None:
        super().__init__(max_length=max_length, **kwargs)
        if corpus not in HUB_NAMES:
            raise ValueError(f"MUSE corpus {corpus!r} is unknown; valid: {', '.join(HUB_NAMES)}")
        self.data_dir = data_dir
        self.corpus = corpus
        self.forget_file = forget_file
        self.retain_file = retain_file
        self.text_key = text_key

    @classmethod
    def default_prompt_format(cls) -> PromptFormat:
        r"""``Question: q\nAnswer: `` (metrics-spec §1.1, Llama-2-7b-hf)."""
        return PromptFormat.muse_qa()

    # ------------------------------------------------------------------ locations
    def corpus_dir(self) -> Path | None:
        """The local corpus folder, or None when ``data_dir`` names the hub."""
        root = Path(self.data_dir).expanduser()
        if (root / self.corpus).is_dir():
            return root / self.corpus
        if root.is_dir():
            if any((root / sub).is_dir() for sub in ("raw", "knowmem", "verbmem", "privleak")):
                return root
            present = sorted(name for name in HUB_NAMES if (root / name).is_dir())
            hint = f"; corpus folders present: {', '.join(present)}" if present else ""
            if not present and (root / "muse").is_dir():
                hint = f"; did you mean data_dir: {root / 'muse'}?"
            raise DataError(f"{root}: no MUSE corpus folder {self.corpus!r} (expected {root / self.corpus}){hint}")
        if looks_like_local_path(self.data_dir) or root.exists():
            what = "it is a file" if root.is_file() else "it does not exist"
            raise DataError(
                f"MUSE data_dir {self.data_dir!r} is not a directory ({what}); "
                "expected a folder holding news/ or books/"
            )
        return None

    def locate(self, *candidates: str) -> Path | None:
        """The first existing local file among the candidate locations (None when reading from the hub).

        Raises:
            DataError: no candidate exists locally (the message lists the paths tried).
        """
        base = self.corpus_dir()
        if base is None:
            return None
        tried = []
        for location in candidates:
            path = Path(location).expanduser()
            path = path if path.is_absolute() else base / path
            if path.is_file():
                return path
            if path.is_dir():
                raise DataError(f"{path}: is a directory; expected a MUSE {path.suffix or 'record'} file")
            tried.append(path)
        folder = tried[0].parent
        if folder.is_dir():
            files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl"))
            present = f"; files in {folder}: {', '.join(files) if files else 'none'}"
        else:
            subfolders = sorted(p.name for p in base.iterdir() if p.is_dir())
            present = f"; {folder} does not exist (folders in {base}: {', '.join(subfolders) or 'none'})"
        raise DataError(f"MUSE file not found: tried {', '.join(map(str, tried))}{present}")

    def load_file(self, *candidates: str) -> tuple[list[dict], str]:
        """Rows of the first existing candidate location (``<config>/<split>.json``) and a label naming it."""
        path = self.locate(*candidates)
        if path is not None:
            return read_records(path), str(path)
        repo = f"{self.data_dir}/{HUB_NAMES[self.corpus]}"
        errors = []
        for location in candidates:
            config, split = Path(location).parent.name, Path(location).stem
            try:
                return read_hub_dataset(repo, config, split), f"{repo}/{config} [{split}]"
            except DataError as err:
                errors.append(str(err))
        raise DataError("; ".join(errors))

    def _corpus(self, location: str) -> Dataset:
        rows, label = self.load_file(location)
        row_format = RowFormat(mode="pretraining", text_key=self.text_key)
        return encode_rows(
            rows, self.tokenizer, self.prompt_format, source=label, row_format=row_format, max_length=self.max_length
        )

    # ------------------------------------------------------------------ hooks
    def prepare_data(self) -> None:
        """Download the files once (process 0) when ``data_dir`` names the hub; nothing for local data."""
        if self.corpus_dir() is None:
            self.load_file(self.forget_file)
            self.load_file(self.retain_file)
            for candidates in EVALUATION_FILES.values():
                self.load_file(*candidates)

    def _check_sources(self) -> None:
        self.locate(self.forget_file)
        self.locate(self.retain_file)

    def _build_forget(self) -> Dataset:
        return self._corpus(self.forget_file)

    def _build_retain(self) -> Dataset:
        return self._corpus(self.retain_file)

    def _load_evaluation_rows(self) -> dict[str, list[dict]]:
        out = {}
        for key, candidates in EVALUATION_FILES.items():
            rows, label = self.load_file(*candidates)
            if not rows:
                raise DataError(f"{label}: the evaluation split {key!r} is empty")
            check_fields(rows, label, strings=EVALUATION_FIELDS[key.split("_")[0]])
            out[key] = rows
        return out

    def _build_validation(self) -> list[Dataset]:
        """The ``validate``/``test`` sets: verbmem forget continuations and the knowmem retain QA pairs.

        The continuations are scored as :data:`VERBMEM_ROWS` says (metrics-spec §1.3); the QA pairs are MUSE's
        utility set.
        """
        self._ensure_tokenizer()
        rows = self.evaluation_rows()
        forget = encode_rows(
            rows["verbmem_forget"],
            self.tokenizer,
            self.prompt_format,
            source="verbmem/forget",
            row_format=VERBMEM_ROWS,
            max_length=self.max_length,
        )
        retain = encode_qa_rows(
            rows["knowmem_retain_qa"],
            self.tokenizer,
            self.prompt_format,
            source="knowmem/retain_qa",
            max_length=512,
            allow_eos_only=True,
        )
        return [forget, retain]
