"""The ``baldro-pl`` command: LightningCLI's ``fit`` / ``validate`` / ``test`` plus ``demo``, ``summarize``, ``export``.

    baldro-pl fit --config configs/tofu/npo_dv.yaml --model.init_args.model ./tofu_target
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
"""

from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from baldro_pl.callbacks import HParamsTable, NonFiniteLossError, StopOnNonFinite
from baldro_pl.distributed import DEFAULT_PG_TIMEOUT_S, apply_process_group_timeout, rank_zero_log_dir

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


class SaveConfigAndVersions(SaveConfigCallback):
    """Lightning's ``config.yaml`` of the run plus ``versions.json`` (library versions), in the log directory."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning calls save_config on rank 0 only: no collective here (trainer.log_dir is one; issue 8)
        log_dir = rank_zero_log_dir(trainer)
        if log_dir is None or not trainer.is_global_zero:
            return
        path = Path(log_dir) / "versions.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(library_versions(), indent=2) + "\n")
        tmp.replace(path)


class BaldroCLI(LightningCLI):
    """LightningCLI with the datamodule's tokenizer linked to the model's and the HParams table filled."""

    def _add_hparams_table(self) -> None:
        if not any(isinstance(c, HParamsTable) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(HParamsTable())

    def before_instantiate_classes(self) -> None:
        """``fit --ckpt_path last``: the latest checkpoint of the same run, and that run's log folder."""
        if self.subcommand == "fit":
            _resolve_last_checkpoint(self.config["fit"])

    def before_fit(self) -> None:
        """Fill TensorBoard's HParams table; stop on a non-finite loss."""
        self._add_hparams_table()
        if not any(isinstance(c, StopOnNonFinite) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(StopOnNonFinite())

    def before_validate(self) -> None:
        """As :meth:`before_fit`."""
        self._add_hparams_table()

    def before_test(self) -> None:
        """As :meth:`before_fit`."""
        self._add_hparams_table()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's trainer, with the process-group timeout of ``--pg_timeout`` on its DDP/FSDP strategy."""
        trainer = super().instantiate_trainer(**kwargs)
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        apply_process_group_timeout(trainer, config.get("pg_timeout"))
        return trainer

    def add_arguments_to_parser(self, parser) -> None:
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


def _version_number(path: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _checkpoint_in(version_dir: Path) -> Path | None:
    """``checkpoints/last.ckpt`` of a run version, else its newest checkpoint (file or sharded directory)."""
    folder = version_dir / "checkpoints"
    if (folder / "last.ckpt").exists():
        return folder / "last.ckpt"
    found = [p for p in folder.glob("*.ckpt") if p.exists()] if folder.is_dir() else []
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


def lightning_cli(args: list[str] | None = None, run: bool = True) -> BaldroCLI:
    """Build (and by default run) the LightningCLI part of ``baldro-pl``."""
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
        parser_kwargs={"default_env": True},
        args=args,
        run=run,
    )


def _print_help() -> None:
    print("usage: baldro-pl COMMAND [options]   (baldro-pl COMMAND --help for the options of one command)\n")
    print("BalDRO unlearning for large language models on PyTorch Lightning.\n\ncommands:")
    for name, text in LIGHTNING_COMMANDS.items():
        print(f"  {name:10s} {text}")
    for name, (_, text) in EXTRA_COMMANDS.items():
        print(f"  {name:10s} {text}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``baldro-pl`` console script."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _print_help()
        return 0
    if argv[0] in EXTRA_COMMANDS:
        import importlib

        module = importlib.import_module(EXTRA_COMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    from baldro_pl.export import OutputExistsError

    try:
        lightning_cli(None if from_command_line else argv)
    except (NonFiniteLossError, OutputExistsError) as err:
        print(f"baldro-pl {argv[0]}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
