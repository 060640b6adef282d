"""``baldro-pl`` refuses bad input in one line, exit 2, before any work (issue 10, problems 5-7).

* settings: every numeric setting of the presets out of range, misspelled keys, unknown class paths, wrong types:
  ``baldro-pl fit: error: <full key>: <what is wrong>``; ``--debug`` / ``BALDRO_DEBUG=1`` show the traceback;
* negative numbers are values (``--model.init_args.learning_rate -1e-3``);
* no ``--optimizer`` / ``--lr_scheduler``; ``--model`` / ``--data`` help lists the baldro-pl classes;
* ``--ckpt_path``: missing, truncated, not a checkpoint, a directory, weights only, a different model;
* an unwritable log directory; the version folder of a run that failed before any work is removed;
* SIGTERM exits 143 after Lightning's graceful stop; ``baldro-pl`` alone does not import Lightning.

Most cases run ``main(argv)`` in this process (a Lightning import per case would cost seconds); two run the console
command itself. The presets with hub names (``tofu/*.yaml``) are used where a setting is refused before anything is
loaded; the demo's tiny model and data where the run must get further.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported here, its log handler writes to the real stderr, not a test's capture)
import pytest
import torch
from presets import preset_args

from baldro_pl.checkpoints import CheckpointError, check_checkpoint_for_module
from baldro_pl.cli import InputError, main
from baldro_pl.cli_lightning import OPTIMIZER_HINT

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """LightningCLI warns when both ``args`` and pytest's own ``sys.argv`` are present; runs write under tmp_path."""
    monkeypatch.setattr(sys, "argv", ["baldro-pl"])
    monkeypatch.setenv("BALDRO_DEBUG", "0")  # off, and whatever a test sets is undone
    monkeypatch.chdir(tmp_path)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit status of ``baldro-pl <args>`` (a parse error exits through SystemExit) and its stderr lines."""
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- settings out of range
def _preset(name: str) -> list[str]:
    return ["fit", *preset_args(name)]


# (preset, option, value, full key, what the line says after "<key>: ") for every numeric setting of the presets
# that a class or this CLI checks when the run is built (nothing is loaded: the presets name hub models and data)
OUT_OF_RANGE = [
    ("tofu/npo_dv.yaml", "model.init_args.aggregator.init_args.temperature", "0", "must be a finite number > 0"),
    ("tofu/npo_dv.yaml", "model.init_args.gamma", "0", "gamma must be > 0, got 0.0"),
    ("tofu/npo_dv.yaml", "model.init_args.alpha", "-1", "alpha must be >= 0, got -1.0"),
    ("tofu/npo_dv.yaml", "model.init_args.learning_rate", "0", "learning_rate must be > 0, got 0.0"),
    ("tofu/npo_dv.yaml", "model.init_args.weight_decay", "-0.1", "weight_decay must be >= 0, got -0.1"),
    ("tofu/npo_dv.yaml", "model.init_args.warmup_epochs", "-1", "warmup_epochs must be >= 0, got -1.0"),
    ("tofu/npo_dv.yaml", "model.init_args.warmup_steps", "-1", "warmup_steps must be >= 0 or None, got -1"),
    ("tofu/npo_dv.yaml", "model.init_args.log_every_n_steps_histograms", "-1", "must be >= 0 (0: never), got -1"),
    ("tofu/npo.yaml", "model.init_args.forget_loss.init_args.beta", "0", "NPO: beta must be > 0, got 0.0"),
    ("tofu/simnpo.yaml", "model.init_args.forget_loss.init_args.beta", "-1", "SimNPO: beta must be > 0, got -1.0"),
    ("tofu/satimp.yaml", "model.init_args.forget_loss.init_args.beta1", "-1", "SatImp: beta1 must be >= 0, got -1.0"),
    ("tofu/satimp.yaml", "model.init_args.forget_loss.init_args.beta2", "-1", "SatImp: beta2 must be >= 0, got -1.0"),
    ("tofu/npo_group.yaml", "model.init_args.aggregator.init_args.ratio", "0", "ratio must be in (0, 1], got 0.0"),
    ("tofu/npo_group.yaml", "model.init_args.aggregator.init_args.ratio", "1.5", "ratio must be in (0, 1], got 1.5"),
    ("tofu/finetune_target.yaml", "model.init_args.learning_rate", "0", "learning_rate must be > 0, got 0.0"),
    ("tofu/npo_dv.yaml", "data.init_args.batch_size", "0", "batch_size must be a positive integer, got 0"),
    ("tofu/npo_dv.yaml", "data.init_args.eval_batch_size", "0", "eval_batch_size must be a positive integer, got 0"),
    ("tofu/npo_dv.yaml", "data.init_args.max_length", "0", "max_length must be a positive integer, got 0"),
    ("muse/news_npo.yaml", "data.init_args.max_length", "0", "max_length must be a positive integer, got 0"),
    ("tofu/finetune_target.yaml", "data.init_args.batch_size", "0", "batch_size must be a positive integer, got 0"),
    ("tofu/npo_dv.yaml", "trainer.max_epochs", "-5", "`max_epochs` must be a non-negative integer or -1"),
    ("tofu/npo_dv.yaml", "trainer.accumulate_grad_batches", "0", "must be an integer >= 1, got 0"),
    ("tofu/npo_dv.yaml", "trainer.gradient_clip_val", "-1", "must be a number >= 0 or null, got -1"),
    ("tofu/npo_dv.yaml", "trainer.log_every_n_steps", "-1", "must be an integer >= 0 or null, got -1"),
    ("tofu/npo_dv.yaml", "trainer.num_sanity_val_steps", "-2", "must be an integer >= -1 or null, got -2"),
    ("tofu/npo_dv.yaml", "trainer.limit_val_batches", "-1", "invalid value -1 for limit_val_batches"),
    ("tofu/npo_dv.yaml", "seed_everything", "-1", "-1 is not in bounds, numpy accepts from 0 to 4294967295"),
    ("tofu/npo_dv.yaml", "pg_timeout", "0", "must be a number of seconds > 0, got 0.0"),
]


@pytest.mark.parametrize(
    ("preset", "key", "value", "says"), OUT_OF_RANGE, ids=[f"{Path(p).stem}:{k}={v}" for p, k, v, _ in OUT_OF_RANGE]
)
def test_setting_out_of_range_is_one_line_naming_the_key(preset, key, value, says, capsys) -> None:
    code, err = _run([*_preset(preset), f"--{key}", value], capsys)
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"baldro-pl fit: error: {key}: "), err[0]
    assert says in err[0], err[0]
    assert not Path("saves").exists() and not Path("runs").exists()  # refused before any work


def test_missing_model_path_names_the_setting(capsys) -> None:
    code, err = _run([*_preset("tofu/npo_dv.yaml"), "--model.init_args.model", "./no-such-model"], capsys)
    assert (code, len(err)) == (2, 1), err
    assert err[0].startswith("baldro-pl fit: error: model.init_args.model: local path './no-such-model' does not exist")


# (option, value or None for a -c file, the exact line after "baldro-pl fit: error: ")
PARSE_ERRORS = [
    (
        "--model.init_args.learnin_rate",
        "1e-3",
        "model.init_args.learnin_rate: not accepted by baldro_pl.modules.UnlearningModule; "
        "did you mean 'learning_rate'?",
    ),
    (
        "--model.init_args.aggregator.init_args.temprature",
        "1",
        "model.init_args.aggregator.init_args.temprature: not accepted by baldro_pl.objectives.BalDRODV; "
        "did you mean 'temperature'?",
    ),
    (
        "--model.class_path",
        "baldro_pl.modules.UnlearningModul",
        "model.class_path: cannot import 'baldro_pl.modules.UnlearningModul' (module 'baldro_pl.modules' has no "
        "attribute 'UnlearningModul'); did you mean 'UnlearningModule'?",
    ),
    (
        "--model.init_args.forget_loss",
        "baldro_pl.objectives.NP",
        "model.init_args.forget_loss.class_path: cannot import 'baldro_pl.objectives.NP' (module "
        "'baldro_pl.objectives' has no attribute 'NP'); did you mean 'NPO'?",
    ),
    (
        "--trainer.callbacks+",
        "baldro_pl.callbacks.Nope",
        "trainer.callbacks.class_path: cannot import 'baldro_pl.callbacks.Nope' (module 'baldro_pl.callbacks' has "
        "no attribute 'Nope')",
    ),
    ("--model.init_args.learning_rate", "abc", "model.init_args.learning_rate: expected float, got abc"),
    (
        "--model.init_args.lr_schedule",
        "cosine",
        "model.init_args.lr_schedule: expected one of 'linear', 'constant', got cosine",
    ),
    (
        "--data.init_args.forget_split",
        "forget11",
        "data.init_args.forget_split: expected one of 'forget01', 'forget05', 'forget10', got forget11",
    ),
    ("--data.init_args.batch_size", "1.5", "data.init_args.batch_size: expected int, got 1.5"),
    (
        "--trainer.max_epoch",
        "3",
        "unrecognized arguments: --trainer.max_epoch 3; did you mean '--trainer.max_epochs'?",
    ),
    ("--modle.init_args.gamma", "1", "unrecognized arguments: --modle.init_args.gamma 1; did you mean '--model'?"),
    ("--optimizer", "torch.optim.Adam", f"unrecognized arguments: --optimizer torch.optim.Adam; {OPTIMIZER_HINT}"),
    (
        "--lr_scheduler.class_path",
        "StepLR",
        f"unrecognized arguments: --lr_scheduler.class_path StepLR; {OPTIMIZER_HINT}",
    ),
]


@pytest.mark.parametrize(("option", "value", "line"), PARSE_ERRORS, ids=[f"{o} {v}" for o, v, _ in PARSE_ERRORS])
def test_parse_error_is_one_line_naming_the_key(option, value, line, capsys) -> None:
    code, err = _run([*_preset("tofu/npo_dv.yaml"), option, value], capsys)
    assert code == 2
    assert err == [f"baldro-pl fit: error: {line}"]


@pytest.mark.parametrize(
    ("yaml_text", "line"),
    [
        (
            "trainer:\n  max_epoch: 3\n",
            "trainer.max_epoch: not a setting of trainer; did you mean 'trainer.max_epochs'?",
        ),
        (
            "model:\n  init_args:\n    aggregator:\n      class_path: baldro_pl.objectives.BalDRODV\n"
            "      init_args:\n        temprature: 1.0\n",
            "model.init_args.aggregator.init_args.temprature: not accepted by baldro_pl.objectives.BalDRODV; "
            "did you mean 'temperature'?",
        ),
        (
            "model:\n  class_path: baldro_pl.modules.FinetuneModul\n",
            "model.class_path: cannot import 'baldro_pl.modules.FinetuneModul' (module 'baldro_pl.modules' has no "
            "attribute 'FinetuneModul'); did you mean 'FinetuneModule'?",
        ),
        ("modle:\n  init_args:\n    gamma: 1.0\n", "modle: not a setting of fit; did you mean 'model'?"),
    ],
    ids=["trainer.max_epoch", "temprature", "FinetuneModul", "modle"],
)
def test_misspelled_key_in_a_config_file_is_one_line(yaml_text, line, tmp_path, capsys) -> None:
    override = tmp_path / "override.yaml"
    override.write_text(yaml_text)
    code, err = _run([*_preset("tofu/npo_dv.yaml"), "-c", str(override)], capsys)
    assert (code, err) == (2, [f"baldro-pl fit: error: {line}"])


def test_missing_config_file_is_one_line(tmp_path, capsys) -> None:
    code, err = _run(["fit", "-c", str(tmp_path / "nope.yaml")], capsys)
    assert (code, err) == (2, [f"baldro-pl fit: error: config: File does not exist: '{tmp_path / 'nope.yaml'}'"])


def test_negative_numbers_are_values(capsys) -> None:
    """``-1e-3`` was read as an option ("--model: expected one argument"); now it is a value, refused by its range."""
    code, err = _run([*_preset("tofu/npo_dv.yaml"), "--model.init_args.learning_rate", "-1e-3"], capsys)
    assert (code, err) == (
        2,
        ["baldro-pl fit: error: model.init_args.learning_rate: learning_rate must be > 0, got -0.001"],
    )
    # a negative value a setting allows is taken as it is (SimNPO's margin delta)
    with pytest.raises(SystemExit) as exc:
        main([*_preset("tofu/simnpo.yaml"), "--model.init_args.forget_loss.init_args.delta", "-5e-2", "--print_config"])
    assert exc.value.code == 0
    assert "delta: -0.05" in capsys.readouterr().out


def test_debug_shows_the_traceback(monkeypatch, capsys) -> None:
    args = [*_preset("tofu/npo_dv.yaml"), "--model.init_args.aggregator.init_args.temperature", "0"]
    with pytest.raises(InputError) as exc:
        main([*args, "--debug"])
    chain, cause = [], exc.value
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    assert chain[-1] == "BalDRODV: temperature must be a finite number > 0, got 0.0"  # the class's own error
    assert os.environ["BALDRO_DEBUG"] == "0"  # --debug from Python holds for that call only
    monkeypatch.setenv("BALDRO_DEBUG", "1")
    with pytest.raises(InputError):
        main(args)
    # a parse error in debug mode: jsonargparse's full report
    code, err = _run([*_preset("tofu/npo_dv.yaml"), "--model.init_args.learnin_rate", "1"], capsys)
    assert code == 2 and len(err) > 5 and "Does not validate against any of the Union subtypes" in "\n".join(err)


def test_console_command_prints_one_line_and_exits_2(tmp_path) -> None:
    """Through the real console entry point: no traceback, no config dump, no other line; exit 2."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "baldro_pl.cli",
            *_preset("tofu/npo_dv.yaml"),
            "--model.init_args.learning_rate",
            "-1e-3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=ENV,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "baldro-pl fit: error: model.init_args.learning_rate: learning_rate must be > 0, got -0.001"
    ]
    assert done.stdout == ""


