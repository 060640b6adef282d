"""The configs a study runs, and the hashes that name their folders.

They are the resolved unlearning config, one ``baldro-pl fit`` config per cell and the reference evaluations
(``baldro-pl test``) of the target and retain models.

The unlearning config files (+ ``unlearn.args``) are resolved once with ``baldro-pl fit ... --print_config`` (in
process): every default filled in, so that a cell's config is complete and its hash changes whenever anything that
shapes the run changes. Paths inside a cell's folder are written as :data:`CELL_DIR` while hashing (a cell's hash cannot
depend on its own folder), then replaced.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import io
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from baldro_pl.study.spec import Evaluation, Method, StudySpecError, import_class

CELL_DIR = "@@CELL_DIR@@"
EVALUATION_CLASS = "baldro_pl.metrics.Evaluation"
SUITE_CLASS = "baldro_pl.metrics.TOFUSuite"
EXPORT_CLASS = "baldro_pl.callbacks.HFExport"
CHECKPOINT_CLASS = "lightning.pytorch.callbacks.ModelCheckpoint"
REPORT_CLASS = "baldro_pl.study.callbacks.StudyCellReport"
REFERENCE_MODULE = "baldro_pl.modules.CausalLMModule"


def config_hash(config: Any, length: int = 12) -> str:
    """Short sha256 of the canonical JSON (sorted keys, no spaces) of ``config``."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def resolve_fit_config(configs: Sequence[str], args: Sequence[str], where: str = "unlearn") -> dict[str, Any]:
    """The complete config that ``baldro-pl fit -c <configs...> <args...>`` would run (``--print_config``).

    Raises:
        StudySpecError: the configs do not parse (the CLI's own message attached).
    """
    from baldro_pl.cli import main as cli_main

    argv = ["fit", *(a for c in configs for a in ("--config", c)), *args, "--print_config"]
    out, err = io.StringIO(), io.StringIO()
    saved_argv = sys.argv
    sys.argv = ["baldro-pl"]  # LightningCLI warns when both args and a foreign sys.argv are present
    code: Any = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli_main(argv)
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # the CLI raises many kinds; the spec field is what the user needs
        raise StudySpecError(f"{where}: `baldro-pl {' '.join(argv)}` fails: {exc}") from exc
    finally:
        sys.argv = saved_argv
    if code not in (0, None):
        lines = err.getvalue().strip().splitlines()
        first = next((i for i, line in enumerate(lines) if line.startswith("error:")), max(0, len(lines) - 8))
        tail = "\n".join(lines[first:])
        raise StudySpecError(f"{where}: `baldro-pl {' '.join(argv[:-1])}` does not parse:\n{tail}")
    import yaml

    config = yaml.safe_load(out.getvalue())
    if not isinstance(config, dict) or "model" not in config or "trainer" not in config:
        raise StudySpecError(f"{where}: `baldro-pl fit --print_config` printed no config")
    return config


def _class_of(block: Any) -> type | None:
    if not isinstance(block, Mapping) or not isinstance(block.get("class_path"), str):
        return None
    try:
        return import_class(block["class_path"], "class_path")
    except StudySpecError:
        return None


def _is(block: Any, class_path: str) -> bool:
    cls, target = _class_of(block), import_class(class_path, class_path)
    return cls is not None and issubclass(cls, target)


def check_unlearn_config(config: Mapping[str, Any]) -> None:
    """The resolved unlearning config must fit an ``UnlearningModule`` on a datamodule with evaluation rows.

    Raises:
        StudySpecError: naming ``unlearn``.
    """
    model = config.get("model")
    if not _is(model, "baldro_pl.modules.UnlearningModule"):
        got = model.get("class_path") if isinstance(model, Mapping) else model
        raise StudySpecError(f"unlearn: model.class_path must be baldro_pl.modules.UnlearningModule, got {got!r}")
    data = config.get("data")
    if not isinstance(data, Mapping) or not isinstance(data.get("init_args"), Mapping):
        raise StudySpecError("unlearn: the config has no data block (a TOFU-style datamodule, e.g. TOFUDataModule)")
    callbacks = config["trainer"].get("callbacks") or []
    found = [c for c in callbacks if _is(c, EVALUATION_CLASS)]
    if len(found) > 1:
        raise StudySpecError(f"unlearn: trainer.callbacks holds {len(found)} Evaluation callbacks; keep one")


