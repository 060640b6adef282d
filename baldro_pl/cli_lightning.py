"""The Lightning half of ``baldro-pl``: :class:`BaldroCLI` (LightningCLI) and the errors it reports in one line.

Imported by :mod:`baldro_pl.cli` only when ``fit`` / ``validate`` / ``test`` run, because importing Lightning takes
seconds. What it adds to LightningCLI:

* the datamodule's tokenizer and pad token linked to the model's, the HParams table, a stop at the first
  NaN/infinite loss, ``fit --ckpt_path last`` resuming the latest run of the same name (see :mod:`baldro_pl.cli`);
* errors in one line, exit 2, no traceback (``--debug`` shows it): a parse error names the key (the innermost of
  jsonargparse's nested "Does not validate against any of the Union subtypes" report, with a "did you mean"), and a
  value a class refuses when it is built names the setting's full key before the class's own message;
* before any work: ``--ckpt_path`` checked (:mod:`baldro_pl.checkpoints`) and the log/checkpoint directories checked
  for writing; a bad input met while the run is set up (data, model, tokenizer) is reported in one line too;
* a version folder this run created and left without results (it failed before any work) is removed;
* negative numbers are values (``--model.init_args.learning_rate -1e-3``), not options;
* no ``--optimizer`` / ``--lr_scheduler``: the modules build their own optimiser and schedule;
* ``--model`` / ``--data`` / ``--trainer.callbacks`` help lists the baldro-pl classes.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from baldro_pl.callbacks import HParamsTable, NonFiniteLossError, StopOnNonFinite
from baldro_pl.checkpoint_io import use_atomic_checkpoints
from baldro_pl.checkpoints import (
    CheckpointError,
    check_checkpoint_file,
    check_checkpoint_for_module,
    is_local_checkpoint_path,
)
from baldro_pl.cli import SIGTERM_EXIT, InputError, debug_enabled, library_versions
from baldro_pl.distributed import DEFAULT_PG_TIMEOUT_S, apply_process_group_timeout, rank_zero_log_dir
from baldro_pl.run_output import add_run_output_callbacks, configure_console_output
from baldro_pl.threads import AdaptiveThreads

#: What argparse takes for a negative number (a value, not an option): also ``-1e-3``, ``-.5``, ``-inf``.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)
#: Exceptions raised while a run's classes are built, or while it is set up before any work, that are about its input.
INPUT_ERRORS = (ValueError, OSError, MisconfigurationException)
#: What a version folder of a run that failed before any work may hold (written by Lightning and this CLI).
SETUP_ONLY_FILES = ("config.yaml", "versions.json", "hparams.yaml", "events.out.tfevents.*", "checkpoints")
#: The top-level keys of a fit/validate/test config.
TOP_LEVEL_KEYS = ("seed_everything", "trainer", "model", "data", "pg_timeout", "ckpt_path", "weights_only")
#: Why there is no --optimizer / --lr_scheduler.
OPTIMIZER_HINT = (
    "the modules build their own AdamW and schedule: set model.init_args.learning_rate, weight_decay, "
    "warmup_epochs, warmup_steps, lr_schedule, optimizer_state_dtype"
)
#: Modules whose classes the help lists as known subclasses of --model, --data and --trainer.callbacks.
HELP_MODULES = ("baldro_pl.modules", "baldro_pl.datamodules", "baldro_pl.callbacks", "baldro_pl.metrics")


# ------------------------------------------------------------------------------------------------ one-line messages
def one_line(text: str, limit: int = 500) -> str:
    """``text`` with its whitespace collapsed to single spaces, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _accepted_parameters(class_path: str) -> list[str]:
    """The ``__init__`` parameters of a class and of the bases its ``**kwargs`` reach (as jsonargparse accepts)."""
    try:
        module_name, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), name)
    except Exception:
        return []
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        try:
            parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
        except (TypeError, ValueError):
            break
        names += [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return list(dict.fromkeys(names))


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _import_problem(class_path: str, detail: str) -> str:
    """``cannot import 'a.b.C' (...)``, with the closest name the module has."""
    module_name, _, name = class_path.rpartition(".")
    hint = ""
    try:
        names = [n for n in dir(importlib.import_module(module_name)) if not n.startswith("_")]
        hint = _did_you_mean(name, names)
    except Exception:
        pass
    return f"cannot import {class_path!r} ({detail}){hint}"


def _expected_type(text: str) -> str:
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    if literal:
        return f"one of {literal.group(1)}"
    cls = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", text)
    return cls.group(1) if cls else text


_STRUCTURE = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:", "Given value:")


def condense_parse_error(message: str) -> str:
    """One line from jsonargparse's nested parse error: the full key of each innermost problem and what is wrong.

    ``Parser key "model": Does not validate against any of the Union subtypes ... - Problem with given class_path
    'baldro_pl.modules.UnlearningModule': Option 'learnin_rate' is not accepted ...`` becomes
    ``model.init_args.learnin_rate: not accepted by baldro_pl.modules.UnlearningModule; did you mean
    'learning_rate'?``. A message without that structure comes back on one line as it is.
    """
    lines = [(len(line) - len(line.lstrip(" ")), line.strip()) for line in message.splitlines() if line.strip()]
    stack: list[tuple[int, str, str]] = []  # (indent, "key" | "class", name)
    problems: list[tuple[str, str]] = []  # (key, message)
    pending: list[tuple[int, str, int]] = []  # "Expected a T" without its value: (indent, key, index in problems)

    def key_of() -> tuple[str, str | None]:
        key, cls = "", None
        for _, kind, name in stack:
            if kind == "key":
                key = f"{key}.init_args.{name}" if cls and key else (f"{key}.{name}" if key else name)
                cls = None
            else:
                cls = name
        return key, cls

    for indent, line in lines:
        text = line[2:] if line.startswith("- ") else line
        while stack and stack[-1][0] >= indent:
            stack.pop()
        found = re.match(r'Parser key "([^"]+)":\s*(.*)$', text)
        if found:
            stack.append((indent, "key", found.group(1)))
            text = found.group(2)
            if not text:
                continue
            indent += 1
        found = re.match(r"Problem with given class_path '([^']+)':\s*(.*)$", text)
        if found:
            stack.append((indent, "class", found.group(1)))
            text = found.group(2)
            if not text:
                continue
        if text.startswith("Given value:"):
            value = text[len("Given value:") :].strip()
            for item in [p for p in pending if p[0] > indent]:
                key, message_ = problems[item[2]]
                problems[item[2]] = (key, f"{message_}, got {value}")
                pending.remove(item)
            continue
        if text.startswith(_STRUCTURE) or text == "Expected a <class 'NoneType'>":
            continue
        if text.startswith("Expected a path but") and len(lines) > 1:  # a class path tried as a file: noise
            continue
        key, cls = key_of()
        option = re.fullmatch(r"Option '([^']+)' is not accepted", text)
        if option and cls:
            name = option.group(1)
            accepted = _accepted_parameters(cls)
            hint = _did_you_mean(name, accepted) or (f"; accepted: {', '.join(accepted[:12])}" if accepted else "")
            problems.append((f"{key}.init_args.{name}" if key else name, f"not accepted by {cls}{hint}"))
            continue
        group = re.fullmatch(r"(?:Group|Subcommand) '([^']+)' does not accept option '([^']+)'", text)
        if group:
            where, option = group.groups()
            subcommand = where in ("fit", "validate", "test", "predict")
            option = option if subcommand else f"{where}.{option}"
            top = option.split(".")[0]
            if top not in TOP_LEVEL_KEYS:
                problems.append((top, f"not a setting of {where if subcommand else 'the config'}"
                                 f"{_did_you_mean(top, list(TOP_LEVEL_KEYS))}"))  # fmt: skip
                continue
            section = option.rpartition(".")[0]
            accepted = _accepted_parameters("lightning.pytorch.Trainer") if section == "trainer" else []
            hint = _did_you_mean(option, [f"{section}.{a}" for a in accepted])
            problems.append((option, f"not a setting of {section}{hint}"))
            continue
        missing = re.match(r"module '([^']+)' has no attribute '([^']+)'", text)
        if missing or (cls and re.match(r"(No module named|Unable to import)", text)):
            class_path = ".".join(missing.groups()) if missing else cls
            where = f"{key}.class_path" if cls == class_path else key
            problems.append((where or "class_path", _import_problem(class_path, text)))
            continue
        expected = re.fullmatch(r"Expected a (.+?)(?:\. Got value: (.*))?", text)
        if expected:
            problems.append((key, f"expected {_expected_type(expected.group(1))}"))
            if expected.group(2) is not None:
                problems[-1] = (key, f"{problems[-1][1]}, got {expected.group(2)}")
            else:
                pending.append((indent, key, len(problems) - 1))
            continue
        problems.append((key, f"{text} (in {cls})" if cls and cls not in text else text))
    if not problems:
        return one_line(message)
    # the same key's alternatives (a Union's members) in one phrase; drop "Expected a path" when there is more
    by_key: dict[str, list[str]] = {}
    for key, text in problems:
        if text.startswith("Expected a path but") and len(problems) > 1:
            continue
        if text not in by_key.setdefault(key, []):
            by_key[key].append(text)
    parts = []
    for key, texts in by_key.items():
        expected_only = [t for t in texts if t.startswith("expected ")]
        if len(expected_only) > 1 and len(expected_only) == len(texts):
            value = next((t.split(", got ", 1)[1] for t in texts if ", got " in t), None)
            kinds = ", ".join(t.split(", got ", 1)[0][len("expected ") :].removeprefix("one of ") for t in texts)
            texts = [f"expected one of {kinds}" + (f", got {value}" if value is not None else "")]
        parts.append(f"{key}: {'; '.join(texts)}" if key else "; ".join(texts))
    return one_line("; ".join(parts))


def _leaves(node: Any, prefix: str = "", owner: str | None = None):
    """(key, value, class_path of the object the key belongs to) for every leaf of a config dictionary."""
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if k == "init_args":
                yield from _leaves(v, path, node.get("class_path"))
            elif isinstance(v, (dict, list)):
                yield from _leaves(v, path, owner)
            else:
                yield path, v, owner
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}[{i}]", owner)


