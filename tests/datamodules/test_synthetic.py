"""The built-in synthetic TOFU-style set: deterministic, TOFU's schema and layout, loadable by TOFUDataModule."""

from __future__ import annotations

import json

import pytest
from shared_data import shared_path

from baldro_pl.datamodules import (
    PromptFormat,
    TOFUDataModule,
    generate_synthetic_tofu,
    synthetic_texts,
    write_synthetic_tofu,
)
from baldro_pl.datamodules.synthetic import STRATUM_FIELD, repeat_by_stratum, stratum_label, stratum_repeats
from baldro_pl.toy import train_tokenizer

TOFU_SPLITS = [
    "full",
    *(f"{kind}{p}" for kind in ("forget", "holdout") for p in ("01", "05", "10")),
    *(f"retain{p}" for p in ("99", "95", "90")),
    *(f"forget{p}_perturbed" for p in ("01", "05", "10")),
    "retain_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
]


def _schema(row: dict) -> dict[str, str]:
    return {k: type(v).__name__ if not isinstance(v, list) else f"list[{type(v[0]).__name__}]" for k, v in row.items()}


def test_deterministic_for_a_seed():
    assert generate_synthetic_tofu(3) == generate_synthetic_tofu(3)
    assert generate_synthetic_tofu(3) != generate_synthetic_tofu(4)


def test_splits_sizes_and_structure():
    data = generate_synthetic_tofu(0, n_authors=20, qa_per_author=10, n_utility=20)
    assert sorted(data) == sorted(TOFU_SPLITS)
    assert len(data["full"]) == 200
    assert [len(data[f"forget{p}"]) for p in ("01", "05", "10")] == [10, 10, 20]  # 1, 1, 2 complete authors
    for p, r in (("01", "99"), ("05", "95"), ("10", "90")):
        assert data[f"retain{r}"] + data[f"forget{p}"] == data["full"]  # forget = tail of full, as in TOFU
        qa = [{"question": x["question"], "answer": x["answer"]} for x in data[f"forget{p}_perturbed"]]
        assert qa == data[f"forget{p}"]
        assert data[f"holdout{p}"] == data["holdout10"][: len(data[f"holdout{p}"])]
    assert [{"question": x["question"], "answer": x["answer"]} for x in data["retain_perturbed"]] == data["full"][:20]
    full_text = " ".join(r["question"] + r["answer"] for r in data["full"])
    holdout_names = {
        r["answer"].removeprefix("The author's full name is ").rstrip(".") for r in data["holdout10"][::10]
    }
    assert holdout_names and all(name not in full_text for name in holdout_names)  # holdout authors never in full
    assert len({r["question"] for r in data["full"]}) == 200
    for row in data["forget10_perturbed"] + data["retain_perturbed"]:
        assert len(row["perturbed_answer"]) == 5 and row["paraphrased_answer"] not in row["perturbed_answer"]
    for key in ("real_authors_perturbed", "world_facts_perturbed"):
        assert len(data[key]) == 20
        assert all(len(r["perturbed_answer"]) == 3 and r["answer"] not in r["perturbed_answer"] for r in data[key])


