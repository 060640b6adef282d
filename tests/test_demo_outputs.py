"""``baldro-pl demo``: what it leaves on disk besides the printed tables (issue 10, problem 7).

One shortened demo run (1 fine-tuning and 1 unlearning epoch, two methods) is shared by the tests of this file:

* ``comparison.csv`` holds every (method, metric) with the returned values at full precision;
* ``summary.md`` holds the printed tables and says where the models and logs are;
* every unlearned model is kept as a Hugging Face directory, and it is the model that was evaluated;
* every run of the demo is in TensorBoard's HParams table (the fine-tuning runs with their last training loss, the
  unlearning runs with the evaluation's headline metrics);
* torch's thread count is put back at the end.
"""

from __future__ import annotations

import csv
import glob
import io
from pathlib import Path

import pytest
import torch
import yaml

from baldro_pl import demo
from baldro_pl.tables import format_value

METHODS = ["npo", "npo_dv"]


#: What the shortened demo's copy of configs/demo.yaml changes: one unlearning epoch, evaluated after it, and a
#: learning rate of its own (the demo must take all three from the file it is given).
SHORT_LR = 2.5e-4


def _short_config(folder: Path) -> Path:
    config = yaml.safe_load(demo.DEMO_CONFIG.read_text())
    config["trainer"]["max_epochs"] = 1
    config["trainer"]["callbacks"][-1]["init_args"]["every_n_epochs"] = 1
    config["model"]["init_args"]["learning_rate"] = SHORT_LR
    path = folder / "demo_short.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """The shortened demo, run once: (output dir, returned summaries, printed text, threads before, threads after)."""
    out = tmp_path_factory.mktemp("demo")
    config = _short_config(tmp_path_factory.mktemp("config"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(demo.FINETUNE, "epochs", 1)
        buffer = io.StringIO()
        patch.setattr("sys.stdout", buffer)
        before = torch.get_num_threads()
        summaries = demo.run_demo(out, methods=METHODS, config=config)
        after = torch.get_num_threads()
    return out, summaries, buffer.getvalue(), before, after


def test_demo_takes_its_unlearning_settings_from_the_yaml(demo_run) -> None:
    out, _, _, _, _ = demo_run
    for method in METHODS:
        run = out / "runs" / f"unlearn_{method}" / "version_0"
        assert yaml.safe_load((run / "hparams.yaml").read_text())["learning_rate"] == SHORT_LR
        assert (run / "epoch_0" / "TOFU_EVAL.json").is_file()  # max_epochs 1, evaluated every epoch
        assert not list(run.glob("epoch_[1-9]*"))
        # the demo keeps each unlearned model as a Hugging Face directory, not as Lightning checkpoints
        assert not (run / "checkpoints").exists()


def test_settings_are_configs_demo_yaml() -> None:
    settings = demo.load_settings()
    config = yaml.safe_load(demo.DEMO_CONFIG.read_text())
    model, evaluation = config["model"]["init_args"], config["trainer"]["callbacks"][-1]["init_args"]
    assert demo.DEMO_CONFIG.is_file()  # found from the package, whatever the working directory
    assert (settings.learning_rate, settings.alpha, settings.gamma) == (
        model["learning_rate"],
        model["alpha"],
        model["gamma"],
    )
    assert settings.beta == model["forget_loss"]["init_args"]["beta"]
    assert settings.dv == model["aggregator"]["init_args"]
    assert (settings.epochs, settings.batch_size) == (
        config["trainer"]["max_epochs"],
        config["data"]["init_args"]["batch_size"],
    )
    assert (settings.max_new_tokens, settings.every_n_epochs) == (
        evaluation["suite"]["init_args"]["max_new_tokens"],
        evaluation["every_n_epochs"],
    )


def test_missing_or_incomplete_demo_config_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(FileNotFoundError, match=f"demo config {missing} not found"):
        demo.load_settings(missing)
    with pytest.raises(SystemExit) as exc:
        demo.main(["--config", str(missing)])
    assert exc.value.code == 2
    assert f"--config: demo config {missing} not found" in capsys.readouterr().err
    partial = tmp_path / "partial.yaml"
    partial.write_text("trainer: {max_epochs: 1}\n")
    with pytest.raises(ValueError, match="partial.yaml: model.init_args.learning_rate is missing"):
        demo.load_settings(partial)


def test_comparison_csv_holds_every_method_and_metric_at_full_precision(demo_run) -> None:
    out, summaries, _, _, _ = demo_run
    rows = list(csv.reader((out / "comparison.csv").read_text().splitlines()))
    assert rows[0] == ["method", "method_label", "metric", "description", "target", "unlearned", "retain"]
    assert [(r[0], r[2]) for r in rows[1:]] == [(m, key) for m in METHODS for key, _ in demo.TABLE_ROWS]
    for method, label, key, description, *cells in rows[1:]:
        assert label == demo.METHODS[method][0]
        assert description == dict(demo.TABLE_ROWS)[key]
        for cell, column in zip(cells, (summaries["target"], summaries[method], summaries["retain"]), strict=True):
            value = column.get(key)
            assert cell == ("" if value is None else repr(float(value)))
    # the retain model is the reference: no forget quality and no balance of its own
    retain_cells = {r[2]: r[6] for r in rows[1:] if r[0] == "npo"}
    assert retain_cells["forget_quality"] == retain_cells["forget_balance_within"] == ""
    assert not list(out.glob(".*.tmp")), "a temporary file of the atomic writer was left behind"


def test_summary_md_holds_the_printed_tables_and_where_things_are(demo_run) -> None:
    out, summaries, printed, _, _ = demo_run
    text = (out / "summary.md").read_text()
    for method in METHODS:
        title = f"{demo.METHODS[method][0]}: forget10 of the synthetic set"
        assert f"## {title}\n\n| metric | target | unlearned | retain |\n|---|---:|---:|---:|\n" in text
        assert title in printed
        columns = (summaries["target"], summaries[method], summaries["retain"])
        for key, label in demo.TABLE_ROWS:
            cells = [format_value(c.get(key)) for c in columns]
            assert f"| {label} | {' | '.join(cells)} |" in text
            # the printed table shows the same numbers
            assert any(line.split() == [*label.split(), *cells] for line in printed.splitlines())
        unlearned = out / "models" / "unlearned" / method
        assert f"- unlearned model ({demo.METHODS[method][0]}): `{unlearned}`" in text
    assert f"- retain model's evaluation (the reference): `{out / 'eval' / 'retain' / 'TOFU_EVAL.json'}`" in text
    # the final printout says where the files and the models are
    assert f"comparison: {out / 'comparison.csv'} and {out / 'summary.md'}" in printed
    assert f"unlearned models (Hugging Face directories): {out / 'models' / 'unlearned'}/{{npo,npo_dv}}" in printed


def test_unlearned_models_are_kept_and_are_the_ones_evaluated(demo_run) -> None:
    out, summaries, _, _, _ = demo_run
    from safetensors.torch import load_file

    target = load_file(out / "models" / "target" / "model.safetensors")
    for method in METHODS:
        directory = out / "models" / "unlearned" / method
        assert (directory / "tokenizer.json").is_file()
        weights = load_file(directory / "model.safetensors")
        assert weights.keys() == target.keys()
        assert any(not torch.equal(weights[k], target[k]) for k in weights), f"{method}: the target's weights"
    # evaluated again from its directory, the kept model gives the numbers the demo printed
    again = demo._evaluate(out / "models" / "unlearned" / "npo_dv", out / "data", out / "eval/retain/TOFU_EVAL.json")
    assert again.summary == summaries["npo_dv"]


def _hparams(run_dir: str) -> tuple[list[str], list[str]]:
    """(hyperparameter names, metric names) of a run's TensorBoard HParams records."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(run_dir)
    events.Reload()
    names: list[str] = []
    metrics: list[str] = []
    for raw in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("experiment"):
            metrics += [m.name.tag for m in data.experiment.metric_infos]
        if data.HasField("session_start_info"):
            names += list(data.session_start_info.hparams)
    return sorted(names), metrics


