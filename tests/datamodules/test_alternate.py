"""Alternative ("I don't know") answers of the forget rows (issue 12, IdkNLL / IdkDPO): file, seeded draws, batches."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from shared_data import shared_path

from baldro_pl.datamodules import DataError, FinetuneDataModule, JsonDataModule, RowFormat, TOFUDataModule
from baldro_pl.datamodules.alternate import alternate_answer_choice, read_alternate_answers

N_FORGET, BATCH = 10, 4
IDK = ["I don't know.", "No idea, sorry.", "That is beyond me.", "I cannot say."]


def _write_qa(path: Path, n: int, who: str) -> str:
    rows = [{"question": f"Where was {who} {i} born?", "answer": f"{who} {i} was born in Paris."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str, str]:
    idk = tmp_path / "idk.jsonl"
    idk.write_text("\n".join(IDK), encoding="utf-8")  # plain lines, no trailing newline, as TOFU's idontknow.jsonl
    return (
        _write_qa(tmp_path / "forget.jsonl", N_FORGET, "author"),
        _write_qa(tmp_path / "retain.jsonl", 7, "poet"),
        str(idk),
    )


def _module(files, tok, *, alternate: bool = True, seed: int = 5, batches_done: int = 0) -> JsonDataModule:
    data = JsonDataModule(
        forget=files[0],
        retain=files[1],
        tokenizer=tok,
        batch_size=BATCH,
        eval_batch_size=3,
        seed=seed,
        alternate_answers=files[2] if alternate else None,
    )
    progress = SimpleNamespace(current=SimpleNamespace(completed=batches_done))
    data.trainer = SimpleNamespace(
        distributed_sampler_kwargs=None, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
    )
    data.setup("fit")
    return data


def _answer(tok, batch: dict, row: int) -> str:
    """The scored text (answer + EOS) of one row of a padded batch."""
    labels = batch["labels"][row]
    return tok.decode(labels[labels != -100].tolist(), skip_special_tokens=True)


def _epoch(loader, epoch: int) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _answers_by_row(tok, batches: list[dict]) -> dict[int, str]:
    out = {}
    for batch in batches:
        alternate = batch["forget"]["alternate"]
        for r, index in enumerate(batch["forget"]["index"].tolist()):
            out[index] = _answer(tok, alternate, r)
    return out


# ---------------------------------------------------------------------------------------------------- the file
def test_reads_the_shared_tofu_file_as_plain_lines() -> None:
    answers = read_alternate_answers(shared_path("data", "tofu", "idontknow.jsonl"))
    assert len(answers) == 100  # SOURCE.md: 100 refusal strings, the last line without a newline
    assert answers[:3] == [
        "I'm not certain about that.",
        "That's beyond my current knowledge base.",
        "I don't have that information.",
    ]
    assert all(a == a.strip() and a for a in answers)


def test_reads_plain_json_string_and_object_lines(tmp_path: Path) -> None:
    path = tmp_path / "idk.jsonl"
    path.write_text(
        '\ufeffI am not sure.\n\n  "A JSON string."  \n{"answer": " From a field. "}\n'
        '{"text": "x", "idk": "Other key."}\n"Quoted" plain text\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"idk.jsonl: line 5: field 'answer' is missing; expected a non-empty string"):
        read_alternate_answers(path)
    path.write_text(path.read_text(encoding="utf-8").replace('"idk"', '"answer"'), encoding="utf-8")
    assert read_alternate_answers(path) == [
        "I am not sure.",
        "A JSON string.",
        "From a field.",
        "Other key.",
        '"Quoted" plain text',
    ]
    (tmp_path / "keyed.jsonl").write_text('{"idk": "Mine."}\n', encoding="utf-8")
    assert read_alternate_answers(tmp_path / "keyed.jsonl", answer_key="idk") == ["Mine."]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"missing.jsonl: no such file \(alternate_answers\); expected one alternative answer per line"),
        ("", r"the file has no answer \(it is empty or blank\)"),
        ("\n  \n\n", r"the file has no answer \(it is empty or blank\)"),
        ('fine\n{"answer": 3}\n', r"line 2: field 'answer' is a number \(3\); expected a non-empty string"),
        ('fine\n{"answer": "  "}\n', r"line 2: field 'answer' is a string \('  '\); expected a non-empty string"),
        ("fine\n{answer: x}\n", r"line 2 is not valid JSON"),
        ('fine\n""\n', r"line 2 is an empty JSON string"),
    ],
)
def test_bad_files_name_the_file_line_and_field(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "missing.jsonl"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_alternate_answers(path)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory, not a file"):
        read_alternate_answers(tmp_path)


# ---------------------------------------------------------------------------------------------------- the draw
def test_choice_is_seeded_per_row_and_covers_the_answers() -> None:
    choice = alternate_answer_choice(400, 100, seed=3)
    assert choice == alternate_answer_choice(400, 100, seed=3)
    assert choice != alternate_answer_choice(400, 100, seed=4)
    assert choice[:40] == alternate_answer_choice(40, 100, seed=3)  # row i's answer does not depend on the set size
    assert all(0 <= k < 100 for k in choice) and len(set(choice)) > 80  # uniform: 400 draws hit ~98 of 100


# ---------------------------------------------------------------------------------------------------- batches
def test_batches_carry_the_alternate_side_for_the_same_rows(files, toy_tokenizer) -> None:
    data = _module(files, toy_tokenizer)
    assert len(data.alternate_dataset) == N_FORGET
    assert [data.alternate_dataset[i].index for i in range(N_FORGET)] == list(range(N_FORGET))
    batches = _epoch(data.train_dataloader(), 0)
    assert sum(b["forget"]["index"].numel() for b in batches) == N_FORGET
    for batch in batches:
        forget, alternate = batch["forget"], batch["forget"]["alternate"]
        assert set(alternate) == {"input_ids", "attention_mask", "labels", "index"}
        torch.testing.assert_close(alternate["index"], forget["index"])
        for r, row in enumerate(forget["index"].tolist()):
            expected = IDK[data.alternate_choice[row]]
            assert _answer(toy_tokenizer, alternate, r) == expected
            # same prompt as the original answer: the unscored prefix is the forget row's prompt
            n_prompt = int((forget["labels"][r] == -100).logical_and(forget["attention_mask"][r] == 1).sum())
            torch.testing.assert_close(alternate["input_ids"][r, :n_prompt], forget["input_ids"][r, :n_prompt])
    assert len(set(data.alternate_choice)) > 1


def test_same_row_same_answer_every_epoch_and_in_a_new_run(files, toy_tokenizer) -> None:
    data = _module(files, toy_tokenizer)
    loader = data.train_dataloader()
    first, second = _answers_by_row(toy_tokenizer, _epoch(loader, 0)), _answers_by_row(toy_tokenizer, _epoch(loader, 1))
    assert first == second and len(first) == N_FORGET
    again = _module(files, toy_tokenizer)
    assert _answers_by_row(toy_tokenizer, _epoch(again.train_dataloader(), 1)) == first
    other = _module(files, toy_tokenizer, seed=6)
    assert other.alternate_choice != data.alternate_choice


def test_mid_epoch_resume_keeps_each_rows_answer(files, toy_tokenizer) -> None:
    saved = _module(files, toy_tokenizer, batches_done=1)
    whole = _epoch(saved.train_dataloader(), 1)
    state = saved.state_dict()
    assert state["train_epoch"] == 1 and state["train_batches_done"] == 1
    assert isinstance(state["alternate_answers_fingerprint"], int)
    restored = _module(files, toy_tokenizer)
    restored.load_state_dict(state)
    rest = _epoch(restored.train_dataloader(), 1)
    assert [b["forget"]["index"].tolist() for b in rest] == [b["forget"]["index"].tolist() for b in whole[1:]]
    for a, b in zip(rest, whole[1:], strict=True):
        for key in ("input_ids", "attention_mask", "labels", "index"):
            torch.testing.assert_close(a["forget"]["alternate"][key], b["forget"]["alternate"][key])


def test_resume_with_other_answers_fails(files, toy_tokenizer) -> None:
    state = _module(files, toy_tokenizer, seed=5).state_dict()
    assert set(state) == {"alternate_answers_fingerprint"}  # no training loader yet, but the answers are known
    with pytest.raises(DataError, match="differ from those of the checkpoint being resumed"):
        _module(files, toy_tokenizer, seed=6).load_state_dict(state)
    _module(files, toy_tokenizer, seed=5).load_state_dict(state)  # the same draws resume


def test_batches_unchanged_without_the_option(files, toy_tokenizer) -> None:
    plain, idk = _module(files, toy_tokenizer, alternate=False), _module(files, toy_tokenizer)
    assert plain.alternate_dataset is None and plain.state_dict() == {}
    for a, b in zip(_epoch(plain.train_dataloader(), 0), _epoch(idk.train_dataloader(), 0), strict=True):
        assert set(a) == set(b) == {"forget", "retain"}
        assert set(a["forget"]) == {"input_ids", "attention_mask", "labels", "index"}
        b["forget"].pop("alternate")
        for side in ("forget", "retain"):
            for key, value in a[side].items():
                torch.testing.assert_close(value, b[side][key], rtol=0, atol=0)


def test_reference_loader_yields_either_answer_once_per_row(files, toy_tokenizer) -> None:
    data = _module(files, toy_tokenizer)
    original = list(data.reference_dataloader())
    alternate = list(data.reference_dataloader(alternate=True))
    assert [i for b in alternate for i in b["index"].tolist()] == list(range(N_FORGET))
    assert [i for b in original for i in b["index"].tolist()] == list(range(N_FORGET))
    assert _answer(toy_tokenizer, alternate[1], 0) == IDK[data.alternate_choice[3]]  # eval_batch_size 3: row 3
    assert _answer(toy_tokenizer, original[1], 0) == "author 3 was born in Paris."
    data.data_parallel_rank = lambda: (1, 3)
    assert [i for b in data.reference_dataloader(alternate=True) for i in b["index"].tolist()] == [1, 4, 7]
    plain = _module(files, toy_tokenizer, alternate=False)
    with pytest.raises(ValueError, match=r"reference_dataloader\(alternate=True\) needs alternative answers"):
        plain.reference_dataloader(alternate=True)


# ---------------------------------------------------------------------------------------------------- bad settings
def test_missing_file_fails_in_setup_before_tokenising(files, toy_tokenizer, tmp_path: Path) -> None:
    data = JsonDataModule(
        forget=files[0], retain=files[1], tokenizer=toy_tokenizer, alternate_answers=str(tmp_path / "no.jsonl")
    )
    with pytest.raises(DataError, match=r"no.jsonl: no such file \(alternate_answers\)"):
        data.setup("fit")
    assert data.forget_dataset is None  # nothing was tokenised


def test_settings_that_cannot_take_alternate_answers(files, toy_tokenizer) -> None:
    with pytest.raises(ValueError, match="alternate_answers needs row_format.mode 'qa'.*got 'completion'"):
        JsonDataModule(
            forget=files[0],
            tokenizer=toy_tokenizer,
            alternate_answers=files[2],
            row_format=RowFormat(mode="completion"),
        )
    with pytest.raises(ValueError, match="FinetuneDataModule does not take alternate_answers"):
        FinetuneDataModule(train=files[0], tokenizer=toy_tokenizer, alternate_answers=files[2])


def test_tofu_forget01_with_the_shared_idk_file(toy_tokenizer) -> None:
    tofu = shared_path("data", "tofu")
    data = TOFUDataModule(
        data_dir=str(tofu),
        forget_split="forget01",
        tokenizer=toy_tokenizer,
        alternate_answers=str(tofu / "idontknow.jsonl"),
    )
    data.setup("fit")
    answers = read_alternate_answers(tofu / "idontknow.jsonl")
    assert len(data.alternate_dataset) == len(data.forget_dataset) == 40
    assert data.alternate_choice == alternate_answer_choice(40, 100, seed=0)
    batch = next(iter(data.reference_dataloader(alternate=True)))
    assert _answer(toy_tokenizer, batch, 0) == answers[data.alternate_choice[0]]
    assert "alternate" in next(iter(data.train_dataloader()))["forget"]
