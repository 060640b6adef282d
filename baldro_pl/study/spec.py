"""The study spec: parsing and validation of the YAML that ``baldro-pl study`` runs (schema in :mod:`baldro_pl.study`).

Validation happens in two stages, both before any fine-tune, evaluation or fit:

1. :func:`parse_spec` checks the structure (keys, types, the grid, the method classes: each ``class_path`` is imported
   and must be a class of the right kind, built once with its ``init_args``). It touches no file except for importing
   classes, so it runs before ``prepare``.
2. :func:`check_paths` checks the files and folders the spec names, after ``prepare`` ran and ``${prepare.<key>}`` was
   substituted (:func:`interpolate`).

Every error is a :class:`StudySpecError` whose message starts with the dotted name of the field
(``grid.methods[1].aggregator.class_path: ...``).
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP_LEVEL_KEYS = (
    "title",
    "output_dir",
    "prepare",
    "target",
    "retain",
    "unlearn",
    "evaluation",
    "grid",
    "workers",
    "keep_checkpoints",
    "export_models",
)
MODEL_KEYS = ("path", "finetune", "args")
RETAIN_KEYS = (*MODEL_KEYS, "log")
UNLEARN_KEYS = ("configs", "args")
EVALUATION_KEYS = ("every_n_epochs", "init_args")
GRID_KEYS = ("methods", "learning_rates", "epochs", "seeds")
METHOD_KEYS = (
    "name",
    "base",
    "forget_loss",
    "aggregator",
    "retain_loss",
    "gamma",
    "alpha",
    "model_args",
    "learning_rates",
    "epochs",
)
#: method block -> (module, base class name) its ``class_path`` must subclass.
OBJECTIVE_KINDS = {
    "forget_loss": ("baldro_pl.objectives", "ForgetLoss"),
    "aggregator": ("baldro_pl.objectives", "Aggregator"),
    "retain_loss": ("baldro_pl.objectives", "RetainLoss"),
}
#: Evaluation (and TOFUSuite) arguments the runner sets itself (per cell / reference evaluation).
RUNNER_EVALUATION_ARGS = ("retain_logs_path", "output_dir", "every_n_epochs", "write_logs")
_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class StudySpecError(ValueError):
    """A study spec that cannot run; the message starts with the field it is about."""


@dataclass(frozen=True)
class ModelSource:
    """Where the target or retain model comes from.

    Attributes:
        role: ``"target"`` or ``"retain"`` (the spec field).
        path: the model directory (a Hugging Face directory with ``config.json``); None: ``<output_dir>/models/<role>``
            when ``finetune`` is given.
        finetune: ``baldro-pl fit`` configs (files, or inline mappings) that make the model when ``path`` holds none.
        args: extra command-line arguments of that fit.
        log: retain only: the retain model's ``TOFU_EVAL.json`` (used as is when it exists).
    """

    role: str
    path: str | None = None
    finetune: tuple[str | dict[str, Any], ...] = ()
    args: tuple[str, ...] = ()
    log: str | None = None

    @property
    def has_model(self) -> bool:
        """Whether the spec names a model (a directory or a fine-tune that makes one)."""
        return self.path is not None or bool(self.finetune)


@dataclass(frozen=True)
class Method:
    """One row of ``grid.methods``: what a cell changes in the unlearning config's ``model.init_args``.

    Attributes:
        name: the label in tables and plots (unique).
        base: the table the method goes to (None: the forget loss's class name, known once the config is resolved).
        blocks: ``forget_loss`` / ``aggregator`` / ``retain_loss`` as ``{"class_path": full path, "init_args": {...}}``
            (``class_path`` None: only ``init_args`` given, merged into the unlearning config's block).
        model_args: other ``model.init_args`` (``gamma``, ``alpha`` and ``model_args`` of the spec).
        learning_rates / epochs: this method's own lists (None: the grid's).
    """

    name: str
    base: str | None
    blocks: dict[str, dict[str, Any]]
    model_args: dict[str, Any]
    learning_rates: tuple[float, ...] | None = None
    epochs: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Evaluation:
    """The cells' TOFU evaluation: how often, and overrides of the config's ``Evaluation`` / ``TOFUSuite`` arguments."""

    every_n_epochs: int = 1
    init_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec (see :mod:`baldro_pl.study` for the YAML)."""

    output_dir: Path
    target: ModelSource
    retain: ModelSource
    unlearn_configs: tuple[str | dict[str, Any], ...]
    unlearn_args: tuple[str, ...]
    methods: tuple[Method, ...]
    seeds: tuple[int, ...]
    learning_rates: tuple[float, ...] | None = None
    epochs: tuple[int, ...] | None = None
    evaluation: Evaluation = field(default_factory=Evaluation)
    prepare: tuple[str, dict[str, Any]] | None = None
    title: str | None = None
    workers: int = 1
    keep_checkpoints: bool = False
    export_models: bool = True
    raw: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- loading
def load_spec(spec: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The raw spec: a YAML file read, or a mapping copied."""
    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec))
    import yaml

    path = Path(spec)
    if not path.is_file():
        raise StudySpecError(f"spec: no such file {str(path)!r}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StudySpecError(f"spec: {path} is not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise StudySpecError(f"spec: {path} must hold a mapping of the study's fields, got {type(data).__name__}")
    return dict(data)


def interpolate(raw: Any, variables: Mapping[str, Any], where: str = "") -> Any:
    """Replace ``${name}`` in every string of ``raw`` by ``variables[name]`` (``prepare.<key>``, ``output_dir``).

    A string that is exactly ``${name}`` takes the value itself (a path stays a string, a number stays a number only if
    the function returned one); inside a longer string the value is formatted with ``str``.
    """
    if isinstance(raw, str):

        def value(match: re.Match[str]) -> Any:
            name = match.group(1).strip()
            if name not in variables:
                known = ", ".join(sorted(variables)) or "none (no `prepare`?)"
                raise StudySpecError(f"{where or 'spec'}: unknown variable ${{{name}}}; known: {known}")
            return variables[name]

        whole = _VARIABLE.fullmatch(raw)
        if whole:
            got = value(whole)
            return str(got) if isinstance(got, Path) else got
        return _VARIABLE.sub(lambda m: str(value(m)), raw)
    if isinstance(raw, Mapping):
        return {k: interpolate(v, variables, f"{where}.{k}" if where else str(k)) for k, v in raw.items()}
    if isinstance(raw, list | tuple):
        return [interpolate(v, variables, f"{where}[{i}]") for i, v in enumerate(raw)]
    return raw


def _has_variable(value: Any) -> bool:
    return isinstance(value, str) and _VARIABLE.search(value) is not None


# --------------------------------------------------------------------------------------------------- field checks
def _mapping(value: Any, where: str, keys: Sequence[str] | None = None, *, required: bool = True) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise StudySpecError(f"{where}: expected a mapping, got {type(value).__name__} ({value!r})")
    if keys is not None:
        unknown = [k for k in value if k not in keys]
        if unknown:
            raise StudySpecError(f"{where}: unknown keys {unknown}; allowed: {list(keys)}")
    return dict(value)


def _strings(value: Any, where: str, *, allow_single: bool = True) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) and allow_single:
        return (value,)
    if not isinstance(value, list | tuple) or not all(v is None or isinstance(v, str | int | float) for v in value):
        raise StudySpecError(f"{where}: expected a list of strings, got {value!r}")
    # command-line words: YAML's true / false / null back to the words jsonargparse reads
    return tuple("null" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for v in value)


def _configs(value: Any, where: str) -> tuple[str | dict[str, Any], ...]:
    """Config files (paths) or inline configs (mappings, written to ``<output_dir>/configs/`` before they are used)."""
    if value is None:
        return ()
    if isinstance(value, str | Mapping):
        value = [value]
    if not isinstance(value, list | tuple):
        raise StudySpecError(f"{where}: expected a list of config files or inline configs, got {value!r}")
    out: list[str | dict[str, Any]] = []
    for i, item in enumerate(value):
        if isinstance(item, Mapping):
            out.append(dict(item))
        elif isinstance(item, str) and item:
            out.append(item)
        else:
            raise StudySpecError(f"{where}[{i}]: expected a config file path or an inline config, got {item!r}")
    return tuple(out)


def _numbers(value: Any, where: str, kind: type, *, positive: bool = True) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple):
        raise StudySpecError(f"{where}: expected a list of numbers, got {value!r}")
    if not value:
        raise StudySpecError(f"{where}: empty list (give at least one value, or leave the key out)")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, str):  # YAML reads 3e-4 (no dot) as a string
            try:
                v = float(v) if kind is float else int(v)
            except ValueError:
                raise StudySpecError(f"{where}[{i}]: expected a number, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and v != int(v)):
            raise StudySpecError(f"{where}[{i}]: expected {'an integer' if kind is int else 'a number'}, got {v!r}")
        if positive and not v > 0:
            raise StudySpecError(f"{where}[{i}]: must be > 0, got {v!r}")
        out.append(kind(v))
    if len(set(out)) != len(out):
        raise StudySpecError(f"{where}: repeated values {out}")
    return tuple(out)


def _bool(value: Any, where: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise StudySpecError(f"{where}: expected true or false, got {value!r}")
    return value


def import_class(class_path: str, where: str) -> type:
    """Import ``module.Class`` (a bare name is looked up in ``baldro_pl.objectives``)."""
    if not isinstance(class_path, str) or not class_path:
        raise StudySpecError(f"{where}: expected a class path such as 'baldro_pl.objectives.NPO', got {class_path!r}")
    module_name, _, name = class_path.rpartition(".")
    module_name = module_name or "baldro_pl.objectives"
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise StudySpecError(f"{where}: cannot import module {module_name!r} ({err})") from err
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise StudySpecError(f"{where}: {module_name!r} has no class {name!r}")
    return cls


def _objective_block(value: Any, where: str, kind: str) -> dict[str, Any]:
    """A ``{class_path, init_args}`` block of a method, checked by importing and building the class."""
    if isinstance(value, str):
        value = {"class_path": value}
    block = _mapping(value, where, ("class_path", "init_args"))
    init_args = _mapping(block.get("init_args"), f"{where}.init_args", required=False)
    class_path = block.get("class_path")
    if class_path is None:
        if not init_args:
            raise StudySpecError(f"{where}: give a class_path, init_args or both")
        return {"class_path": None, "init_args": init_args}
    cls = import_class(class_path, f"{where}.class_path")
    base_module, base_name = OBJECTIVE_KINDS[kind]
    base = getattr(importlib.import_module(base_module), base_name)
    if not issubclass(cls, base):
        raise StudySpecError(
            f"{where}.class_path: {class_path!r} is not a {base_module}.{base_name} (a {kind} must subclass it)"
        )
    if not any(_has_variable(v) for v in init_args.values()):
        try:
            cls(**init_args)
        except (TypeError, ValueError) as err:
            raise StudySpecError(f"{where}.init_args: {cls.__name__}({init_args}) fails: {err}") from err
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def _model_source(value: Any, role: str) -> ModelSource:
    keys = RETAIN_KEYS if role == "retain" else MODEL_KEYS
    if value is None:
        raise StudySpecError(
            f"{role}: missing; give `{role}.path` (a model directory)"
            + (" or `retain.log` (the retain model's TOFU_EVAL.json)" if role == "retain" else "")
            + f" or `{role}.finetune` (baldro-pl fit configs that make the model)"
        )
    if isinstance(value, str):
        value = {"path": value}
    block = _mapping(value, role, keys)
    source = ModelSource(
        role=role,
        path=None if block.get("path") is None else str(block["path"]),
        finetune=_configs(block.get("finetune"), f"{role}.finetune"),
        args=_strings(block.get("args"), f"{role}.args", allow_single=False),
        log=None if block.get("log") is None else str(block["log"]),
    )
    if not source.has_model and source.log is None:
        raise StudySpecError(
            f"{role}: no model: give `{role}.path` (a model directory) or `{role}.finetune` (fine-tune configs)"
            + (", or `retain.log` (an existing TOFU_EVAL.json of the retain model)" if role == "retain" else "")
        )
    if source.args and not source.finetune:
        raise StudySpecError(f"{role}.args: extra fine-tune arguments without `{role}.finetune`")
    return source


def _method(value: Any, i: int) -> Method:
    where = f"grid.methods[{i}]"
    block = _mapping(value, where, METHOD_KEYS)
    name = block.get("name")
    if not isinstance(name, str) or not name.strip():
        raise StudySpecError(f"{where}.name: every method needs a non-empty name (its label in tables and plots)")
    blocks = {kind: _objective_block(block[kind], f"{where}.{kind}", kind) for kind in OBJECTIVE_KINDS if kind in block}
    model_args = _mapping(block.get("model_args"), f"{where}.model_args", required=False)
    clash = [k for k in model_args if k in (*OBJECTIVE_KINDS, "gamma", "alpha", "learning_rate", "model")]
    if clash:
        raise StudySpecError(f"{where}.model_args: {clash} have their own keys (or are set by the grid)")
    for key in ("gamma", "alpha"):
        if key in block:
            if isinstance(block[key], bool) or not isinstance(block[key], int | float) or block[key] < 0:
                raise StudySpecError(f"{where}.{key}: expected a number >= 0, got {block[key]!r}")
            model_args[key] = float(block[key])
    base = block.get("base")
    if base is not None and not isinstance(base, str):
        raise StudySpecError(f"{where}.base: expected a string (the table's name), got {base!r}")
    return Method(
        name=name.strip(),
        base=base,
        blocks=blocks,
        model_args=model_args,
        learning_rates=_numbers(block.get("learning_rates"), f"{where}.learning_rates", float),
        epochs=_numbers(block.get("epochs"), f"{where}.epochs", int),
    )


def parse_spec(raw: Mapping[str, Any]) -> StudySpec:
    """Check the structure of a raw spec and build a :class:`StudySpec` (no file is read, no process started).

    Raises:
        StudySpecError: naming the field.
    """
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise StudySpecError(f"spec: unknown top-level keys {unknown}; allowed: {list(TOP_LEVEL_KEYS)}")
    output_dir = raw.get("output_dir")
    if not isinstance(output_dir, str | Path) or not str(output_dir):
        raise StudySpecError("output_dir: missing; the folder the study writes (cells/, results.csv, report.md)")
    prepare = None
    if raw.get("prepare") is not None:
        block = _mapping(raw["prepare"], "prepare", ("function", "args"))
        function = block.get("function")
        if not isinstance(function, str) or "." not in function:
            raise StudySpecError(f"prepare.function: expected 'package.module.function', got {function!r}")
        prepare = (function, _mapping(block.get("args"), "prepare.args", required=False))

    unlearn = raw.get("unlearn")
    if isinstance(unlearn, str | list):
        unlearn = {"configs": unlearn}
    unlearn = _mapping(unlearn, "unlearn", UNLEARN_KEYS) if unlearn is not None else {}
    configs = _configs(unlearn.get("configs"), "unlearn.configs")
    if not configs:
        raise StudySpecError("unlearn.configs: missing; the baldro-pl fit config file(s) every cell starts from")

    evaluation = _mapping(raw.get("evaluation"), "evaluation", EVALUATION_KEYS, required=False)
    every = evaluation.get("every_n_epochs", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise StudySpecError(f"evaluation.every_n_epochs: expected an integer >= 1, got {every!r}")
    eval_args = _mapping(evaluation.get("init_args"), "evaluation.init_args", required=False)
    reserved = [k for k in eval_args if k in RUNNER_EVALUATION_ARGS]
    if reserved:
        raise StudySpecError(f"evaluation.init_args: {reserved} are set by the study runner (retain log, cell folder)")

    grid = raw.get("grid")
    if not grid:
        raise StudySpecError("grid: missing or empty; give grid.methods and grid.seeds")
    grid = _mapping(grid, "grid", GRID_KEYS)
    methods_raw = grid.get("methods")
    if not methods_raw:
        raise StudySpecError("grid.methods: missing or empty; list at least one method")
    if not isinstance(methods_raw, list):
        raise StudySpecError(f"grid.methods: expected a list of methods, got {type(methods_raw).__name__}")
    methods = tuple(_method(m, i) for i, m in enumerate(methods_raw))
    names = [m.name for m in methods]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise StudySpecError(f"grid.methods: repeated names {repeated}")
    if "seeds" not in grid or grid["seeds"] is None:
        raise StudySpecError("grid.seeds: missing; list the seeds (e.g. [0, 1, 2])")
    if isinstance(grid["seeds"], list) and not grid["seeds"]:
        raise StudySpecError("grid.seeds: empty list; give at least one seed")
    seeds = _numbers(grid["seeds"], "grid.seeds", int, positive=False)

    workers = raw.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise StudySpecError(f"workers: expected an integer >= 1, got {workers!r}")
    title = raw.get("title")
    if title is not None and not isinstance(title, str):
        raise StudySpecError(f"title: expected a string, got {title!r}")
    return StudySpec(
        output_dir=Path(str(output_dir)),
        target=_model_source(raw.get("target"), "target"),
        retain=_model_source(raw.get("retain"), "retain"),
        unlearn_configs=configs,
        unlearn_args=_strings(unlearn.get("args"), "unlearn.args", allow_single=False),
        methods=methods,
        seeds=seeds,
        learning_rates=_numbers(grid.get("learning_rates"), "grid.learning_rates", float),
        epochs=_numbers(grid.get("epochs"), "grid.epochs", int),
        evaluation=Evaluation(every_n_epochs=every, init_args=eval_args),
        prepare=prepare,
        title=title,
        workers=workers,
        keep_checkpoints=_bool(raw.get("keep_checkpoints"), "keep_checkpoints", False),
        export_models=_bool(raw.get("export_models"), "export_models", True),
        raw=dict(raw),
    )


def model_ready(path: str | Path | None) -> bool:
    """Whether ``path`` is a finished Hugging Face model directory (``config.json`` written last, atomically)."""
    return path is not None and (Path(path) / "config.json").is_file()


def check_paths(spec: StudySpec) -> None:
    """Check the files the spec names (after ``prepare`` and interpolation), before any process starts.

    Raises:
        StudySpecError: naming the field.
    """
    for i, config in enumerate(spec.unlearn_configs):
        if isinstance(config, str) and not Path(config).is_file():
            raise StudySpecError(f"unlearn.configs[{i}]: no such file {config!r}")
    for source in (spec.target, spec.retain):
        role = source.role
        for i, config in enumerate(source.finetune):
            if isinstance(config, str) and not Path(config).is_file():
                raise StudySpecError(f"{role}.finetune[{i}]: no such file {config!r}")
        if role == "retain" and source.log is not None and Path(source.log).is_file():
            continue  # the log is all the study needs of the retain model
        if source.finetune or model_ready(source.path):
            continue
        if source.path is not None:
            raise StudySpecError(
                f"{role}.path: {source.path!r} is not a model directory (no config.json) and `{role}.finetune` is "
                "not given to make it"
            )
        if role == "retain":
            raise StudySpecError(
                f"retain.log: {source.log!r} does not exist and `retain` gives no model (`path` or `finetune`) to "
                "evaluate to make it"
            )
