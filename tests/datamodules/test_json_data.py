"""JsonDataModule on JSONL, JSON, CSV and parquet files, a save_to_disk folder, and in the three reading modes."""

from __future__ import annotations

import csv
import json

import pytest

from baldro_pl.datamodules import FinetuneDataModule, JsonDataModule, RowFormat, read_records
from baldro_pl.datamodules.formatting import IGNORE_INDEX

QA_ROWS = RowFormat(question_key="q", answer_key="a")
ROWS = [{"q": f"Where was author {i} born?", "a": f"Author {i} was born in Paris.", "n": i} for i in range(9)]


def _write(path, rows):
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    elif suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_qa_files_of_every_format(tmp_path, toy_tokenizer, suffix):
    forget = _write(tmp_path / f"forget{suffix}", ROWS)
    retain = _write(tmp_path / f"retain{suffix}", ROWS[:4])
    dm = JsonDataModule(
        forget=str(forget), retain=str(retain), row_format=QA_ROWS, tokenizer=toy_tokenizer, batch_size=3
    )
    dm.setup("fit")
    assert dm.benchmark == "custom"
    assert (len(dm.forget_dataset), len(dm.retain_dataset)) == (9, 4)
    assert [dm.forget_dataset[i].index for i in range(9)] == list(range(9))
    sample = dm.forget_dataset[4]
    scored = [t for t in sample.labels if t != IGNORE_INDEX]
    answer = toy_tokenizer(ROWS[4]["a"], add_special_tokens=False)["input_ids"]
    assert scored == answer + [toy_tokenizer.eos_token_id]
    batches = list(dm.train_dataloader())
    assert sorted(i for b in batches for i in b["forget"]["index"].tolist()) == list(range(9))
    assert all(b["retain"]["index"].max() < 4 for b in batches)


def test_saved_dataset_folder(tmp_path, toy_tokenizer):
    import datasets

    datasets.DatasetDict({"forget": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "ds"))
    dm = JsonDataModule(forget=str(tmp_path / "ds"), forget_split="forget", row_format=QA_ROWS, tokenizer=toy_tokenizer)
    dm.setup("fit")
    assert len(dm.forget_dataset) == 9 and dm.retain_dataset is None
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"forget"}  # no retain set: forget-only batches


def test_completion_mode(tmp_path, toy_tokenizer):
    rows = [{"prompt": "The quick brown fox", "gt": "jumps over the lazy dog."}]
    dm = JsonDataModule(
        forget=str(_write(tmp_path / "f.jsonl", rows)),
        row_format=RowFormat(mode="completion", prefix_key="prompt", text_key="gt", insert_space=True),
        tokenizer=toy_tokenizer,
    )
    dm.setup("fit")
    s = dm.forget_dataset[0]
    n_prefix = len(toy_tokenizer("The quick brown fox")["input_ids"])
    full = toy_tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
    assert s.input_ids == full and s.labels == [IGNORE_INDEX] * n_prefix + full[n_prefix:]  # no EOS (§1.3)


def test_pretraining_mode_with_string_rows(tmp_path, toy_tokenizer):
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps(["The quick brown fox jumps over the lazy dog."] * 3), encoding="utf-8")
    dm = JsonDataModule(
        forget=str(path), row_format=RowFormat(mode="pretraining"), tokenizer=toy_tokenizer, max_length=8
    )
    dm.setup("fit")
    n_tokens = len(toy_tokenizer("\n\n".join(["The quick brown fox jumps over the lazy dog."] * 3))["input_ids"]) - 1
    assert len(dm.forget_dataset) == -(-n_tokens // 8)
    assert len(dm.forget_dataset[0].input_ids) == 9  # BOS + 8 tokens


def test_evaluation_files_are_returned_raw(tmp_path, toy_tokenizer):
    forget = _write(tmp_path / "f.jsonl", ROWS)
    extra = _write(tmp_path / "extra.json", [{"question": "x?", "answer": "y", "perturbed_answer": ["z"]}])
    dm = JsonDataModule(
        forget=str(forget), row_format=QA_ROWS, tokenizer=toy_tokenizer, evaluation={"extra": str(extra)}
    )
    dm.setup("validate")
    assert dm.evaluation_rows() == {"extra": [{"question": "x?", "answer": "y", "perturbed_answer": ["z"]}]}
    assert len(dm.val_dataloader()) == 1  # forget only


def test_finetune_datamodule_gives_plain_batches(tmp_path, toy_tokenizer):
    path = _write(tmp_path / "full.jsonl", ROWS)
    dm = FinetuneDataModule(train=str(path), row_format=QA_ROWS, tokenizer=toy_tokenizer, batch_size=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert all(set(b) == {"input_ids", "attention_mask", "labels", "index"} for b in batches)
        seen.append([i for b in batches for i in b["index"].tolist()])
        assert sorted(seen[-1]) == list(range(9))
    assert seen[0] != seen[1]  # a new seeded order each epoch


def test_json_file_of_consecutive_arrays(tmp_path):
    # the original TOFU full.json is several arrays one per line, as datasets' to_json(lines=False) writes them
    path = tmp_path / "full.json"
    path.write_text(json.dumps(ROWS[:5]) + "\n" + json.dumps(ROWS[5:]) + "\n", encoding="utf-8")
    assert read_records(path) == ROWS
