"""ROUGE as scored by TOFU and MUSE: ``rouge_score.rouge_scorer`` with stemming (metrics-spec §1.6 step 4, P8).

The stored fields are ``rouge1_recall``, ``rougeL_f1`` and ``rougeL_recall``; TOFU aggregates ``rougeL_recall``,
MUSE ``rougeL_f1``. The ground truth is the ``target`` (first) argument of ``RougeScorer.score``. The scorer is
``RougeScorer(["rouge1", "rougeL"])`` with rouge-score's stemming tokenizer, memoised (:class:`MemoTokenizer`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

from nltk.stem import porter
from rouge_score import rouge_scorer, tokenize, tokenizers

RougeField = Literal["rouge1_recall", "rougeL_f1", "rougeL_recall"]
ROUGE_FIELDS: tuple[RougeField, ...] = ("rouge1_recall", "rougeL_f1", "rougeL_recall")

# rouge_score logs an INFO line through absl for every scorer it builds.
logging.getLogger("absl").setLevel(logging.WARNING)


class _MemoStemmer:
    """nltk's Porter stemmer (the one rouge-score uses) with memoised results."""

    def __init__(self, maxsize: int) -> None:
        self.stem = lru_cache(maxsize=maxsize)(porter.PorterStemmer().stem)


class MemoTokenizer(tokenizers.Tokenizer):
    """rouge-score's ``DefaultTokenizer(use_stemmer=True)``, memoised per text and per word.

    It runs rouge-score's own ``tokenize.tokenize`` with the same stemmer, so the tokens are identical; a generation
    scored against several references (``*_PERT_ROUGE``) and the fixed ground truths of every epoch are tokenised and
    stemmed once.
    """

    def __init__(self, maxsize: int = 1 << 15) -> None:
        self._stemmer = _MemoStemmer(maxsize=1 << 16)
        self._tokens = lru_cache(maxsize=maxsize)(self._tokenize)

    def _tokenize(self, text: str) -> tuple[str, ...]:
        return tuple(tokenize.tokenize(text, self._stemmer))

    def tokenize(self, text: str) -> list[str]:
        """The rouge-score tokens of ``text`` (lower-cased, split on non-alphanumerics, Porter-stemmed if > 3 chars)."""
        return list(self._tokens(text))


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], tokenizer=MemoTokenizer())


def rouge_score(prediction: str, reference: str) -> dict[str, float]:
    """The three ROUGE fields of one generation against its ground truth.

    Example:
        Two of the reference's four words, in order: recall 1/2, precision 2/3, F1 4/7:

        >>> scores = rouge_score("the cat sat", "the black cat ran")
        >>> {name: round(value, 4) for name, value in scores.items()}
        {'rouge1_recall': 0.5, 'rougeL_f1': 0.5714, 'rougeL_recall': 0.5}
    """
    scores = _scorer().score(reference, prediction)
    return {
        "rouge1_recall": scores["rouge1"].recall,
        "rougeL_f1": scores["rougeL"].fmeasure,
        "rougeL_recall": scores["rougeL"].recall,
    }


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """:func:`rouge_score` for each (prediction, reference) pair."""
    if len(predictions) != len(references):
        raise ValueError(f"rouge_scores: {len(predictions)} predictions but {len(references)} references")
    return [rouge_score(p, r) for p, r in zip(predictions, references)]
