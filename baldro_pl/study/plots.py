"""The study's three plots (matplotlib, Agg backend: no display needed), each written atomically as a PNG.

(a) :func:`plot_fq_mu`: forget quality (log scale) against model utility, one colour per method group, small points
    for the seeds and a large marker with error bars (standard deviation over seeds) for their mean; the retain and
    target models as reference markers.
(b) :func:`plot_truth_ratios`: per-sample forget truth ratios of the final models (seeds pooled) as box plots with
    the points, the target's first, against the retain model's 5-95% range (shaded) and median (line).
(c) :func:`plot_epochs`: forget quality and model utility after each evaluated epoch, mean over seeds per group,
    starting from the target model at epoch 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

#: forget quality below this is drawn at it on the log axis (a KS p-value can underflow to 0).
FQ_FLOOR = 1e-30
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


#: a legend beside the axes, not over the data (a grid of 20 methods fills any corner)
_OUTSIDE: dict[str, Any] = {"fontsize": 8, "loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0}


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _fq(value: Any) -> float | None:
    value = _number(value)
    return None if value is None else max(value, FQ_FLOOR)


def _colours(n: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _base_markers(groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, str]:
    bases = list(dict.fromkeys(str(res[0]["base"]) for res in groups.values() if res))
    return {b: MARKERS[i % len(MARKERS)] for i, b in enumerate(bases)}


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def plot_fq_mu(groups: Mapping[str, Sequence[Mapping[str, Any]]], reference: Mapping[str, Any], path: Path) -> Path:
    """Plot (a): forget quality (log) vs model utility; the seed spread as points and error bars."""
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    markers = _base_markers(groups)
    drawn = False
    for colour, (label, results) in zip(_colours(len(groups)), groups.items()):
        points = [
            (mu, fq)
            for r in results
            if (mu := _number(r["summary"].get("model_utility"))) is not None
            and (fq := _fq(r["summary"].get("forget_quality"))) is not None
        ]
        if not points:
            continue
        drawn = True
        marker = markers.get(str(results[0]["base"]), "o")
        xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        ax.scatter(xs, ys, s=14, color=colour, alpha=0.45, marker=marker, linewidths=0)
        xerr = xs.std(ddof=1) if len(xs) > 1 else None
        yerr = None
        if len(ys) > 1:  # asymmetric bars of mean ± std, kept above the floor on the log axis
            mean, std = ys.mean(), ys.std(ddof=1)
            yerr = [[mean - max(mean - std, FQ_FLOOR)], [std]]
        ax.errorbar(
            xs.mean(), ys.mean(), xerr=xerr, yerr=yerr, fmt=marker, color=colour, markersize=9, capsize=3, label=label
        )
    styles = {
        "retain": {"marker": "*", "color": "black", "s": 160},
        "target": {"marker": "X", "color": "grey", "s": 110},
    }
    for role, style in styles.items():
        summary = (reference.get(role) or {}).get("summary") or {}
        mu, fq = _number(summary.get("model_utility")), _fq(summary.get("forget_quality"))
        if mu is not None and fq is not None:
            drawn = True
            ax.scatter([mu], [fq], label=f"{role} model", zorder=5, **style)
    if drawn:
        ax.set_yscale("log")
        ax.legend(**_OUTSIDE)
    else:
        _empty(ax, "no forget quality / model utility values")
    ax.set_xlabel("model utility (higher is better)")
    ax.set_ylabel(f"forget quality, log scale (higher is better; < {FQ_FLOOR:.0e} drawn at it)")
    ax.set_title("(a) forget quality vs model utility (large: mean over seeds, small: seeds)")
    ax.grid(True, which="major", alpha=0.3)
    return _save(fig, path)


def plot_truth_ratios(
    groups: Mapping[str, Sequence[Mapping[str, Any]]], reference: Mapping[str, Any], path: Path
) -> Path:
    """Plot (b): per-sample forget truth ratios per group against the retain model's 5-95% band."""
    data: list[tuple[str, list[float]]] = []
    target = (reference.get("target") or {}).get("truth_ratios") or []
    if target:
        data.append(("target", list(target)))
    for label, results in groups.items():
        values = [v for r in results for v in (r.get("truth_ratios") or [])]
        if values:
            data.append((label, values))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(data) + 2), 5.0))
    retain = np.asarray((reference.get("retain") or {}).get("truth_ratios") or [], dtype=float)
    if retain.size:
        low, mid, high = np.percentile(retain, [5, 50, 95])
        ax.axhspan(low, high, color="tab:green", alpha=0.15, label="retain model 5-95%")
        ax.axhline(mid, color="tab:green", lw=1, ls="--", label="retain model median")
    if data:
        values = [np.asarray(v, dtype=float) for _, v in data]
        ax.boxplot(values, showfliers=False, widths=0.6)
        rng = np.random.default_rng(0)
        colours = ["grey", *_colours(len(data))] if target else _colours(len(data))
        for i, (v, colour) in enumerate(zip(values, colours), start=1):
            ax.scatter(i + rng.uniform(-0.18, 0.18, v.size), v, s=8, alpha=0.5, color=colour, linewidths=0)
        ax.set_xticks(range(1, len(data) + 1), [name for name, _ in data], rotation=30, ha="right", fontsize=8)
        everything = np.concatenate([*values, retain]) if retain.size else np.concatenate(values)
        positive = everything[everything > 0]
        if positive.size == everything.size and positive.size and positive.max() / positive.min() > 50:
            ax.set_yscale("log")
    else:
        _empty(ax, "no per-sample truth ratios")
    ax.set_ylabel("forget truth ratio per sample")
    ax.set_title("(b) per-sample forget truth ratios of the final models (seeds pooled)")
    if retain.size:
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def _series(results: Sequence[Mapping[str, Any]], key: str, start: float | None) -> tuple[list[int], list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for result in results:
        for record in result.get("epochs_evaluated") or []:
            value = _number(record.get(key))
            if value is not None:
                by_epoch.setdefault(int(record["epoch"]), []).append(value)
    epochs = sorted(by_epoch)
    xs, ys = ([0], [start]) if start is not None else ([], [])
    return xs + epochs, ys + [float(np.mean(by_epoch[e])) for e in epochs]


def plot_epochs(groups: Mapping[str, Sequence[Mapping[str, Any]]], reference: Mapping[str, Any], path: Path) -> Path:
    """Plot (c): forget quality (log) and model utility after each evaluated epoch, mean over seeds."""
    fig, (ax_fq, ax_mu) = plt.subplots(1, 2, figsize=(11, 4.5))
    target = (reference.get("target") or {}).get("summary") or {}
    retain = (reference.get("retain") or {}).get("summary") or {}
    markers = _base_markers(groups)
    drawn = False
    for colour, (label, results) in zip(_colours(len(groups)), groups.items()):
        marker = markers.get(str(results[0]["base"]), "o") if results else "o"
        for ax, key, floor in ((ax_fq, "forget_quality", True), (ax_mu, "model_utility", False)):
            xs, ys = _series(results, key, _number(target.get(key)))
            if len(xs) == 0 or (len(xs) == 1 and xs[0] == 0):
                continue
            drawn = True
            ys = [max(y, FQ_FLOOR) for y in ys] if floor else ys
            ax.plot(xs, ys, marker=marker, color=colour, label=label, markersize=4)
    for ax, key in ((ax_fq, "forget_quality"), (ax_mu, "model_utility")):
        value = _number(retain.get(key))
        if value is not None:
            ax.axhline(
                max(value, FQ_FLOOR) if key == "forget_quality" else value,
                color="black",
                ls=":",
                lw=1,
                label="retain model",
            )
        ax.set_xlabel("epochs trained (0: the target model)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    if drawn:
        ax_fq.set_yscale("log")
        for ax in (ax_mu, ax_fq):  # one legend, on the first panel (from the right) that has lines
            if ax.get_legend_handles_labels()[0]:
                ax.legend(**_OUTSIDE)
                break
    else:
        _empty(ax_fq, "no per-epoch evaluations")
        _empty(ax_mu, "no per-epoch evaluations")
    ax_fq.set_ylabel("forget quality (log scale)")
    ax_mu.set_ylabel("model utility")
    ax_fq.set_title("(c) forget quality by epoch (mean over seeds)")
    ax_mu.set_title("model utility by epoch (mean over seeds)")
    return _save(fig, path)
