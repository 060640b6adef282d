"""The heterogeneity benchmark's preparation: strata repeated in the target's fine-tuning data, determinism, layout."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from baldro_pl import heterogeneity
from baldro_pl.datamodules import FinetuneDataModule, TOFUDataModule
from baldro_pl.datamodules.synthetic import STRATUM_FIELD, stratum_repeats
from baldro_pl.heterogeneity import finetune_config, prepare_heterogeneity
from baldro_pl.modules import FinetuneModule

TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _qa(row: dict) -> tuple[str, str]:
    return row["question"], row["answer"]


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes; the fine-tuning configs with ``root`` written as ROOT)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            out[str(p.relative_to(root))] = data.replace(str(root.resolve()).encode(), b"ROOT")
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    return prepare_heterogeneity(tmp_path_factory.mktemp("het") / "bench", seed=0, model=TINY, vocab_size=400)


def test_defaults_give_enough_forget_samples_per_stratum(prepared):
    assert heterogeneity.STRATA == (1, 2, 4, 8)
    forget = _rows(prepared["data"] / "forget10_perturbed.jsonl")
    counts = Counter(r[STRATUM_FIELD] for r in forget)
    assert len(forget) >= 100
    assert set(counts) == {"x1", "x2", "x4", "x8"} and min(counts.values()) >= 25
    assert _rows(prepared["data"] / "forget10.jsonl") == [
        {"question": r["question"], "answer": r["answer"], STRATUM_FIELD: r[STRATUM_FIELD]} for r in forget
    ]


def test_target_sees_each_stratum_its_number_of_times(prepared):
    data = prepared["data"]
    forget = _rows(data / "forget10.jsonl")
    retain = _rows(data / "retain90.jsonl")
    utility = [r for s in ("real_authors_perturbed", "world_facts_perturbed") for r in _rows(data / f"{s}.jsonl")]
    target = Counter(_qa(r) for r in _rows(prepared["train_target"]))
    for row in forget:
        assert target[_qa(row)] == stratum_repeats(row[STRATUM_FIELD]), row[STRATUM_FIELD]
    assert all(target[_qa(r)] == 1 for r in retain + utility)
    n_forget = sum(stratum_repeats(r[STRATUM_FIELD]) for r in forget)
    assert sum(target.values()) == len(retain) + n_forget + len(utility)  # nothing else
    assert n_forget == 30 * (1 + 2 + 4 + 8)
    # the retain model's data: retain90 and the same general knowledge, never a forget row
    assert Counter(_qa(r) for r in _rows(prepared["train_retain"])) == Counter(_qa(r) for r in retain + utility)
    assert all(set(r) == {"question", "answer"} for r in _rows(prepared["train_target"]))


def test_outputs_load_in_the_datamodules(prepared):
    base = prepared["base"]
    assert (base / "config.json").is_file() and (base / "tokenizer.json").is_file()
    ft = FinetuneDataModule(train=str(prepared["train_target"]), tokenizer=str(base), batch_size=8)
    ft.setup("fit")
    assert len(ft.forget_dataset) == len(_rows(prepared["train_target"]))
    dm = TOFUDataModule(data_dir=str(prepared["data"]), forget_split="forget10", tokenizer=str(base))
    dm.setup("test")
    assert {r[STRATUM_FIELD] for r in dm.evaluation_rows()["forget"]} == {"x1", "x2", "x4", "x8"}
    config = finetune_config(prepared, "retain", "out/retain", max_epochs=2)
    assert config["data"]["init_args"]["train"] == str(prepared["train_retain"])
    assert config["trainer"]["max_epochs"] == 2 and config["model"]["init_args"]["model"] == str(base)


@pytest.mark.parametrize("which", ["target", "retain"])
def test_finetune_configs_parse_with_the_cli(prepared, which, monkeypatch):
    from baldro_pl.cli import lightning_cli

    monkeypatch.setattr("sys.argv", ["baldro-pl"])
    written = yaml.safe_load(prepared[f"finetune_{which}"].read_text(encoding="utf-8"))
    assert written["data"]["init_args"]["train"] == str(prepared[f"train_{which}"].resolve())
    assert written["model"]["init_args"]["output_dir"] == str(prepared["base"].parent.resolve() / which)
    assert written["trainer"]["max_epochs"] == heterogeneity.FINETUNE["epochs"]
    cli = lightning_cli(["--config", str(prepared[f"finetune_{which}"])], run=False)  # instantiated, not run
    assert isinstance(cli.model, FinetuneModule) and isinstance(cli.datamodule, FinetuneDataModule)
    assert cli.model.learning_rate == heterogeneity.FINETUNE["learning_rate"]
    assert cli.datamodule.batch_size == heterogeneity.FINETUNE["batch_size"]
    assert cli.trainer.max_epochs == heterogeneity.FINETUNE["epochs"]


def test_deterministic_in_the_seed_idempotent_and_atomic(prepared, tmp_path):
    root = prepared["data"].parent
    again = prepare_heterogeneity(tmp_path / "again", seed=0, model=TINY, vocab_size=400)
    assert {k: p.relative_to(tmp_path / "again") for k, p in again.items()} == {
        k: p.relative_to(root) for k, p in prepared.items()
    }
    first = _files(root)
    assert _files(tmp_path / "again") == first  # data, training files, tokenizer and initial weights alike
    assert not [p for p in root.rglob(".*")]  # no temporary file or folder left behind
    stamps = {name: (root / name).stat().st_mtime_ns for name in first}
    assert prepare_heterogeneity(root, seed=0, model=TINY, vocab_size=400) == prepared  # nothing rewritten
    assert {name: (root / name).stat().st_mtime_ns for name in first} == stamps

    other = prepare_heterogeneity(tmp_path / "seed1", seed=1, model=TINY, vocab_size=400)
    changed = _files(tmp_path / "seed1")
    for name in ("data/forget10_perturbed.jsonl", "train_target.jsonl", "models/base/model.safetensors"):
        assert changed[name] != first[name], name
    labels = [[r[STRATUM_FIELD] for r in _rows(p["data"] / "forget10.jsonl")] for p in (prepared, other)]
    assert labels[0] != labels[1]

    with pytest.raises(ValueError, match="other arguments"):
        prepare_heterogeneity(tmp_path / "seed1", seed=2, model=TINY, vocab_size=400)
    prepare_heterogeneity(tmp_path / "seed1", seed=2, model=TINY, vocab_size=400, overwrite=True)
    assert json.loads((tmp_path / "seed1" / "heterogeneity.json").read_text())["seed"] == 2
    assert _files(tmp_path / "seed1")["train_target.jsonl"] != changed["train_target.jsonl"]


def test_an_interrupted_preparation_is_completed(tmp_path):
    paths = prepare_heterogeneity(tmp_path / "b", seed=0, n_authors=40, model=TINY, vocab_size=300)
    (tmp_path / "b" / "heterogeneity.json").unlink()  # as if killed before the manifest was written
    paths["train_target"].unlink()
    assert prepare_heterogeneity(tmp_path / "b", seed=0, n_authors=40, model=TINY, vocab_size=300) == paths
    assert paths["train_target"].is_file() and (tmp_path / "b" / "heterogeneity.json").is_file()
