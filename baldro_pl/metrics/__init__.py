"""TOFU and MUSE metrics as open-unlearning computes them (../shared/docs/metrics-spec.md), plus baldro-pl's
forgetting balance.

Layers:

* :mod:`~baldro_pl.metrics.functional`: pure formulas (truth ratio, KS forget quality, model utility, normalised
  probability, ROUGE, MIA scores / AUC / privleak, EM / ES, forgetting balance);
* :mod:`~baldro_pl.metrics.likelihood` and :mod:`~baldro_pl.metrics.generation`: batched scoring and greedy
  generation on a model;
* torchmetrics classes keyed by dataset index (:class:`TruthRatio`, :class:`ForgetQuality`, :class:`MIAAUC`...);
* the suites :func:`evaluate_tofu` / :func:`evaluate_muse` and the Lightning callbacks :class:`TOFUEvaluation` /
  :class:`MUSEEvaluation`;
* :mod:`~baldro_pl.metrics.logs` (open-unlearning JSON) and :mod:`~baldro_pl.metrics.summarize` (``baldro-pl
  summarize``).
"""

from baldro_pl.metrics.callbacks import MUSEEvaluation, TOFUEvaluation
from baldro_pl.metrics.generation import greedy_generate
from baldro_pl.metrics.indexed import IndexedMetric, SampleMean
from baldro_pl.metrics.likelihood import gradnorm_scores, score_samples, vocab_statistics
from baldro_pl.metrics.logs import ReferenceLog, ReferenceLogError, load_eval_log, write_json_atomic
from baldro_pl.metrics.memorization import ExactMemorization, ExtractionStrength
from baldro_pl.metrics.mia import MIAAUC
from baldro_pl.metrics.muse import MUSE_METRICS, MUSEEvaluator, evaluate_muse
from baldro_pl.metrics.probability import NormalisedProbability, Probability
from baldro_pl.metrics.rouge import ROUGE
from baldro_pl.metrics.suite import EvaluationResult
from baldro_pl.metrics.summarize import recompute_aggregates
from baldro_pl.metrics.tofu import TOFU_METRICS, TOFUEvaluator, evaluate_tofu
from baldro_pl.metrics.truth_ratio import ForgetQuality, ForgettingBalance, TruthRatio
from baldro_pl.strategies import model_call_context

__all__ = [
    "MIAAUC",
    "MUSE_METRICS",
    "ROUGE",
    "TOFU_METRICS",
    "EvaluationResult",
    "ExactMemorization",
    "ExtractionStrength",
    "ForgetQuality",
    "ForgettingBalance",
    "IndexedMetric",
    "MUSEEvaluation",
    "MUSEEvaluator",
    "NormalisedProbability",
    "Probability",
    "ReferenceLog",
    "ReferenceLogError",
    "SampleMean",
    "TOFUEvaluation",
    "TOFUEvaluator",
    "TruthRatio",
    "evaluate_muse",
    "evaluate_tofu",
    "gradnorm_scores",
    "greedy_generate",
    "load_eval_log",
    "model_call_context",
    "recompute_aggregates",
    "score_samples",
    "vocab_statistics",
    "write_json_atomic",
]