def setting_key(message: str, config: Any) -> str | None:
    """The full key of the setting a class's error message is about, found in the run's config; None if unsure.

    ``BalDRODV: temperature must be ... got 0.0`` -> ``model.init_args.aggregator.init_args.temperature``. The
    setting is the message's first word (after an optional ``ClassName:``), else a ``snake_case`` or
    ``Trainer(name=...)`` word in it (Lightning's messages); of several keys of that name, the one whose value the
    message quotes.
    """
    if config is None:
        return None
    found = re.match(r"^(?:(?P<cls>[A-Z]\w*): )?`?(?P<name>[a-z_]\w*)`?", message)
    names = [found.group("name")] if found else []
    cls = found.group("cls") if found else None
    names += re.findall(r"\b([a-z]+(?:_[a-z0-9]+)+)\b|Trainer\((\w+)=", message)  # tuples from the alternation
    names = [n if isinstance(n, str) else (n[0] or n[1]) for n in names]
    leaves = list(_leaves(config.as_dict() if hasattr(config, "as_dict") else config))
    for name in dict.fromkeys(names):
        candidates = [
            (key, value)
            for key, value, owner in leaves
            if key.rsplit(".", 1)[-1] == name and (cls is None or (owner or "").rsplit(".", 1)[-1] == cls)
        ]
        if len(candidates) > 1:  # several of that name: the one whose value the message quotes
            quoted = [(k, v) for k, v in candidates if re.search(rf"(?<![\w.]){re.escape(repr(v))}(?![\w.])", message)]
            candidates = quoted or candidates
        if len(candidates) == 1:
            return candidates[0][0]
        if candidates:
            return None
    return None


