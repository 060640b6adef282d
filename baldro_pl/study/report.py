"""A study's outputs: ``results.csv``, ``results.json``, ``report.md`` (tables per base loss) and the plots.

Columns and which value is best (bold in ``report.md``; the retain and target rows are shown, never bolded):

=========================  =====================================================================================
column                     best
=========================  =====================================================================================
forget_quality             higher (KS-test p-value of the forget truth ratios against the retain model's)
model_utility              higher
forget_truth_ratio         closest to the retain model's value (an unlearned model should look like it)
forget_Q_A_Prob            closest to the retain model's value
forget_Q_A_ROUGE           closest to the retain model's value
privleak                   closest to 0 (0: membership attacks see the model as the retain model)
forget_balance_under       lower (forget samples still remembered more than any retain-range sample)
forget_balance_within      higher (forget samples inside the retain model's 5-95% truth-ratio range)
forget_balance_over        lower (forget samples pushed past the retain range: over-forgotten)
stratum/<s>/<metric>       as <metric>
wall_s, peak_rss_mb, ...   lower
=========================  =====================================================================================

Every number in the tables is the mean ± sample standard deviation over the seeds of a (method, learning rate, epochs)
group; every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from baldro_pl.files import write_text_atomic
from baldro_pl.metrics.strata import natural_key

METRICS: tuple[str, ...] = (
    "forget_quality",
    "model_utility",
    "forget_truth_ratio",
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "privleak",
    "forget_balance_under",
    "forget_balance_within",
    "forget_balance_over",
)
RESOURCES: tuple[str, ...] = ("wall_s", "train_s", "peak_rss_mb", "peak_gpu_allocated_mb")
PARAMS: tuple[str, ...] = ("cell", "method", "base", "learning_rate", "epochs", "seed")
#: how to pick the best value of a column: "max", "min", "zero" (closest to 0) or "retain" (closest to the retain row).
DIRECTIONS: dict[str, str] = {
    "forget_quality": "max",
    "model_utility": "max",
    "forget_truth_ratio": "retain",
    "forget_Q_A_Prob": "retain",
    "forget_Q_A_ROUGE": "retain",
    "privleak": "zero",
    "forget_balance_under": "min",
    "forget_balance_within": "max",
    "forget_balance_over": "min",
    **dict.fromkeys(RESOURCES, "min"),
}
DIRECTION_WORDS = {"max": "higher", "min": "lower", "zero": "closest to 0", "retain": "closest to retain"}
SHORT = {
    "forget_quality": "FQ",
    "model_utility": "MU",
    "forget_truth_ratio": "forget TR",
    "forget_Q_A_Prob": "forget Prob",
    "forget_Q_A_ROUGE": "forget ROUGE",
    "privleak": "privleak",
    "forget_balance_under": "under",
    "forget_balance_within": "within",
    "forget_balance_over": "over",
    "wall_s": "wall s",
    "train_s": "train s",
    "peak_rss_mb": "peak RSS MB",
    "peak_gpu_allocated_mb": "peak GPU MB",
}
_STRATUM = re.compile(r"^stratum/(?P<stratum>[^/]+)/(?P<metric>.+)$")
PLOT_FILES = {
    "plot_fq_mu": "plot_fq_vs_mu.png",
    "plot_truth_ratios": "plot_truth_ratios.png",
    "plot_epochs": "plot_epochs.png",
}


def direction(column: str) -> str:
    """How the best value of ``column`` is chosen (``stratum/<s>/<metric>`` as ``<metric>``)."""
    match = _STRATUM.match(column)
    return DIRECTIONS.get(match.group("metric") if match else column, "max")


def stratum_columns(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every ``stratum/<s>/<metric>`` key of the summaries, strata in natural order (x2 before x16)."""
    keys = {k for s in summaries for k in s if _STRATUM.match(k)}
    return sorted(keys, key=lambda k: (natural_key(_STRATUM.match(k)["stratum"]), _STRATUM.match(k)["metric"]))


