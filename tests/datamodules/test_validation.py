"""Bad input is refused in ``setup`` (before any training step) with the file, row/line and field in the message."""

from __future__ import annotations

import json
import logging
import re

import pytest
from shared_data import shared_path

from baldro_pl.datamodules import JsonDataModule, MUSEDataModule, TOFUDataModule, read_records


def _setup(path, tokenizer, **kwargs) -> JsonDataModule:
    dm = JsonDataModule(forget=str(path), tokenizer=tokenizer, **kwargs)
    dm.setup("fit")
    return dm


def test_missing_field_names_file_row_field_and_fields_present(tmp_path, toy_tokenizer):
    path = tmp_path / "forget.jsonl"
    rows = [{"question": "a?", "answer": "b"}, {"question": "c?", "answer": "d"}, {"question": "e?", "reply": "f"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    expected = f"{re.escape(str(path))}: line 3 has no field 'answer'; fields present: \\['question', 'reply'\\]"
    with pytest.raises(ValueError, match=expected):
        _setup(path, toy_tokenizer)


def test_wrong_type_and_empty_answer(tmp_path, toy_tokenizer):
    path = tmp_path / "forget.json"
    path.write_text(json.dumps([{"question": "a?", "answer": 3}]), encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"forget\.json: row 0 \(0-based\), field 'answer' is a number \(3\); expected a string"
    ):
        _setup(path, toy_tokenizer)
    path.write_text(
        json.dumps([{"question": "a?", "answer": "ok"}, {"question": "b?", "answer": " "}]), encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"row 1 \(0-based\), field 'answer' is empty"):
        _setup(path, toy_tokenizer)


def test_empty_forget_set(tmp_path, toy_tokenizer):
    path = tmp_path / "forget.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: the forget set is empty"):
        _setup(path, toy_tokenizer)


def test_unknown_split_and_corpus_names(toy_tokenizer):
    with pytest.raises(ValueError, match="valid: forget01, forget05, forget10"):
        TOFUDataModule(tokenizer=toy_tokenizer, forget_split="forget_10")
    with pytest.raises(ValueError, match="valid: retain99, retain95, retain90"):
        TOFUDataModule(tokenizer=toy_tokenizer, retain_split="full")
    with pytest.raises(ValueError, match="MUSE corpus 'bbc' is unknown; valid: news, books"):
        MUSEDataModule(tokenizer=toy_tokenizer, corpus="bbc")


def test_invalid_utf8_names_file_and_line(tmp_path, toy_tokenizer):
    jsonl = tmp_path / "forget.jsonl"
    jsonl.write_bytes(b'{"question": "a?", "answer": "b"}\n{"question": "c?", "answer": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"{re.escape(str(jsonl))}: line 2 is not valid UTF-8"):
        _setup(jsonl, toy_tokenizer)
    array = tmp_path / "forget.json"
    array.write_bytes(b'[\n {"question": "a?",\n  "answer": "\xff"}\n]')
    with pytest.raises(ValueError, match=rf"{re.escape(str(array))}: not valid UTF-8 at line 3"):
        _setup(array, toy_tokenizer)
    table = tmp_path / "forget.csv"
    table.write_bytes(b"question,answer\na?,b\nc?,\xff\n")
    with pytest.raises(ValueError, match="forget.csv: not valid UTF-8 at line 3"):
        _setup(table, toy_tokenizer)


def test_invalid_json_names_file_and_line(tmp_path, toy_tokenizer):
    jsonl = tmp_path / "forget.jsonl"
    jsonl.write_text('{"question": "a?", "answer": "b"}\n\n{"question": "c?", "answer": }\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(jsonl))}: line 3 is not valid JSON"):
        _setup(jsonl, toy_tokenizer)
    array = tmp_path / "forget.json"
    array.write_text('[\n {"question": "a?", "answer": "b"},\n {"question": "c?" "answer": "d"}\n]', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(array))}: not valid JSON at line 3, column"):
        _setup(array, toy_tokenizer)
    obj = tmp_path / "object.json"
    obj.write_text('{"data": []}', encoding="utf-8")
    with pytest.raises(ValueError, match="top-level JSON value is a dict; expected an array"):
        read_records(obj)
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"question": "a?", "answer": "b"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is a list of 2 items; expected a JSON object"):
        read_records(numbers)


def test_bad_parquet_and_csv(tmp_path, toy_tokenizer):
    parquet = tmp_path / "forget.parquet"
    parquet.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"forget\.parquet: not a readable parquet file"):
        _setup(parquet, toy_tokenizer)
    table = tmp_path / "forget.csv"
    table.write_text("question,answer\na?,b\nc?,d,extra\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"forget\.csv: line 3 \(row 1, 0-based\) has more values than the header"):
        _setup(table, toy_tokenizer)
    with pytest.raises(ValueError, match="unknown file type '.txt'"):
        read_records(_touch(tmp_path / "x.txt"))


def _touch(path):
    path.write_text("x", encoding="utf-8")
    return path


def test_missing_files(tmp_path, toy_tokenizer):
    with pytest.raises(ValueError, match="no such file or directory"):
        _setup(tmp_path / "absent.jsonl", toy_tokenizer)
    with pytest.raises(ValueError, match=r"TOFU split 'forget10' not found"):
        TOFUDataModule(data_dir=str(tmp_path), tokenizer=toy_tokenizer).setup("fit")


def test_answer_truncated_away_by_max_length(tmp_path, toy_tokenizer):
    path = tmp_path / "forget.jsonl"
    long_question = "Where was the author of many many many many many long books born? " * 3
    rows = [{"question": "Who?", "answer": "Me."}, {"question": long_question, "answer": "In Paris."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    expected = (
        rf"{re.escape(str(path))}: line 2: no answer token is left to score with max_length=24: "
        r"the prompt alone has 24 tokens"
    )
    with pytest.raises(ValueError, match=expected):
        _setup(path, toy_tokenizer, max_length=24)
    assert len(_setup(path, toy_tokenizer, max_length=512).forget_dataset) == 2


def test_truncated_real_tofu_rows_are_named(toy_tokenizer):
    dm = TOFUDataModule(data_dir=str(shared_path("data", "tofu")), tokenizer=toy_tokenizer, max_length=20)
    with pytest.raises(ValueError, match=r"tofu/forget10\.jsonl: line 1: no answer token .* max_length=20"):
        dm.setup("fit")


def test_tokenizer_without_pad_token(caplog):
    gpt2 = str(shared_path("models", "gpt2-tokenizer"))
    tofu = str(shared_path("data", "tofu"))
    dm = TOFUDataModule(data_dir=tofu, tokenizer=gpt2, forget_split="forget01", pad_token_fallback_eos=False)
    with pytest.raises(
        ValueError, match="data.tokenizer: tokenizer .* has no pad token; set pad_token to one of its tokens"
    ):
        dm.setup("fit")
    dm = TOFUDataModule(data_dir=tofu, tokenizer=gpt2, forget_split="forget01")
    with caplog.at_level(logging.WARNING, logger="baldro_pl.hf"):
        dm.setup("fit")
    assert "has no pad token: padding with its EOS token" in caplog.text
    assert dm.tokenizer.pad_token_id == dm.tokenizer.eos_token_id == dm.collator.pad_token_id


def test_tokenizer_directory_missing(tmp_path):
    dm = TOFUDataModule(tokenizer=str(tmp_path / "no-tokenizer-here"))
    with pytest.raises(ValueError, match="data.tokenizer: local path .* does not exist"):
        dm.setup("fit")


def test_bad_loader_settings(toy_tokenizer):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TOFUDataModule(tokenizer=toy_tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="pairing must be 'random' or 'cycle'"):
        TOFUDataModule(tokenizer=toy_tokenizer, pairing="roundrobin")
