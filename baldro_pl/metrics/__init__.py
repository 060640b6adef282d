"""TOFU and MUSE metrics as open-unlearning computes them, plus baldro-pl's forgetting balance.

The formulas follow ../shared/docs/metrics-spec.md.

Layers:

* :mod:`~baldro_pl.metrics.functional`: pure formulas (truth ratio, KS forget quality, model utility, normalised
  probability, ROUGE, MIA scores / AUC / privleak, EM / ES, forgetting balance);
* :mod:`~baldro_pl.metrics.likelihood` and :mod:`~baldro_pl.metrics.generation`: batched scoring and greedy
  generation on a model;
* torchmetrics classes keyed by dataset index (:class:`TruthRatio`, :class:`ForgetQuality`, :class:`MIAAUC`...);
* the suites :class:`TOFUSuite` / :class:`MUSESuite` (one :class:`Suite` template, rows encoded by the datamodule's
  :class:`~baldro_pl.datamodules.encoder.RowEncoder`) and the Lightning callback :class:`Evaluation` that runs one;
* :mod:`~baldro_pl.metrics.logs` (open-unlearning JSON: entries, file names, reading, writing) and
  :mod:`~baldro_pl.metrics.summarize` (``baldro-pl summarize``).
"""

from baldro_pl.metrics.callbacks import Evaluation, EvaluationRecord
from baldro_pl.metrics.generation import greedy_generate
from baldro_pl.metrics.indexed import IndexedMetric, SampleMean
from baldro_pl.metrics.likelihood import gradnorm_scores, score_samples, vocab_statistics
from baldro_pl.metrics.logs import ReferenceLog, ReferenceLogError, load_eval_log, write_json_atomic
from baldro_pl.metrics.memorization import ExactMemorization, ExtractionStrength
from baldro_pl.metrics.mia import MIA_ATTACKS, MIAAUC
from baldro_pl.metrics.muse import MUSE_METRICS, MUSESuite
from baldro_pl.metrics.probability import NormalisedProbability, Probability
from baldro_pl.metrics.rouge import ROUGE
from baldro_pl.metrics.suite import EvaluationResult, Suite
from baldro_pl.metrics.summarize import recompute_aggregates
from baldro_pl.metrics.tofu import TOFU_METRICS, TOFUSuite
from baldro_pl.metrics.truth_ratio import ForgetQuality, ForgettingBalance, TruthRatio

__all__ = [
    "MIAAUC",
    "MIA_ATTACKS",
    "MUSE_METRICS",
    "ROUGE",
    "TOFU_METRICS",
    "Evaluation",
    "EvaluationRecord",
    "EvaluationResult",
    "ExactMemorization",
    "ExtractionStrength",
    "ForgetQuality",
    "ForgettingBalance",
    "IndexedMetric",
    "MUSESuite",
    "NormalisedProbability",
    "Probability",
    "ReferenceLog",
    "ReferenceLogError",
    "SampleMean",
    "Suite",
    "TOFUSuite",
    "TruthRatio",
    "gradnorm_scores",
    "greedy_generate",
    "load_eval_log",
    "recompute_aggregates",
    "score_samples",
    "vocab_statistics",
    "write_json_atomic",
]
