"""Test helper: run a suite without Lightning, as the callback would (``TOFUSuite(...).connect(...).evaluate(...)``)."""

from __future__ import annotations

from typing import Any

from baldro_pl.datamodules.encoder import RowEncoder
from baldro_pl.metrics import EvaluationResult, MUSESuite, Suite, TOFUSuite


def run_suite(
    suite: Suite,
    model: Any,
    tokenizer: Any,
    rows: Any,
    *,
    prompt_format: Any = None,
    forget_split: str | None = None,
    **evaluate: Any,
) -> EvaluationResult:
    """Connect ``suite`` to an encoder of ``tokenizer`` (the suite's default prompt format, 512 tokens) and run it."""
    encoder = RowEncoder(tokenizer, prompt_format or suite.default_prompt_format(), 512)
    return suite.connect(encoder=encoder, forget_split=forget_split).evaluate(model, rows, **evaluate)


def _split(kwargs: dict[str, Any]) -> dict[str, Any]:
    keys = ("prompt_format", "forget_split", "call_context", "synced_gpus", "allow_gradnorm")
    return {k: kwargs.pop(k) for k in keys if k in kwargs}


def evaluate_tofu(model: Any, tokenizer: Any, rows: Any, **kwargs: Any) -> EvaluationResult:
    """The TOFU suite with ``kwargs`` (suite options, plus prompt_format / forget_split / evaluate's options)."""
    run = _split(kwargs)
    return run_suite(TOFUSuite(**kwargs), model, tokenizer, rows, **run)


def evaluate_muse(model: Any, tokenizer: Any, rows: Any, **kwargs: Any) -> EvaluationResult:
    """The MUSE suite with ``kwargs`` (as :func:`evaluate_tofu`)."""
    run = _split(kwargs)
    return run_suite(MUSESuite(**kwargs), model, tokenizer, rows, **run)
