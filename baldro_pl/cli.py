"""The ``baldro-pl`` command: LightningCLI's ``fit`` / ``validate`` / ``test`` plus ``demo``, ``summarize``, ``export``.

    baldro-pl fit -c configs/tofu/base.yaml -c configs/tofu/method/npo_dv.yaml --model.init_args.model ./tofu_target
    baldro-pl test --config configs/tofu/eval.yaml --model.init_args.model ./unlearned-hf
    baldro-pl demo
    baldro-pl summarize TOFU_EVAL.json --reference retain90/TOFU_EVAL.json
    baldro-pl export runs/.../last.ckpt --output ./unlearned-hf

Models and datamodules are chosen by ``class_path`` (``baldro_pl.modules.UnlearningModule`` or ``FinetuneModule``;
``baldro_pl.datamodules.TOFUDataModule``, ``MUSEDataModule``, ``JsonDataModule``), so the class path is the registry.
The datamodule's tokenizer defaults to the model's (``model.init_args.tokenizer``, else the model source). Every run
writes TensorBoard logs under ``runs/`` with its resolved ``config.yaml`` and the library versions
(``versions.json``) next to them.

``fit --ckpt_path last`` resumes the latest run of the same logger ``save_dir``/``name``: the newest ``version_<n>``
with a checkpoint (its ``checkpoints/last.ckpt``, else its newest checkpoint), logging on into that version's folder.
With none, it says so in one line and starts from scratch. Every ``fit`` stops at the first NaN/infinite training loss
(:class:`~baldro_pl.callbacks.StopOnNonFinite`) and the command exits 1 with a one-line message.

Errors and exit codes: a bad setting, a checkpoint that cannot be used, an unwritable log directory, or bad input
found before any training or evaluation work prints one line (``baldro-pl fit: error: <setting>: ...``) and exits 2;
``--debug`` (or ``BALDRO_DEBUG=1``) shows the full traceback instead. A run stopped by SIGTERM exits 143 after
Lightning's graceful stop (the checkpoint callbacks save on it); a NaN/infinite loss or an existing export
destination exits 1.

This module imports Lightning only when a Lightning command runs (:mod:`baldro_pl.cli_lightning`), so that
``baldro-pl``, ``baldro-pl --help`` and the other commands start without it.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from baldro_pl.cli_lightning import BaldroCLI

EXTRA_COMMANDS = {
    "demo": ("baldro_pl.demo", "fine-tune a tiny model on a synthetic TOFU-style set and unlearn it (no download)"),
    "summarize": ("baldro_pl.metrics.summarize", "recompute every aggregate of a TOFU/MUSE evaluation log"),
    "export": ("baldro_pl.export", "write a Lightning checkpoint (full or sharded) as a Hugging Face directory"),
    "study": ("baldro_pl.study", "run a sweep of unlearning fits and evaluations from a YAML spec; tables and plots"),
}
LIGHTNING_COMMANDS = {
    "fit": "train: unlearn (UnlearningModule) or fine-tune (FinetuneModule), with evaluation callbacks",
    "validate": "run the validation loop and evaluation callbacks once",
    "test": "evaluate a model (any Hugging Face directory) with an evaluation preset",
}
VERSIONED_PACKAGES = [
    "baldro-pl",
    "torch",
    "lightning",
    "transformers",
    "tokenizers",
    "datasets",
    "torchmetrics",
    "scipy",
    "rouge-score",
    "jsonargparse",
]
DEBUG_FLAG = "--debug"
DEBUG_ENV = "BALDRO_DEBUG"
#: Exit status of a run stopped by SIGTERM (128 + 15, as a shell reports a process killed by it).
SIGTERM_EXIT = 143
#: Names served lazily from :mod:`baldro_pl.cli_lightning` (importing them imports Lightning).
_LIGHTNING_NAMES = ("BaldroCLI", "SaveConfigAndVersions", "BaldroArgumentParser")


class InputError(ValueError):
    """Something the run was given (a setting, a file, a directory) that it cannot start with.

    The message is one line that names the setting or the file, the value and what is allowed; ``baldro-pl`` prints
    it without a traceback and exits 2.
    """


def debug_enabled() -> bool:
    """Whether ``--debug`` was given or ``BALDRO_DEBUG`` is set (to anything but ``0``/``false``/empty)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def library_versions() -> dict[str, Any]:
    """Versions of Python, the libraries that shape the numbers, and the accelerator."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    versions["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return versions


def lightning_cli(args: list[str] | None = None, run: bool = True) -> BaldroCLI:
    """Build (and by default run) the LightningCLI part of ``baldro-pl`` (imports Lightning)."""
    from baldro_pl.cli_lightning import build_cli

    return build_cli(args, run=run)


def __getattr__(name: str) -> Any:
    """``BaldroCLI`` and ``SaveConfigAndVersions``, imported with Lightning on first use."""
    if name in _LIGHTNING_NAMES:
        from baldro_pl import cli_lightning

        return getattr(cli_lightning, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _print_help() -> None:
    print("usage: baldro-pl COMMAND [options]   (baldro-pl COMMAND --help for the options of one command)\n")
    print("BalDRO unlearning for large language models on PyTorch Lightning.\n\ncommands:")
    for name, text in LIGHTNING_COMMANDS.items():
        print(f"  {name:10s} {text}")
    for name, (_, text) in EXTRA_COMMANDS.items():
        print(f"  {name:10s} {text}")
    print(f"\n{DEBUG_FLAG} (anywhere on the line, or {DEBUG_ENV}=1): show full tracebacks instead of one-line errors")


def _pop_debug(argv: list[str]) -> tuple[bool, list[str]]:
    rest = [a for a in argv if a != DEBUG_FLAG]
    return len(rest) != len(argv), rest


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``baldro-pl`` console script; returns the exit status.

    Exit statuses: 0 done; 1 stopped on a NaN/infinite loss or an existing export destination; 2 a bad setting or
    input, refused before any work (one line on stderr; a command-line parse error exits through ``SystemExit(2)``
    as argparse does); 143 stopped by SIGTERM.
    """
    from_command_line = argv is None
    debug, argv = _pop_debug(list(sys.argv[1:] if argv is None else argv))
    if debug and from_command_line:
        os.environ[DEBUG_ENV] = "1"  # also for the processes a DDP launcher starts from sys.argv
        sys.argv = [sys.argv[0], *argv]
    elif debug:  # called from Python: for this call only
        saved = os.environ.get(DEBUG_ENV)
        os.environ[DEBUG_ENV] = "1"
        try:
            return _dispatch(argv, from_command_line=False)
        finally:
            if saved is None:
                os.environ.pop(DEBUG_ENV, None)
            else:
                os.environ[DEBUG_ENV] = saved
    return _dispatch(argv, from_command_line=from_command_line)


def _dispatch(argv: list[str], *, from_command_line: bool = False) -> int:
    """:func:`main` once ``--debug`` is taken out of ``argv`` (``from_command_line``: LightningCLI reads sys.argv)."""
    if not argv or argv[0] in ("-h", "--help"):
        _print_help()
        return 0
    if argv[0] in EXTRA_COMMANDS:
        module = importlib.import_module(EXTRA_COMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    from baldro_pl.cli_lightning import run_command

    # from the console, LightningCLI reads sys.argv itself (a DDP launcher re-runs that same command line)
    return run_command(None if from_command_line else argv, command=argv[0])


if __name__ == "__main__":
    sys.exit(main())