#: Trainer settings Lightning accepts at construction but fails on (or misreads) later: (test, what is allowed).
TRAINER_RANGES: dict[str, tuple[Any, str]] = {
    "accumulate_grad_batches": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "gradient_clip_val": (lambda v: v is None or (isinstance(v, (int, float)) and v >= 0), "a number >= 0 or null"),
    "log_every_n_steps": (lambda v: v is None or (isinstance(v, int) and v >= 0), "an integer >= 0 or null"),
    "num_sanity_val_steps": (lambda v: v is None or (isinstance(v, int) and v >= -1), "an integer >= -1 or null"),
    "check_val_every_n_epoch": (lambda v: v is None or (isinstance(v, int) and v >= 1), "an integer >= 1 or null"),
}


def check_trainer_settings(trainer_config: Any) -> None:
    """Refuse the trainer settings of :data:`TRAINER_RANGES` that are out of range (Lightning checks the others).

    Raises:
        InputError: ``trainer.<setting>: must be <allowed>, got <value>``.
    """
    for name, (valid, allowed) in TRAINER_RANGES.items():
        if trainer_config is not None and name in trainer_config:
            value = trainer_config[name]
            if not valid(value) or isinstance(value, bool):
                raise InputError(f"trainer.{name}: must be {allowed}, got {value!r}")