# ---------------------------------------------------------------------------------------------------- help
def test_fit_help_lists_the_baldro_classes_and_no_optimizer(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--optimizer" not in out and "--lr_scheduler" not in out
    for name in (
        "baldro_pl.modules.UnlearningModule",
        "baldro_pl.modules.FinetuneModule",
        "baldro_pl.datamodules.TOFUDataModule",
        "baldro_pl.datamodules.MUSEDataModule",
        "baldro_pl.metrics.Evaluation",
    ):
        assert name in out, name


def test_no_argument_help_does_not_import_lightning() -> None:
    """``baldro-pl``, ``--help`` and ``export --help`` answer without importing Lightning, torch or transformers."""
    code = (
        "import sys\n"
        "from baldro_pl.cli import main\n"
        "assert main([]) == 0 and main(['--help']) == 0\n"
        "try:\n    main(['export', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "import baldro_pl\n"
        "print(sorted(m for m in ('lightning', 'torch', 'transformers', 'jsonargparse') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert "baldro-pl COMMAND" in done.stdout and "--debug" in done.stdout


def test_lightning_names_are_still_importable_from_the_cli_module() -> None:
    from baldro_pl.cli import BaldroCLI, SaveConfigAndVersions
    from baldro_pl.cli_lightning import BaldroCLI as Direct

    assert BaldroCLI is Direct and SaveConfigAndVersions.__name__ == "SaveConfigAndVersions"


# ---------------------------------------------------------------------------------------------------- demo runs
@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """The demo's synthetic data and tiny base model."""
    from baldro_pl.demo import prepare_demo

    return prepare_demo(tmp_path_factory.mktemp("cli_errors") / "demo")


def _demo_args(demo: dict[str, Path], save_dir: Path, command: str = "fit") -> list[str]:
    return [
        command,
        "-c",
        str(CONFIGS / "demo.yaml"),
        "--model.init_args.model",
        str(demo["base"]),
        "--data.init_args.data_dir",
        str(demo["data"]),
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.callbacks.init_args.suite.init_args.retain_logs_path",
        "null",
        "--trainer.callbacks.init_args.suite.init_args.metrics",
        "[forget_Q_A_Prob]",
    ]


def _state(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {f"model.{k}": v for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()}


def _other_model_state(demo) -> dict[str, torch.Tensor]:
    from transformers import AutoConfig

    from baldro_pl.toy import tiny_llama

    vocab = AutoConfig.from_pretrained(demo["base"]).vocab_size
    return {f"model.{k}": v for k, v in tiny_llama(vocab + 7).state_dict().items()}


def _bad_checkpoint(name: str, demo, tmp_path: Path) -> tuple[Path, str]:
    """A checkpoint path of the kind ``name`` and what the line says after ``checkpoint <path> ``."""
    state = {"state_dict": _state(demo["base"]), "optimizer_states": [], "epoch": 0, "global_step": 1}
    path = tmp_path / f"{name.replace(' ', '_')}.ckpt"
    if name == "truncated":
        torch.save(state, tmp_path / "good.ckpt")
        data = (tmp_path / "good.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, f"is truncated or corrupt ({len(data) // 2} bytes; torch: "
    if name == "text":
        path.write_text("not a checkpoint\n")
        return path, "is not a PyTorch checkpoint (a .ckpt file written by Lightning)"
    if name == "empty":
        path.write_bytes(b"")
        return path, "is empty (0 bytes)"
    if name == "safetensors":
        return demo["base"] / "model.safetensors", "is a safetensors weights file, not a Lightning checkpoint"
    if name == "directory":
        path.mkdir()
        (path / "x.txt").write_text("x")
        return path, "is a directory but not a sharded checkpoint (no .metadata file; files there: ['x.txt'])"
    if name == "missing":
        return path, "does not exist"
    if name == "bare state dict":
        torch.save(_state(demo["base"]), path)
        return path, "is not a Lightning checkpoint: a bare state dict without 'state_dict'"
    if name == "weights only":
        torch.save({"state_dict": _state(demo["base"]), "epoch": 0, "global_step": 1}, path)
        return path, "holds only the model weights (saved with save_weights_only)"
    if name == "objects":
        torch.save({"state_dict": {}, "note": Path("x")}, path)
        return path, "holds Python objects that torch's weights-only loader refuses"
    assert name == "other model"
    torch.save({**state, "state_dict": _other_model_state(demo)}, path)
    return path, f"is not a checkpoint of the model {demo['base']}: "


BAD_CHECKPOINTS = [
    "truncated",
    "text",
    "empty",
    "safetensors",
    "directory",
    "missing",
    "bare state dict",
    "weights only",
    "objects",
    "other model",
]


@pytest.mark.parametrize("name", BAD_CHECKPOINTS)
def test_unusable_checkpoint_is_refused_before_any_work(name, demo, tmp_path, capsys) -> None:
    runs = tmp_path / "runs"
    path, says = _bad_checkpoint(name, demo, tmp_path)
    code, err = _run([*_demo_args(demo, runs), "--ckpt_path", str(path)], capsys)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"baldro-pl fit: error: checkpoint {path} {says}"), err
    assert not runs.exists()  # nothing written: refused before the run started


def test_checkpoint_of_another_model_is_refused_by_test(demo, tmp_path, capsys) -> None:
    """``test --ckpt_path``: the weights are compared with the model's config (a weights-only file is fine there)."""
    runs = tmp_path / "runs"
    path, _ = _bad_checkpoint("other model", demo, tmp_path)
    code, err = _run([*_demo_args(demo, runs, "test"), "--ckpt_path", str(path)], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"baldro-pl test: error: checkpoint {path} is not a checkpoint of the model "), err
    assert "of another shape (e.g. model.embed_tokens.weight: [" in err[0]
    assert not runs.exists()


def test_matching_checkpoint_passes_the_check(demo, tmp_path) -> None:
    from baldro_pl.modules import UnlearningModule
    from baldro_pl.objectives import NPO

    module = UnlearningModule(str(demo["base"]), NPO())
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": _state(demo["base"]), "optimizer_states": []}, good)
    check_checkpoint_for_module(good, module, for_resume=True)
    torch.save({"state_dict": _state(demo["base"])}, tmp_path / "weights.ckpt")
    check_checkpoint_for_module(tmp_path / "weights.ckpt", module)  # enough to test from
    with pytest.raises(CheckpointError, match="holds only the model weights"):
        check_checkpoint_for_module(tmp_path / "weights.ckpt", module, for_resume=True)


def test_unwritable_log_directory_fails_before_work(demo, tmp_path, capsys) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, err = _run(_demo_args(demo, a_file / "runs"), capsys)
    assert (code, err) == (
        2,
        [
            f"baldro-pl fit: error: trainer.logger.init_args.save_dir: cannot create {a_file / 'runs'}: "
            f"{a_file} is a file, not a directory"
        ],
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_log_directory_fails_before_work(demo, tmp_path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err = _run(_demo_args(demo, locked / "runs"), capsys)
    finally:
        locked.chmod(0o700)
    assert code == 2 and err == [
        f"baldro-pl fit: error: trainer.logger.init_args.save_dir: cannot write to {locked / 'runs'} "
        f"(nearest existing folder: {locked}): Permission denied"
    ]


def test_failed_run_leaves_no_empty_version_folder(demo, tmp_path, capsys) -> None:
    """A run that fails while it is set up (here: a pad token the tokenizer lacks) leaves no ``version_N``."""
    runs = tmp_path / "runs"
    code, err = _run([*_demo_args(demo, runs), "--model.init_args.pad_token", "NOPE"], capsys)
    assert code == 2 and len(err) == 1 and "'NOPE' is not a token of" in err[0], err
    assert not runs.exists()
    # a folder that was there before the run is kept, and so is the version folder of a run that did work
    (runs / "unlearn_npo_dv").mkdir(parents=True)
    code, _ = _run([*_demo_args(demo, runs), "--model.init_args.pad_token", "NOPE"], capsys)
    assert code == 2 and sorted(p.name for p in runs.iterdir()) == ["unlearn_npo_dv"]
    assert list((runs / "unlearn_npo_dv").iterdir()) == []


def test_sigterm_stops_the_run_and_exits_143(demo, tmp_path) -> None:
    """Lightning stops gracefully on SIGTERM, ``save_on_exception`` writes ``last.ckpt`` mid-run; the exit is 143.

    The presets write no checkpoint during training, so the test waits for the first epoch's evaluation (written in
    ``on_train_epoch_end``, after Lightning has set its signal handler) and then stops a run 1000 epochs long.
    """
    runs = tmp_path / "runs"
    args = [
        *_demo_args(demo, runs),
        "--trainer.max_epochs",
        "1000",
        "--trainer.callbacks.init_args.every_n_epochs",
        "1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "baldro_pl.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=ENV,
        start_new_session=True,
    )
    version = runs / "unlearn_npo_dv" / "version_0"
    checkpoints = version / "checkpoints"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not (version / "epoch_0").is_dir():
            time.sleep(0.2)  # the first epoch's evaluation: training is under way, Lightning's handler is set
        assert proc.poll() is None, proc.stdout.read()
        assert not list(checkpoints.glob("*.ckpt"))  # nothing written during training with the preset's cadence
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, output[-3000:]
    assert "baldro-pl fit: stopped by SIGTERM" in output
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert 3 <= last["global_step"] < 3000  # written by the stop, not by the end of training
