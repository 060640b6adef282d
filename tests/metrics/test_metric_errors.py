"""Bad input gives clear errors naming the file, the key and the split."""

from __future__ import annotations

import json
import logging

import pytest
from metrics_data import read_jsonl
from shared_data import shared_path
from suites import evaluate_muse, evaluate_tofu

from baldro_pl.metrics import ReferenceLogError, TOFUSuite, load_eval_log
from baldro_pl.metrics.summarize import main as summarize_main

RETAIN90 = ("data", "reference_logs", "tofu_Llama-2-7b-chat-hf_retain90_TOFU_EVAL.json")


def test_reference_log_without_the_needed_key(tmp_path, tiny_model, toy_tokenizer, tofu_rows) -> None:
    path = tmp_path / "retain_TOFU_EVAL.json"
    path.write_text(json.dumps({"forget_Q_A_Prob": {"agg_value": 0.1}}))
    with pytest.raises(ReferenceLogError, match=r"retain_TOFU_EVAL\.json has no 'forget_truth_ratio'") as err:
        evaluate_tofu(tiny_model, toy_tokenizer, tofu_rows(2), metrics=["forget_quality"], retain_logs_path=path)
    assert "forget quality" in str(err.value)
    with pytest.raises(ReferenceLogError, match=r"has no 'mia_min_k' entry, which privleak needs"):
        evaluate_tofu(tiny_model, toy_tokenizer, tofu_rows(2), metrics=["privleak"], retain_logs_path=path)


def test_reference_log_from_another_forget_split(tiny_model, toy_tokenizer, tofu_rows) -> None:
    path = shared_path(*RETAIN90)
    with pytest.raises(ReferenceLogError) as err:
        evaluate_tofu(
            tiny_model,
            toy_tokenizer,
            tofu_rows(4),
            metrics=["forget_quality"],
            retain_logs_path=path,
            forget_split="forget01",
        )
    message = str(err.value)
    assert str(path) in message and "400 'forget_truth_ratio' values" in message
    assert "forget split 'forget01' has 4 rows" in message and "retain90 <-> forget10" in message


def test_missing_or_broken_reference_file(tmp_path, tiny_model, toy_tokenizer, tofu_rows) -> None:
    with pytest.raises(ReferenceLogError, match="does not exist"):
        evaluate_tofu(
            tiny_model, toy_tokenizer, tofu_rows(2), metrics=["privleak"], retain_logs_path=tmp_path / "nope.json"
        )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReferenceLogError, match="bad.json is not valid JSON"):
        load_eval_log(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ReferenceLogError, match="must hold a JSON object"):
        load_eval_log(bad)
    bad.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ReferenceLogError, match=r"bad.json is not UTF-8 text \(byte 7\)"):
        load_eval_log(bad)
    with pytest.raises(ReferenceLogError, match="is a directory; expected a"):
        load_eval_log(tmp_path)


def test_evaluation_split_without_perturbed_answers(tiny_model, toy_tokenizer, tofu_rows) -> None:

    rows = tofu_rows(3)
    rows["forget"] = read_jsonl("data", "tofu", "forget10.jsonl")[:3]  # the plain config, not forget10_perturbed
    with pytest.raises(
        ValueError, match=r"TOFU split 'forget \(forget10\)' row 0 has no \['paraphrased_answer'"
    ) as err:
        evaluate_tofu(tiny_model, toy_tokenizer, rows, forget_split="forget10")
    assert "forget_Q_A_PARA_Prob" in str(err.value) and "*_perturbed config" in str(err.value)
    rows = tofu_rows(3)
    rows["real_authors"] = [{k: v for k, v in r.items() if k != "perturbed_answer"} for r in rows["real_authors"]]
    with pytest.raises(ValueError, match=r"TOFU split 'real_authors' row 0 has no \['perturbed_answer'\]"):
        evaluate_tofu(tiny_model, toy_tokenizer, rows, metrics=["ra_Truth_Ratio"])
    rows = tofu_rows(3)
    rows["retain"][1] = {**rows["retain"][1], "perturbed_answer": rows["retain"][1]["perturbed_answer"][:3]}
    with pytest.raises(ValueError, match="row 1 has 3 perturbed answers, earlier rows 5"):
        evaluate_tofu(tiny_model, toy_tokenizer, rows, metrics=["retain_Truth_Ratio"])


def test_missing_split_and_unknown_metric(tiny_model, toy_tokenizer, tofu_rows) -> None:
    rows = tofu_rows(2)
    del rows["holdout"]
    with pytest.raises(KeyError, match="needs the 'holdout' split"):
        evaluate_tofu(tiny_model, toy_tokenizer, rows, metrics=["mia_loss"])
    with pytest.raises(ValueError, match="unknown TOFU metric"):
        TOFUSuite(metrics=["forget_Q_A_prob"])
    with pytest.raises(ValueError, match="unknown TOFU metric"):
        TOFUSuite(exclude=["gradnorm"])
    with pytest.raises(ValueError, match="batch_size"):
        TOFUSuite(batch_size=0)


def test_muse_bad_rows(tiny_model, toy_tokenizer, muse_rows) -> None:
    rows = muse_rows(2)
    rows["privleak_holdout"] = [{"txt": "x"}]
    with pytest.raises(ValueError, match="MUSE split 'privleak_holdout' row 0 must be a string or have a 'text' field"):
        evaluate_muse(tiny_model, toy_tokenizer, rows, metrics=["mia_loss"])
    rows = muse_rows(2)
    del rows["knowmem_retain_qa_icl"]
    with pytest.raises(KeyError, match="knowmem_retain_qa_icl"):
        evaluate_muse(tiny_model, toy_tokenizer, rows, metrics=["retain_knowmem_ROUGE"])


def test_no_reference_means_none_and_a_warning(tiny_model, toy_tokenizer, tofu_rows, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        result = evaluate_tofu(tiny_model, toy_tokenizer, tofu_rows(2), metrics=["forget_quality"], max_new_tokens=2)
    assert result.logs["forget_quality"] == {"agg_value": None}
    assert "forget_quality" not in result.summary
    assert any("no retain_logs_path" in w for w in result.warnings)
    assert "no retain_logs_path" in caplog.text
    assert set(result.logs) == {"forget_quality", "forget_truth_ratio", "forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob"}


def test_summarize_errors(tmp_path, capsys) -> None:
    assert summarize_main([str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    log = tmp_path / "TOFU_EVAL.json"
    log.write_text(json.dumps({"forget_truth_ratio": {"agg_value": 1.0, "value_by_index": {"0": {"score": 1.0}}}}))
    assert summarize_main([str(log), "--reference", str(shared_path(*RETAIN90))]) == 0  # nothing needs the reference
    log.write_text(json.dumps({**json.loads(log.read_text()), "forget_quality": {"agg_value": None}}))
    assert summarize_main([str(log), "--reference", str(shared_path(*RETAIN90))]) == 2
    assert "holds 400 'forget_truth_ratio' values" in capsys.readouterr().err
