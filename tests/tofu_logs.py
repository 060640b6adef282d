"""Test helper: a TOFU evaluation log of a model directory, made in process (the retain log of CLI and study tests)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def write_tofu_log(
    model_dir: str | Path, data_dir: str | Path, path: Path, metrics: Sequence[str], max_new_tokens: int = 32
) -> Path:
    """Evaluate ``model_dir`` on forget10 of the TOFU-style set in ``data_dir`` and write ``TOFU_EVAL.json`` to
    ``path`` (atomically); returns ``path``."""
    from transformers import AutoModelForCausalLM

    from baldro_pl.datamodules import TOFUDataModule
    from baldro_pl.metrics import TOFUSuite, write_json_atomic

    dm = TOFUDataModule(data_dir=str(data_dir), forget_split="forget10", tokenizer=str(model_dir))
    dm.setup("test")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    suite = TOFUSuite(metrics=list(metrics), max_new_tokens=max_new_tokens)
    result = suite.connect(encoder=dm.encoder, forget_split="forget10").evaluate(model, dm.evaluation_rows())
    return write_json_atomic(path, result.logs)
