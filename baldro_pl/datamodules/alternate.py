"""Alternative ("I don't know") answers for the forget set, for IdkNLL and IdkDPO (issue 12).

The TOFU baselines that replace a forget answer by a refusal (Maini et al. 2024, §4 "Preference Optimization";
locuslab/tofu ``dataloader.py`` loss types ``idk`` and ``dpo``; open-unlearning ``src/data/qa.py``
``QAwithIdkDataset`` with ``configs/data/datasets/TOFU_QA_forget_idk.yaml``) read a file of refusal strings and pair
every forget question with one of them. Here:

* **The file** (:func:`read_alternate_answers`): one answer per non-blank line, as open-unlearning reads its
  ``data/idk.jsonl`` (``readlines()`` then ``strip()``): a plain-text line is the answer itself (the layout of
  ``../shared/data/tofu/idontknow.jsonl``, which despite its extension holds plain strings); a line that is a JSON
  string (``"..."``) is decoded; a line that is a JSON object gives its ``answer_key`` field.
* **The draw** (:func:`alternate_answer_choice`): one answer per forget row, a pure function of ``(seed, row, number
  of answers)``, the same in every epoch, on every process and after a resume. open-unlearning and locuslab/tofu
  instead draw a new answer with the global RNG each time a row is read (``torch.randint`` / ``random.randint`` in
  ``__getitem__``); a fixed answer per row is what lets the reference log-likelihood of the alternate answer be
  computed once and cached (design.md §3.2) instead of running a frozen reference model every step.
* **The encoding** (:func:`encode_alternate_rows`): the forget row's question with the drawn answer, through the same
  prompt format as the original answer (:func:`~baldro_pl.datamodules.formatting.encode_qa`); the sample's ``index``
  is the forget row's, so that both answers of a row share one key in the reference caches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from baldro_pl.datamodules.encoding import EncodedDataset, encode_qa_rows
from baldro_pl.datamodules.formatting import PromptFormat
from baldro_pl.datamodules.records import DataError, Rows, describe_value

# Random stream of the alternate-answer draws (distinct from the forget-order and retain streams of pairing.py).
_STREAM_ALTERNATE = 0x1D4
_EXPECTED = "expected one alternative answer per line (plain text, a JSON string, or a JSON object with field {key!r})"


def read_alternate_answers(path: str | Path, *, answer_key: str = "answer") -> list[str]:
    """The alternative answers of a file, one per non-blank line, stripped (see the module docstring for the layout).

    Args:
        path: the file (``alternate_answers`` of the datamodules).
        answer_key: field read from lines that are JSON objects.

    Returns:
        The answers in file order.

    Raises:
        DataError: the file is missing, a directory, not UTF-8, has no answer, or a line is a JSON object without a
            non-empty string ``answer_key`` (the message names the file, the line and the field).
    """
    path = Path(path).expanduser()
    expected = _EXPECTED.format(key=answer_key)
    if not path.exists():
        raise DataError(f"{path}: no such file (alternate_answers); {expected}")
    if not path.is_file():
        raise DataError(f"{path}: is a directory, not a file (alternate_answers); {expected}")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as Windows editors write
        data = data[3:]
    answers: list[str] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path}: line {lineno} is not valid UTF-8 (byte {err.start + 1} of the line): {err.reason}; "
                "re-save the file as UTF-8"
            ) from None
        if not text:
            continue
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {lineno} is not valid JSON: {err.msg} (column {err.colno})") from None
            answer = value.get(answer_key) if isinstance(value, dict) else None
            if not isinstance(answer, str) or not answer.strip():
                found = "is missing" if answer_key not in value else f"is {describe_value(answer)}"
                raise DataError(f"{path}: line {lineno}: field {answer_key!r} {found}; expected a non-empty string")
            text = answer.strip()
        elif len(text) >= 2 and text[0] == text[-1] == '"':
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = None  # a plain-text answer that happens to be quoted: kept as it is
            if isinstance(value, str):
                if not value.strip():
                    raise DataError(f"{path}: line {lineno} is an empty JSON string; expected a non-empty answer")
                text = value.strip()
        answers.append(text)
    if not answers:
        raise DataError(f"{path}: the file has no answer (it is empty or blank); {expected}")
    return answers


def alternate_answer_choice(n_rows: int, n_answers: int, seed: int) -> list[int]:
    """Which alternative answer each of ``n_rows`` forget rows gets: row ``i`` gets ``choice[i]`` in ``[0, n_answers)``.

    Uniform, and a pure function of ``(seed, i, n_answers)``: the same in every epoch, on every process, after a
    resume, and for row ``i`` whatever the size of the forget set.

    >>> alternate_answer_choice(3, 100, seed=0) == alternate_answer_choice(3, 100, seed=0)
    True
    >>> alternate_answer_choice(2, 1, seed=5)
    [0, 0]
    """
    if n_answers < 1:
        raise ValueError(f"alternate_answer_choice: n_answers must be >= 1, got {n_answers}")
    return [int(np.random.default_rng([int(seed), _STREAM_ALTERNATE, i]).integers(n_answers)) for i in range(n_rows)]


def alternate_fingerprint(texts: Sequence[str]) -> int:
    """A 56-bit digest of the answers given to the forget rows, in row order (saved in checkpoints to detect a change).

    >>> alternate_fingerprint(["a", "b"]) == alternate_fingerprint(["a", "b"]) != alternate_fingerprint(["b", "a"])
    True
    """
    digest = hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).digest()
    return int.from_bytes(digest[:7], "big")


def encode_alternate_rows(
    rows: Sequence[dict],
    answers: Sequence[str],
    choice: Sequence[int],
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    *,
    source: str,
    question_key: str = "question",
    max_length: int = 512,
) -> EncodedDataset:
    """Tokenise each forget row's question with its alternative answer ``answers[choice[i]]``; ``index`` = row ``i``.

    Messages name the forget file's lines (the rows' own line numbers are kept).

    Raises:
        DataError: as :func:`~baldro_pl.datamodules.encoding.encode_qa_rows` (e.g. no answer token left within
            ``max_length``).
    """
    if len(choice) != len(rows):
        raise ValueError(f"encode_alternate_rows: {len(choice)} choices for {len(rows)} rows")
    paired = Rows(
        ({"question": row[question_key], "answer": answers[k]} for row, k in zip(rows, choice, strict=True)),
        lines=getattr(rows, "lines", None),
    )
    return encode_qa_rows(paired, tokenizer, fmt, source=source, max_length=max_length)
