"""The TOFU and MUSE suites on a tiny model: log layout, shared passes, round trip through ``summarize``."""

from __future__ import annotations

import json
import math
import zlib

import pytest
import torch
from suites import evaluate_muse, evaluate_tofu

from baldro_pl.datamodules import PromptFormat, encode_qa
from baldro_pl.metrics import recompute_aggregates, write_json_atomic
from baldro_pl.metrics.functional import truth_ratio
from baldro_pl.metrics.likelihood import score_samples
from baldro_pl.metrics.muse import MUSE_METRICS
from baldro_pl.metrics.tofu import TOFU_METRICS, TOFUSuite

TOKENS = 4


@pytest.fixture
def tofu_result(tiny_model, toy_tokenizer, tofu_rows):
    rows = tofu_rows(5)
    result = evaluate_tofu(tiny_model, toy_tokenizer, rows, max_new_tokens=TOKENS, batch_size=4)
    return result, rows


def _check_roundtrip(logs: dict, tmp_path, reference: dict | None = None) -> None:
    """Our own logs are summarizable: recomputing every aggregate from the per-sample values gives the same numbers,
    also after an atomic JSON write and read."""
    path = write_json_atomic(tmp_path / "EVAL.json", logs)
    loaded = json.loads(path.read_text())
    for source in (logs, loaded):
        again = recompute_aggregates(source, reference)
        for name, entry in source.items():
            if entry.get("agg_value") is None:
                continue
            assert again[name] == pytest.approx(entry["agg_value"], rel=1e-12, abs=1e-12), name


def test_tofu_layout_and_roundtrip(tofu_result, tmp_path) -> None:
    result, rows = tofu_result
    logs = result.logs
    assert list(logs) == list(TOFU_METRICS)
    assert logs["forget_quality"] == {"agg_value": None}
    assert all(
        logs[k] == {"agg_value": None} for k in ("forget_balance_under", "forget_balance_within", "forget_balance_over")
    )
    entry = logs["forget_Q_A_PERT_Prob"]["value_by_index"]["0"]
    assert len(entry["prob"]) == 5 and len(entry["avg_loss"]) == 5
    assert len(logs["ra_Q_A_PERT_Prob"]["value_by_index"]["4"]["prob"]) == 3
    rouge = logs["forget_Q_A_ROUGE"]["value_by_index"]["0"]
    assert set(rouge) == {"rouge1_recall", "rougeL_f1", "rougeL_recall", "input", "ground_truth", "generation"}
    assert rouge["ground_truth"] == rows["forget"][0]["answer"]
    assert rouge["input"] == f"[INST] {rows['forget'][0]['question']} [/INST]"
    pert_rouge = logs["forget_Q_A_PERT_ROUGE"]["value_by_index"]["2"]
    assert pert_rouge["ground_truth"] == rows["forget"][2]["perturbed_answer"]
    assert (
        len(set(pert_rouge["generation"])) == 1
        and pert_rouge["generation"][0] == logs["forget_Q_A_ROUGE"]["value_by_index"]["2"]["generation"]
    )
    mia = logs["mia_min_k"]
    assert set(mia) == {"forget", "holdout", "auc", "agg_value"} and mia["auc"] == mia["agg_value"]
    assert list(mia["holdout"]["value_by_index"]) == [str(i) for i in range(5)]
    assert set(result.summary) == {k for k, v in logs.items() if v["agg_value"] is not None}
    _check_roundtrip(logs, tmp_path)


def test_tofu_metrics_share_one_pass(tofu_result, tiny_model, toy_tokenizer) -> None:
    """Prob, loss / zlib MIA, truth ratio: the same primitive-A values, equal to a direct scoring."""
    result, rows = tofu_result
    logs = result.logs
    fmt = PromptFormat.llama2_chat()
    samples = [encode_qa(toy_tokenizer, r["question"], r["answer"], fmt) for r in rows["forget"]]
    direct = score_samples(
        tiny_model.eval(), samples, pad_token_id=toy_tokenizer.pad_token_id, batch_size=1, vocab=True
    )
    for i in range(5):
        prob = logs["forget_Q_A_Prob"]["value_by_index"][str(i)]
        assert prob["avg_loss"] == pytest.approx(direct["avg_loss"][i].item(), rel=1e-5)
        assert prob["prob"] == pytest.approx(math.exp(-prob["avg_loss"]), rel=1e-12)
        assert logs["mia_loss"]["forget"]["value_by_index"][str(i)]["score"] == prob["avg_loss"]
        zlib_len = len(zlib.compress(rows["forget"][i]["answer"].encode()))
        assert logs["mia_zlib"]["forget"]["value_by_index"][str(i)]["score"] == pytest.approx(
            prob["avg_loss"] / zlib_len
        )
        assert logs["mia_min_k_plus_plus"]["forget"]["value_by_index"][str(i)]["score"] == pytest.approx(
            direct["min_k_plus_plus"][i].item(), rel=1e-5
        )
        assert logs["extraction_strength"]["value_by_index"][str(i)]["score"] == pytest.approx(
            direct["extraction_strength"][i].item()
        )
        para = logs["forget_Q_A_PARA_Prob"]["value_by_index"][str(i)]["avg_loss"]
        pert = logs["forget_Q_A_PERT_Prob"]["value_by_index"][str(i)]["avg_loss"]
        tr = truth_ratio(torch.tensor([para]), torch.tensor([pert])).item()
        assert logs["forget_truth_ratio"]["value_by_index"][str(i)]["score"] == pytest.approx(tr, rel=1e-12)


