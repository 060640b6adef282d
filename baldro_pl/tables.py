"""The headline table of an evaluation, as the demo and the end-of-run summary print it (no heavy imports)."""

from __future__ import annotations

TABLE_ROWS: dict[str, tuple[tuple[str, str], ...]] = {
    "TOFU": (
        ("forget_quality", "forget quality (KS p vs retain, higher = closer)"),
        ("model_utility", "model utility (higher = better)"),
        ("forget_truth_ratio", "forget truth ratio"),
        ("forget_Q_A_Prob", "forget answer probability"),
        ("forget_Q_A_ROUGE", "forget ROUGE-L recall"),
        ("retain_Q_A_Prob", "retain answer probability"),
        ("privleak", "privleak (0 = like retain)"),
        ("forget_balance_within", "forget samples within retain range"),
    ),
    "MUSE": (
        ("forget_verbmem_ROUGE", "forget VerbMem ROUGE-L F1 (lower = forgotten)"),
        ("forget_knowmem_ROUGE", "forget KnowMem ROUGE-L F1 (lower = forgotten)"),
        ("retain_knowmem_ROUGE", "retain KnowMem ROUGE-L F1 (higher = better)"),
        ("privleak", "privleak (0 = like retrain)"),
    ),
}
"""The headline rows of the summary table per suite (TOFU's are the demo's), in order: (metric, description)."""


def format_value(value: float | None) -> str:
    """A number as the demo's table shows it.

    ``-`` for none, 2-digit scientific below 1e-3 or from 1e4, else 4 decimals.
    """
    if value is None:
        return "-"
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
