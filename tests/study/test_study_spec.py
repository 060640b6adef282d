"""Study specs that cannot run fail before any fine-tune, evaluation or fit, with a message naming the field.

No process is started here: ``Job`` (every child of the runner) is replaced by one that fails the test if built, and
``prepare`` would fail too, so each error must come from validation.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

import baldro_pl.study.runner as runner
from baldro_pl.study import StudySpecError, main, run_study
from baldro_pl.study.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
STUDY_SPECS = sorted((REPO / "configs" / "study").glob("*.yaml"))


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def good(tmp_path: Path) -> dict[str, Any]:
    """A structurally valid spec (its models are stand-in folders: nothing gets far enough to load them)."""
    return {
        "output_dir": str(tmp_path / "out"),
        "target": {"path": str(_model_dir(tmp_path / "target"))},
        "retain": {"path": str(_model_dir(tmp_path / "retain"))},
        "unlearn": {"configs": [str(REPO / "configs" / "demo.yaml")]},
        "grid": {
            "methods": [
                {"name": "NPO", "aggregator": {"class_path": "baldro_pl.objectives.Mean"}},
                {"name": "NPO + G", "aggregator": {"class_path": "BalDROG", "init_args": {"ratio": 0.5}}},
            ],
            "seeds": [0],
        },
    }


@pytest.fixture(autouse=True)
def _no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a process was started for an invalid spec")

    monkeypatch.setattr(runner, "Job", refuse)


def _edit(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``spec`` with the dotted ``path`` set to ``value`` (``...`` deletes it); list items as ``methods.1``."""
    spec = copy.deepcopy(spec)
    *parents, last = path.split(".")
    node: Any = spec
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


AGGREGATOR_1, AGGREGATOR_0 = "grid.methods.1.aggregator.class_path", "grid.methods.0.aggregator.class_path"
BAD_SPECS = [
    # (edit, value, the field the message must start with, a phrase of the message)
    (AGGREGATOR_1, "baldro_pl.objectives.NoSuchAggregator", "grid.methods[1].aggregator.class_path", "no class"),
    (AGGREGATOR_1, "no_such_package.Aggregator", "grid.methods[1].aggregator.class_path", "cannot import"),
    (AGGREGATOR_0, "baldro_pl.objectives.NPO", "grid.methods[0].aggregator.class_path", "is not a baldro_pl.objec"),
    ("grid.methods.1.aggregator.init_args", {"ratio": 2.0}, "grid.methods[1].aggregator.init_args", "ratio"),
    ("grid.methods.1.name", "NPO", "grid.methods", "repeated names"),
    ("grid", {}, "grid", "missing or empty"),
    ("grid", ..., "grid", "missing or empty"),
    ("grid.methods", [], "grid.methods", "missing or empty"),
    ("grid.seeds", [], "grid.seeds", "empty"),
    ("grid.seeds", ..., "grid.seeds", "missing"),
    ("grid.learning_rates", [], "grid.learning_rates", "empty"),
    ("target", ..., "target", "missing"),
    ("retain", ..., "retain", "missing"),
    ("target", {}, "target", "no model"),
    ("retain", {"args": ["--x", "1"]}, "retain", "no model"),
    ("unlearn", ..., "unlearn.configs", "missing"),
    ("colour", "blue", "spec", "unknown top-level keys ['colour']"),
    ("grid.methods.0.temperature", 1.0, "grid.methods[0]", "unknown keys ['temperature']"),
    ("evaluation", {"init_args": {"retain_logs_path": "x.json"}}, "evaluation.init_args", "set by the study runner"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "field", "phrase"), BAD_SPECS)
def test_bad_spec_fails_before_any_fit_naming_the_field(
    good: dict[str, Any], path: str, value: Any, field: str, phrase: str
) -> None:
    spec = _edit(good, path, value)
    with pytest.raises(StudySpecError) as err:
        run_study(spec)
    message = str(err.value)
    assert message.startswith(f"{field}:"), message
    assert phrase in message, message


@pytest.mark.parametrize(
    ("role", "field"),
    [("target", "target.path"), ("retain", "retain.path")],
)
def test_missing_model_without_finetune_config_fails_naming_the_field(
    good: dict[str, Any], tmp_path: Path, role: str, field: str
) -> None:
    spec = _edit(good, f"{role}.path", str(tmp_path / "nowhere"))
    with pytest.raises(
        StudySpecError, match=rf"^{field}: .* is not a model directory .* `{role}.finetune` is not given"
    ):
        run_study(spec)