def innermost(err: BaseException) -> BaseException:
    """The first cause in ``err``'s chain that is not jsonargparse's Union wrapper (the class's own error)."""
    seen: set[int] = set()
    current: BaseException | None = err
    last = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        last = current
        if not str(current).startswith("Does not validate against any of the Union subtypes"):
            return current
        current = current.__cause__ or current.__context__
    return last


def input_error_message(err: BaseException, config: Any = None) -> str:
    """One line for an error about the run's input: the setting's full key (when found) and the class's message."""
    inner = innermost(err)
    text = one_line(str(inner) or type(inner).__name__)
    if text.startswith("Does not validate against"):
        text = condense_parse_error(str(inner))
    key = setting_key(text, config)
    if not key or text.startswith(f"{key}:"):
        return text
    name = key.rsplit(".", 1)[-1]
    return f"{key}: {text[len(name) + 2 :] if text.startswith(f'{name}: ') else text}"


# ------------------------------------------------------------------------------------------------ parser and CLI
class BaldroArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors are one line (``--debug``: jsonargparse's full report) and exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER  # argparse: such strings are values, not options

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print ``<prog>: error: <one line>`` and exit 2; with ``--debug``, jsonargparse's own report."""
        if debug_enabled() or not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        text = condense_parse_error(message)
        unknown = re.match(r"unrecognized arguments: (--[\w.]+)", text)
        if unknown and unknown.group(1).split(".")[0] in ("--optimizer", "--lr_scheduler"):
            text += f"; {OPTIMIZER_HINT}"
        elif unknown:
            options = _option_strings(parser)
            text += _did_you_mean(unknown.group(1), options) or _did_you_mean(unknown.group(1).split(".")[0], options)
        sys.stderr.write(f"{prog}: error: {text}\n")
        self.exit(2)


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--option`` of a parser and of its subcommands' parsers."""
    found: list[str] = []
    for action in parser._actions:
        found += [s for s in action.option_strings if s.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _option_strings(sub)
    return list(dict.fromkeys(found))


class SaveConfigAndVersions(SaveConfigCallback):
    """Lightning's ``config.yaml`` of the run plus ``versions.json`` (library versions), in the log directory."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Write ``config.yaml`` into the run's log folder (rank 0), as Lightning's ``SaveConfigCallback`` does."""
        # Lightning calls save_config on rank 0 only: no collective here (trainer.log_dir is one; issue 8)
        log_dir = rank_zero_log_dir(trainer)
        if log_dir is None or not trainer.is_global_zero:
            return
        path = Path(log_dir) / "versions.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(library_versions(), indent=2) + "\n")
        tmp.replace(path)


class WorkStarted(Callback):
    """Notes when a run's first piece of work (sanity check, training, validation, test, prediction) begins."""

    def __init__(self) -> None:
        self.started = False

    def _start(self, *_: Any) -> None:
        self.started = True

    on_sanity_check_start = on_train_start = on_validation_start = on_test_start = on_predict_start = _start


class BaldroCLI(LightningCLI):
    """LightningCLI for baldro-pl's modules, datamodules and callbacks.

    Adds: the datamodule's tokenizer linked to the model's, the HParams table filled, and the checks and one-line
    errors described in :mod:`baldro_pl.cli_lightning`.
    """

    def _set_seed(self) -> None:
        """LightningCLI's seeding, without its "Seed set to" line (the seed is in config.yaml).

        An out-of-range seed is refused in one line.
        """
        from lightning.fabric.utilities.seed import seed_everything

        config_seed = self._get(self.config, "seed_everything")
        if config_seed is False:
            return
        try:
            seed = seed_everything(None if config_seed is True else config_seed, workers=True, verbose=False)
        except ValueError as err:
            raise InputError(f"seed_everything: {err}") from err
        (self.config[self.subcommand] if self.subcommand else self.config)["seed_everything"] = seed

    def _parse_ckpt_path(self) -> None:
        """Refuse an unusable ``--ckpt_path`` before Lightning reads its hyperparameters from it."""
        subcommand = self.config.get("subcommand")
        if subcommand:
            path = self.config[subcommand].get("ckpt_path")
            if is_local_checkpoint_path(path):
                check_checkpoint_file(path, for_resume=subcommand == "fit")
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """``fit --ckpt_path last``: the latest checkpoint of the same run, and that run's log folder."""
        if self.subcommand == "fit" and self.config["fit"].get("ckpt_path") == "last":
            _resolve_last_checkpoint(self.config["fit"])
            path = self.config["fit"].get("ckpt_path")
            if is_local_checkpoint_path(path):  # an explicit path was checked already, in _parse_ckpt_path
                check_checkpoint_file(path, for_resume=True)

    def instantiate_classes(self) -> None:
        """Lightning's, with a value a class refuses reported as :class:`~baldro_pl.cli.InputError` naming its key."""
        try:
            super().instantiate_classes()
        except INPUT_ERRORS as err:
            if isinstance(err, (InputError, CheckpointError)):
                raise
            config = self.config.get(self.subcommand) if self.subcommand else self.config
            raise InputError(input_error_message(err, config)) from err

    def _prepare_run(self) -> None:
        """Checks before any work: ``--ckpt_path`` against the model, the output directories writable."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        path = config.get("ckpt_path") if config is not None else None
        if is_local_checkpoint_path(path):
            check_checkpoint_for_module(path, self.model, for_resume=self.subcommand == "fit")
        for setting, directory in _output_directories(self.trainer):
            check_writable(directory, setting)
        self._add_hparams_table()
        add_run_output_callbacks(self.trainer, self.subcommand)
        if isinstance(self.trainer.accelerator, CPUAccelerator) and not any(
            isinstance(c, AdaptiveThreads) for c in self.trainer.callbacks
        ):  # torch's CPU threads follow the cores other processes leave free (docs/benchmarks.md, busy machine)
            self.trainer.callbacks.append(AdaptiveThreads())

    def _add_hparams_table(self) -> None:
        if not any(isinstance(c, HParamsTable) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(HParamsTable())

    def before_fit(self) -> None:
        """Checks before any work; fill TensorBoard's HParams table; stop on a non-finite loss."""
        self._prepare_run()
        if not any(isinstance(c, StopOnNonFinite) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(StopOnNonFinite())

    def before_validate(self) -> None:
        """As :meth:`before_fit`, without the loss check."""
        self._prepare_run()

    def before_test(self) -> None:
        """As :meth:`before_validate`."""
        self._prepare_run()

    def _run_subcommand(self, subcommand: str) -> None:
        """Lightning's, plus one-line input errors and no empty version folder left behind.

        An input error met before any work is said in one line; a version folder this run created and left without
        results is removed when it fails before any work.
        """
        work = WorkStarted()
        self.trainer.callbacks.insert(0, work)
        created = _new_log_dirs(self.trainer)
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            if not work.started:
                _remove_unfinished(created)
            if isinstance(err, (InputError, CheckpointError)):
                raise
            if isinstance(err, INPUT_ERRORS) and (not work.started or isinstance(err, _always_input_errors())):
                raise InputError(input_error_message(err, self.config.get(subcommand))) from err
            raise

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's trainer, with the process-group timeout of ``--pg_timeout`` on its DDP/FSDP strategy.

        Settings Lightning would accept out of range are refused first.
        """
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        check_trainer_settings(config.get("trainer"))
        trainer = super().instantiate_trainer(**kwargs)
        apply_process_group_timeout(trainer, config.get("pg_timeout"))
        use_atomic_checkpoints(trainer)
        return trainer

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """``--pg_timeout``; the datamodule's tokenizer and pad token linked to the model's."""
        parser.add_argument(
            "--pg_timeout",
            type=float | None,
            default=DEFAULT_PG_TIMEOUT_S,
            help="seconds a process waits in a collective (DDP/FSDP) before the run fails instead of hanging; "
            "null: the strategy's own (Lightning: 1800); an explicit strategy init_args.timeout wins",
        )
        parser.link_arguments(
            ("model.init_args.model", "model.init_args.tokenizer"),
            "data.init_args.tokenizer",
            compute_fn=_tokenizer_source,
        )
        parser.link_arguments("model.init_args.pad_token", "data.init_args.pad_token")


def _always_input_errors() -> tuple[type[BaseException], ...]:
    """Errors about the input files that are reported in one line even after the work began (data rows, logs)."""
    from baldro_pl.datamodules.records import DataError
    from baldro_pl.metrics.logs import ReferenceLogError

    return (DataError, ReferenceLogError)


# ------------------------------------------------------------------------------------------------ directories
def _output_directories(trainer: Trainer) -> list[tuple[str, Path]]:
    """(setting, directory) of what the run will write: each logger's folder and the checkpoint ``dirpath``."""
    found: list[tuple[str, Path]] = []
    for logger in trainer.loggers:
        root = getattr(logger, "save_dir", None)
        if root:
            found.append(("trainer.logger.init_args.save_dir", Path(root)))
    for callback in trainer.callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath and type(callback).__name__ == "ModelCheckpoint":
            found.append(("ModelCheckpoint dirpath", Path(dirpath)))
    if not found and trainer.default_root_dir:
        found.append(("trainer.default_root_dir", Path(trainer.default_root_dir)))
    return found


def check_writable(directory: str | os.PathLike, setting: str) -> None:
    """Refuse, before any work, a directory the run could not write to (its nearest existing folder is tested).

    Nothing is created: a temporary file is written in the nearest existing folder and removed.

    Raises:
        InputError: naming the setting, the directory and why.
    """
    directory = Path(directory)
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{setting}: cannot create {directory}: {existing} is a file, not a directory")
    try:
        handle, name = tempfile.mkstemp(prefix=".baldro-write-test-", dir=existing)
        os.close(handle)
        os.unlink(name)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        where = "" if existing == directory else f" (nearest existing folder: {existing})"
        raise InputError(f"{setting}: cannot write to {directory}{where}: {reason}") from err


def _new_log_dirs(trainer: Trainer) -> list[list[Path]]:
    """The log folders (and their new parents) that this run's loggers are about to create.

    For each TensorBoard/CSV logger (rank 0): its log folder (``<save_dir>/<name>/version_<n>``) and the parents up to
    ``save_dir`` that do not exist yet, deepest first; empty when the log folder exists (a resumed run).
    """
    if not trainer.is_global_zero:
        return []
    found: list[list[Path]] = []
    for logger in trainer.loggers:
        if type(logger).__name__ not in ("TensorBoardLogger", "CSVLogger"):
            continue
        try:
            path, stop = Path(logger.log_dir), Path(logger.save_dir).parent
        except Exception:
            continue
        created: list[Path] = []
        while not path.exists() and path != stop and path.parent != path:
            created.append(path)
            path = path.parent
        found.append(created)
    return found


def _only_setup_files(folder: Path) -> bool:
    return all(any(entry.match(pattern) for pattern in SETUP_ONLY_FILES) for entry in folder.iterdir())


def _remove_unfinished(created: list[list[Path]]) -> None:
    """Remove the log folders this run created when they hold only what a run writes before any work.

    The parents it created are removed too if they are left empty.
    """
    for folders in created:
        if not folders or not folders[0].is_dir() or not _only_setup_files(folders[0]):
            continue
        shutil.rmtree(folders[0], ignore_errors=True)
        for parent in folders[1:]:
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()


# ------------------------------------------------------------------------------------------------ --ckpt_path last
def _version_number(path: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _checkpoint_in(version_dir: Path) -> Path | None:
    """``checkpoints/last.ckpt`` of a run version, else its newest resumable checkpoint (file or sharded directory).

    ``best*.ckpt`` (:class:`~baldro_pl.callbacks.BestCheckpoint`: weights only) cannot resume a run and is skipped.
    """
    folder = version_dir / "checkpoints"
    if (folder / "last.ckpt").exists():
        return folder / "last.ckpt"
    found = (
        [p for p in folder.glob("*.ckpt") if p.exists() and not p.name.startswith("best")] if folder.is_dir() else []
    )
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _resolve_last_checkpoint(config: Any) -> None:
    """Turn ``ckpt_path: last`` into the latest checkpoint of the logger's run and log into that version again.

    Only for a TensorBoard/CSV logger given by ``save_dir``/``name`` and checkpoints in the version folder (no
    ``ModelCheckpoint`` ``dirpath``); otherwise Lightning's own ``last`` applies (it looks in the fixed ``dirpath``).
    """
    if config.get("ckpt_path") != "last":
        return
    trainer = config.get("trainer")
    logger = trainer.get("logger") if trainer is not None else None
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    init_args = getattr(logger, "init_args", None)
    layout = str(getattr(logger, "class_path", "")).endswith(("TensorBoardLogger", "CSVLogger"))
    if not layout or init_args is None or init_args.get("save_dir") is None:
        return
    for callback in trainer.get("callbacks") or []:
        init = getattr(callback, "init_args", None) or {}
        if str(getattr(callback, "class_path", "")).endswith("ModelCheckpoint") and init.get("dirpath"):
            return
    name = init_args.get("name") or ""
    root = Path(init_args.get("save_dir")) / name
    version = init_args.get("version")
    if version is not None:
        candidates = [root / (version if isinstance(version, str) else f"version_{version}")]
    else:
        candidates = sorted((p for p in root.glob("version_*") if p.is_dir()), key=_version_number, reverse=True)
    for candidate in candidates:
        checkpoint = _checkpoint_in(candidate)
        if checkpoint is not None:
            config["ckpt_path"] = str(checkpoint)
            init_args["version"] = version if version is not None else _version_number(candidate)
            print(f"--ckpt_path last: resuming run {name!r} from {checkpoint}", file=sys.stderr)
            return
    print(f"--ckpt_path last: no checkpoint of run {name!r} under {root}; starting from scratch", file=sys.stderr)
    config["ckpt_path"] = None


def _tokenizer_source(model: Any, tokenizer: str | None) -> Any:
    return tokenizer if tokenizer else model


# ------------------------------------------------------------------------------------------------ entry points
def build_cli(args: list[str] | None = None, run: bool = True) -> BaldroCLI:
    """Build (and by default run) the LightningCLI part of ``baldro-pl``."""
    for name in HELP_MODULES:  # imported, their classes are "known subclasses" in --help
        importlib.import_module(name)
    return BaldroCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveConfigAndVersions,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "baldro", "default_hp_metric": False},
            },
        },
        parser_kwargs={"default_env": True, "prog": "baldro-pl", "allow_abbrev": False},
        parser_class=BaldroArgumentParser,
        auto_configure_optimizers=False,  # the modules build their own optimiser and schedule
        args=args,
        run=run,
    )


def run_command(args: list[str] | None, command: str) -> int:
    """Run ``baldro-pl <command> ...`` (fit/validate/test); return the exit status (see :func:`baldro_pl.cli.main`)."""
    from baldro_pl.export import OutputExistsError

    # before the Trainer is built (its GPU/TPU lines and tips are printed then); undone at the end, so that a
    # Python caller of main() keeps its own logging and warning settings
    restore_console = configure_console_output()
    try:
        build_cli(args)
    except SIGTERMException:
        print(
            f"baldro-pl {command}: stopped by SIGTERM after Lightning's graceful stop (exit {SIGTERM_EXIT})",
            file=sys.stderr,
        )
        return SIGTERM_EXIT
    except (NonFiniteLossError, OutputExistsError) as err:
        print(f"baldro-pl {command}: {err}", file=sys.stderr)
        return 1
    except (InputError, CheckpointError) as err:
        if debug_enabled():
            raise
        print(f"baldro-pl {command}: error: {one_line(str(err), 1000)}", file=sys.stderr)
        return 2
    finally:
        restore_console()
    return 0
