"""Suite-level wiring: every aggregate the TOFU and MUSE suites write is the right formula of the right per-sample field
against the right reference (issue 10, item 1).

Both suites run, through their Lightning callbacks in ``trainer.test``, on a tiny Llama fitted so that greedy decoding
reproduces some answers exactly and others only in part (:mod:`wiring_data`): ROUGE-L recall, precision and F1 then
differ, which the tests assert first, so that they cannot silently become vacuous. The TOFU run gets a retain log (a
second fitted model's, written by the suite's own writer) whose min-k AUC is far from 0.5.

* ``test_*_aggregate[name]``: each logged ``agg_value`` equals an independent computation from the logged per-sample
  values (metrics-spec §1.6, §1.7, §2.3-2.5, §4.2, §4.3, §5): TOFU ROUGE = mean ROUGE-L recall, MUSE ROUGE = mean
  ROUGE-L F1, privleak against the retain log's AUC, forget quality and balance against its truth ratios...
  ``test_*_every_aggregate_is_checked`` fails when a suite logs an aggregate that has no check here.
* ``test_*_per_sample_*``: the per-sample values themselves: ROUGE recomputed with ``rouge_score`` from the logged
  generation and ground truth (and the ground truth is the right field of the row), probabilities, truth ratios, MIA
  scores, EM and ES from direct single-sample forward passes of the model.
* ``test_*_privleak_without_retain_log``: privleak against 0.5 when no retain log is given.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import wiring_data as W
from suites import evaluate_muse, evaluate_tofu
from torch.utils.data import DataLoader

from baldro_pl.datamodules import PromptFormat, encode_qa
from baldro_pl.datamodules.encoder import RowEncoder
from baldro_pl.metrics import Evaluation, MUSESuite, TOFUSuite, write_json_atomic
from baldro_pl.metrics.generation import target_text
from baldro_pl.metrics.muse import MUSE_METRICS
from baldro_pl.metrics.tofu import TOFU_METRICS

TOFU_PREFIXES = {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}
STRATA = ("x1", "x2", "x4")
STRATUM_METRICS = (
    "forget_truth_ratio",
    "forget_Q_A_Prob",
    "forget_balance_under",
    "forget_balance_within",
    "forget_balance_over",
)
TOFU_NAMES = (*TOFU_METRICS, *(f"stratum/{s}/{m}" for s in STRATA for m in STRATUM_METRICS))
MIA = ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm")
#: per-sample values from a direct fp32 forward pass vs the suite's batched one (a wrong field is off by far more)
MODEL_TOL = {"rel": 1e-3, "abs": 1e-6}


class _Module(pl.LightningModule):
    """The callbacks' module contract: ``.model`` is the Hugging Face model."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def test_step(self, batch, batch_idx) -> None:
        pass


@dataclass
class SuiteRun:
    """What a suite wrote in ``trainer.test``: the per-row log, the summary, and the reference log it was given."""

    logs: dict[str, Any]
    summary: dict[str, float]
    reference: dict[str, Any]


def _run_callback(callback: pl.Callback, model: torch.nn.Module, folder: Path, suite: str, reference: Path) -> SuiteRun:
    """``trainer.test`` with the suite's callback; the files it wrote to ``folder/run/test``."""
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    trainer.test(_Module(model), dataloaders=DataLoader([torch.zeros(1)]), verbose=False)

    def read(path: Path) -> dict[str, Any]:
        return json.loads(path.read_text(encoding="utf-8"))

    written = folder / "run" / "test"
    return SuiteRun(read(written / f"{suite}_EVAL.json"), read(written / f"{suite}_SUMMARY.json"), read(reference))


@pytest.fixture(scope="module")
def fitted() -> W.Fitted:
    return W.fit_models()


@pytest.fixture(scope="module")
def tofu_run(fitted, tmp_path_factory) -> SuiteRun:
    folder = tmp_path_factory.mktemp("tofu_wiring")
    retain = evaluate_tofu(
        fitted.retain_model,
        fitted.tokenizer,
        W.TOFU_ROWS,
        metrics=["forget_truth_ratio", "mia_min_k"],
        max_new_tokens=W.MAX_NEW_TOKENS,
    )
    retain_path = write_json_atomic(folder / "retain" / "TOFU_EVAL.json", retain.logs)
    suite = TOFUSuite(retain_logs_path=retain_path, max_new_tokens=W.MAX_NEW_TOKENS, batch_size=8)
    encoder = RowEncoder(fitted.tokenizer, PromptFormat.llama2_chat(), 512)
    callback = Evaluation(
        suite.connect(encoder=encoder, forget_split="forget_wiring"),
        rows=W.TOFU_ROWS,
        eval_on_start=False,
        every_n_epochs=None,
        output_dir=folder / "run",
    )
    return _run_callback(callback, fitted.model, folder, "TOFU", retain_path)


