"""The bad-input catalogue, data part: every bad data file or split is refused in ``setup`` / on reading, before any
tokenised batch exists, with one line naming the file, the row (the file line for JSON Lines and CSV, the 0-based
index otherwise) and the field, or the setting and its allowed values (docs/errors.md).

Each case writes a tiny file under ``tmp_path`` (or points at ../shared) and checks the exact message.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from shared_data import shared_path

from baldro_pl.datamodules import JsonDataModule, MUSEDataModule, RowFormat, TOFUDataModule, read_records

QA = '{"question": "Who?", "answer": "Me."}\n'
DIR = object()  # marks a case whose "file" is a directory


def _write(path: Path, content) -> None:
    if content is DIR:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")


def _setup_json(path: Path, tokenizer, **kwargs) -> JsonDataModule:
    if "row_format" in kwargs:  # the cases hold the row format's fields: RowFormat checks them when built
        kwargs["row_format"] = RowFormat(**kwargs["row_format"])
    dm = JsonDataModule(forget=str(path), tokenizer=tokenizer, **kwargs)
    dm.setup("fit")
    return dm


# (file name, content, JsonDataModule arguments, message with {p} for the file's path)
FORGET_CASES = {
    "empty_jsonl": ("forget.jsonl", b"", {}, "{p}: the file is empty (0 bytes); expected rows"),
    "empty_csv": ("forget.csv", b"", {}, "{p}: the file is empty (0 bytes); expected rows"),
    "empty_json": ("forget.json", b"", {}, "{p}: the file is empty (0 bytes); expected rows"),
    "blank_lines_jsonl": (
        "forget.jsonl",
        "\n  \n\n",
        {},
        "{p}: the forget set is empty (0 rows); expected at least one row",
    ),
    "empty_json_array": ("forget.json", "[]", {}, "{p}: the forget set is empty (0 rows); expected at least one row"),
    "header_only_csv": (
        "forget.csv",
        "question,answer\n",
        {},
        "{p}: the forget set is empty (0 rows); expected at least one row",
    ),
    "empty_corpus_pretraining": (
        "forget.jsonl",
        '{"text": ""}\n',
        {"row_format": {"mode": "pretraining"}},
        "{p}: the corpus is empty (1 document, no token)",
    ),
    "malformed_jsonl_line": (
        "forget.jsonl",
        QA + "\n" + '{"question": "c?", "answer": }\n',
        {},
        "{p}: line 3 is not valid JSON: Expecting value (column 30)",
    ),
    "malformed_json_array": (
        "forget.json",
        '[\n {"question": "a?", "answer": "b"},\n {"question": "c?" "answer": "d"}\n]',
        {},
        "{p}: not valid JSON at line 3, column 20: Expecting ',' delimiter "
        "(expected one JSON array of objects; use the .jsonl extension for JSON Lines)",
    ),
    "jsonl_line_not_an_object": (
        "forget.jsonl",
        QA + "[1, 2]\n",
        {},
        "{p}: line 2 is a list of 2 items; expected a JSON object (or a plain string, read as field 'text')",
    ),
    "missing_field_jsonl": (
        "forget.jsonl",
        QA + "\n" + '{"question": "c?", "reply": "d"}\n',
        {},
        "{p}: line 3 has no field 'answer'; fields present: ['question', 'reply']",
    ),
    "missing_field_json_array": (
        "forget.json",
        json.dumps([{"question": "a?", "answer": "b"}, {"question": "c?"}]),
        {},
        "{p}: row 1 (0-based) has no field 'answer'; fields present: ['question']",
    ),
    "missing_field_csv": (
        "forget.csv",
        "question,reply\na?,b\n",
        {},
        "{p}: line 2 has no field 'answer'; fields present: ['question', 'reply']",
    ),
    "missing_field_custom_key": (
        "forget.jsonl",
        QA,
        {"row_format": {"answer_key": "response"}},
        "{p}: line 1 has no field 'response'; fields present: ['question', 'answer']",
    ),
    "number_field": (
        "forget.jsonl",
        QA + '{"question": "a?", "answer": 3}\n',
        {},
        "{p}: line 2, field 'answer' is a number (3); expected a string",
    ),
    "null_field": (
        "forget.jsonl",
        '{"question": null, "answer": "b"}\n',
        {},
        "{p}: line 1, field 'question' is null; expected a string",
    ),
    "list_field": (
        "forget.jsonl",
        '{"question": "a?", "answer": ["b", "c"]}\n',
        {},
        "{p}: line 1, field 'answer' is a list of 2 items; expected a string",
    ),
    "boolean_field": (
        "forget.jsonl",
        '{"question": "a?", "answer": true}\n',
        {},
        "{p}: line 1, field 'answer' is a boolean (true); expected a string",
    ),
    "object_field_json_array": (
        "forget.json",
        json.dumps([{"question": {"text": "a?"}, "answer": "b"}]),
        {},
        "{p}: row 0 (0-based), field 'question' is an object; expected a string",
    ),
    "blank_answer": (
        "forget.jsonl",
        QA + '{"question": "a?", "answer": "  "}\n',
        {},
        "{p}: line 2, field 'answer' is empty; expected a non-empty string",
    ),
    "number_text_completion": (
        "forget.jsonl",
        '{"text": 12}\n',
        {"row_format": {"mode": "completion"}},
        "{p}: line 1, field 'text' is a number (12); expected a string",
    ),
    "invalid_utf8_jsonl": (
        "forget.jsonl",
        QA.encode() + b'{"question": "c?", "answer": "caf\xe9"}\n',
        {},
        "{p}: line 2 is not valid UTF-8 (byte 34 of the line): invalid continuation byte; re-save the file as UTF-8",
    ),
    "invalid_utf8_json": (
        "forget.json",
        b'[\n {"question": "a?",\n  "answer": "\xff"}\n]',
        {},
        "{p}: not valid UTF-8 at line 3, byte 14 of the line: invalid start byte; re-save the file as UTF-8",
    ),
    "invalid_utf8_csv": (
        "forget.csv",
        b"question,answer\na?,b\nc?,\xff\n",
        {},
        "{p}: not valid UTF-8 at line 3, byte 4 of the line: invalid start byte; re-save the file as UTF-8",
    ),
    "directory_named_like_a_file": ("forget.jsonl", DIR, {}, "{p}: is a directory; expected a .jsonl file"),
    "directory_not_a_saved_dataset": (
        "forget",
        DIR,
        {},
        "{p}: is a directory but not a `datasets` folder written by save_to_disk (no dataset_info.json, state.json, "
        "dataset_dict.json; present: nothing); expected a record file (.jsonl, .json, .csv, .parquet) or such a folder",
    ),
    "missing_file": ("absent.jsonl", None, {}, "{p}: no such file or directory"),
    "unknown_mode": (
        "forget.jsonl",
        QA,
        {"row_format": {"mode": "chat"}},
        "mode must be 'qa', 'completion' or 'pretraining', got 'chat'",
    ),
}


@pytest.mark.parametrize("case", list(FORGET_CASES), ids=list(FORGET_CASES))
def test_bad_forget_file_is_refused_in_setup(case: str, tmp_path: Path, toy_tokenizer) -> None:
    name, content, kwargs, message = FORGET_CASES[case]
    path = tmp_path / name
    _write(path, content)
    with pytest.raises(ValueError) as info:
        _setup_json(path, toy_tokenizer, **kwargs)
    assert str(info.value) == message.format(p=path)
    assert "\n" not in str(info.value)


def test_empty_retain_set_is_refused(tmp_path: Path, toy_tokenizer) -> None:
    forget, retain = tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"
    forget.write_text(QA, encoding="utf-8")
    retain.write_text("\n", encoding="utf-8")
    dm = JsonDataModule(forget=str(forget), retain=str(retain), tokenizer=toy_tokenizer)
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    assert str(info.value) == f"{retain}: the retain set is empty (0 rows); expected at least one row"


def test_wrong_split_of_a_saved_dataset_dict_lists_the_splits(tmp_path: Path, toy_tokenizer) -> None:
    import datasets

    saved = tmp_path / "saved"
    rows = [{"question": "Who?", "answer": "Me."}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(saved))
    with pytest.raises(ValueError) as info:
        _setup_json(saved, toy_tokenizer, forget_split="forget")
    assert str(info.value) == f"{saved}: no split 'forget'; splits present: ['train']"


def test_byte_order_mark_is_accepted(tmp_path: Path, toy_tokenizer) -> None:
    """Windows editors start UTF-8 files with a byte-order mark: read as if it were not there."""
    for name, text in (("f.jsonl", QA), ("f.json", "[" + QA + "]"), ("f.csv", "question,answer\nWho?,Me.\n")):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert read_records(path) == [{"question": "Who?", "answer": "Me."}], name


def test_csv_rows_are_named_by_their_first_line(tmp_path: Path) -> None:
    """A quoted value spanning lines: the next row is named by the line it starts on."""
    path = tmp_path / "forget.csv"
    path.write_text('question,answer\n"a\nb?",c\nd?,e\n', encoding="utf-8")
    assert read_records(path).lines == [2, 4]


# ----------------------------------------------------------------------------------------------- max_length
LONG_QUESTION = "Where was the author of many many many many many long books born? " * 3


def test_answer_cut_away_by_max_length_is_refused(tmp_path: Path, toy_tokenizer) -> None:
    """Nothing of the answer left to train on: refused, naming the line, max_length and what to change."""
    path = tmp_path / "forget.jsonl"
    path.write_text(QA + "\n" + json.dumps({"question": LONG_QUESTION, "answer": "In Paris."}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        _setup_json(path, toy_tokenizer, max_length=24)
    assert str(info.value) == (
        f"{path}: line 3: no answer token is left to score with max_length=24: the prompt alone has 24 tokens, "
        "which fills max_length=24. Raise max_length or shorten the question."
    )


def test_answers_longer_than_max_length_are_kept_with_one_warning(tmp_path: Path, toy_tokenizer, caplog) -> None:
    """Answers cut by max_length but not emptied are trained on (the published runs truncate the same way); one
    warning gives the count, the lines and the max_length that keeps every answer whole, which then warns no more."""
    long_answer = "The capital of France is Paris. " * 6
    rows = [
        {"question": "Who?", "answer": "Me."},
        {"question": "Where?", "answer": long_answer},
        {"question": "Which?", "answer": long_answer + "Really."},
    ]
    path = tmp_path / "forget.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="baldro_pl.datamodules.encoding"):
        dm = _setup_json(path, toy_tokenizer, max_length=30)
    assert len(dm.forget_dataset) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    needed = len(toy_tokenizer("[INST] Which? [/INST]" + long_answer + "Really.")["input_ids"])
    assert warnings == [
        f"{path}: 2 of 3 answers are cut at max_length=30 (line 2, line 3); "
        f"set max_length >= {needed} to train on whole answers"
    ]
    assert all(len(s.input_ids) == 31 for s in dm.forget_dataset.samples[1:])  # 30 tokens + EOS
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="baldro_pl.datamodules.encoding"):
        dm = _setup_json(path, toy_tokenizer, max_length=needed)
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []
    assert len(dm.forget_dataset[2].input_ids) == needed + 1
    with caplog.at_level(logging.WARNING, logger="baldro_pl.datamodules.encoding"):
        _setup_json(path, toy_tokenizer, max_length=needed - 1)
    assert "2 of 3" not in caplog.text and "1 of 3 answers are cut at max_length" in caplog.text


# ----------------------------------------------------------------------------------------------- TOFU / MUSE
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"forget_split": "forget_10"},
            "TOFU forget_split 'forget_10' is unknown; valid: forget01, forget05, forget10",
        ),
        ({"retain_split": "retain10"}, "TOFU retain_split 'retain10' is unknown; valid: retain99, retain95, retain90"),
        (
            {"holdout_split": "holdout"},
            "TOFU holdout_split 'holdout' is unknown; valid: holdout01, holdout05, holdout10",
        ),
    ],
    ids=["forget_split", "retain_split", "holdout_split"],
)
def test_tofu_wrong_split_name_lists_the_allowed_ones(kwargs, message: str, toy_tokenizer) -> None:
    with pytest.raises(ValueError) as info:
        TOFUDataModule(data_dir=str(shared_path("data", "tofu")), tokenizer=toy_tokenizer, **kwargs)
    assert str(info.value) == message


def test_muse_wrong_corpus_name_lists_the_allowed_ones(toy_tokenizer) -> None:
    with pytest.raises(ValueError) as info:
        MUSEDataModule(data_dir=str(shared_path("data", "muse")), corpus="bbc", tokenizer=toy_tokenizer)
    assert str(info.value) == "MUSE corpus 'bbc' is unknown; valid: news, books"


def test_tofu_data_dir_one_level_too_high(toy_tokenizer) -> None:
    data = shared_path("data", "tofu").parent
    dm = TOFUDataModule(data_dir=str(data), tokenizer=toy_tokenizer, forget_split="forget01")
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    assert str(info.value) == (
        f"{data}: TOFU split 'forget01' not found (expected forget01.jsonl, forget01.json or a forget01/ folder "
        f"written by datasets' save_to_disk; splits present: none); did you mean data_dir: {data / 'tofu'}?"
    )


def test_tofu_missing_split_lists_the_splits_present(tmp_path: Path, toy_tokenizer) -> None:
    (tmp_path / "forget01.jsonl").write_text(QA, encoding="utf-8")
    (tmp_path / "retain99.jsonl").write_text(QA, encoding="utf-8")
    dm = TOFUDataModule(data_dir=str(tmp_path), tokenizer=toy_tokenizer)  # forget10 by default
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    assert str(info.value) == (
        f"{tmp_path}: TOFU split 'forget10' not found (expected forget10.jsonl, forget10.json or a forget10/ folder "
        "written by datasets' save_to_disk; splits present: forget01, retain99)"
    )


@pytest.mark.parametrize("what", ["missing", "file"])
def test_tofu_data_dir_not_a_directory(what: str, tmp_path: Path, toy_tokenizer) -> None:
    data_dir = tmp_path / "tofu"
    if what == "file":
        data_dir.write_text("x", encoding="utf-8")
    dm = TOFUDataModule(data_dir=str(data_dir), tokenizer=toy_tokenizer)
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    reason = "it is a file" if what == "file" else "it does not exist"
    assert str(info.value) == (
        f"TOFU data_dir {str(data_dir)!r} is not a directory ({reason}); "
        "expected a directory holding <split>.jsonl files"
    )


def test_tofu_split_file_that_is_a_directory(tmp_path: Path, toy_tokenizer) -> None:
    (tmp_path / "forget01.jsonl").mkdir()
    dm = TOFUDataModule(data_dir=str(tmp_path), tokenizer=toy_tokenizer, forget_split="forget01")
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    assert str(info.value) == (
        f"{tmp_path / 'forget01.jsonl'}: is a directory; expected the .jsonl file of TOFU split 'forget01'"
    )


def test_tofu_bad_row_in_a_split_names_its_line(tmp_path: Path, toy_tokenizer) -> None:
    (tmp_path / "forget01.jsonl").write_text(QA + QA + '{"question": "x?", "answer": 1.5}\n', encoding="utf-8")
    (tmp_path / "retain99.jsonl").write_text(QA, encoding="utf-8")
    dm = TOFUDataModule(data_dir=str(tmp_path), tokenizer=toy_tokenizer, forget_split="forget01")
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    assert (
        str(info.value) == f"{tmp_path / 'forget01.jsonl'}: line 3, field 'answer' is a number (1.5); expected a string"
    )


def test_muse_wrong_file_name_lists_the_files_present(toy_tokenizer) -> None:
    muse = shared_path("data", "muse")
    dm = MUSEDataModule(data_dir=str(muse), forget_file="raw/forgt.json", tokenizer=toy_tokenizer)
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    raw = muse / "news" / "raw"
    files = ", ".join(sorted(p.name for p in raw.iterdir() if p.suffix in (".json", ".jsonl")))
    assert str(info.value) == f"MUSE file not found: tried {raw / 'forgt.json'}; files in {raw}: {files}"


def test_muse_missing_folder_lists_the_folders_present(toy_tokenizer) -> None:
    books = shared_path("data", "muse", "books")
    if (books / "raw").exists():
        pytest.skip("the shared MUSE-Books copy has a raw/ folder")
    dm = MUSEDataModule(data_dir=str(books.parent), corpus="books", tokenizer=toy_tokenizer)
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    folders = ", ".join(sorted(p.name for p in books.iterdir() if p.is_dir()))
    assert str(info.value) == (
        f"MUSE file not found: tried {books / 'raw' / 'forget.json'}; {books / 'raw'} does not exist "
        f"(folders in {books}: {folders})"
    )


def test_muse_data_dir_one_level_too_high(toy_tokenizer) -> None:
    data = shared_path("data", "muse").parent
    dm = MUSEDataModule(data_dir=str(data), tokenizer=toy_tokenizer)
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    assert str(info.value) == (
        f"{data}: no MUSE corpus folder 'news' (expected {data / 'news'}); did you mean data_dir: {data / 'muse'}?"
    )


def test_muse_empty_forget_corpus(tmp_path: Path, toy_tokenizer) -> None:
    raw = tmp_path / "news" / "raw"
    raw.mkdir(parents=True)
    (raw / "forget.json").write_text("[]", encoding="utf-8")
    (raw / "retain1.json").write_text('["some text"]', encoding="utf-8")
    dm = MUSEDataModule(data_dir=str(tmp_path), tokenizer=toy_tokenizer, max_length=16)
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    assert str(info.value) == f"{raw / 'forget.json'}: the corpus is empty (0 documents, no token)"


# ----------------------------------------------------------------------------------------------- end to end
def test_bad_data_stops_fit_before_any_batch(tmp_path: Path, toy_tokenizer, tiny_model) -> None:
    """Through Lightning: the data error is raised from ``setup``, before the model is configured or a batch runs."""
    import lightning.pytorch as pl

    from baldro_pl.modules import UnlearningModule
    from baldro_pl.objectives import NPO

    events = []

    class Spy(pl.Callback):
        def on_fit_start(self, *args) -> None:
            events.append("fit_start")

        def on_train_batch_start(self, *args) -> None:
            events.append("batch")

    forget = tmp_path / "forget.jsonl"
    forget.write_text(QA + '{"question": "c?", "answer": ["d"]}\n', encoding="utf-8")
    data = JsonDataModule(forget=str(forget), tokenizer=toy_tokenizer, batch_size=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Spy()],
    )
    with pytest.raises(ValueError) as info:
        trainer.fit(UnlearningModule(tiny_model, NPO()), datamodule=data)
    assert str(info.value) == f"{forget}: line 2, field 'answer' is a list of 1 item; expected a string"
    assert events == []


def test_bad_data_through_the_cli_is_one_line_and_exit_2(tmp_path: Path, toy_tokenizer) -> None:
    """``baldro-pl fit`` on a bad forget file: one line naming file, line and field, exit 2, no traceback."""
    from baldro_pl.toy import tiny_llama

    model_dir = tmp_path / "model"
    tok = toy_tokenizer
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    tiny_llama(len(tok), **ids).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    forget = tmp_path / "forget.jsonl"
    forget.write_text(QA + '{"question": "c?", "answer": null}\n', encoding="utf-8")
    config = tmp_path / "bad.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            trainer:
              accelerator: cpu
              max_steps: 1
              logger: false
              enable_checkpointing: false
              enable_progress_bar: false
            model:
              class_path: baldro_pl.modules.UnlearningModule
              init_args:
                model: {model_dir}
                forget_loss: baldro_pl.objectives.NPO
            data:
              class_path: baldro_pl.datamodules.JsonDataModule
              init_args:
                forget: {forget}
            """
        ),
        encoding="utf-8",
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "baldro_pl.cli", "fit", "-c", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    message = f"{forget}: line 2, field 'answer' is null; expected a string"
    last = result.stderr.strip().splitlines()[-1]
    assert (result.returncode, "Traceback" in result.stderr) == (2, False), result.stderr[-2000:]
    assert last.startswith("baldro-pl fit: error: ") and last.endswith(message), last