def test_every_run_is_in_tensorboards_hparams_table(demo_run) -> None:
    out, _, _, _, _ = demo_run
    runs = sorted(Path(p).parent.name for p in glob.glob(str(out / "runs" / "*" / "version_0")))
    assert runs == ["retain", "target", "unlearn_npo", "unlearn_npo_dv"]
    for name in ("target", "retain"):
        names, metrics = _hparams(str(out / "runs" / name / "version_0"))
        assert metrics == ["hp/train_loss"]
        assert {"learning_rate", "model", "warmup_epochs"} <= set(names)
    for method in METHODS:
        names, metrics = _hparams(str(out / "runs" / f"unlearn_{method}" / "version_0"))
        assert "hp/forget_quality" in metrics and "hp/model_utility" in metrics
        assert {"learning_rate", "alpha", "forget_loss/init_args/beta", "aggregator/class_path"} <= set(names)


def test_thread_count_is_put_back(demo_run) -> None:
    _, _, printed, before, after = demo_run
    assert after == before
    # OMP_NUM_THREADS is set for the suite (conftest.py): the demo keeps the user's count
    assert f"torch CPU threads fixed at {before}\n" in printed


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_demo_refuses_a_bad_thread_count(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        demo.main(["--threads", value])
    assert exc.value.code == 2
    assert f"argument --threads: must be a positive integer, got '{value}'" in capsys.readouterr().err