def test_missing_files_fail_naming_the_field(good: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(StudySpecError, match=r"^unlearn\.configs\[0\]: no such file"):
        run_study(_edit(good, "unlearn.configs", [str(tmp_path / "missing.yaml")]))
    spec = _edit(good, "retain", {"log": str(tmp_path / "missing" / "TOFU_EVAL.json")})
    with pytest.raises(StudySpecError, match=r"^retain\.log: .* does not exist and `retain` gives no model"):
        run_study(spec)
    spec = _edit(good, "target", {"finetune": [str(tmp_path / "finetune.yaml")]})
    with pytest.raises(StudySpecError, match=r"^target\.finetune\[0\]: no such file"):
        run_study(spec)


def test_unknown_variable_names_the_field(good: dict[str, Any]) -> None:
    with pytest.raises(StudySpecError, match=r"^target\.path: unknown variable \$\{prepare\.base\}"):
        run_study(_edit(good, "target.path", "${prepare.base}"))


def test_valid_spec_parses_with_short_class_names(good: dict[str, Any]) -> None:
    spec = parse_spec(good)
    assert [m.name for m in spec.methods] == ["NPO", "NPO + G"]
    assert spec.methods[1].blocks["aggregator"]["class_path"] == "baldro_pl.objectives.aggregators.BalDROG"
    assert spec.seeds == (0,)


def test_command_reports_an_invalid_spec_with_exit_code_2(
    good: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_edit(good, "grid.seeds", [])))
    assert main([str(path)]) == 2
    assert "invalid spec: grid.seeds: empty" in capsys.readouterr().err


def test_unlearning_config_that_does_not_parse_or_fit_an_unlearning_module_names_unlearn(
    good: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setattr(sys, "argv", ["baldro-pl"])
    with pytest.raises(StudySpecError, match=r"^unlearn: `baldro-pl fit .*` does not parse"):
        run_study(_edit(good, "unlearn", {"configs": good["unlearn"]["configs"], "args": ["--trainer.no_such", "1"]}))
    finetune = str(REPO / "configs" / "tofu" / "finetune_target.yaml")
    with pytest.raises(StudySpecError, match=r"^unlearn: model.class_path must be baldro_pl.modules.UnlearningModule"):
        run_study(_edit(good, "unlearn.configs", [finetune]))


def test_dry_run_plans_cells_named_by_the_hash_of_their_config(
    good: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from baldro_pl.study import plan_study

    monkeypatch.setattr(sys, "argv", ["baldro-pl"])
    good["grid"]["seeds"] = [0, 1]
    plan = plan_study(good)
    assert [(c.method.name, c.seed) for c in plan.cells] == [("NPO", 0), ("NPO", 1), ("NPO + G", 0), ("NPO + G", 1)]
    assert len({c.hash for c in plan.cells}) == 4
    config = plan.cells[2].config
    assert config["seed_everything"] == 0 and config["data"]["init_args"]["seed"] == 0
    assert config["model"]["init_args"]["aggregator"]["init_args"]["ratio"] == 0.5
    assert config["model"]["init_args"]["model"] == good["target"]["path"]
    evaluation = config["trainer"]["callbacks"][-2]["init_args"]
    suite_args = evaluation["suite"]["init_args"]  # the reference log is a setting of the suite
    assert suite_args["retain_logs_path"] == plan.retain_log
    assert (evaluation["every_n_epochs"], evaluation["eval_on_start"]) == (1, False)
    # the hash is the config's: a renamed method keeps its cells, another learning rate does not
    renamed = plan_study(_edit(good, "grid.methods.1.name", "BalDRO-G"))
    assert [c.hash for c in renamed.cells] == [c.hash for c in plan.cells]
    other = plan_study(_edit(good, "grid.learning_rates", [1e-4]))
    assert not {c.hash for c in other.cells} & {c.hash for c in plan.cells}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(good))
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cells: 4 (0 finished)" in out and f"cell 4/4  {plan.cells[3].hash}" in out


@pytest.mark.parametrize("path", STUDY_SPECS, ids=[p.name for p in STUDY_SPECS])
def test_committed_study_specs_are_valid(path: Path) -> None:
    spec = parse_spec(load_spec(path))
    assert spec.methods and spec.seeds