@pytest.fixture(scope="module")
def muse_run(fitted, tmp_path_factory) -> SuiteRun:
    folder = tmp_path_factory.mktemp("muse_wiring")
    retrain = evaluate_muse(fitted.retain_model, fitted.tokenizer, W.MUSE_ROWS, metrics=["mia_min_k"])
    retrain_path = write_json_atomic(folder / "retrain" / "MUSE_EVAL.json", retrain.logs)
    suite = MUSESuite(retain_logs_path=retrain_path, max_new_tokens=W.MAX_NEW_TOKENS)
    callback = Evaluation(
        suite.connect(encoder=RowEncoder(fitted.tokenizer, PromptFormat.muse_qa(), 512)),
        rows=W.MUSE_ROWS,
        eval_on_start=False,
        every_n_epochs=None,
        output_dir=folder / "run",
    )
    return _run_callback(callback, fitted.model, folder, "MUSE", retrain_path)


# ---------------------------------------------------------------------- helpers


def _rows(entry: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """``value_by_index`` as (row, values) pairs in row order."""
    return sorted((int(i), v) for i, v in entry["value_by_index"].items())


def _mean_field(entry: dict[str, Any], field: str) -> float:
    """Mean over rows of a per-sample field (a list of options: their mean first)."""
    return float(np.mean([np.mean(v[field]) for _, v in _rows(entry)]))


def _scores(entry: dict[str, Any]) -> list[float]:
    return [v["score"] for _, v in _rows(entry)]


def _mia_sides(entry: dict[str, Any]) -> tuple[list[float], list[float]]:
    return _scores(entry["forget"]), _scores(entry["holdout"])


def _stratum_rows(stratum: str) -> list[int]:
    return [i for i, r in enumerate(W.TOFU_ROWS["forget"]) if r["stratum"] == stratum]


def _close(logged: float | None, expected: float | None, name: str) -> None:
    assert logged is not None and expected is not None, f"{name}: logged {logged}, expected {expected}"
    assert logged == pytest.approx(expected, rel=1e-12, abs=1e-12), f"{name}: logged {logged}, expected {expected}"


# ---------------------------------------------------------------------- TOFU: independent aggregates


def _tofu_expected(name: str, logs: dict[str, Any], reference: dict[str, Any]) -> float:
    """The aggregate ``name`` recomputed from the logged per-sample values (and the retain log) by the spec."""
    ref_trs = _scores(reference["forget_truth_ratio"])
    if name.startswith("stratum/"):
        _, stratum, metric = name.split("/")
        keep = set(_stratum_rows(stratum))
        trs = [v["score"] for i, v in _rows(logs["forget_truth_ratio"]) if i in keep]
        if metric == "forget_truth_ratio":
            return W.closer_to_1_better(trs)
        if metric == "forget_Q_A_Prob":
            return float(np.mean([v["prob"] for i, v in _rows(logs["forget_Q_A_Prob"]) if i in keep]))
        return W.balance(trs, ref_trs)[metric]
    if name.endswith("ROUGE"):
        return _mean_field(logs[name], "rougeL_recall")  # TOFU: ROUGE-L recall (spec §1.6, P8)
    if name.endswith(("Prob", "Prob_normalised")):
        return _mean_field(logs[name], "prob")  # PERT: mean over options, then over rows
    if name == "forget_truth_ratio":
        return W.closer_to_1_better(_scores(logs[name]))
    if name.endswith("_Truth_Ratio"):
        return W.true_better(_scores(logs[name]))
    if name == "forget_quality":
        return W.forget_quality(_scores(logs["forget_truth_ratio"]), ref_trs)
    if name.startswith("forget_balance_"):
        return W.balance(_scores(logs["forget_truth_ratio"]), ref_trs)[name]
    if name == "model_utility":
        parts = [  # spec §2.4: un-normalised retain Prob, normalised RA / WF Prob
            "retain_Q_A_Prob",
            "retain_Q_A_ROUGE",
            "retain_Truth_Ratio",
            *(f"{p}_{m}" for p in ("ra", "wf") for m in ("Q_A_Prob_normalised", "Q_A_ROUGE", "Truth_Ratio")),
        ]
        return W.harmonic_mean([logs[p]["agg_value"] for p in parts])
    if name == "privleak":
        return W.privleak(logs["mia_min_k"]["agg_value"], reference["mia_min_k"]["agg_value"])
    if name.startswith("mia_"):
        return W.auc(*_mia_sides(logs[name]))
    if name in ("exact_memorization", "extraction_strength"):
        return float(np.mean(_scores(logs[name])))
    raise AssertionError(f"no independent check for the TOFU aggregate {name!r}: add one to _tofu_expected")


@pytest.mark.parametrize("name", TOFU_NAMES)
def test_tofu_aggregate(tofu_run, name: str) -> None:
    _close(tofu_run.logs[name]["agg_value"], _tofu_expected(name, tofu_run.logs, tofu_run.reference), name)
    assert tofu_run.summary[name] == tofu_run.logs[name]["agg_value"]


def test_tofu_every_aggregate_is_checked(tofu_run) -> None:
    logged = {k for k, v in tofu_run.logs.items() if "agg_value" in v}
    assert logged == set(TOFU_NAMES)
    assert set(tofu_run.summary) == logged  # with a retain log every aggregate has a value
    assert all(tofu_run.logs[f"stratum/{s}/forget_Q_A_Prob"]["n_samples"] == len(_stratum_rows(s)) for s in STRATA)


# ---------------------------------------------------------------------- TOFU: not vacuous


def test_the_model_is_fitted(fitted) -> None:
    assert fitted.final_loss < 0.05  # mean per-token loss on the training targets


def _rouge_rows(entry: dict[str, Any]) -> list[dict[str, float]]:
    return [W.rouge(v["generation"], v["ground_truth"]) for _, v in _rows(entry)]


@pytest.mark.parametrize("prefix", TOFU_PREFIXES.values())
def test_tofu_rouge_fields_differ(tofu_run, prefix: str) -> None:
    """Exact, stopped-early and run-on generations: recall, precision and F1 differ, so do their means."""
    rows = _rouge_rows(tofu_run.logs[f"{prefix}_Q_A_ROUGE"])
    assert any(r["rougeL_recall"] == r["rougeL_precision"] == 1.0 for r in rows)
    assert any(r["rougeL_recall"] < r["rougeL_precision"] for r in rows)
    assert any(r["rougeL_precision"] < r["rougeL_recall"] for r in rows)
    for variant in ("", "PARA_", "PERT_") if prefix in ("forget", "retain") else ("",):
        entry = tofu_run.logs[f"{prefix}_Q_A_{variant}ROUGE"]
        assert abs(_mean_field(entry, "rougeL_recall") - _mean_field(entry, "rougeL_f1")) > 1e-3


def test_tofu_references_are_discriminating(tofu_run) -> None:
    """privleak against the retain log and against 0.5 differ; the retain log's truth ratios are not the model's."""
    logs, ref = tofu_run.logs, tofu_run.reference
    auc, ref_auc = logs["mia_min_k"]["agg_value"], ref["mia_min_k"]["agg_value"]
    assert 0.0 < auc < 1.0 and abs(ref_auc - 0.5) > 0.2
    assert abs(W.privleak(auc, ref_auc) - W.privleak(auc, 0.5)) > 1.0
    assert W.forget_quality(_scores(logs["forget_truth_ratio"]), _scores(ref["forget_truth_ratio"])) < 0.99
    assert logs["forget_balance_within"]["agg_value"] < 1.0
    for prefix in ("forget", "retain"):  # a truth ratio wired to the answer instead of the paraphrase would show
        answer = [v["avg_loss"] for _, v in _rows(logs[f"{prefix}_Q_A_Prob"])]
        para = [v["avg_loss"] for _, v in _rows(logs[f"{prefix}_Q_A_PARA_Prob"])]
        assert all(abs(a - p) > 0.1 for a, p in zip(answer, para)), prefix


def test_tofu_privleak_without_retain_log(fitted, tofu_run) -> None:
    result = evaluate_tofu(
        fitted.model, fitted.tokenizer, W.TOFU_ROWS, metrics=["privleak", "forget_quality", "forget_balance"]
    )
    logs = result.logs
    assert logs["mia_min_k"]["agg_value"] == pytest.approx(tofu_run.logs["mia_min_k"]["agg_value"], abs=1e-12)
    _close(logs["privleak"]["agg_value"], W.privleak(logs["mia_min_k"]["agg_value"], 0.5), "privleak")
    assert all(logs[k]["agg_value"] is None for k in ("forget_quality", *STRATUM_METRICS[2:]))
    assert any("privleak uses the reference AUC 0.5" in w for w in result.warnings)


# ---------------------------------------------------------------------- TOFU: per-sample values


def _answers(variant: str, row: dict[str, Any]) -> list[str]:
    """The answers a TOFU variant scores: the answer, the paraphrase, or the perturbed answers."""
    return {"": [row["answer"]], "PARA_": [row.get("paraphrased_answer")], "PERT_": row.get("perturbed_answer")}[
        variant
    ]


@pytest.mark.parametrize("split", TOFU_PREFIXES)
def test_tofu_per_sample_rouge(tofu_run, split: str) -> None:
    """ROUGE recomputed with rouge_score from the logged texts; each ground truth is the variant's own field."""
    prefix, data = TOFU_PREFIXES[split], W.TOFU_ROWS[split]
    generations = {i: v["generation"] for i, v in _rows(tofu_run.logs[f"{prefix}_Q_A_ROUGE"])}
    assert len(generations) == len(data)
    for variant in ("", "PARA_", "PERT_") if split in ("forget", "retain") else ("",):
        for i, v in _rows(tofu_run.logs[f"{prefix}_Q_A_{variant}ROUGE"]):
            truths = _answers(variant, data[i])
            logged_truths = [v["ground_truth"]] if variant != "PERT_" else v["ground_truth"]
            assert logged_truths == truths, (variant, i)
            gens = [v["generation"]] if variant != "PERT_" else v["generation"]
            assert set(gens) == {generations[i]}  # one generation per row serves every variant
            for field in ("rouge1_recall", "rougeL_recall", "rougeL_f1"):
                logged = [v[field]] if variant != "PERT_" else v[field]
                expected = [W.rouge(generations[i], t)[field] for t in truths]
                assert logged == pytest.approx(expected, abs=1e-12), (variant, i, field)


@pytest.mark.parametrize("split", TOFU_PREFIXES)
def test_tofu_per_sample_probabilities_and_truth_ratios(fitted, tofu_run, split: str) -> None:
    logs, prefix, data = tofu_run.logs, TOFU_PREFIXES[split], W.TOFU_ROWS[split]
    tok, model = fitted.tokenizer, fitted.model
    variants = ("", "PARA_", "PERT_") if split in ("forget", "retain") else ("", "PERT_")
    losses: dict[str, dict[int, list[float]]] = {}
    with torch.no_grad():
        for variant in variants:
            losses[variant] = {}
            for i, v in _rows(logs[f"{prefix}_Q_A_{variant}Prob"]):
                expected = [
                    W.sample_scores(model, *W.tofu_encoding(tok, data[i]["question"], a), gradnorm=False).avg_loss
                    for a in _answers(variant, data[i])
                ]
                logged = v["avg_loss"] if variant == "PERT_" else [v["avg_loss"]]
                probs = v["prob"] if variant == "PERT_" else [v["prob"]]
                assert logged == pytest.approx(expected, **MODEL_TOL), (variant, i)
                assert probs == pytest.approx([math.exp(-x) for x in logged], rel=1e-12), (variant, i)
                losses[variant][i] = logged
    correct = "PARA_" if split in ("forget", "retain") else ""  # spec P5
    tr_name = "forget_truth_ratio" if split == "forget" else f"{prefix}_Truth_Ratio"
    for i, v in _rows(logs[tr_name]):
        assert v["score"] == pytest.approx(W.truth_ratio(losses[correct][i][0], losses["PERT_"][i]), rel=1e-12), i
    if split in ("real_authors", "world_facts"):
        for i, v in _rows(logs[f"{prefix}_Q_A_Prob_normalised"]):
            p, q = math.exp(-losses[""][i][0]), [math.exp(-x) for x in losses["PERT_"][i]]
            assert v["prob"] == pytest.approx(p / (p + sum(q) + 1e-10), rel=1e-12), i


def test_tofu_per_sample_mia_and_memorization(fitted, tofu_run) -> None:
    """Every attack's per-side scores from direct forward passes on the answers (spec §4.1, §5)."""
    logs, tok, model = tofu_run.logs, fitted.tokenizer, fitted.model
    for side in ("forget", "holdout"):
        for i, row in enumerate(W.TOFU_ROWS[side]):
            s = W.sample_scores(model, *W.tofu_encoding(tok, row["question"], row["answer"]))
            expected = {
                "mia_loss": s.avg_loss,
                "mia_zlib": s.avg_loss / W.zlib_size(row["answer"]),
                "mia_min_k": s.min_k,
                "mia_min_k_plus_plus": s.min_k_plus_plus,
                "mia_gradnorm": s.gradnorm,
            }
            for attack in MIA:
                logged = logs[attack][side]["value_by_index"][str(i)]["score"]
                assert logged == pytest.approx(expected[attack], **MODEL_TOL), (attack, side, i)
            if side == "forget":
                assert logs["exact_memorization"]["value_by_index"][str(i)]["score"] == pytest.approx(
                    s.exact_memorization, abs=1e-12
                )
                assert logs["extraction_strength"]["value_by_index"][str(i)]["score"] == pytest.approx(
                    s.extraction_strength, abs=1e-12
                )
    for attack in MIA:
        entry = logs[attack]
        assert entry["auc"] == entry["agg_value"]
        for side in ("forget", "holdout"):
            _close(entry[side]["agg_value"], float(np.mean(_scores(entry[side]))), f"{attack}.{side}")


# ---------------------------------------------------------------------- MUSE

_KNOWMEM = {"forget_knowmem_ROUGE": "knowmem_forget_qa", "retain_knowmem_ROUGE": "knowmem_retain_qa"}
_MUSE_ROUGE = ("forget_verbmem_ROUGE", *_KNOWMEM)


def _muse_expected(name: str, logs: dict[str, Any], reference: dict[str, Any] | None) -> float:
    if name.endswith("ROUGE"):
        return _mean_field(logs[name], "rougeL_f1")  # MUSE: ROUGE-L F1 (spec §3.2, P8)
    if name == "privleak":
        ref_auc = 0.5 if reference is None else reference["mia_min_k"]["agg_value"]
        return W.privleak(logs["mia_min_k"]["agg_value"], ref_auc)
    if name.startswith("mia_"):
        return W.auc(*_mia_sides(logs[name]))
    if name in ("exact_memorization", "extraction_strength"):
        return float(np.mean(_scores(logs[name])))
    raise AssertionError(f"no independent check for the MUSE aggregate {name!r}: add one to _muse_expected")


@pytest.mark.parametrize("name", MUSE_METRICS)
def test_muse_aggregate(muse_run, name: str) -> None:
    _close(muse_run.logs[name]["agg_value"], _muse_expected(name, muse_run.logs, muse_run.reference), name)
    assert muse_run.summary[name] == muse_run.logs[name]["agg_value"]


def test_muse_every_aggregate_is_checked(muse_run) -> None:
    logged = {k for k, v in muse_run.logs.items() if "agg_value" in v}
    assert logged == set(MUSE_METRICS) == set(muse_run.summary)


@pytest.mark.parametrize("name", _MUSE_ROUGE)
def test_muse_rouge_fields_differ(muse_run, name: str) -> None:
    rows = _rouge_rows(muse_run.logs[name])
    assert any(r["rougeL_recall"] == r["rougeL_precision"] == 1.0 for r in rows)
    assert any(r["rougeL_recall"] < r["rougeL_precision"] for r in rows)
    assert any(r["rougeL_precision"] < r["rougeL_recall"] for r in rows)
    entry = muse_run.logs[name]
    assert abs(_mean_field(entry, "rougeL_recall") - _mean_field(entry, "rougeL_f1")) > 1e-3


def test_muse_references_are_discriminating(muse_run) -> None:
    auc, ref_auc = muse_run.logs["mia_min_k"]["agg_value"], muse_run.reference["mia_min_k"]["agg_value"]
    assert 0.0 < auc < 1.0 and abs(ref_auc - 0.5) > 0.2
    assert abs(W.privleak(auc, ref_auc) - W.privleak(auc, 0.5)) > 1.0


def test_muse_privleak_without_retain_log(fitted, muse_run) -> None:
    result = evaluate_muse(fitted.model, fitted.tokenizer, W.MUSE_ROWS, metrics=["privleak"])
    logs = result.logs
    assert logs["mia_min_k"]["agg_value"] == pytest.approx(muse_run.logs["mia_min_k"]["agg_value"], abs=1e-12)
    _close(logs["privleak"]["agg_value"], _muse_expected("privleak", logs, None), "privleak")
    assert any("privleak uses the reference AUC 0.5" in w for w in result.warnings)


@pytest.mark.parametrize("name", _MUSE_ROUGE)
def test_muse_per_sample_rouge(muse_run, name: str) -> None:
    split = _KNOWMEM.get(name, "verbmem_forget")
    data = W.MUSE_ROWS[split]
    rows = _rows(muse_run.logs[name])
    assert [i for i, _ in rows] == list(range(len(data)))
    for i, v in rows:
        assert v["ground_truth"] == (data[i]["gt"] if split == "verbmem_forget" else data[i]["answer"])
        expected = W.rouge(v["generation"], v["ground_truth"])
        for field in ("rouge1_recall", "rougeL_recall", "rougeL_f1"):
            assert v[field] == pytest.approx(expected[field], abs=1e-12), (i, field)


def test_muse_per_sample_mia_and_memorization(fitted, muse_run) -> None:
    logs, tok, model = muse_run.logs, fitted.tokenizer, fitted.model
    for side in ("forget", "holdout"):
        for i, row in enumerate(W.MUSE_ROWS[f"privleak_{side}"]):
            s = W.sample_scores(model, *W.completion_encoding(tok, "", row["text"]))
            expected = {
                "mia_loss": s.avg_loss,
                "mia_zlib": s.avg_loss / W.zlib_size(row["text"]),
                "mia_min_k": s.min_k,
                "mia_min_k_plus_plus": s.min_k_plus_plus,
                "mia_gradnorm": s.gradnorm,
            }
            for attack in MIA:
                logged = logs[attack][side]["value_by_index"][str(i)]["score"]
                assert logged == pytest.approx(expected[attack], **MODEL_TOL), (attack, side, i)
    for i, row in enumerate(W.MUSE_ROWS["verbmem_forget"]):
        s = W.sample_scores(model, *W.completion_encoding(tok, row["prompt"], row["gt"]), gradnorm=False)
        for name in ("exact_memorization", "extraction_strength"):
            assert logs[name]["value_by_index"][str(i)]["score"] == pytest.approx(getattr(s, name), abs=1e-12)
    for attack in MIA:
        for side in ("forget", "holdout"):
            entry = logs[attack][side]
            _close(entry["agg_value"], float(np.mean(_scores(entry))), f"{attack}.{side}")


# ---------------------------------------------------------------------- zlib MIA text (issue 10, item 6)

SPACED = "He said it , and it is n't so . Really ?"  # what clean_up_tokenization_spaces changes
CLEANED = "He said it, and it isn't so. Really?"


@pytest.mark.parametrize("clean_up", [True, False])
def test_zlib_text_follows_the_tokenizers_clean_up_default(toy_tokenizer, tiny_model, clean_up: bool) -> None:
    """The zlib attack's text is decoded as open-unlearning does, with the tokenizer's own
    ``clean_up_tokenization_spaces`` (True for Llama-3.x tokenizers), even where transformers 5 ignores it."""
    tok = copy.deepcopy(toy_tokenizer)
    tok.clean_up_tokenization_spaces = clean_up
    expected = CLEANED if clean_up else SPACED
    assert W.zlib_size(CLEANED) != W.zlib_size(SPACED)  # the two decodings give different scores
    sample = encode_qa(tok, "What did he say?", SPACED, PromptFormat.llama2_chat())
    assert target_text(tok, sample) == expected
    rows = {
        "forget": [{"question": "What did he say?", "answer": SPACED}],
        "holdout": [{"question": "What did she say?", "answer": "Nothing , really ."}],
    }
    logs = evaluate_tofu(tiny_model, tok, rows, metrics=["mia_loss", "mia_zlib"]).logs
    loss = logs["mia_loss"]["forget"]["value_by_index"]["0"]["score"]
    zlib_score = logs["mia_zlib"]["forget"]["value_by_index"]["0"]["score"]
    assert zlib_score == pytest.approx(loss / W.zlib_size(expected), rel=1e-12)
