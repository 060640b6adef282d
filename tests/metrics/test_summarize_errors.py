"""``baldro-pl summarize`` on bad input: one line naming the file (metric, row) and exit 2 before any work; numbers it
cannot reproduce are flagged (exit 1); every ``-`` says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from baldro_pl.metrics.summarize import main as summarize_main

ERR = "baldro-pl summarize: error: "


def tofu_log() -> dict[str, Any]:
    """A small consistent open-unlearning TOFU log (hand-computed aggregates over three rows)."""
    return {
        "forget_Q_A_Prob": {
            "agg_value": 0.5,
            "value_by_index": {str(i): {"prob": p, "avg_loss": 1.0} for i, p in enumerate((0.25, 0.5, 0.75))},
        },
        "forget_Q_A_ROUGE": {
            "agg_value": 0.5,  # mean of rougeL_recall (TOFU); the mean of rougeL_f1 would be 0.4
            "value_by_index": {
                str(i): {"rougeL_recall": r, "rougeL_f1": f, "rouge1_recall": r, "generation": "g"}
                for i, (r, f) in enumerate(((1.0, 0.8), (0.5, 0.4), (0.0, 0.0)))
            },
        },
        "forget_truth_ratio": {  # closer_to_1_better of (0.5, 1, 2): mean of min(TR, 1 / (TR + 1e-10))
            "agg_value": (0.5 + 1 / (1 + 1e-10) + 1 / (2 + 1e-10)) / 3,
            "value_by_index": {str(i): {"score": s} for i, s in enumerate((0.5, 1.0, 2.0))},
        },
    }


def mia_entry(forget: list[float], holdout: list[float], auc: float) -> dict[str, Any]:
    """An MIA log entry with per-sample scores (forget = label 0, holdout = label 1)."""
    side = {"forget": forget, "holdout": holdout}
    return {
        **{k: {"value_by_index": {str(i): {"score": s} for i, s in enumerate(v)}} for k, v in side.items()},
        "auc": auc,
        "agg_value": auc,
    }


def muse_log(privleak: float = -50.0) -> dict[str, Any]:
    """A small MUSE log: min-k AUC 0.75 (3 of the 4 forget/holdout pairs ordered), privleak against AUC 0.5 = -50."""
    return {
        "forget_knowmem_ROUGE": {
            "agg_value": 0.4,  # mean of rougeL_f1 (MUSE)
            "value_by_index": {
                "0": {"rougeL_f1": 0.8, "rougeL_recall": 1.0},
                "1": {"rougeL_f1": 0.0, "rougeL_recall": 0},
            },
        },
        "mia_min_k": mia_entry([1.0, 3.0], [2.0, 4.0], 0.75),
        "privleak": {"agg_value": privleak},
    }


def _write(path: Path, content: Any) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def _edit(change: Callable[[dict[str, Any]], None], log: Callable[[], dict[str, Any]] = tofu_log) -> dict[str, Any]:
    logs = log()
    change(logs)
    return logs


# ------------------------------------------------------------------------------- the bad-input catalogue (exit 2)

TRUNCATED = '{"forget_Q_A_Prob": {"agg_value": 0.4, "value_by_in'
LOGS: dict[str, tuple[Any, str]] = {  # id -> (file content, message after "<path>")
    "truncated": (
        TRUNCATED,
        " is not valid JSON (it ends early: truncated?): Unterminated string starting at line 1 column 40",
    ),
    "truncated_between_entries": (
        '{"forget_Q_A_Prob": {"agg_value": 0.4},\n',
        " is not valid JSON (it ends early: truncated?): Expecting property name enclosed in double quotes at line 2 "
        "column 1",
    ),
    "not_json": ("agg_value,0.4\n", " is not valid JSON: Expecting value at line 1 column 1"),
    "empty": (b"", " is empty (0 bytes): expected a JSON object of metrics"),
    "whitespace": ("\n  \n", " is empty (4 bytes): expected a JSON object of metrics"),
    "non_utf8": (b'{"forget_Q_A_Prob": "\xff"}', " is not UTF-8 text (byte 0xff at offset 21): expected a JSON file"),
    "array": ("[1, 2]", " must hold a JSON object of metrics, got a JSON array"),
    "empty_object": ("{}", " holds no metrics (an empty JSON object)"),
    "wrong_benchmark": (
        {"results": {"wmdp_bio": {"acc": 0.3}}, "config": {"model": "x"}},
        " is not a TOFU or MUSE evaluation log: none of its keys ('results', 'config') is a TOFU or MUSE metric "
        "(e.g. 'forget_Q_A_Prob', 'forget_knowmem_ROUGE')",
    ),
    "mixed_benchmarks": (
        {**tofu_log(), **muse_log()},
        " mixes TOFU metrics ('forget_Q_A_Prob'...) and MUSE metrics ('forget_knowmem_ROUGE'...): summarize one "
        "benchmark's log at a time",
    ),
}
ENTRIES: dict[str, tuple[dict[str, Any], str]] = {  # id -> (log, message after "<path>: ")
    "metric_missing_privleak": (
        {"privleak": {"agg_value": -50.0}},
        "metric 'privleak' is computed from 'mia_min_k', but the log lacks 'mia_min_k' (an evaluation logs them "
        "together): cannot check 'privleak'",
    ),
    "metric_missing_model_utility": (
        _edit(lambda d: d.update(model_utility={"agg_value": 0.6}, retain_Q_A_Prob=d["forget_Q_A_Prob"])),
        "metric 'model_utility' is computed from 'retain_Q_A_Prob', 'retain_Q_A_ROUGE', 'retain_Truth_Ratio', "
        "'ra_Q_A_Prob_normalised', 'ra_Q_A_ROUGE', 'ra_Truth_Ratio', 'wf_Q_A_Prob_normalised', 'wf_Q_A_ROUGE', "
        "'wf_Truth_Ratio', but the log lacks 'retain_Q_A_ROUGE', 'retain_Truth_Ratio', 'ra_Q_A_Prob_normalised', "
        "'ra_Q_A_ROUGE', 'ra_Truth_Ratio', 'wf_Q_A_Prob_normalised', 'wf_Q_A_ROUGE', 'wf_Truth_Ratio' (an evaluation "
        "logs them together): cannot check 'model_utility'",
    ),
    "metric_missing_forget_quality": (
        {"forget_quality": {"agg_value": 0.3}},
        "metric 'forget_quality' is computed from 'forget_truth_ratio', but the log lacks 'forget_truth_ratio' (an "
        "evaluation logs them together): cannot check 'forget_quality'",
    ),
    "entry_not_object": (
        _edit(lambda d: d.update(forget_Q_A_Prob=0.4)),
        """metric 'forget_Q_A_Prob' must be an object {"agg_value": ..., "value_by_index": {...}}, got number 0.4""",
    ),
    "no_agg_value": (
        _edit(lambda d: d["forget_Q_A_Prob"].pop("agg_value")),
        "metric 'forget_Q_A_Prob' has no 'agg_value' (keys: ['value_by_index'])",
    ),
    "agg_value_string": (
        _edit(lambda d: d["forget_Q_A_Prob"].update(agg_value="0.4")),
        "metric 'forget_Q_A_Prob': 'agg_value' must be a number or null, got '0.4'",
    ),
    "malformed_value": (
        _edit(lambda d: d["forget_Q_A_Prob"]["value_by_index"]["2"].update(prob="abc")),
        "metric 'forget_Q_A_Prob', row 2: 'prob' must be a number or a list of numbers, got string 'abc'",
    ),
    "malformed_value_bool": (
        _edit(lambda d: d["forget_Q_A_ROUGE"]["value_by_index"]["1"].update(rougeL_recall=True)),
        "metric 'forget_Q_A_ROUGE', row 1: 'rougeL_recall' must be a number or a list of numbers, got true/false True",
    ),
    "malformed_mia_score": (
        _edit(lambda d: d["mia_min_k"]["holdout"]["value_by_index"]["1"].update(score={"x": 1}), muse_log),
        "metric 'mia_min_k.holdout', row 1: 'score' must be a number or a list of numbers, got object {'x': 1}",
    ),
    "ragged_lists": (
        _edit(
            lambda d: d.update(
                forget_Q_A_PERT_Prob={
                    "agg_value": 0.1,
                    "value_by_index": {"0": {"prob": [0.1, 0.1], "avg_loss": [2.3, 2.3]}, "1": {"prob": [0.1]}},
                }
            )
        ),
        "metric 'forget_Q_A_PERT_Prob', row 1: 'prob' has shape [1] but row 0 has [2]",
    ),
    "row_index_not_integer": (
        _edit(lambda d: d["forget_truth_ratio"]["value_by_index"].update(first={"score": 1.0})),
        "metric 'forget_truth_ratio': row index 'first' is not an integer",
    ),
    "row_not_object": (
        _edit(lambda d: d["forget_truth_ratio"]["value_by_index"].update({"1": 1.0})),
        "metric 'forget_truth_ratio', row 1: expected an object of per-sample fields, got number",
    ),
    "value_by_index_list": (
        _edit(lambda d: d["forget_truth_ratio"].update(value_by_index=[{"score": 1.0}])),
        "metric 'forget_truth_ratio': 'value_by_index' must be an object {row: {...}}, got array",
    ),
}


@pytest.mark.parametrize("case", list(LOGS))
def test_unreadable_logs_are_refused(case: str, tmp_path, capsys) -> None:
    content, message = LOGS[case]
    path = _write(tmp_path / "TOFU_EVAL.json", content)
    assert summarize_main([str(path)]) == 2
    out = capsys.readouterr()
    assert out.err == f"{ERR}evaluation log {path}{message}\n"
    assert out.out == ""


@pytest.mark.parametrize("case", list(ENTRIES))
def test_malformed_entries_are_refused(case: str, tmp_path, capsys) -> None:
    logs, message = ENTRIES[case]
    path = _write(tmp_path / "TOFU_EVAL.json", logs)
    assert summarize_main([str(path)]) == 2
    out = capsys.readouterr()
    assert out.err == f"{ERR}{path}: {message}\n"
    assert out.out == ""


def test_paths_that_are_not_a_log_file(tmp_path, capsys) -> None:
    assert summarize_main([str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err == f"{ERR}evaluation log {tmp_path / 'missing.json'} does not exist\n"
    assert summarize_main([str(tmp_path)]) == 2  # an empty run folder
    assert capsys.readouterr().err == (
        f"{ERR}evaluation log {tmp_path} is a directory, not a JSON file (give its TOFU_EVAL.json / MUSE_EVAL.json)\n"
    )
    _write(tmp_path / "TOFU_EVAL.json", tofu_log())
    assert summarize_main([str(tmp_path)]) == 2  # the folder holding the log: the file is suggested
    assert capsys.readouterr().err == (
        f"{ERR}evaluation log {tmp_path} is a directory, not a JSON file; did you mean {tmp_path / 'TOFU_EVAL.json'}?\n"
    )
    assert summarize_main([str(tmp_path / "TOFU_EVAL.json"), "--reference", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"{ERR}reference log {tmp_path} is a directory, not a JSON file;")


# ------------------------------------------------------------------------------------------------------ references


def test_reference_of_another_benchmark_is_refused(tmp_path, capsys) -> None:
    tofu = _write(tmp_path / "TOFU_EVAL.json", {**tofu_log(), "mia_min_k": mia_entry([1.0], [2.0], 1.0)})
    muse = _write(tmp_path / "MUSE_EVAL.json", muse_log())
    assert summarize_main([str(muse), "--reference", str(tofu)]) == 2
    assert capsys.readouterr().err == (
        f"{ERR}reference log {tofu} is a TOFU log but {muse} is a MUSE log: --reference must be the retain / retrain "
        "model's log of the same benchmark (MUSE)\n"
    )
    assert summarize_main([str(tofu), "--reference", str(muse)]) == 2
    assert capsys.readouterr().err == (
        f"{ERR}reference log {muse} is a MUSE log but {tofu} is a TOFU log: --reference must be the retain / retrain "
        "model's log of the same benchmark (TOFU)\n"
    )
    other = _write(tmp_path / "other.json", {"results": {}})
    assert summarize_main([str(muse), "--reference", str(other)]) == 2
    assert capsys.readouterr().err == (
        f"{ERR}reference log {other} is not a TOFU or MUSE evaluation log: none of its keys ('results') is a TOFU or "
        "MUSE metric (e.g. 'forget_Q_A_Prob', 'forget_knowmem_ROUGE')\n"
    )
    legacy = _write(tmp_path / "eval_log_aggregated.json", {"eval_log_forget.json": {}})
    assert summarize_main([str(tofu), "--reference", str(legacy)]) == 2
    assert capsys.readouterr().err == (
        f"{ERR}reference log {legacy} is a TOFU-authors log (eval_log_aggregated.json) but {tofu} is an "
        "open-unlearning TOFU log: give the retain model's TOFU_EVAL.json\n"
    )
    assert summarize_main([str(legacy), "--reference", str(tofu)]) == 2
    assert capsys.readouterr().err == (
        f"{ERR}reference log {tofu} is an open-unlearning TOFU log but {legacy} is a TOFU-authors log "
        "(eval_log_aggregated.json): give the retain model's log in the same format\n"
    )


def test_reference_without_what_the_log_needs(tmp_path, capsys) -> None:
    muse = _write(tmp_path / "MUSE_EVAL.json", muse_log())
    ref = _write(tmp_path / "retrain.json", {"forget_knowmem_ROUGE": muse_log()["forget_knowmem_ROUGE"]})
    assert summarize_main([str(muse), "--reference", str(ref)]) == 2
    assert capsys.readouterr().err == (
        f"{ERR}reference log {ref} has no 'mia_min_k' entry, which privleak needs (present keys: "
        "['forget_knowmem_ROUGE'])\n"
    )
    ref = _write(tmp_path / "retrain.json", {"mia_min_k": mia_entry([1.0, 2.0, 3.0], [2.0, 4.0, 5.0], 0.9)})
    assert summarize_main([str(muse), "--reference", str(ref)]) == 2  # scored on another forget split
    assert capsys.readouterr().err == (
        f"{ERR}reference log {ref} scored 3 'mia_min_k' forget rows but {muse} scored 2: the retain model must be "
        "evaluated on the same forget split (retain90 <-> forget10, retain95 <-> forget05, retain99 <-> forget01)\n"
    )


def test_published_muse_log_with_a_tofu_reference(capsys) -> None:
    """Issue 10 problem 4: this printed privleak -22.33 against the logged -4.72 and exited 0."""
    from shared_data import shared_path

    muse = shared_path("data", "reference_logs", "muse_Llama-2-7b-hf_News_retrain_MUSE_EVAL.json")
    tofu = shared_path("data", "reference_logs", "tofu_Llama-2-7b-chat-hf_retain90_TOFU_EVAL.json")
    assert summarize_main([str(muse), "--reference", str(tofu)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        f"{ERR}reference log {tofu} is a TOFU log but {muse} is a MUSE log: --reference must be the retain / retrain "
        "model's log of the same benchmark (MUSE)\n"
    )


# ----------------------------------------------------------------------------- numbers that are not reproduced


def test_a_consistent_log_exits_0(tmp_path, capsys) -> None:
    path = _write(tmp_path / "TOFU_EVAL.json", tofu_log())
    assert summarize_main([str(path), "--json"]) == 0
    out = capsys.readouterr()
    assert {k: v["status"] for k, v in json.loads(out.out).items()} == dict.fromkeys(tofu_log(), "reproduced")
    assert out.err == ""


def test_rouge_of_the_wrong_field_is_flagged(tmp_path, capsys) -> None:
    logs = _edit(lambda d: d["forget_Q_A_ROUGE"].update(agg_value=0.4))  # the mean of rougeL_f1
    path = _write(tmp_path / "TOFU_EVAL.json", logs)
    assert summarize_main([str(path)]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        "metric              logged    recomputed  |diff|  note",
        "------------------  --------  ----------  ------  ------------",
        "forget_Q_A_Prob     0.5       0.5         0",
        "forget_Q_A_ROUGE    0.4       0.5         0.1     MISMATCH [1]",
        "forget_truth_ratio  0.666667  0.666667    0",
        "",
        "[1] the logged value is the mean of 'rougeL_f1', but this metric averages 'rougeL_recall'",
    ]
    assert out.err == (
        f"baldro-pl summarize: {path}: 1 of 3 checked aggregates disagree with the per-sample values: "
        "forget_Q_A_ROUGE (see the notes)\n"
    )


def test_edited_aggregate_is_flagged(tmp_path, capsys) -> None:
    path = _write(tmp_path / "TOFU_EVAL.json", _edit(lambda d: d["forget_Q_A_Prob"].update(agg_value=0.51)))
    assert summarize_main([str(path), "--json"]) == 1
    row = json.loads(capsys.readouterr().out)["forget_Q_A_Prob"]
    assert row == {
        "logged": 0.51,
        "recomputed": 0.5,
        "status": "MISMATCH",
        "why": f"the per-sample values in {path} do not give the logged aggregate (edited log, or another formula)",
    }


def test_privleak_against_another_reference_is_flagged(tmp_path, capsys) -> None:
    """privleak logged against a retrain model's AUC 0.6 (-37.5), recomputed against 0.5 or a wrong reference."""
    path = _write(tmp_path / "MUSE_EVAL.json", muse_log(privleak=-37.5))
    assert summarize_main([str(path), "--json"]) == 1
    row = json.loads(capsys.readouterr().out)["privleak"]
    assert row["status"] == "MISMATCH" and row["recomputed"] == pytest.approx(-50.0)
    assert row["why"] == (
        "recomputed against AUC 0.5 (no --reference); the logged value implies a reference AUC of 0.6: pass that "
        "retain log as --reference"
    )
    right = _write(tmp_path / "retrain.json", {"mia_min_k": mia_entry([1.0, 2.0], [3.0, 4.0], 0.6)})
    assert summarize_main([str(path), "--reference", str(right), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["privleak"]["status"] == "reproduced"
    wrong = _write(tmp_path / "retrain.json", {"mia_min_k": mia_entry([1.0, 2.0], [3.0, 4.0], 0.7)})
    assert summarize_main([str(path), "--reference", str(wrong), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["privleak"]["why"] == (
        f"recomputed against the reference AUC 0.7 of {wrong}; the logged value implies a reference AUC of 0.6: was "
        "the log evaluated against another retain log?"
    )


def test_published_muse_log_against_itself_flags_privleak(capsys) -> None:
    """The retrain log's privleak is against AUC 0.5: with itself as --reference it is 0, and the row says why."""
    from shared_data import shared_path

    muse = shared_path("data", "reference_logs", "muse_Llama-2-7b-hf_News_retrain_MUSE_EVAL.json")
    assert summarize_main([str(muse), "--reference", str(muse), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert [k for k, v in result.items() if v["status"] != "reproduced"] == ["privleak"]
    assert result["privleak"]["logged"] == pytest.approx(-4.72) and result["privleak"]["recomputed"] == pytest.approx(
        0, abs=1e-9
    )
    assert result["privleak"]["why"] == (
        f"recomputed against the reference AUC 0.5236 of {muse}; the logged value implies a reference AUC of 0.5: was "
        "the log evaluated against another retain log?"
    )


# ---------------------------------------------------------------------------------- every "-" says why (exit 0)


def test_missing_and_null_per_sample_values_are_explained(tmp_path, capsys) -> None:
    def change(d: dict[str, Any]) -> None:
        d["forget_truth_ratio"] = {"agg_value": 0.6}  # no per-sample values at all
        for row in d["forget_Q_A_Prob"]["value_by_index"].values():
            row["prob"] = None  # a NaN evaluation: every value null
        d["forget_Q_A_ROUGE"]["value_by_index"]["2"]["rougeL_recall"] = None  # one row null
        d["forget_Q_A_ROUGE"]["agg_value"] = 0.75  # the mean of the other two
        d["forget_quality"] = {"agg_value": 0.3}
        d["mia_min_k"] = mia_entry([1.0, None], [2.0, 3.0], 0.9)  # type: ignore[list-item]
        d["model_name"] = "x"

    path = _write(tmp_path / "TOFU_EVAL.json", _edit(change))
    assert summarize_main([str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "metric              logged  recomputed  |diff|  note",
        "------------------  ------  ----------  ------  ----",
        "forget_Q_A_Prob     0.5     -           -       [1]",
        "forget_Q_A_ROUGE    0.75    0.75        0       [2]",
        "forget_truth_ratio  0.6     -           -       [3]",
        "forget_quality      0.3     -           -       [4]",
        "mia_min_k           0.9     -           -       [5]",
        "model_name          -       -           -       [6]",
        "",
        f"[1] none of the 3 rows of forget_Q_A_Prob in {path} has a 'prob' value (all null or absent)",
        f"[2] 1 of 3 rows of forget_Q_A_ROUGE in {path} have no 'rougeL_recall' (null or absent): recomputed over the "
        "other 2",
        f"[3] no per-sample values ('value_by_index') for forget_truth_ratio in {path}, and no 'avg_loss' of both "
        "forget_Q_A_PARA_Prob and forget_Q_A_PERT_Prob",
        "[4] needs the retain model's log (--reference RETAIN_LOG.json)",
        f"[5] 1 of 2 forget rows of mia_min_k in {path} have no finite 'score' (null, absent or NaN): the AUC needs "
        "them all",
        "[6] not a TOFU or MUSE metric: nothing to recompute",
    ]
    assert summarize_main([str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["forget_quality"] == {
        "logged": 0.3,
        "recomputed": None,
        "status": "not recomputed",
        "why": "needs the retain model's log (--reference RETAIN_LOG.json)",
    }
    assert result["model_name"]["status"] == "n/a"


# ------------------------------------------------------------------------------------------ the console entry


def test_console_entry_prints_one_line_and_no_traceback(tmp_path) -> None:
    path = _write(tmp_path / "TOFU_EVAL.json", TRUNCATED)
    result = subprocess.run(
        [sys.executable, "-m", "baldro_pl.cli", "summarize", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"{ERR}evaluation log {path}{LOGS['truncated'][1]}\n"
