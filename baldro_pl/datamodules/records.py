"""Reading raw record files (JSON, JSONL, CSV, parquet, ``datasets`` folders, hub datasets) with clear errors.

Every loader returns a list of plain dicts (one per row, original field names) so that the datamodules, the
metric callbacks and the tests see the same rows whatever the storage. A row that is a bare JSON string (the
layout of MUSE's ``raw`` and ``privleak`` files, ../shared/data/muse/SOURCE.md) becomes ``{string_field: text}``.

Problems in the data are reported as :class:`DataError` (a ``ValueError``) naming the file, the line or the 0-based
row, the field and what was expected, before any training starts (design.md §2, "Rules of the house").
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class DataError(ValueError):
    """A data file or data set that cannot be used as it is (missing field, bad encoding, empty set...)."""


class Rows(list):
    """A list of row dicts that remembers the 1-based file line of each row, when the file has lines.

    JSON Lines and CSV readers fill :attr:`lines` so that messages name the line an editor shows; rows from a JSON
    array, a parquet file or a ``datasets`` folder have no line (``lines`` is None) and are named by their 0-based
    index. Behaves as a plain list everywhere else.
    """

    def __init__(self, values: Iterable[dict] = (), lines: Sequence[int] | None = None) -> None:
        super().__init__(values)
        self.lines: list[int] | None = list(lines) if lines is not None else None


def row_label(rows: Sequence[Any], i: int) -> str:
    """How messages name row ``i``: ``"line 7"`` (1-based file line) when known, else ``"row 6 (0-based)"``."""
    lines = getattr(rows, "lines", None)
    if lines is not None and 0 <= i < len(lines):
        return f"line {lines[i]}"
    return f"row {i} (0-based)"


def describe_value(value: Any) -> str:
    """A JSON-vocabulary description of a value for messages: ``null``, ``a number (3)``, ``a list``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item" + ("" if len(value) == 1 else "s")
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return f"a string ({value!r:.40})"
    return f"a {type(value).__name__}"


def _line_of(data: bytes, offset: int) -> int:
    """1-based line number of a byte offset."""
    return data.count(b"\n", 0, offset) + 1


def _decode_utf8(data: bytes, path: Path) -> str:
    """The file's text; a leading UTF-8 byte-order mark (Windows editors write one) is dropped."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(
            f"{path}: not valid UTF-8 at line {_line_of(data, err.start)}, byte {column} of the line: {err.reason}; "
            "re-save the file as UTF-8"
        ) from None


def _wrap_rows(values: Sequence[Any], path: Path | str, string_field: str, lines: Sequence[int] | None = None) -> Rows:
    rows = Rows(lines=lines)
    for i, value in enumerate(values):
        if isinstance(value, dict):
            rows.append(value)
        elif isinstance(value, str):
            rows.append({string_field: value})
        else:
            raise DataError(
                f"{path}: {row_label(rows, i)} is {describe_value(value)}; expected a JSON object "
                f"(or a plain string, read as field {string_field!r})"
            )
    return rows


def read_jsonl(path: str | Path, *, string_field: str = "text") -> Rows:
    """Rows of a JSON Lines file (one JSON object, or string, per non-blank line); ``lines`` holds their lines."""
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as Windows editors write
        data = data[3:]
    values, lines = [], []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path}: line {lineno} is not valid UTF-8 (byte {err.start + 1} of the line): {err.reason}; "
                "re-save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {lineno} is not valid JSON: {err.msg} (column {err.colno})") from None
        lines.append(lineno)
    return _wrap_rows(values, path, string_field, lines)


def read_json(path: str | Path, *, string_field: str = "text") -> Rows:
    """Rows of a JSON file holding an array of objects (or strings).

    A file made of several top-level arrays one after the other (as ``datasets.Dataset.to_json(lines=False)``
    writes in batches; the original TOFU ``full.json``) is read as their concatenation.
    """
    path = Path(path)
    text = _decode_utf8(path.read_bytes(), path)
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos, end, n_docs = 0, len(text), 0
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            break
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg} "
                "(expected one JSON array of objects; use the .jsonl extension for JSON Lines)"
            ) from None
        if not isinstance(doc, list):
            raise DataError(
                f"{path}: the top-level JSON value is a {type(doc).__name__}; expected an array of rows "
                "(a list of objects or strings)"
            )
        values.extend(doc)
        n_docs += 1
    if n_docs == 0:
        raise DataError(f"{path}: the file is empty; expected a JSON array of rows")
    return _wrap_rows(values, path, string_field)


def read_csv(path: str | Path) -> Rows:
    """Rows of a CSV file with a header line (every value is read as a string); ``lines`` holds where each starts."""
    path = Path(path)
    text = _decode_utf8(path.read_bytes(), path)
    rows = Rows(lines=[])
    try:
        reader = csv.DictReader(text.splitlines(), strict=True)
        end = 1  # the header's last line; a row starts on the line after the previous one ended
        for i, row in enumerate(reader):
            if None in row:
                raise DataError(
                    f"{path}: line {reader.line_num} (row {i}, 0-based) has more values than the header's "
                    f"{len(reader.fieldnames or [])} columns"
                )
            rows.append(dict(row))
            rows.lines.append(end + 1)
            end = reader.line_num
    except csv.Error as err:
        raise DataError(f"{path}: not valid CSV: {err}") from None
    return rows


def read_parquet(path: str | Path) -> list[dict]:
    """Rows of a parquet file (read with pyarrow, which ``datasets`` depends on)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file: {err}") from None
    return table.to_pylist()


