"""Tokenising whole sets of rows into :class:`EncodedSample` datasets, with checks that every sample can train.

Three kinds of sets:

* QA rows (TOFU, custom QA): :func:`encode_qa_rows`, one sample per row via :func:`encode_qa` (metrics-spec §1.2);
* completion rows (prefix + text, MUSE verbmem style): :func:`encode_completion_rows` (metrics-spec §1.3);
* a raw corpus cut into fixed-length token windows (MUSE ``raw`` training data): :func:`chunk_corpus`, as
  open-unlearning's ``PretrainingDataset``.

Sets are tokenised once, eagerly, in ``setup``: a sample that has nothing left to score is reported before training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from baldro_pl.datamodules.formatting import EncodedSample, PromptFormat, encode_completion, encode_qa
from baldro_pl.datamodules.records import DataError, check_fields, row_label
from baldro_pl.datamodules.row_format import DEFAULT_ROW_FORMAT, RowFormat
from baldro_pl.labels import IGNORE_INDEX

log = logging.getLogger(__name__)


class EncodedDataset(Dataset):
    """A list of tokenised samples; item ``i`` is an :class:`EncodedSample` with ``index == i`` (its row number).

    Args:
        samples: the samples, in row order.
        source: the file or split they came from (for messages).
    """

    def __init__(self, samples: Sequence[EncodedSample], source: str = "") -> None:
        self.samples = list(samples)
        self.source = source

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> EncodedSample:
        return self.samples[i]

    def __repr__(self) -> str:
        return f"EncodedDataset({self.source!r}, {len(self)} samples)"


def _n_masked(labels: Sequence[int]) -> int:
    n = 0
    for x in labels:
        if x != IGNORE_INDEX:
            break
        n += 1
    return n


def encode_qa_rows(
    rows: Sequence[dict],
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    *,
    source: str,
    question_key: str = "question",
    answer_key: str = "answer",
    max_length: int = 512,
    allow_eos_only: bool = False,
) -> EncodedDataset:
    """Tokenise QA rows for training/scoring: prompt masked, answer + EOS scored.

    ``allow_eos_only`` keeps rows whose answer tokens all merged into the prompt (only EOS is scored, with a logged
    warning), as open-unlearning scores them: e.g. MUSE's one-word knowmem answers after ``"Answer: "``, whose
    trailing space absorbs the answer's first token (metrics-spec P3). Evaluation sets only: a training sample with
    nothing of its answer to learn or unlearn is an error.

    A sample whose answer is cut by ``max_length`` but keeps at least one answer token is kept (the published runs
    truncate the same way) and counted in one logged warning that names the rows and the ``max_length`` that would
    keep every answer whole.

    Raises:
        DataError: a row lacks a field or has an empty answer, or a sample keeps no answer token (the prompt alone
            fills ``max_length``, or a token merge across the prompt/answer boundary, metrics-spec P3); the message
            names the source, the row (file line for JSON Lines and CSV) and ``max_length``.
    """
    check_fields(rows, source, strings=(question_key, answer_key), non_empty=(answer_key,))
    eos = tokenizer.eos_token_id
    samples, cut, eos_only = [], [], []
    longest: list[int] = []  # the longest untruncated sample among the cut ones
    longest_row = -1
    for i, row in enumerate(rows):
        sample = encode_qa(tokenizer, row[question_key], row[answer_key], fmt, max_length=max_length, index=i)
        n_prompt = _n_masked(sample.labels)
        n_answer = sample.n_targets - (1 if sample.input_ids[-1] == eos and sample.labels[-1] == eos else 0)
        if n_answer <= 0 and allow_eos_only and sample.n_targets > 0 and n_prompt < max_length:
            eos_only.append(i)
        elif n_answer <= 0:
            reason = (
                f"the prompt alone has {n_prompt} tokens, which fills max_length={max_length}"
                if n_prompt >= max_length
                else "the answer's first tokens merge into the prompt's last token (metrics-spec P3)"
            )
            raise DataError(
                f"{source}: {row_label(rows, i)}: no answer token is left to score with max_length={max_length}: "
                f"{reason}. Raise max_length or shorten the question."
            )
        if len(sample.input_ids) >= max_length:  # maybe cut: compare with the untruncated encoding
            whole = encode_qa(tokenizer, row[question_key], row[answer_key], fmt, max_length=1 << 30, index=i)
            if len(whole.input_ids) > len(sample.input_ids):
                cut.append(i)
                if len(whole.input_ids) > len(longest):
                    longest, longest_row = whole.input_ids, i
        samples.append(sample)
    if cut:
        # the smallest max_length keeping the longest answer whole: the EOS appended after the text is not counted
        row = rows[longest_row]
        n = len(longest)
        shorter = encode_qa(tokenizer, row[question_key], row[answer_key], fmt, max_length=n - 1)
        needed = n - 1 if shorter.input_ids == longest else n
        named = ", ".join(row_label(rows, i) for i in cut[:5]) + (", ..." if len(cut) > 5 else "")
        log.warning(
            "%s: %d of %d answers are cut at max_length=%d (%s); set max_length >= %d to train on whole answers",
            source,
            len(cut),
            len(rows),
            max_length,
            named,
            needed,
        )
    if eos_only:
        log.warning(
            "%s: %s have every answer token merged into the prompt; only EOS is scored (as open-unlearning)",
            source,
            ", ".join(row_label(rows, i) for i in eos_only[:10]),
        )
    return EncodedDataset(samples, source)


def encode_completion_rows(
    rows: Sequence[dict],
    tokenizer: PreTrainedTokenizerBase,
    *,
    source: str,
    text_key: str = "text",
    prefix_key: str | None = None,
    insert_space: bool = False,
    max_length: int = 2048,
) -> EncodedDataset:
    """Tokenise rows as completions: ``prefix`` (masked) + ``text`` (scored, no EOS), one sample per row.

    Without ``prefix_key`` the whole text is scored except its first token (BOS when the tokenizer adds one),
    metrics-spec §1.3.

    Raises:
        DataError: a missing or empty field, or a row whose continuation keeps no token within ``max_length``.
    """
    fields = (text_key,) if prefix_key is None else (prefix_key, text_key)
    check_fields(rows, source, strings=fields, non_empty=(text_key,))
    samples = []
    for i, row in enumerate(rows):
        prefix = "" if prefix_key is None else row[prefix_key]
        sample = encode_completion(
            tokenizer, prefix, row[text_key], max_length=max_length, insert_space=insert_space, index=i
        )
        if sample.n_targets == 0:
            raise DataError(
                f"{source}: {row_label(rows, i)}: no token of field {text_key!r} is left to score with "
                f"max_length={max_length}"
            )
        samples.append(sample)
    return EncodedDataset(samples, source)


def chunk_corpus(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    source: str,
    max_length: int = 2048,
) -> EncodedDataset:
    r"""Cut a corpus into windows of ``max_length`` tokens, every token a target.

    This is open-unlearning's ``PretrainingDataset`` (``src/data/pretraining.py``), used for MUSE's forget/retain
    corpora. The documents are joined with ``"\n\n"``, tokenised once without special tokens and cut into consecutive
    windows of ``max_length`` tokens (the last one shorter). Each window is preceded by the tokenizer's encoding of
    the empty string (BOS for Llama) and is scored except for its first position, exactly as
    ``preprocess_pretraining_instance(prefix="")`` does. A window is therefore ``max_length + 1`` tokens long with a
    BOS-adding tokenizer. Unlike open-unlearning, windows are not decoded to text and re-tokenised (that round
    trip can change the token count at window edges and break multi-byte characters), so every window holds
    exactly ``max_length`` corpus tokens.

    Raises:
        DataError: the corpus has no token.
    """
    if max_length < 1:
        raise DataError(f"{source}: max_length must be at least 1, got {max_length}")
    ids = list(tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"])
    if not ids:
        documents = f"{len(texts)} document" + ("" if len(texts) == 1 else "s")
        raise DataError(f"{source}: the corpus is empty ({documents}, no token)")
    prefix = list(tokenizer("", add_special_tokens=True)["input_ids"])
    n_masked = max(len(prefix), 1)
    samples = []
    for k, start in enumerate(range(0, len(ids), max_length)):
        window = prefix + ids[start : start + max_length]
        labels = [IGNORE_INDEX] * min(n_masked, len(window)) + window[n_masked:]
        if len(labels) > sum(1 for x in labels if x == IGNORE_INDEX):
            samples.append(EncodedSample(window, labels, k))
    return EncodedDataset(samples, source)


def encode_rows(
    rows: Sequence[dict],
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    *,
    source: str,
    row_format: RowFormat = DEFAULT_ROW_FORMAT,
    max_length: int = 512,
) -> EncodedDataset:
    """Tokenise rows the way ``row_format.mode`` says.

    ``"qa"``: :func:`encode_qa_rows`; ``"completion"``: :func:`encode_completion_rows`; ``"pretraining"``:
    :func:`chunk_corpus` over the rows' ``text_key``.
    """
    if row_format.mode == "qa":
        return encode_qa_rows(
            rows,
            tokenizer,
            fmt,
            source=source,
            question_key=row_format.question_key,
            answer_key=row_format.answer_key,
            max_length=max_length,
        )
    if row_format.mode == "completion":
        return encode_completion_rows(
            rows,
            tokenizer,
            source=source,
            text_key=row_format.text_key,
            prefix_key=row_format.prefix_key,
            insert_space=row_format.insert_space,
            max_length=max_length,
        )
    check_fields(rows, source, strings=(row_format.text_key,))
    return chunk_corpus([r[row_format.text_key] for r in rows], tokenizer, source=source, max_length=max_length)
