"""Aggregates of the TOFU authors' own evaluation logs (``locuslab/tofu``, ``eval_log_aggregated.json``).

Those logs predate open-unlearning: per question they store ``avg_gt_loss``, ``avg_paraphrased_loss``,
``average_perturb_loss`` (list), ``rougeL_recall``... for the files ``eval_log.json`` (retain),
``eval_log_forget.json``, ``eval_real_author_wo_options.json`` and ``eval_real_world_wo_options.json``. This module
reproduces ``aggregate_eval_stat.py`` of that repository exactly (no ``1e-10`` terms; truth ratio
``R = P_para / P_pert`` with ``min(R, 1/R)`` on forget and ``max(0, 1 - 1/R)`` elsewhere, metrics-spec §2.3), so
that its numbers can be compared with the TOFU leaderboard.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from baldro_pl.metrics.functional.forget_quality import forget_quality
from baldro_pl.metrics.functional.utility import harmonic_mean

LEGACY_TASKS: dict[str, str] = {
    "eval_real_author_wo_options.json": "Real Authors",
    "eval_real_world_wo_options.json": "Real World",
    "eval_log.json": "Retain",
    "eval_log_forget.json": "Forget",
}


def is_legacy_tofu_log(logs: Mapping[str, Any]) -> bool:
    """Whether ``logs`` is in the TOFU authors' format (top-level keys are eval file names)."""
    return "eval_log_forget.json" in logs and isinstance(logs["eval_log_forget.json"], Mapping)


def _values(task: Mapping[str, Any], key: str) -> np.ndarray:
    if key not in task:
        raise KeyError(f"legacy TOFU log entry has no {key!r} (keys: {sorted(task)})")
    return np.array(list(task[key].values()), dtype=np.float64)


def legacy_truth_ratio(task: Mapping[str, Any]) -> np.ndarray:
    """Per question ``R = exp(mean_k avg_pert_k - avg_para) = P_para / P_pert`` (inverse of open-unlearning's TR)."""
    para = _values(task, "avg_paraphrased_loss")
    pert = _values(task, "average_perturb_loss").mean(axis=-1)
    return np.exp(pert - para)


def aggregate_tofu_legacy(logs: Mapping[str, Any], retain_logs: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The quantities of the TOFU authors' ``aggregate_eval_stat.py``.

    ``Prob./ROUGE/Truth Ratio <task>``, ``Model Utility`` and, with the retain model's log, ``Forget Quality`` (KS test
    of the forget truth ratios).
    """
    out: dict[str, float] = {}
    for file, task_name in LEGACY_TASKS.items():
        if file not in logs:
            continue
        task = logs[file]
        true_prob = np.exp(-_values(task, "avg_gt_loss"))
        if "eval_log" in file:
            prob = float(np.mean(true_prob))
        else:
            false_prob = np.exp(-_values(task, "average_perturb_loss"))
            prob = float(np.mean(true_prob / np.concatenate([true_prob[:, None], false_prob], axis=1).sum(-1)))
        out[f"Prob. {task_name}"] = prob
        out[f"ROUGE {task_name}"] = float(np.mean(_values(task, "rougeL_recall")))
        ratio = legacy_truth_ratio(task)
        if "forget" in file:
            out[f"Truth Ratio {task_name}"] = float(np.mean(np.minimum(ratio, 1 / ratio)))
        else:
            out[f"Truth Ratio {task_name}"] = float(np.mean(np.maximum(0, 1 - 1 / ratio)))
    utility = [v for k, v in out.items() if "Forget" not in k]
    if len(utility) == 9:
        out["Model Utility"] = harmonic_mean(utility)
    if retain_logs is not None:
        out["Forget Quality"] = forget_quality(
            legacy_truth_ratio(logs["eval_log_forget.json"]), legacy_truth_ratio(retain_logs["eval_log_forget.json"])
        )
    return out