def read_records(path: str | Path, *, string_field: str = "text") -> Rows:
    """Rows of a local record file, chosen by extension: ``.jsonl``, ``.json``, ``.csv`` or ``.parquet``.

    Args:
        path: the file.
        string_field: field name given to rows that are bare strings (JSON/JSONL only).

    Raises:
        DataError: unknown extension, missing or empty (0-byte) file, a directory, invalid UTF-8/JSON/CSV/parquet
            (naming file and line).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a {suffix or 'record'} file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); expected rows")
    if suffix == ".jsonl":
        return read_jsonl(path, string_field=string_field)
    if suffix == ".json":
        return read_json(path, string_field=string_field)
    if suffix == ".csv":
        return read_csv(path)
    if suffix == ".parquet":
        return read_parquet(path)
    raise DataError(f"{path}: unknown file type {suffix!r}; expected one of {', '.join(RECORD_SUFFIXES)}")


def looks_like_local_path(source: str) -> bool:
    """Whether ``source`` is meant as a local path rather than a hub name like ``owner/name``."""
    return (
        source.startswith(("/", "./", "../", "~", "."))
        or source.count("/") > 1
        or "\\" in source
        or Path(source).suffix.lower() in RECORD_SUFFIXES
    )


def _offline_hint() -> str:
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if any(os.environ.get(f, "0") not in ("0", "", "false", "False") for f in flags):
        return " (offline mode is on, so hub datasets load only from the local cache; pass a local directory)"
    return ""


def read_saved_dataset(directory: str | Path, split: str | None = "train", *, string_field: str = "text") -> list[dict]:
    """Rows of a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory")
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((directory / m).is_file() for m in markers):
        present = sorted(p.name for p in directory.iterdir())[:8]
        raise DataError(
            f"{directory}: is a directory but not a `datasets` folder written by save_to_disk (no "
            f"{', '.join(markers)}; present: {present or 'nothing'}); expected a record file "
            f"({', '.join(RECORD_SUFFIXES)}) or such a folder"
        )
    import datasets

    try:
        loaded = datasets.load_from_disk(str(directory))
    except (FileNotFoundError, ValueError, OSError) as err:
        message = " ".join(str(err).split())
        raise DataError(f"{directory}: not a readable `datasets` folder written by save_to_disk: {message}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{directory}: no split {split!r}; splits present: {sorted(loaded)}")
        loaded = loaded[split]
    return _wrap_rows(loaded.to_list(), directory, string_field)