def base_name(config: Mapping[str, Any], method: Method) -> str:
    """The table a method's rows go to: ``method.base``, else its forget loss's class name."""
    if method.base:
        return method.base
    block = method.blocks.get("forget_loss") or {}
    path = block.get("class_path") or config["model"]["init_args"]["forget_loss"]["class_path"]
    return str(path).rpartition(".")[2]


def _merge_block(base: Any, override: Mapping[str, Any]) -> dict[str, Any]:
    """A method's ``{class_path, init_args}``.

    It replaces the config's block, or (no class_path / the same one) updates its init_args.
    """
    base = dict(base) if isinstance(base, Mapping) else {}
    base_args = dict(base.get("init_args") or {})
    if override["class_path"] is None or override["class_path"] == base.get("class_path"):
        if not base.get("class_path"):
            raise StudySpecError("grid.methods: a block gives only init_args but the unlearning config has no class")
        return {"class_path": base["class_path"], "init_args": {**base_args, **override["init_args"]}}
    return {"class_path": override["class_path"], "init_args": dict(override["init_args"])}


def _evaluation_block(callbacks: list[dict[str, Any]]) -> dict[str, Any]:
    for callback in callbacks:
        if _is(callback, EVALUATION_CLASS):
            return callback
    return {"class_path": EVALUATION_CLASS, "init_args": {}}


