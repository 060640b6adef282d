"""The YAML presets under configs/ and the ``baldro-pl`` command that runs them (docs/presets.md).

* every preset parses with the CLI (``--print_config``), the strategy files composed after a TOFU preset; the
  unlearning presets are composed (``-c base.yaml [-c corpus.yaml] -c method/<name>.yaml``, tests/presets.py) and
  resolve to the values of the single-file presets they replaced;
* the unlearning presets build the objective objects of the parity mapping (tests/objectives/test_reference_parity.py)
  with the reference hyperparameters, without loading a model (hub names are resolved only when a model is loaded);
* ``baldro-pl fit -c configs/demo.yaml`` trains a few steps on the demo's tiny model, and
  ``baldro-pl test -c configs/tofu/eval.yaml`` evaluates it, both through the console entry point;
* the training presets' checkpoints and evaluation cadence (docs/presets.md, "Checkpoints and evaluation cadence"):
  Lightning's validation loop off, ``last.ckpt`` resumable and written at the end, ``best.ckpt`` (TOFU, the demo)
  weights only, written only after the epochs the evaluation callback evaluated.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from presets import preset_args

from baldro_pl.callbacks import BestCheckpoint, HFExport
from baldro_pl.cli import lightning_cli, main
from baldro_pl.datamodules import FinetuneDataModule, MUSEDataModule, TOFUDataModule
from baldro_pl.metrics import Evaluation, MUSESuite, TOFUSuite
from baldro_pl.metrics.muse import MUSE_METRICS
from baldro_pl.metrics.tofu import TOFU_METRICS
from baldro_pl.modules import CausalLMModule, FinetuneModule, UnlearningModule
from baldro_pl.objectives import (
    CEU,
    NLL,
    NPO,
    RMU,
    UNDIAL,
    BalDRODV,
    BalDROG,
    EmbedDiff,
    GradAscent,
    IdkDPO,
    IdkNLL,
    Mean,
    SatImp,
    SimNPO,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TOFU_TARGET = "open-unlearning/tofu_Llama-2-7b-chat-hf_full"
TOFU_RETAIN_LOG = "saves/eval/tofu_Llama-2-7b-chat-hf_retain90/TOFU_EVAL.json"
#: best.ckpt of the TOFU presets and the demo: TOFU's headline number, forget quality (as log10: it ranks below 1e-38)
BEST_MONITOR = "eval/forget_quality_log10"

STRATEGY_FILES = ["strategy/ddp.yaml", "strategy/fsdp.yaml"]
EVAL_PRESETS = ["tofu/eval.yaml", "muse/eval_news.yaml", "muse/eval_books.yaml"]
# the composed unlearning presets, named by their method file (tests/presets.py gives the files of each)
TOFU_NAMES = [
    *("npo", "npo_group", "npo_dv", "simnpo", "simnpo_group", "simnpo_dv", "satimp", "satimp_group", "satimp_dv"),
    *(f"{m}_release" for m in ("npo_dv", "npo_group", "simnpo_dv", "satimp_dv")),
    *("graddiff", "ceu", "undial", "idknll", "idkdpo", "rmu"),
]
MUSE_NAMES = [
    "news_npo",
    "news_npo_group",
    "news_npo_dv",
    "news_npo_dv_release",
    "books_npo_dv",
    "books_npo_dv_release",
    # SimNPO and SatImp with their BalDRO variants, on both corpora (docs/presets.md: the paper's setting where the
    # MUSE scripts are inconsistent)
    *(
        f"{corpus}_{method}"
        for corpus in ("news", "books")
        for method in (
            *("simnpo", "simnpo_group", "simnpo_dv", "simnpo_dv_release"),
            *("satimp", "satimp_group", "satimp_dv", "satimp_dv_release"),
            "undial",
        )
    ),
]
COMPOSED_PRESETS = [f"tofu/{m}" for m in TOFU_NAMES] + [f"muse/{m}" for m in MUSE_NAMES]
COMPOSED_FILES = [
    "tofu/base.yaml",
    *(f"tofu/method/{m}.yaml" for m in TOFU_NAMES),
    "muse/base.yaml",
    "muse/news.yaml",
    "muse/books.yaml",
    *(f"muse/method/{m}.yaml" for m in MUSE_NAMES),
]
TRAIN_PRESETS = ["demo.yaml", "tofu/finetune_target.yaml", "tofu/finetune_retain.yaml", *COMPOSED_PRESETS]
COMPLETE_PRESETS = TRAIN_PRESETS + EVAL_PRESETS


def _rel(path: Path) -> str:
    return path.relative_to(CONFIGS).as_posix()


def _command(preset: str) -> str:
    return "test" if preset in EVAL_PRESETS else "fit"


def _config_args(preset: str) -> list[str]:
    """``--config`` arguments of a preset: one file, or the files a composed preset is made of."""
    return preset_args(preset) if preset in COMPOSED_PRESETS else ["--config", str(CONFIGS / preset)]


def _print_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The config ``baldro-pl <args> --print_config`` prints (it prints and exits 0)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*args, "--print_config"])
    assert exc.value.code in (0, None), capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def _build(preset: str, *extra: str):
    """``BaldroCLI(args=..., run=False)``: model, datamodule and trainer instantiated; nothing is loaded or run."""
    return lightning_cli([*_config_args(preset), *extra], run=False)


def _callback(trainer, cls):
    found = [c for c in trainer.callbacks if isinstance(c, cls)]
    assert len(found) == 1, f"expected one {cls.__name__} in {trainer.callbacks}"
    return found[0]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when both ``args`` and pytest's own ``sys.argv`` are present."""
    monkeypatch.setattr(sys, "argv", ["baldro-pl"])


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in a scratch directory (the presets' relative paths, runs/, saves/, outputs/demo/, land there) on one
    thread: the tiny models gain nothing from more, and a second busy process on a 2-core machine would otherwise
    slow the OpenMP thread pool down tenfold."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------- every file
def test_configs_folder_holds_exactly_the_listed_presets() -> None:
    # configs/study/ holds `baldro-pl study` specs, not fit/test configs (tests/study/test_study_spec.py checks them)
    found = sorted(_rel(p) for p in CONFIGS.rglob("*.yaml") if not _rel(p).startswith("study/"))
    standalone = [p for p in COMPLETE_PRESETS if p not in COMPOSED_PRESETS]
    assert found == sorted(standalone + COMPOSED_FILES + STRATEGY_FILES)


@pytest.mark.parametrize("preset", COMPLETE_PRESETS)
def test_preset_parses_with_print_config(preset: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = _print_config([_command(preset), *_config_args(preset)], capsys)
    assert config["model"]["class_path"].startswith("baldro_pl.modules.")
    assert config["data"]["class_path"].startswith("baldro_pl.datamodules.")
    assert config["seed_everything"] == 0
    logger = config["trainer"]["logger"]
    assert logger["class_path"] == "lightning.pytorch.loggers.TensorBoardLogger"
    assert logger["init_args"]["name"] != "baldro", "each preset names its TensorBoard runs"
    callbacks = [c["class_path"] for c in config["trainer"]["callbacks"] or []]
    evaluation = [c for c in callbacks if c.endswith("Evaluation")]
    if evaluation:
        # `--trainer.callbacks.init_args.<arg>` edits the last callback: docs/presets.md relies on this order
        assert callbacks[-1] == evaluation[0]


@pytest.mark.parametrize("strategy", STRATEGY_FILES)
def test_strategy_file_composes_after_a_preset(strategy: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fit", *preset_args("tofu/npo_dv"), "-c", str(CONFIGS / strategy)]
    config = _print_config(args, capsys)
    trainer, model = config["trainer"], config["model"]["init_args"]
    assert trainer["devices"] == "auto"
    assert trainer["accelerator"] == "gpu"
    # the preset's method and per-device batch (the DRO set) survive the composition
    assert model["aggregator"]["class_path"] == "baldro_pl.objectives.BalDRODV"
    assert model["aggregator"]["init_args"]["emphasis"] == "hard"  # npo_dv.yaml: the paper's sign
    assert config["data"]["init_args"]["batch_size"] == 8
    assert trainer["accumulate_grad_batches"] == 4
    if strategy == "strategy/fsdp.yaml":
        assert trainer["strategy"]["class_path"] == "baldro_pl.strategies.HFFSDPStrategy"
        strategy_args = trainer["strategy"]["init_args"]
        assert strategy_args["state_dict_type"] == "sharded"
        assert strategy_args["activation_checkpointing_layers"] is True
        assert trainer["precision"] == "bf16-true"
        assert model["gradient_checkpointing"] is False  # FSDP checkpoints the layers itself
    else:
        assert trainer["strategy"]["class_path"] == "lightning.pytorch.strategies.DDPStrategy"
    assert trainer["gradient_clip_val"] == 1.0  # under FSDP too: the modules clip through FSDP's clip_grad_norm_


def test_ddp_strategy_file_instantiates(in_tmp: Path) -> None:
    cli = _build(
        "tofu/npo_dv", "--config", str(CONFIGS / "strategy/ddp.yaml"), "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
    )  # fmt: skip
    assert type(cli.trainer.strategy).__name__ == "DDPStrategy"


def test_fsdp_strategy_file_instantiates(in_tmp: Path) -> None:
    cli = _build(
        "tofu/npo_dv", "--config", str(CONFIGS / "strategy/fsdp.yaml"), "--trainer.accelerator", "cpu",
        "--trainer.devices", "1", "--trainer.precision", "32-true",
    )  # fmt: skip
    assert type(cli.trainer.strategy).__name__ == "HFFSDPStrategy"


# ---------------------------------------------------------------------------------------------------- TOFU presets
class Method(NamedTuple):
    """What a preset must build: the parity mapping plus the reference hyperparameters it picks."""

    forget: type
    forget_args: dict[str, float]
    aggregator: type
    aggregator_args: dict[str, Any]
    retain_per: str
    gamma: float
    alpha: float
    batch_size: int
    accumulation: int


DV_EASY = {"temperature": 1.0, "emphasis": "easy", "unit": "sample", "score": "loss", "scope": "global"}  # release DV
DV_HARD = {**DV_EASY, "emphasis": "hard"}  # the paper's DV
GROUP = {"ratio": 0.5, "subsample_retain": True, "seed": None, "scope": "global", "passes": "auto"}
NPO_ARGS, SIMNPO_ARGS, SATIMP_ARGS = {"beta": 0.1}, {"beta": 4.5, "delta": 0.0}, {"beta1": 5.0, "beta2": 1.0}
RMU_ARGS = {
    "layer": 7,
    "steering_coeff": 300.0,
    "trainable": [r"model\.layers\.(5|6|7)\.mlp\.down_proj\.weight"],
    "seed": 0,
}
TOFU_METHODS = {
    "npo": Method(NPO, NPO_ARGS, Mean, {}, "token", 1.0, 1.0, 8, 4),
    "npo_group": Method(NPO, NPO_ARGS, BalDROG, GROUP, "token", 1.0, 1.0, 8, 4),
    "npo_dv": Method(NPO, NPO_ARGS, BalDRODV, DV_HARD, "sequence", 1.0, 1.0, 8, 4),
    "npo_dv_release": Method(NPO, NPO_ARGS, BalDRODV, DV_EASY, "sequence", 1.0, 1.0, 8, 4),
    "npo_group_release": Method(NPO, NPO_ARGS, BalDROG, GROUP, "token", 1.0, 1.0, 8, 4),
    "simnpo": Method(SimNPO, SIMNPO_ARGS, Mean, {}, "token", 0.125, 1.0, 8, 4),
    "simnpo_group": Method(SimNPO, SIMNPO_ARGS, BalDROG, GROUP, "token", 0.125, 1.0, 8, 4),
    "simnpo_dv": Method(SimNPO, SIMNPO_ARGS, BalDRODV, DV_HARD, "token", 0.125, 1.0, 8, 4),
    "simnpo_dv_release": Method(SimNPO, SIMNPO_ARGS, BalDRODV, DV_EASY, "token", 0.125, 1.0, 8, 4),
    "satimp": Method(SatImp, SATIMP_ARGS, Mean, {}, "token", 0.1, 1.0, 4, 8),
    "satimp_group": Method(SatImp, SATIMP_ARGS, BalDROG, GROUP, "token", 0.1, 1.0, 4, 8),
    "satimp_dv": Method(SatImp, SATIMP_ARGS, BalDRODV, {**DV_HARD, "unit": "token"}, "sequence", 0.1, 1.0, 4, 8),
    "satimp_dv_release": Method(
        SatImp, SATIMP_ARGS, BalDRODV, {**DV_EASY, "unit": "token"}, "sequence", 0.1, 1.0, 4, 8
    ),
    "graddiff": Method(GradAscent, {}, Mean, {}, "token", 1.0, 1.0, 8, 4),
    "ceu": Method(CEU, {"ignore_first_n_answer_tokens": 1}, Mean, {}, "token", 1.0, 0.0, 8, 4),
    "undial": Method(UNDIAL, {"beta": 10.0, "positions": "reference"}, Mean, {}, "token", 1.0, 0.0, 8, 4),
    "idknll": Method(IdkNLL, {}, Mean, {}, "token", 1.0, 1.0, 8, 4),
    "idkdpo": Method(IdkDPO, {"beta": 0.1}, Mean, {}, "token", 1.0, 1.0, 8, 4),
    "rmu": Method(RMU, RMU_ARGS, Mean, {}, "embed_diff", 1.0, 1000.0, 8, 4),
}
# open-unlearning's UNDIAL.yaml learning rate; every other TOFU preset: 1e-5 (BalDRO's scripts, open-unlearning)
TOFU_LEARNING_RATES = {"undial": 1e-4}
# the BalDRO scripts of GroupNPO and DrNPO run forget01 only; their release presets use it (the rest: forget10)
TOFU_SPLITS = {
    "npo_dv_release": ("forget01", "retain99", "holdout01"),
    "npo_group_release": ("forget01", "retain99", "holdout01"),
}
MUSE_METHODS = {
    "news_npo": Method(NPO, NPO_ARGS, Mean, {}, "token", 1.0, 1.0, 4, 8),
    "news_npo_group": Method(NPO, NPO_ARGS, BalDROG, GROUP, "token", 1.0, 1.0, 4, 8),
    "news_npo_dv": Method(NPO, NPO_ARGS, BalDRODV, DV_HARD, "sequence", 1.0, 1.0, 4, 8),
    "news_npo_dv_release": Method(NPO, NPO_ARGS, BalDRODV, DV_EASY, "sequence", 1.0, 1.0, 4, 8),
    "books_npo_dv": Method(NPO, NPO_ARGS, BalDRODV, DV_HARD, "sequence", 1.0, 1.0, 4, 8),
    "books_npo_dv_release": Method(NPO, NPO_ARGS, BalDRODV, DV_EASY, "sequence", 1.0, 1.0, 4, 8),
}
for _corpus in ("news", "books"):
    # SimNPO: SimNPO.yaml's beta, delta, gamma; SatImp: gamma 1.0, what every MUSE SatImp script passes (TOFU: 0.1)
    MUSE_METHODS |= {
        f"{_corpus}_simnpo": Method(SimNPO, SIMNPO_ARGS, Mean, {}, "token", 0.125, 1.0, 4, 8),
        f"{_corpus}_simnpo_group": Method(SimNPO, SIMNPO_ARGS, BalDROG, GROUP, "token", 0.125, 1.0, 4, 8),
        f"{_corpus}_simnpo_dv": Method(SimNPO, SIMNPO_ARGS, BalDRODV, DV_HARD, "token", 0.125, 1.0, 4, 8),
        f"{_corpus}_simnpo_dv_release": Method(SimNPO, SIMNPO_ARGS, BalDRODV, DV_EASY, "token", 0.125, 1.0, 4, 8),
        f"{_corpus}_satimp": Method(SatImp, SATIMP_ARGS, Mean, {}, "token", 1.0, 1.0, 4, 8),
        f"{_corpus}_satimp_group": Method(SatImp, SATIMP_ARGS, BalDROG, GROUP, "token", 1.0, 1.0, 4, 8),
        f"{_corpus}_satimp_dv": Method(
            SatImp, SATIMP_ARGS, BalDRODV, {**DV_HARD, "unit": "token"}, "sequence", 1.0, 1.0, 4, 8
        ),
        f"{_corpus}_satimp_dv_release": Method(
            SatImp, SATIMP_ARGS, BalDRODV, {**DV_EASY, "unit": "token"}, "sequence", 1.0, 1.0, 4, 8
        ),
        # open-unlearning's UNDIAL MUSE run (community/methods/UNDIAL/run.sh): batch 4 x 4, alpha 0
        f"{_corpus}_undial": Method(
            UNDIAL, {"beta": 10.0, "positions": "reference"}, Mean, {}, "token", 1.0, 0.0, 4, 4
        ),
    }
# the MUSE experiment's lr 1e-5 (UNDIAL's run takes it); every other MUSE preset: 5e-5
MUSE_LEARNING_RATES = {"news_undial": 1e-5, "books_undial": 1e-5}


def _check_objective(module: UnlearningModule, method: Method) -> None:
    objective = module.objective
    assert type(objective.forget_loss) is method.forget
    assert {k: getattr(objective.forget_loss, k) for k in method.forget_args} == method.forget_args
    assert type(objective.aggregator) is method.aggregator
    assert {k: getattr(objective.aggregator, k) for k in method.aggregator_args} == method.aggregator_args
    if method.retain_per == "embed_diff":
        assert type(objective.retain_loss) is EmbedDiff
    else:
        assert type(objective.retain_loss) is NLL
        assert objective.retain_loss.per == method.retain_per
    assert (objective.gamma, objective.alpha) == (method.gamma, method.alpha)


def _check_checkpoints(trainer, best: bool) -> None:
    """A training preset's checkpoints and evaluation cadence (docs/presets.md, "Checkpoints and evaluation cadence").

    Lightning's validation loop is off (the Evaluation callback is the evaluation); one full ``last.ckpt``, written at
    the end and on an interruption; with ``best``, a weights-only ``best.ckpt`` ranked by forget quality.
    """
    assert (trainer.limit_val_batches, trainer.num_sanity_val_steps) == (0, 0)
    (resume,) = [c for c in trainer.callbacks if type(c) is ModelCheckpoint]
    assert (resume.save_last, resume.save_top_k, resume.save_on_exception) == ("link", 0, True)
    assert resume.save_weights_only is False  # resumable: optimiser state and loop position
    found = [c for c in trainer.callbacks if isinstance(c, BestCheckpoint)]
    assert len(found) == int(best)
    if best:
        assert (found[0].monitor, found[0].mode, found[0].save_weights_only) == (BEST_MONITOR, "max", True)


def _check_reference_training(cli, method: Method) -> None:
    """Settings every 7B preset shares: pure bf16 with fp32 Adam moments, one device, HF's gradient clipping."""
    module, trainer = cli.model, cli.trainer
    assert module.pad_token == "</s>"
    assert module.optimizer_state_dtype == "float32"
    assert module.gradient_checkpointing is True
    assert trainer.precision == "bf16-true"
    assert trainer.num_devices == 1
    assert trainer.gradient_clip_val == 1.0
    assert trainer.max_epochs == 10
    assert cli.datamodule.batch_size == method.batch_size
    assert cli.datamodule.retain_batch_size == method.batch_size
    assert trainer.accumulate_grad_batches == method.accumulation
    # the reference runs' effective batch (UNDIAL's MUSE run: 16, as its README asks)
    assert method.batch_size * method.accumulation == (16 if method.forget is UNDIAL and method.batch_size == 4 else 32)
    _check_checkpoints(trainer, best=isinstance(_callback(trainer, Evaluation).suite, TOFUSuite))
    _callback(trainer, HFExport)


@pytest.mark.parametrize("name", list(TOFU_METHODS))
def test_tofu_unlearning_preset_builds_the_parity_mapping(name: str, in_tmp: Path) -> None:
    method = TOFU_METHODS[name]
    cli = _build(f"tofu/{name}")
    assert isinstance(cli.model, UnlearningModule)
    assert cli.model.model_source == TOFU_TARGET  # a hub name: resolved without the network, loaded later
    _check_objective(cli.model, method)
    _check_reference_training(cli, method)
    assert cli.model.learning_rate == TOFU_LEARNING_RATES.get(name, 1e-5)
    assert (cli.model.weight_decay, cli.model.warmup_epochs, cli.model.lr_schedule) == (0.01, 1.0, "linear")
    data = cli.datamodule
    assert isinstance(data, TOFUDataModule)
    splits = TOFU_SPLITS.get(name, ("forget10", "retain90", "holdout10"))
    assert (data.forget_split, data.retain_split, data.holdout_split) == splits
    assert data.max_length == 512
    assert data.tokenizer_source == TOFU_TARGET  # linked from the model
    assert data.pad_token == "</s>"  # linked from the model
    evaluation = _callback(cli.trainer, Evaluation)
    suite = evaluation.suite
    assert isinstance(suite, TOFUSuite)
    assert suite.retain_logs_path == TOFU_RETAIN_LOG.replace("retain90", splits[1])  # the split's retain model
    assert suite.max_new_tokens == 200
    assert evaluation.eval_on_start is name.startswith("npo")  # as the reference scripts set it
    assert {"forget_quality", "model_utility"} <= set(suite.requested_metrics)  # what BalDRO's eval config reports
    assert set(suite.requested_metrics) <= {*TOFU_METRICS, "forget_balance"}  # known names ("forget_balance": an alias)
    logger = cli.trainer.logger
    assert isinstance(logger, TensorBoardLogger)
    assert logger.name == f"tofu_{name}"


@pytest.mark.parametrize("name", list(MUSE_METHODS))
def test_muse_unlearning_preset_builds_the_parity_mapping(name: str, in_tmp: Path) -> None:
    method = MUSE_METHODS[name]
    split = "News" if name.startswith("news") else "Books"
    cli = _build(f"muse/{name}")
    assert cli.model.model_source == f"muse-bench/MUSE-{split}_target"
    _check_objective(cli.model, method)
    _check_reference_training(cli, method)
    assert cli.model.learning_rate == MUSE_LEARNING_RATES.get(name, 5e-5)
    assert (cli.model.weight_decay, cli.model.warmup_epochs, cli.model.lr_schedule) == (0.0, 0.0, "constant")
    data = cli.datamodule
    assert isinstance(data, MUSEDataModule)
    assert (data.corpus, data.forget_file, data.retain_file, data.max_length) == (
        split.lower(),
        "raw/forget.json",
        "raw/retain1.json",
        2048,
    )
    evaluation = _callback(cli.trainer, Evaluation)
    suite = evaluation.suite
    assert isinstance(suite, MUSESuite)
    assert cli.trainer.limit_val_batches == 0  # the MUSE Evaluation is the per-epoch evaluation
    assert suite.retain_logs_path == f"saves/eval/muse_Llama-2-7b-hf_{split}_retrain/MUSE_EVAL.json"
    headline = {"forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "privleak"}
    assert set(suite.requested_metrics) == headline
    assert headline <= set(MUSE_METRICS)


# What each composed preset resolves to (base + method, as the CLI parses it), written out as literals: the values of
# the single-file presets the composition replaced (configs/tofu/<name>.yaml, configs/muse/<name>.yaml before issue 11).
_TOFU_COMMON = {
    "seed_everything": 0, "trainer.max_epochs": 10, "trainer.max_steps": -1, "trainer.accumulate_grad_batches": 4,
    "trainer.precision": "bf16-true", "trainer.gradient_clip_val": 1.0, "model.init_args.learning_rate": 1e-5,
    "model.init_args.weight_decay": 0.01, "model.init_args.warmup_epochs": 1.0, "model.init_args.lr_schedule": "linear",
    "model.init_args.schedule": "hf_trainer", "model.init_args.optimizer_state_dtype": "float32",
    "model.init_args.model": TOFU_TARGET, "data.init_args.batch_size": 8, "data.init_args.eval_batch_size": 32,
    "data.init_args.forget_split": "forget10", "data.init_args.max_length": 512, "data.init_args.seed": 0,
    "data.init_args.pairing": "random", "evaluation.eval_on_start": False, "evaluation.every_n_epochs": 1,
    "trainer.limit_val_batches": 0, "trainer.num_sanity_val_steps": 0,
    "evaluation.retain_logs_path": TOFU_RETAIN_LOG, "evaluation.max_new_tokens": 200, "evaluation.batch_size": 32,
    "model.init_args.alpha": 1.0,
}  # fmt: skip
_NPO = {
    "forget": ("baldro_pl.objectives.NPO", {"beta": 0.1}),
    "model.init_args.gamma": 1.0,
    "evaluation.eval_on_start": True,
}
_SIMNPO = {"forget": ("baldro_pl.objectives.SimNPO", {"beta": 4.5, "delta": 0.0}), "model.init_args.gamma": 0.125}
_SATIMP = {
    "forget": ("baldro_pl.objectives.SatImp", {"beta1": 5.0, "beta2": 1.0}), "model.init_args.gamma": 0.1,
    "data.init_args.batch_size": 4, "trainer.accumulate_grad_batches": 8,
}  # fmt: skip
_MEAN = {"aggregator": ("baldro_pl.objectives.Mean", None)}
_GROUP = {"aggregator": ("baldro_pl.objectives.BalDROG", GROUP)}
_FORGET01 = {
    "data.init_args.forget_split": "forget01",
    "evaluation.retain_logs_path": "saves/eval/tofu_Llama-2-7b-chat-hf_retain99/TOFU_EVAL.json",
}


def _dv(emphasis: str, unit: str = "sample") -> dict[str, Any]:
    args = {"temperature": 1.0, "emphasis": emphasis, "unit": unit, "score": "loss", "scope": "global"}
    return {"aggregator": ("baldro_pl.objectives.BalDRODV", args)}


_TOKEN, _SEQUENCE = {"retain_per": "token"}, {"retain_per": "sequence"}
RESOLVED = {
    "tofu/npo": {**_TOFU_COMMON, **_NPO, **_MEAN, **_TOKEN},
    "tofu/npo_group": {**_TOFU_COMMON, **_NPO, **_GROUP, **_TOKEN},
    "tofu/npo_dv": {**_TOFU_COMMON, **_NPO, **_dv("hard"), **_SEQUENCE},
    "tofu/npo_dv_release": {**_TOFU_COMMON, **_NPO, **_dv("easy"), **_SEQUENCE, **_FORGET01},
    "tofu/npo_group_release": {**_TOFU_COMMON, **_NPO, **_GROUP, **_TOKEN, **_FORGET01},
    "tofu/simnpo": {**_TOFU_COMMON, **_SIMNPO, **_MEAN, **_TOKEN},
    "tofu/simnpo_group": {**_TOFU_COMMON, **_SIMNPO, **_GROUP, **_TOKEN},
    "tofu/simnpo_dv": {**_TOFU_COMMON, **_SIMNPO, **_dv("hard"), **_TOKEN},
    "tofu/simnpo_dv_release": {**_TOFU_COMMON, **_SIMNPO, **_dv("easy"), **_TOKEN},
    "tofu/satimp": {**_TOFU_COMMON, **_SATIMP, **_MEAN, **_TOKEN},
    "tofu/satimp_group": {**_TOFU_COMMON, **_SATIMP, **_GROUP, **_TOKEN},
    "tofu/satimp_dv": {**_TOFU_COMMON, **_SATIMP, **_dv("hard", "token"), **_SEQUENCE},
    "tofu/satimp_dv_release": {**_TOFU_COMMON, **_SATIMP, **_dv("easy", "token"), **_SEQUENCE},
    "tofu/graddiff": {
        **_TOFU_COMMON, "forget": ("baldro_pl.objectives.GradAscent", None), "model.init_args.gamma": 1.0,
        **_MEAN, **_TOKEN,
    },
    "tofu/ceu": {
        **_TOFU_COMMON, "forget": ("baldro_pl.objectives.CEU", {"ignore_first_n_answer_tokens": 1}),
        "model.init_args.gamma": 1.0, "model.init_args.alpha": 0.0, **_MEAN, **_TOKEN,
    },
    "tofu/undial": {
        **_TOFU_COMMON, "forget": ("baldro_pl.objectives.UNDIAL", {"beta": 10.0, "positions": "reference"}),
        "model.init_args.gamma": 1.0, "model.init_args.alpha": 0.0, "model.init_args.learning_rate": 1e-4,
        **_MEAN, **_TOKEN,
    },
    "tofu/idknll": {
        **_TOFU_COMMON, "forget": ("baldro_pl.objectives.IdkNLL", None), "model.init_args.gamma": 1.0,
        "data.init_args.alternate_answers": "data/idontknow.jsonl", **_MEAN, **_TOKEN,
    },
    "tofu/rmu": {
        **_TOFU_COMMON, "forget": ("baldro_pl.objectives.RMU", RMU_ARGS), "model.init_args.gamma": 1.0,
        "model.init_args.alpha": 1000.0, **_MEAN, "retain_per": "embed_diff",
    },
    "tofu/idkdpo": {
        **_TOFU_COMMON, "forget": ("baldro_pl.objectives.IdkDPO", {"beta": 0.1}), "model.init_args.gamma": 1.0,
        "data.init_args.alternate_answers": "data/idontknow.jsonl", **_MEAN, **_TOKEN,
    },
}  # fmt: skip
_MUSE_COMMON = {
    **{k: v for k, v in _TOFU_COMMON.items() if k.startswith(("seed", "trainer.", "evaluation.every"))},
    "trainer.accumulate_grad_batches": 8, "trainer.limit_val_batches": 0, "model.init_args.learning_rate": 5e-5,
    "model.init_args.weight_decay": 0.0, "model.init_args.warmup_epochs": 0.0,
    "model.init_args.lr_schedule": "constant",
    "model.init_args.schedule": "hf_trainer", "model.init_args.optimizer_state_dtype": "float32",
    "model.init_args.gamma": 1.0, "model.init_args.alpha": 1.0, "data.init_args.batch_size": 4,
    "data.init_args.eval_batch_size": 16, "data.init_args.max_length": 2048, "data.init_args.seed": 0,
    "data.init_args.forget_file": "raw/forget.json", "data.init_args.retain_file": "raw/retain1.json",
    "evaluation.eval_on_start": False, "forget": ("baldro_pl.objectives.NPO", {"beta": 0.1}),
}  # fmt: skip
for _corpus, _split in (("news", "News"), ("books", "Books")):
    _MUSE_CORPUS = {
        **_MUSE_COMMON, "data.init_args.corpus": _corpus, "model.init_args.model": f"muse-bench/MUSE-{_split}_target",
        "evaluation.retain_logs_path": f"saves/eval/muse_Llama-2-7b-hf_{_split}_retrain/MUSE_EVAL.json",
    }  # fmt: skip
    RESOLVED[f"muse/{_corpus}_npo_dv"] = {**_MUSE_CORPUS, **_dv("hard"), **_SEQUENCE}
    RESOLVED[f"muse/{_corpus}_npo_dv_release"] = {**_MUSE_CORPUS, **_dv("easy"), **_SEQUENCE}
    if _corpus == "news":
        RESOLVED["muse/news_npo"] = {**_MUSE_CORPUS, **_MEAN, **_TOKEN}
        RESOLVED["muse/news_npo_group"] = {**_MUSE_CORPUS, **_GROUP, **_TOKEN}
    # SimNPO and SatImp (new with issue 12, not replacing a single-file preset): the MUSE recipe with their own losses
    _MUSE_SIMNPO = {**_MUSE_CORPUS, **_SIMNPO}
    _MUSE_SATIMP = {**_MUSE_CORPUS, "forget": _SATIMP["forget"], "model.init_args.gamma": 1.0}
    RESOLVED[f"muse/{_corpus}_simnpo"] = {**_MUSE_SIMNPO, **_MEAN, **_TOKEN}
    RESOLVED[f"muse/{_corpus}_simnpo_group"] = {**_MUSE_SIMNPO, **_GROUP, **_TOKEN}
    RESOLVED[f"muse/{_corpus}_simnpo_dv"] = {**_MUSE_SIMNPO, **_dv("hard"), **_TOKEN}
    RESOLVED[f"muse/{_corpus}_simnpo_dv_release"] = {**_MUSE_SIMNPO, **_dv("easy"), **_TOKEN}
    RESOLVED[f"muse/{_corpus}_satimp"] = {**_MUSE_SATIMP, **_MEAN, **_TOKEN}
    RESOLVED[f"muse/{_corpus}_satimp_group"] = {**_MUSE_SATIMP, **_GROUP, **_TOKEN}
    RESOLVED[f"muse/{_corpus}_satimp_dv"] = {**_MUSE_SATIMP, **_dv("hard", "token"), **_SEQUENCE}
    RESOLVED[f"muse/{_corpus}_satimp_dv_release"] = {**_MUSE_SATIMP, **_dv("easy", "token"), **_SEQUENCE}
    RESOLVED[f"muse/{_corpus}_undial"] = {
        **_MUSE_CORPUS, "forget": ("baldro_pl.objectives.UNDIAL", {"beta": 10.0, "positions": "reference"}),
        **_MEAN, **_TOKEN, "model.init_args.alpha": 0.0, "model.init_args.learning_rate": 1e-5,
        "trainer.accumulate_grad_batches": 4,
    }  # fmt: skip


def _resolved(config: dict[str, Any], key: str) -> Any:
    model = config["model"]["init_args"]
    if key in ("forget", "aggregator"):
        part = model["forget_loss" if key == "forget" else key]
        return part["class_path"], part.get("init_args")
    if key == "retain_per":
        if model["retain_loss"]["class_path"] == "baldro_pl.objectives.EmbedDiff":
            return "embed_diff"
        assert model["retain_loss"]["class_path"] == "baldro_pl.objectives.NLL"
        return model["retain_loss"]["init_args"]["per"]
    if key.startswith("evaluation."):
        evaluation = config["trainer"]["callbacks"][-1]["init_args"]
        name = key.split(".", 1)[1]
        return evaluation[name] if name in evaluation else evaluation["suite"]["init_args"][name]
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def test_every_composed_preset_has_its_resolved_values() -> None:
    assert sorted(RESOLVED) == sorted(COMPOSED_PRESETS)


@pytest.mark.parametrize("preset", COMPOSED_PRESETS)
def test_composed_preset_resolves_to_the_values_of_the_file_it_replaced(
    preset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _print_config(["fit", *preset_args(preset)], capsys)
    expected = RESOLVED[preset]
    assert {key: _resolved(config, key) for key in expected} == expected
    assert config["trainer"]["logger"]["init_args"]["name"] == preset.replace("/", "_")
    callbacks = [c["class_path"] for c in config["trainer"]["callbacks"]]
    best = ["baldro_pl.callbacks.BestCheckpoint"] if preset.startswith("tofu/") else []  # MUSE: no single headline
    assert callbacks == [
        "lightning.pytorch.callbacks.ModelCheckpoint",
        *best,
        "baldro_pl.callbacks.HFExport",
        "baldro_pl.metrics.Evaluation",
    ]
    resume = config["trainer"]["callbacks"][0]["init_args"]
    assert (resume["save_last"], resume["save_top_k"], resume["save_on_exception"]) == ("link", 0, True)
    if best:
        assert config["trainer"]["callbacks"][1]["init_args"]["monitor"] == BEST_MONITOR


def _differing_values(a: Any, b: Any, path: str = "") -> set[str]:
    """Dotted paths of the leaves where two parsed YAML trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(_differing_values(a.get(k), b.get(k), f"{path}.{k}".lstrip(".")) for k in {*a, *b}))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return set().union(set(), *(_differing_values(x, y, f"{path}.{i}") for i, (x, y) in enumerate(zip(a, b))))
    return set() if a == b else {path}


@pytest.mark.parametrize(
    "preset", [f"tofu/method/{m}.yaml" for m in TOFU_METHODS] + [f"muse/method/{m}.yaml" for m in MUSE_METHODS]
)
def test_reference_dv_presets_say_that_hard_is_the_papers_form(preset: str) -> None:
    text = (CONFIGS / preset).read_text()
    if "emphasis: easy" in text:
        assert '"hard" is the paper' in text
        assert "reference code's sign" in text
    if "BalDRODV" not in text:
        return
    # *_dv.yaml: the paper's sign; *_dv_release.yaml: the release code's, saying that it reproduces it
    paper = preset.replace("_release.yaml", ".yaml")
    release = paper.replace(".yaml", "_release.yaml")
    assert (CONFIGS / paper).is_file() and (CONFIGS / release).is_file()
    if preset == release:
        assert "emphasis: easy" in text and "emphasis: hard" not in text
        assert "reproduces the release code" in text
        assert f"configs/{paper}" in text  # points at the paper's form
        # and the paper's form is this preset with the other sign (and, for DrNPO on TOFU, forget10 instead of forget01)
        differ = _differing_values(yaml.safe_load(text), yaml.safe_load((CONFIGS / paper).read_text()))
        allowed = {"model.init_args.aggregator.init_args.emphasis", "trainer.logger.init_args.name"}
        callbacks = yaml.safe_load(text).get("trainer", {}).get("callbacks") or [{}]
        allowed |= {"data.init_args.forget_split", f"trainer.callbacks.{len(callbacks) - 1}.init_args.suite"}
        suite = callbacks[-1].get("init_args", {}).get("suite", {})  # the evaluation callback
        assert set(suite.get("init_args", {})) <= {"retain_logs_path"}  # the suite differs in its reference log only
        assert "model.init_args.aggregator.init_args.emphasis" in differ
        assert differ <= allowed, differ - allowed
    else:
        assert "emphasis: hard" in text and "emphasis: easy" not in text
        assert "the paper's sign" in text
        assert f"configs/{release}" in text  # points at the release code's form


@pytest.mark.parametrize("preset", [f"muse/method/{m}.yaml" for m in MUSE_METHODS])
def test_muse_method_file_gives_the_source_of_every_number(preset: str) -> None:
    """Every number a MUSE method file sets carries its source in a comment (``# [S] ...``, ``# [T] ...``)."""
    import re

    for line in (CONFIGS / preset).read_text().splitlines():
        if re.match(r"^\s*[a-z_0-9]+: -?[0-9.]+(e-?[0-9]+)?\s*(#.*)?$", line):
            assert re.search(r"# .*\[[A-Z]\]", line), f"{preset}: no source for {line.strip()!r}"


@pytest.mark.parametrize(
    ("preset", "split"), [("tofu/finetune_target.yaml", "full"), ("tofu/finetune_retain.yaml", "retain90")]
)
def test_finetune_preset(preset: str, split: str, in_tmp: Path) -> None:
    cli = _build(preset)
    module, data = cli.model, cli.datamodule
    assert isinstance(module, FinetuneModule)
    assert module.model_source == "meta-llama/Llama-2-7b-chat-hf"
    assert module.output_dir == f"saves/finetune/tofu_Llama-2-7b-chat-hf_{split}"
    assert (module.learning_rate, module.weight_decay, module.warmup_epochs) == (1e-5, 0.01, 1.0)
    assert module.optimizer_state_dtype == "float32"
    assert isinstance(data, FinetuneDataModule)
    assert (data.train, data.train_config, data.batch_size) == ("locuslab/TOFU", split, 8)
    assert (cli.trainer.max_epochs, cli.trainer.accumulate_grad_batches) == (5, 4)
    assert cli.trainer.precision == "bf16-true"
    _check_checkpoints(cli.trainer, best=False)  # no evaluation during fine-tuning: nothing to rank by


@pytest.mark.parametrize("preset", EVAL_PRESETS)
def test_eval_preset_builds_a_plain_causal_lm(preset: str, in_tmp: Path) -> None:
    cli = _build(preset)
    assert type(cli.model) is CausalLMModule
    assert cli.model.pad_token == "</s>"
    assert cli.trainer.precision == "bf16-true"
    evaluation = _callback(cli.trainer, Evaluation)
    assert isinstance(evaluation.suite, TOFUSuite if preset.startswith("tofu") else MUSESuite)
    assert evaluation.on_test is True
    assert evaluation.suite.requested_metrics is None  # the full suite, as the shipped reference logs
    assert evaluation.suite.retain_logs_path.startswith("saves/eval/")


def test_demo_preset_is_laid_out_for_the_demo_command(capsys: pytest.CaptureFixture[str]) -> None:
    config = _print_config(["fit", "--config", str(CONFIGS / "demo.yaml")], capsys)
    model, data, trainer = config["model"]["init_args"], config["data"]["init_args"], config["trainer"]
    assert model["model"] == "outputs/demo/models/target"
    assert data["data_dir"] == "outputs/demo/data"
    assert model["aggregator"]["class_path"] == "baldro_pl.objectives.BalDRODV"
    assert model["aggregator"]["init_args"]["emphasis"] == "hard"  # the paper's form
    assert (trainer["accelerator"], trainer["precision"]) == ("cpu", "32-true")
    assert data["batch_size"] == 8
    assert trainer["logger"]["init_args"]["save_dir"] == "outputs/demo/runs"
    evaluation = trainer["callbacks"][-1]["init_args"]
    suite = evaluation["suite"]["init_args"]
    assert suite["retain_logs_path"] == "outputs/demo/eval/retain/TOFU_EVAL.json"
    assert suite["max_new_tokens"] == 32
    # `baldro-pl demo` reads this file (tests/test_demo_outputs.py): one evaluation, after the last epoch
    assert trainer["max_epochs"] == evaluation["every_n_epochs"]
    # the evaluation callback is the one evaluation; last.ckpt at the end, best.ckpt (weights only) after evaluations
    assert (trainer["limit_val_batches"], trainer["num_sanity_val_steps"]) == (0, 0)
    callbacks = [c["class_path"] for c in trainer["callbacks"]]
    assert callbacks[:2] == ["lightning.pytorch.callbacks.ModelCheckpoint", "baldro_pl.callbacks.BestCheckpoint"]
    assert trainer["callbacks"][0]["init_args"]["save_top_k"] == 0
    assert trainer["callbacks"][1]["init_args"]["monitor"] == BEST_MONITOR


# ---------------------------------------------------------------------------------------------------- the command
def test_console_script_help_lists_the_commands() -> None:
    script = Path(sys.executable).with_name("baldro-pl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "baldro_pl.cli"]
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for name in ("fit", "validate", "test", "demo", "summarize", "export"):
        assert f"  {name} " in done.stdout


def test_fit_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out
    assert "--print_config" in out


def _demo_fit_args(in_tmp: Path, base: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(CONFIGS / "demo.yaml"),
        "--model.init_args.model",
        str(base),  # `baldro-pl demo` would have fine-tuned models/target from it
        "--trainer.default_root_dir",
        str(in_tmp),
        "--trainer.enable_progress_bar",
        "false",
        # the last callback is the evaluation: no retain log in this test, a few cheap metrics, after epoch 0
        "--trainer.callbacks.init_args.suite.init_args.retain_logs_path",
        "null",
        "--trainer.callbacks.init_args.suite.init_args.metrics",
        "[forget_Q_A_Prob, forget_truth_ratio]",
        "--trainer.callbacks.init_args.every_n_epochs",
        "1",
        *extra,
    ]


def test_demo_preset_fits_through_the_cli(in_tmp: Path) -> None:
    from baldro_pl.demo import prepare_demo

    paths = prepare_demo(in_tmp / "outputs" / "demo")  # data/ and models/base/ where demo.yaml expects them
    code = main(_demo_fit_args(in_tmp, paths["base"], "--trainer.max_steps", "3"))
    assert code == 0
    log_dir = in_tmp / "outputs/demo/runs/unlearn_npo_dv/version_0"
    assert (log_dir / "config.yaml").is_file()
    versions = json.loads((log_dir / "versions.json").read_text())
    assert versions["torch"] and versions["lightning"]
    assert list(log_dir.glob("events.out.tfevents.*"))
    # one checkpoint, written at the end: a full copy (no epoch file to link to); no forget quality without a retain
    # log, so no best.ckpt
    checkpoints = log_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]
    assert not (checkpoints / "last.ckpt").is_symlink()
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3 and last["optimizer_states"]
    assert "val/forget_nll" not in _scalar_tags(log_dir)  # Lightning's validation loop is off
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["aggregator"]["init_args"]["emphasis"] == "hard"
    assert saved["trainer"]["max_steps"] == 3
    summary = json.loads((log_dir / "epoch_0" / "TOFU_SUMMARY.json").read_text())
    assert 0.0 <= summary["forget_Q_A_Prob"] <= 1.0
    assert math.isfinite(summary["forget_truth_ratio"])
    assert (log_dir / "epoch_0" / "TOFU_EVAL.json").is_file()
    assert (in_tmp / "outputs/demo/models/unlearned_npo_dv/config.json").is_file()  # HFExport


@pytest.mark.parametrize("name", ["npo_dv", "satimp_dv"])
def test_tofu_reference_preset_trains_a_step_on_cpu(name: str, in_tmp: Path) -> None:
    """The 7B preset as written (bf16-true, fp32 Adam moments, clipping, HF checkpointing, accumulation, per-epoch
    evaluation, export), with only the model, the data and the length of the run swapped for the demo's."""
    from baldro_pl.demo import prepare_demo

    paths = prepare_demo(in_tmp / "demo")
    code = main(
        [
            "fit",
            *preset_args(f"tofu/{name}"),
            "--model.init_args.model",
            str(paths["base"]),
            "--data.init_args.data_dir",
            str(paths["data"]),
            "--trainer.max_steps",
            "1",
            # Lightning's validation loop, off in the preset, back on as docs/presets.md says (one batch: the test)
            "--trainer.limit_val_batches",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.callbacks.init_args.suite.init_args.retain_logs_path",
            "null",
            "--trainer.callbacks.init_args.suite.init_args.metrics",
            "[forget_Q_A_Prob]",
            "--trainer.callbacks.init_args.eval_on_start",
            "false",
        ]
    )
    assert code == 0
    log_dir = in_tmp / f"runs/tofu_{name}/version_0"
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == "bf16-true"
    assert sorted(p.name for p in (log_dir / "checkpoints").iterdir()) == ["last.ckpt"]  # no retain log: no best
    summary = json.loads((log_dir / "epoch_0" / "TOFU_SUMMARY.json").read_text())
    assert 0.0 <= summary["forget_Q_A_Prob"] <= 1.0
    assert (log_dir / "hf_model" / "model.safetensors").is_file()
    assert "val/forget_nll" in _scalar_tags(log_dir)  # --trainer.limit_val_batches turned the loop back on


def test_tofu_eval_preset_runs_through_the_cli(in_tmp: Path) -> None:
    from baldro_pl.demo import prepare_demo

    paths = prepare_demo(in_tmp / "demo")
    metrics = "[forget_Q_A_Prob, forget_truth_ratio, forget_Q_A_ROUGE, retain_Q_A_Prob, model_utility]"
    code = main(
        [
            "test",
            "--config",
            str(CONFIGS / "tofu/eval.yaml"),
            "--model.init_args.model",
            str(paths["base"]),
            "--data.init_args.data_dir",
            str(paths["data"]),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.callbacks.init_args.suite.init_args.retain_logs_path",
            "null",
            "--trainer.callbacks.init_args.suite.init_args.metrics",
            metrics,
            "--trainer.callbacks.init_args.suite.init_args.max_new_tokens",
            "8",
        ]
    )
    assert code == 0
    folder = in_tmp / "runs/tofu_eval/version_0/test"
    logs = json.loads((folder / "TOFU_EVAL.json").read_text())
    summary = json.loads((folder / "TOFU_SUMMARY.json").read_text())
    assert {"forget_Q_A_Prob", "forget_truth_ratio", "forget_Q_A_ROUGE", "model_utility"} <= set(logs)
    for name in ("forget_Q_A_Prob", "retain_Q_A_Prob", "forget_Q_A_ROUGE", "model_utility"):
        assert 0.0 <= summary[name] <= 1.0, name
    assert summary["forget_truth_ratio"] > 0.0
    assert "forget_quality" not in summary  # not requested (and there is no retain log to compute it from)
    assert (folder.parents[0] / "versions.json").is_file()


def test_muse_eval_preset_runs_through_the_cli(in_tmp: Path) -> None:
    from shared_data import shared_path

    from baldro_pl.demo import prepare_demo

    muse = shared_path("data", "muse")
    paths = prepare_demo(in_tmp / "demo")
    code = main(
        [
            "test",
            "--config",
            str(CONFIGS / "muse/eval_news.yaml"),
            "--model.init_args.model",
            str(paths["base"]),
            "--data.init_args.data_dir",
            str(muse),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.limit_test_batches",
            "1",
            "--trainer.callbacks.init_args.suite.init_args.retain_logs_path",
            "null",
            "--trainer.callbacks.init_args.suite.init_args.metrics",
            "[retain_knowmem_ROUGE]",
            "--trainer.callbacks.init_args.suite.init_args.max_new_tokens",
            "4",
        ]
    )
    assert code == 0
    summary = json.loads((in_tmp / "runs/muse_news_eval/version_0/test/MUSE_SUMMARY.json").read_text())
    assert 0.0 <= summary["retain_knowmem_ROUGE"] <= 1.0


def test_demo_preset_resumes_and_exports_through_the_cli(in_tmp: Path) -> None:
    from transformers import AutoModelForCausalLM

    from baldro_pl.demo import prepare_demo

    paths = prepare_demo(in_tmp / "outputs" / "demo")
    assert main(_demo_fit_args(in_tmp, paths["base"], "--trainer.max_steps", "3")) == 0
    first = in_tmp / "outputs/demo/runs/unlearn_npo_dv/version_0/checkpoints"
    assert (
        main(_demo_fit_args(in_tmp, paths["base"], "--trainer.max_steps", "6", "--ckpt_path", str(first / "last.ckpt")))
        == 0
    )
    second = in_tmp / "outputs/demo/runs/unlearn_npo_dv/version_1/checkpoints"
    resumed = torch.load(second / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 6  # continued from step 3, not restarted
    out = in_tmp / "exported"
    assert main(["export", str(second / "last.ckpt"), "--output", str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(in_tmp / "outputs/demo/models/unlearned_npo_dv").state_dict()
    for name, value in trained.items():
        assert torch.equal(exported[name], value), name


def _scalar_tags(log_dir: Path) -> set[str]:
    """The scalar tags of a run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_demo_preset_keeps_the_best_evaluated_epoch_weights_only_and_a_resumable_last(in_tmp: Path) -> None:
    """best.ckpt follows the evaluation's cadence and its forget quality; last.ckpt is the only full checkpoint."""
    from tofu_logs import write_tofu_log

    from baldro_pl.demo import prepare_demo

    paths = prepare_demo(in_tmp / "outputs" / "demo")
    metrics = ["forget_truth_ratio", "forget_Q_A_Prob"]  # what forget quality needs from the retain log
    retain_log = write_tofu_log(paths["base"], paths["data"], in_tmp / "retain" / "TOFU_EVAL.json", metrics)
    args = _demo_fit_args(in_tmp, paths["base"], "--trainer.max_epochs", "4")
    args += [
        "--trainer.callbacks.init_args.suite.init_args.retain_logs_path",
        str(retain_log),
        "--trainer.callbacks.init_args.suite.init_args.metrics",
        "[forget_truth_ratio, forget_Q_A_Prob, forget_quality]",
        "--trainer.callbacks.init_args.every_n_epochs",
        "2",  # epochs 1 and 3: the best checkpoint is considered there only
    ]
    assert main(args) == 0
    log_dir = in_tmp / "outputs/demo/runs/unlearn_npo_dv/version_0"
    assert sorted(p.name for p in log_dir.glob("epoch_*")) == ["epoch_1", "epoch_3"]
    checkpoints = log_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(checkpoints / "best.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 12 and last["optimizer_states"]  # 4 epochs of 3 steps, resumable
    assert "optimizer_states" not in best and "lr_schedulers" not in best  # weights only
    # the evaluated epoch of highest forget quality, as logged (float32 log10; the earlier one on a tie)
    quality = {}
    for epoch in (1, 3):
        summary = json.loads((log_dir / f"epoch_{epoch}" / "TOFU_SUMMARY.json").read_text())
        quality[epoch] = float(torch.tensor(math.log10(summary["forget_quality"])))
    assert best["epoch"] == max(quality, key=quality.get)
    same = all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())
    assert same is (best["epoch"] == 3)
    out = in_tmp / "best_hf"
    assert main(["export", str(checkpoints / "best.ckpt"), "--output", str(out)]) == 0  # a weights-only checkpoint
    assert (out / "config.json").is_file()


def _logged_steps(event_file: Path) -> set[int]:
    """The steps at which a TensorBoard events file holds ``train/*`` scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_file))
    events.Reload()
    return {e.step for tag in events.Tags()["scalars"] if tag.startswith("train/") for e in events.Scalars(tag)}


def test_ckpt_path_last_resumes_the_latest_run_in_its_own_folder(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10, problem 1: README's ``--ckpt_path last`` continues the run of the same logger name and version."""
    from baldro_pl.demo import prepare_demo

    paths = prepare_demo(in_tmp / "outputs" / "demo")
    capsys.readouterr()
    # nothing to resume yet: one line says so, and the run starts from scratch
    assert main(_demo_fit_args(in_tmp, paths["base"], "--trainer.max_steps", "3", "--ckpt_path", "last")) == 0
    runs = in_tmp / "outputs/demo/runs/unlearn_npo_dv"
    assert f"no checkpoint of run 'unlearn_npo_dv' under {Path('outputs/demo/runs/unlearn_npo_dv')}" in (
        capsys.readouterr().err
    )
    version = runs / "version_0"
    (first_events,) = version.glob("events.out.tfevents.*")
    assert _logged_steps(first_events) == {0, 1, 2}
    (runs / "version_1").mkdir()  # a later run that failed before its first checkpoint: skipped
    assert main(_demo_fit_args(in_tmp, paths["base"], "--trainer.max_steps", "6", "--ckpt_path", "last")) == 0
    assert f"resuming run 'unlearn_npo_dv' from {Path('outputs/demo/runs/unlearn_npo_dv/version_0')}" in (
        capsys.readouterr().err
    )
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]  # logged on into version_0
    resumed = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 6
    (second_events,) = set(version.glob("events.out.tfevents.*")) - {first_events}
    steps = _logged_steps(second_events)  # 3 more steps after step 3, not 6 from 0 (Lightning logs them as 4..6)
    assert len(steps) == 3 and min(steps) >= 3, steps


def test_ckpt_path_last_never_resumes_from_a_weights_only_best_checkpoint(tmp_path: Path) -> None:
    """A run killed before writing last.ckpt holds only best.ckpt (no optimiser state): nothing to resume from."""
    from baldro_pl.cli_lightning import _checkpoint_in

    folder = tmp_path / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "best.ckpt").write_bytes(b"weights")
    assert _checkpoint_in(tmp_path / "version_0") is None
    (folder / "epoch=0-step=3.ckpt").write_bytes(b"full")
    assert _checkpoint_in(tmp_path / "version_0") == folder / "epoch=0-step=3.ckpt"
    (folder / "last.ckpt").write_bytes(b"full")
    assert _checkpoint_in(tmp_path / "version_0") == folder / "last.ckpt"


def test_divergent_fit_stops_with_a_message_and_keeps_finite_checkpoints(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10, problem 2: at learning rate 1e3 the loss turns NaN; the run stops there, names the step and the last
    finite loss in one line (no traceback), exits 1, and writes no checkpoint of the failed step."""
    import re

    from baldro_pl.demo import prepare_demo

    paths = prepare_demo(in_tmp / "outputs" / "demo")
    capsys.readouterr()
    # a resumable checkpoint after every epoch (docs/presets.md: save_top_k 1 on the first callback, the demo's four);
    # with the preset's default (last.ckpt at the end only) a run that diverges leaves none
    every_epoch = in_tmp / "every_epoch.yaml"
    every_epoch.write_text("trainer:\n  callbacks: [{init_args: {save_top_k: 1}}, {}, {}, {}]\n")
    args = _demo_fit_args(in_tmp, paths["base"], "--trainer.max_steps", "9", "--model.init_args.learning_rate", "1e3")
    args[3:3] = ["--config", str(every_epoch)]  # after configs/demo.yaml, before the flags
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("baldro-pl fit:")]
    found = re.search(
        r"training loss is (nan|inf|-inf) at step (\d+) \(epoch \d+\); last finite loss \S+ at step", line
    )
    assert found, line
    step = int(found.group(2))
    checkpoints = in_tmp / "outputs/demo/runs/unlearn_npo_dv/version_0/checkpoints"
    saved = sorted(checkpoints.glob("*.ckpt")) if checkpoints.exists() else []
    if step < 3:  # diverged before the first checkpoint (end of epoch 0, step 3): none, not one of NaN weights
        assert saved == [], saved
    else:  # the last epoch-end checkpoint, finite; none of the failed step
        last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
        assert last["global_step"] == 3 * (step // 3)
        assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert not (in_tmp / "outputs/demo/models/unlearned_npo_dv").exists()  # no export of a failed run