def test_evaluation_leaves_model_state_alone(tiny_model, toy_tokenizer, tofu_rows) -> None:
    tiny_model.train()
    tiny_model.model.layers[1].eval()
    modes = {name: m.training for name, m in tiny_model.named_modules()}
    weights = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    evaluate_tofu(
        tiny_model, toy_tokenizer, tofu_rows(2), max_new_tokens=2, metrics=["mia_gradnorm", "forget_Q_A_ROUGE"]
    )
    assert {name: m.training for name, m in tiny_model.named_modules()} == modes
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None for p in tiny_model.parameters())


def test_metric_selection_closes_over_dependencies(toy_tokenizer) -> None:
    evaluator = TOFUSuite(metrics=["model_utility"])
    assert set(evaluator.metrics) == {
        "model_utility",
        "retain_Q_A_Prob",
        "retain_Q_A_ROUGE",
        "retain_Truth_Ratio",
        "retain_Q_A_PARA_Prob",
        "retain_Q_A_PERT_Prob",
        *(
            f"{p}_{m}"
            for p in ("ra", "wf")
            for m in ("Q_A_Prob", "Q_A_PERT_Prob", "Q_A_Prob_normalised", "Q_A_ROUGE", "Truth_Ratio")
        ),
    }
    assert not evaluator.plans["forget"].needed and not evaluator.plans["holdout"].needed
    full = TOFUSuite(exclude=["mia_gradnorm"])
    assert "mia_gradnorm" not in full.metrics and full.plans["forget"].vocab and not full.plans["forget"].gradnorm
    light = TOFUSuite(metrics=["privleak", "forget_balance"])
    assert light.metrics == [
        "forget_Q_A_PARA_Prob",
        "forget_Q_A_PERT_Prob",
        "forget_truth_ratio",
        "forget_balance_under",
        "forget_balance_within",
        "forget_balance_over",
        "privleak",
        "mia_min_k",
    ]
    assert not light.plans["forget"].vocab  # min-k needs no full-vocabulary statistics


def test_question_key_and_chat_template(tiny_model, toy_tokenizer, tofu_rows) -> None:
    rows = tofu_rows(2)
    result = evaluate_tofu(
        tiny_model,
        toy_tokenizer,
        rows,
        metrics=["forget_Q_A_ROUGE", "ra_Q_A_ROUGE"],
        question_key="paraphrased_question",
        max_new_tokens=2,
    )
    assert rows["forget"][0]["paraphrased_question"] in result.logs["forget_Q_A_ROUGE"]["value_by_index"]["0"]["input"]
    assert rows["real_authors"][0]["question"] in result.logs["ra_Q_A_ROUGE"]["value_by_index"]["0"]["input"]
    chat = evaluate_tofu(
        tiny_model,
        toy_tokenizer,
        rows,
        prompt_format=PromptFormat.chat_template(),
        metrics=["forget_Q_A_ROUGE"],
        max_new_tokens=2,
    )
    assert chat.logs["forget_Q_A_ROUGE"]["value_by_index"]["1"]["ground_truth"] == rows["forget"][1]["answer"]


def test_muse_layout_stops_and_roundtrip(tiny_model, toy_tokenizer, muse_rows, reference_log, tmp_path) -> None:
    rows = muse_rows(3)
    reference = reference_log("muse_Llama-2-7b-hf_News_retrain_MUSE_EVAL.json")
    result = evaluate_muse(
        tiny_model,
        toy_tokenizer,
        rows,
        max_new_tokens=TOKENS,
        retain_logs_path=reference,
        completion_max_length=128,
        knowmem_max_length=2048,
    )
    logs = result.logs
    assert list(logs) == list(MUSE_METRICS)
    know = logs["forget_knowmem_ROUGE"]["value_by_index"]["0"]
    assert know["input"].startswith("Question: " + rows["knowmem_forget_qa_icl"][0]["question"] + "\nAnswer: ")
    assert know["input"].endswith("Question: " + rows["knowmem_forget_qa"][0]["question"] + "\nAnswer: ")
    assert all(
        "\n\n" not in r["generation"] and "Question:" not in r["generation"]
        for r in logs["retain_knowmem_ROUGE"]["value_by_index"].values()
    )
    verb = logs["forget_verbmem_ROUGE"]["value_by_index"]["1"]
    assert rows["verbmem_forget"][1]["gt"].startswith(verb["ground_truth"][:20])
    assert logs["forget_verbmem_ROUGE"]["agg_value"] == pytest.approx(
        sum(v["rougeL_f1"] for v in logs["forget_verbmem_ROUGE"]["value_by_index"].values()) / 3
    )
    assert math.isfinite(logs["mia_gradnorm"]["agg_value"]) and set(logs["mia_gradnorm"]) == {
        "forget",
        "holdout",
        "auc",
        "agg_value",
    }
    _check_roundtrip(logs, tmp_path, reference)