def _evaluation_callback(block: Mapping[str, Any], *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation callback of ``block`` with ``overrides`` applied in order.

    An override names a setting of the callback (``every_n_epochs``, ``output_dir``...) or of its suite (``metrics``,
    ``retain_logs_path``...); each goes where it is declared.
    """
    from baldro_pl.metrics import Evaluation

    callback_keys = set(inspect.signature(Evaluation.__init__).parameters) - {"self", "suite"}
    init = copy.deepcopy(dict(block.get("init_args") or {}))
    suite = init.pop("suite", None) or {"class_path": SUITE_CLASS, "init_args": {}}
    suite_args = dict(suite.get("init_args") or {})
    for override in overrides:
        for key, value in override.items():
            (init if key in callback_keys else suite_args)[key] = value
    return {"class_path": EVALUATION_CLASS, "init_args": {"suite": {**suite, "init_args": suite_args}, **init}}


def _set_logger(trainer: dict[str, Any], save_dir: str) -> None:
    logger = trainer.get("logger")
    if isinstance(logger, Mapping) and isinstance(logger.get("init_args"), Mapping):
        init = dict(logger["init_args"])
        for key, value in (("save_dir", save_dir), ("name", ""), ("version", "run")):
            if key in init:
                init[key] = value
        trainer["logger"] = {**logger, "init_args": init}
    elif logger is None or logger is True:
        trainer["logger"] = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": save_dir, "name": "", "version": "run", "default_hp_metric": False},
        }


def cell_config(
    base: Mapping[str, Any],
    method: Method,
    *,
    learning_rate: float,
    epochs: int,
    seed: int,
    target: str,
    retain_log: str,
    evaluation: Evaluation,
    export_model: bool,
) -> dict[str, Any]:
    """One cell's complete ``baldro-pl fit`` config, with :data:`CELL_DIR` where its folder goes.

    The cell: the target model, the method's blocks and model arguments, the learning rate, ``trainer.max_epochs``,
    ``seed_everything`` and the datamodule's ``seed`` (pairing and order), the TOFU evaluation every
    ``evaluation.every_n_epochs`` epochs against the retain log, written to ``<cell>/eval/epoch_<n>/``; the logger,
    checkpoints and the exported model (``<cell>/hf_model``) inside the cell; :class:`StudyCellReport` last.
    """
    config = copy.deepcopy(dict(base))
    config["seed_everything"] = seed
    data_args = config["data"]["init_args"]
    if "seed" in data_args:
        data_args["seed"] = seed
    model_args = config["model"]["init_args"]
    for kind, block in method.blocks.items():
        model_args[kind] = _merge_block(model_args.get(kind), block)
    model_args.update(copy.deepcopy(method.model_args))
    model_args["model"] = target
    model_args["learning_rate"] = learning_rate

    trainer = config["trainer"]
    trainer["max_epochs"] = epochs
    trainer["default_root_dir"] = CELL_DIR
    _set_logger(trainer, CELL_DIR)
    callbacks = [copy.deepcopy(dict(c)) for c in (trainer.get("callbacks") or [])]
    evaluation_block = _evaluation_block(callbacks)
    kept = []
    for callback in callbacks:
        if callback is evaluation_block or _is(callback, EXPORT_CLASS) or _is(callback, REPORT_CLASS):
            continue
        if _is(callback, CHECKPOINT_CLASS):
            callback["init_args"] = {**(callback.get("init_args") or {}), "dirpath": f"{CELL_DIR}/checkpoints"}
        kept.append(callback)
    # no evaluation before the first step unless the spec asks for one: the target model's row is that evaluation
    runner_args = {
        "retain_logs_path": retain_log,
        "every_n_epochs": evaluation.every_n_epochs,
        "output_dir": f"{CELL_DIR}/eval",
        "write_logs": True,
    }
    evaluation_callback = _evaluation_callback(
        evaluation_block, {"eval_on_start": False}, evaluation.init_args, runner_args
    )
    if export_model:
        kept.append({"class_path": EXPORT_CLASS, "init_args": {"dirpath": f"{CELL_DIR}/hf_model"}})
    kept.append(evaluation_callback)
    kept.append({"class_path": REPORT_CLASS, "init_args": {"path": f"{CELL_DIR}/cell_report.json"}})
    trainer["callbacks"] = kept
    return config


def reference_config(
    base: Mapping[str, Any], *, model: str, retain_log: str | None, evaluation: Evaluation
) -> dict[str, Any]:
    """The ``baldro-pl test`` config that evaluates a model (target or retain) as the cells are evaluated.

    The unlearning config's datamodule, precision and TOFU evaluation settings, with the model as a plain
    ``CausalLMModule`` (the loading arguments it shares with the unlearning module kept) and a one-batch test loop
    (the evaluation runs in ``on_test_epoch_end``); written under :data:`CELL_DIR`/eval/test/.
    """
    from baldro_pl.modules import CausalLMModule

    config = copy.deepcopy(dict(base))
    accepted = set(inspect.signature(CausalLMModule.__init__).parameters) - {"self"}
    init = {k: v for k, v in config["model"]["init_args"].items() if k in accepted}
    init["model"] = model
    config["model"] = {"class_path": REFERENCE_MODULE, "init_args": init}
    trainer = config["trainer"]
    trainer["default_root_dir"] = CELL_DIR
    trainer["limit_test_batches"] = 1
    _set_logger(trainer, CELL_DIR)
    evaluation_block = _evaluation_block(list(trainer.get("callbacks") or []))
    runner_args = {
        "retain_logs_path": retain_log,
        "output_dir": f"{CELL_DIR}/eval",
        "write_logs": True,
        "eval_on_start": False,
        "every_n_epochs": None,
        "on_test": True,
    }
    trainer["callbacks"] = [_evaluation_callback(evaluation_block, evaluation.init_args, runner_args)]
    return config


def with_cell_dir(config: Any, cell_dir: str) -> Any:
    """``config`` with :data:`CELL_DIR` replaced by ``cell_dir`` in every string."""
    if isinstance(config, str):
        return config.replace(CELL_DIR, cell_dir)
    if isinstance(config, Mapping):
        return {k: with_cell_dir(v, cell_dir) for k, v in config.items()}
    if isinstance(config, list | tuple):
        return [with_cell_dir(v, cell_dir) for v in config]
    return config