def read_hub_dataset(
    name: str, config: str | None = None, split: str = "train", *, string_field: str = "text"
) -> list[dict]:
    """Rows of a Hugging Face hub dataset (``datasets.load_dataset(name, config, split=split)``)."""
    import datasets

    label = f"hub dataset {name!r} (config={config!r}, split={split!r})"
    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises many unrelated types (ConnectionError, FileNotFoundError, ...)
        raise DataError(f"could not load the {label}: {type(err).__name__}: {err}{_offline_hint()}") from err
    return _wrap_rows(loaded.to_list(), label, string_field)


def load_rows(
    source: str | Path,
    *,
    config: str | None = None,
    split: str = "train",
    string_field: str = "text",
) -> tuple[list[dict], str]:
    """Rows of a record file, a ``save_to_disk`` folder or a hub dataset, plus a label naming it for messages.

    Args:
        source: a local file (see :func:`read_records`), a local ``datasets`` folder, or a hub dataset name.
        config: hub dataset configuration (ignored for local files).
        split: split of a hub dataset or of a saved ``DatasetDict``.
        string_field: field name for rows that are bare strings.

    Raises:
        DataError: the source cannot be found or read.
    """
    source_str = str(source)
    path = Path(source_str).expanduser()
    if path.is_file() or (path.is_dir() and path.suffix.lower() in RECORD_SUFFIXES):
        return read_records(path, string_field=string_field), str(path)
    if path.is_dir():
        return read_saved_dataset(path, split, string_field=string_field), f"{path} [{split}]"
    if isinstance(source, Path) or looks_like_local_path(source_str):
        raise DataError(f"{source_str}: no such file or directory")
    rows = read_hub_dataset(source_str, config, split, string_field=string_field)
    return rows, f"{source_str}" + (f"/{config}" if config else "") + f" [{split}]"


def _fields_present(row: Mapping[str, Any]) -> str:
    return "[" + ", ".join(repr(k) for k in row) + "]"


def check_fields(
    rows: Sequence[Mapping[str, Any]],
    source: str,
    *,
    strings: Iterable[str] = (),
    string_lists: Iterable[str] = (),
    non_empty: Iterable[str] = (),
) -> None:
    """Check that every row has the named fields with the expected types.

    Args:
        rows: the rows.
        source: the file or split name used in messages.
        strings: fields that must be strings.
        string_lists: fields that must be lists of strings.
        non_empty: fields (among the above) that must not be empty.

    Raises:
        DataError: naming the source, the row (its file line for JSON Lines and CSV, else its 0-based index), the
            field and what was found.
    """
    strings, string_lists, non_empty = tuple(strings), tuple(string_lists), frozenset(non_empty)
    for i, row in enumerate(rows):
        for field in strings + string_lists:
            if field not in row:
                raise DataError(
                    f"{source}: {row_label(rows, i)} has no field {field!r}; fields present: {_fields_present(row)}"
                )
        for field in strings:
            value = row[field]
            if not isinstance(value, str):
                raise DataError(
                    f"{source}: {row_label(rows, i)}, field {field!r} is {describe_value(value)}; expected a string"
                )
            if field in non_empty and not value.strip():
                raise DataError(
                    f"{source}: {row_label(rows, i)}, field {field!r} is empty; expected a non-empty string"
                )
        for field in string_lists:
            value = row[field]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                bad = value if not isinstance(value, list) else next(v for v in value if not isinstance(v, str))
                what = describe_value(value) if bad is value else f"a list holding {describe_value(bad)}"
                raise DataError(
                    f"{source}: {row_label(rows, i)}, field {field!r} is {what}; expected a list of strings"
                )
            if field in non_empty and not value:
                raise DataError(f"{source}: {row_label(rows, i)}, field {field!r} is an empty list")