def test_schema_matches_real_tofu():
    data = generate_synthetic_tofu(0)
    for split in TOFU_SPLITS:
        real = json.loads(shared_path("data", "tofu", f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[0])
        assert list(data[split][0]) == list(real), split  # same keys, same order
        assert all(_schema(row) == _schema(real) for row in data[split]), split


def test_written_set_loads_in_tofu_datamodule(tmp_path):
    target = write_synthetic_tofu(tmp_path / "synthetic", seed=1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    data = generate_synthetic_tofu(1)
    tokenizer = train_tokenizer(synthetic_texts(data), vocab_size=600)
    dm = TOFUDataModule(data_dir=str(target), tokenizer=tokenizer, forget_split="forget10", batch_size=4)
    dm.setup("fit")
    assert (len(dm.forget_dataset), len(dm.retain_dataset)) == (20, 180)
    assert dm.evaluation_rows()["forget"] == data["forget10_perturbed"]
    assert {k: len(v) for k, v in dm.evaluation_rows().items()} == {
        "forget": 20,
        "retain": 20,
        "real_authors": 20,
        "world_facts": 20,
        "holdout": 20,
    }
    batch = next(iter(dm.train_dataloader()))
    assert batch["forget"]["input_ids"].shape[0] == 4
    # the texts are short: a QA sample stays well under 64 tokens with a tokenizer trained on the set
    assert max(len(s.input_ids) for s in dm.retain_dataset) < 64


def test_write_is_idempotent_and_refuses_other_content(tmp_path):
    target = write_synthetic_tofu(tmp_path / "s", seed=0)
    before = (target / "full.jsonl").stat().st_mtime_ns
    write_synthetic_tofu(target, seed=0)  # same set: left as it is
    assert (target / "full.jsonl").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="overwrite=True"):
        write_synthetic_tofu(target, seed=1)
    write_synthetic_tofu(target, seed=1, overwrite=True)
    first = json.loads((target / "full.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first == generate_synthetic_tofu(1)["full"][0]


def test_texts_cover_every_string():
    data = generate_synthetic_tofu(0, n_authors=10, qa_per_author=3, n_utility=5)
    texts = set(synthetic_texts(data))
    for rows in data.values():
        for row in rows:
            assert row["question"] in texts and row["answer"] in texts
            assert all(p in texts for p in row.get("perturbed_answer", []))
    with_prompts = synthetic_texts(data, PromptFormat.llama2_chat())
    row = data["full"][0]
    assert "[INST] " + row["question"] + " [/INST]" + row["answer"] in with_prompts
    assert set(with_prompts) > texts


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="qa_per_author"):
        generate_synthetic_tofu(0, qa_per_author=11)
    with pytest.raises(ValueError, match="n_authors=1 is too small"):
        generate_synthetic_tofu(0, n_authors=1)


# ---------------------------------------------------------------------------------------------------------------------
# Memorisation strata (the heterogeneity benchmark)
STRATA = (1, 2, 4, 8)


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != STRATUM_FIELD} for r in rows]


def _authors(rows: list[dict], qa_per_author: int) -> list[str]:
    """The author of each row: the name in the answer of the author's first QA pair (template "name"), checked
    against the other questions of the author's block (each names the author)."""
    names = []
    for start in range(0, len(rows), qa_per_author):
        block = rows[start : start + qa_per_author]
        name = block[0]["answer"].removeprefix("The author's full name is ").rstrip(".")
        assert all(name in r["question"] for r in block[1:])
        names += [name] * len(block)
    return names


def test_strata_are_complete_equal_groups_of_forget10_authors():
    data = generate_synthetic_tofu(0, n_authors=120, strata=STRATA)
    forget = data["forget10_perturbed"]
    assert len(forget) == 120
    assert [r[STRATUM_FIELD] for r in forget] == [r[STRATUM_FIELD] for r in data["forget10"]]
    authors = _authors(forget, 10)
    by_author: dict[str, set[str]] = {}
    for author, row in zip(authors, forget):
        by_author.setdefault(author, set()).add(row[STRATUM_FIELD])
    assert len(by_author) == 12 and all(len(s) == 1 for s in by_author.values())  # an author is in one stratum
    per_stratum = {label: [a for a, s in by_author.items() if s == {label}] for label in ("x1", "x2", "x4", "x8")}
    assert {k: len(v) for k, v in per_stratum.items()} == {"x1": 3, "x2": 3, "x4": 3, "x8": 3}
    # forget05 / forget01 are tails of forget10 and keep their rows' strata; other splits have no stratum
    for p in ("01", "05"):
        assert data[f"forget{p}_perturbed"] == forget[-len(data[f"forget{p}_perturbed"]) :]
        assert data[f"forget{p}"] == data["forget10"][-len(data[f"forget{p}"]) :]
    for split in ("full", "retain90", "retain_perturbed", "holdout10", "real_authors_perturbed"):
        assert all(STRATUM_FIELD not in r for r in data[split]), split