def flat_rows(results: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One flat row per cell (parameters, metrics, ``stratum/*``, resources) and the column order."""
    strata = stratum_columns([r["summary"] for r in results])
    columns = [*PARAMS, *METRICS, *strata, *RESOURCES, "global_step"]
    rows = []
    for result in results:
        summary = result["summary"]
        row = {k: result.get(k) for k in PARAMS}
        row.update({k: summary.get(k) for k in (*METRICS, *strata)})
        row.update({k: result.get(k) for k in (*RESOURCES, "global_step")})
        rows.append(row)
    return rows, columns


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue()


def _reference_rows(reference: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for role in ("retain", "target"):
        entry = reference.get(role) or {}
        out[role] = {"summary": entry.get("summary") or {}, "log": entry.get("log")}
    return out


def write_results(plan: Any, results: Mapping[str, Mapping[str, Any]], reference: Mapping[str, Any]) -> dict[str, Path]:
    """``results.csv`` and ``results.json`` from the finished cells (grid order); called after every cell."""
    from baldro_pl.study.runner import write_json

    ordered = [results[c.hash] for c in plan.cells if c.hash in results]
    rows, columns = flat_rows(ordered)
    csv_path = write_text_atomic(plan.output_dir / "results.csv", _csv_text(rows, columns))
    json_path = write_json(
        plan.output_dir / "results.json",
        {
            "columns": columns,
            "rows": rows,
            "reference": _reference_rows(reference),
            "cells_total": len(plan.cells),
            "cells_finished": len(rows),
            "retain_log": plan.retain_log,
        },
    )
    return {"csv": csv_path, "json": json_path}


# --------------------------------------------------------------------------------------------------- aggregation
def group_label(result: Mapping[str, Any], several_lrs: bool, several_epochs: bool) -> str:
    """The name of a (method, lr, epochs) group in tables and plots (lr / epochs only when they vary)."""
    label = str(result["method"])
    if several_lrs:
        label += f" lr={result['learning_rate']:.0e}"
    if several_epochs:
        label += f" ep={result['epochs']}"
    return label


def groups(results: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The results grouped over seeds, by :func:`group_label`, in grid order."""
    several_lrs = len({(r["method"], r["learning_rate"]) for r in results}) > len({r["method"] for r in results})
    several_epochs = len({(r["method"], r["epochs"]) for r in results}) > len({r["method"] for r in results})
    out: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        out.setdefault(group_label(result, several_lrs, several_epochs), []).append(result)
    return out


def _values(results: Sequence[Mapping[str, Any]], column: str) -> list[float]:
    out = []
    for result in results:
        value = result["summary"].get(column) if column not in RESOURCES else result.get(column)
        if isinstance(value, int | float) and math.isfinite(value):
            out.append(float(value))
    return out


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than 2 values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
        return f"{value:.2e}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def _cell_text(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return _num(mean) if std is None else f"{_num(mean)} ± {_num(std)}"


def _best(means: Sequence[float | None], how: str, retain: float | None) -> float | None:
    present = [m for m in means if m is not None]
    if not present:
        return None
    if how == "max":
        return max(present)
    if how == "min":
        return min(present)
    if how == "zero":
        return min(present, key=abs)
    if retain is None:
        return None
    return min(present, key=lambda m: abs(m - retain))


def markdown_table(
    group_results: Mapping[str, Sequence[Mapping[str, Any]]],
    columns: Sequence[str],
    reference: Mapping[str, Mapping[str, Any]],
    *,
    headers: Sequence[str] | None = None,
) -> str:
    """A markdown table: one row per group (mean ± std over seeds, best per column bold), then retain and target."""
    headers = list(headers or [SHORT.get(c, c) for c in columns])
    lines = [
        "| method | seeds | " + " | ".join(headers) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    stats = {name: [mean_std(_values(res, c)) for c in columns] for name, res in group_results.items()}
    retain_summary = reference.get("retain", {}).get("summary", {})
    best = [
        _best([stats[name][i][0] for name in stats], direction(c), retain_summary.get(c)) for i, c in enumerate(columns)
    ]
    # bold only where the groups differ: a column of equal values has no best
    differ = [
        len({stats[name][i][0] for name in stats if stats[name][i][0] is not None}) > 1 for i in range(len(columns))
    ]
    for name, res in group_results.items():
        cells = []
        for i, (mean, std) in enumerate(stats[name]):
            text = _cell_text(mean, std)
            cells.append(f"**{text}**" if differ[i] and mean is not None and mean == best[i] else text)
        lines.append(f"| {name} | {len(res)} | " + " | ".join(cells) + " |")
    for role in ("retain", "target"):
        summary = reference.get(role, {}).get("summary") or {}
        if summary:
            values = [summary.get(c) if c not in RESOURCES else None for c in columns]
            cells = [_num(v) if isinstance(v, int | float) else "-" for v in values]
            lines.append(f"| *{role} model* | - | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(plan: Any, results: Sequence[Mapping[str, Any]], reference: Mapping[str, Any]) -> str:
    """The text of ``report.md``."""
    spec = plan.spec
    ref = _reference_rows(reference)
    title = spec.title or f"Study {plan.output_dir.name}"
    lines = [f"# {title}", ""]
    lines.append(
        f"{len(results)} of {len(plan.cells)} cells finished; seeds {list(spec.seeds)}; retain log `{plan.retain_log}`."
    )
    lines.append(
        "Each value: mean ± standard deviation over the seeds. Best per column in **bold**: "
        + ", ".join(f"{SHORT[c]} {DIRECTION_WORDS[direction(c)]}" for c in (*METRICS, "wall_s", "peak_rss_mb"))
        + "."
    )
    lines.append(
        "FQ: forget quality (KS p-value against the retain model); MU: model utility; TR: truth ratio; under / within"
        " / over: the forgetting balance (fractions of forget samples below / inside / above the retain model's "
        "5-95% truth-ratio range); peak RSS: the fit process's peak resident memory (CPU RAM)."
    )
    lines.append("")
    by_base: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        by_base.setdefault(str(result["base"]), []).append(result)
    # the columns some cell or reference model has a value in (a cut-down evaluation suite leaves some out)
    columns = [
        c
        for c in METRICS
        if _values(results, c) or any(isinstance(r["summary"].get(c), int | float) for r in ref.values())
    ]
    columns += [c for c in ("wall_s", "peak_rss_mb", "peak_gpu_allocated_mb") if _values(results, c)]
    for base, base_results in by_base.items():
        lines += [f"## {base}", "", markdown_table(groups(base_results), columns, ref), ""]
    strata = stratum_columns([r["summary"] for r in results])
    if strata:
        lines += ["## Per stratum", ""]
        metrics = sorted({_STRATUM.match(k)["metric"] for k in strata}, key=lambda m: (m not in METRICS, m))
        for base, base_results in by_base.items():
            for metric in metrics:
                cols = [k for k in strata if _STRATUM.match(k)["metric"] == metric]
                heads = [_STRATUM.match(k)["stratum"] for k in cols]
                words = DIRECTION_WORDS[direction(metric)]
                lines += [f"### {base}: {metric} by stratum ({words} is best)", ""]
                lines += [markdown_table(groups(base_results), cols, ref, headers=heads), ""]
    lines += ["## Plots", ""]
    lines += [
        f"![forget quality vs model utility]({PLOT_FILES['plot_fq_mu']})",
        "",
        "(a) Forget quality (log scale) against model utility; large markers: mean over seeds, small: each seed.",
        "",
        f"![per-sample forget truth ratios]({PLOT_FILES['plot_truth_ratios']})",
        "",
        "(b) Per-sample forget truth ratios of the final models (seeds pooled) against the retain model's 5-95% range "
        "(shaded).",
        "",
        f"![forget quality and model utility by epoch]({PLOT_FILES['plot_epochs']})",
        "",
        "(c) Forget quality and model utility after each evaluated epoch (mean over seeds); epoch 0 is the target.",
        "",
    ]
    return "\n".join(lines)


def write_outputs(plan: Any, results: Mapping[str, Mapping[str, Any]], reference: Mapping[str, Any]) -> dict[str, Path]:
    """Every output of the study: results.csv/json, report.md and the three plots."""
    from baldro_pl.study.plots import plot_epochs, plot_fq_mu, plot_truth_ratios

    files = write_results(plan, results, reference)
    ordered = [results[c.hash] for c in plan.cells if c.hash in results]
    files["report"] = write_text_atomic(plan.output_dir / "report.md", report_markdown(plan, ordered, reference))
    grouped = groups(ordered)
    files["plot_fq_mu"] = plot_fq_mu(grouped, reference, plan.output_dir / PLOT_FILES["plot_fq_mu"])
    files["plot_truth_ratios"] = plot_truth_ratios(
        grouped, reference, plan.output_dir / PLOT_FILES["plot_truth_ratios"]
    )
    files["plot_epochs"] = plot_epochs(grouped, reference, plan.output_dir / PLOT_FILES["plot_epochs"])
    return files