def test_strata_only_add_the_field():
    plain = generate_synthetic_tofu(5, n_authors=40, qa_per_author=7)
    strat = generate_synthetic_tofu(5, n_authors=40, qa_per_author=7, strata=(1, 4))
    assert sorted(plain) == sorted(strat)
    for split in plain:
        assert _strip(strat[split]) == plain[split], split
    assert list(strat["forget10_perturbed"][0]) == [*plain["forget10_perturbed"][0], STRATUM_FIELD]  # last field
    assert {r[STRATUM_FIELD] for r in strat["forget10"]} == {"x1", "x4"}


def test_strata_are_deterministic_in_the_seed():
    first = generate_synthetic_tofu(3, n_authors=120, strata=STRATA)
    assert first == generate_synthetic_tofu(3, n_authors=120, strata=STRATA)
    labels = [
        [r[STRATUM_FIELD] for r in generate_synthetic_tofu(s, n_authors=120, strata=STRATA)["forget10"]] for s in (3, 4)
    ]
    assert labels[0] != labels[1]  # the author -> stratum draw depends on the seed too


def test_repeat_by_stratum():
    rows = [
        {"question": "a", "answer": "1", STRATUM_FIELD: stratum_label(3)},
        {"question": "b", "answer": "2"},
        {"question": "c", "answer": "3", STRATUM_FIELD: "x1"},
    ]
    out = repeat_by_stratum(rows)
    assert [r["question"] for r in out] == ["a", "a", "a", "b", "c"]
    assert all(STRATUM_FIELD not in r for r in out)
    assert stratum_repeats("x8") == 8
    with pytest.raises(ValueError, match="not a stratum label"):
        stratum_repeats("8x")


def test_bad_strata_raise():
    with pytest.raises(ValueError, match="equal strata"):
        generate_synthetic_tofu(0, n_authors=100, strata=STRATA)  # 10 forget10 authors, 4 strata
    with pytest.raises(ValueError, match="distinct"):
        generate_synthetic_tofu(0, n_authors=120, strata=(1, 1, 2, 8))
    with pytest.raises(ValueError, match="positive"):
        generate_synthetic_tofu(0, n_authors=120, strata=(0, 1, 2, 8))


def test_written_set_with_strata_loads_and_keeps_the_field(tmp_path):
    target = write_synthetic_tofu(tmp_path / "s", seed=2, n_authors=40, strata=(1, 2, 4, 8))
    assert json.loads((target / "synthetic.json").read_text())["strata"] == [1, 2, 4, 8]
    write_synthetic_tofu(target, seed=2, n_authors=40, strata=(1, 2, 4, 8))  # same set: fine
    with pytest.raises(ValueError, match="overwrite=True"):
        write_synthetic_tofu(target, seed=2, n_authors=40)  # the same set without strata is another set
    data = generate_synthetic_tofu(2, n_authors=40, strata=(1, 2, 4, 8))
    tokenizer = train_tokenizer(synthetic_texts(data), vocab_size=600)
    dm = TOFUDataModule(data_dir=str(target), tokenizer=tokenizer, forget_split="forget10", batch_size=4)
    dm.setup("fit")
    assert len(dm.forget_dataset) == 40
    forget = dm.evaluation_rows()["forget"]
    assert forget == data["forget10_perturbed"]
    assert {r[STRATUM_FIELD] for r in forget} == {"x1", "x2", "x4", "x8"}
    dm.setup("test")  # the evaluation sets encode with the extra field
    assert len(dm.val_dataloader()[0].dataset) == 40
