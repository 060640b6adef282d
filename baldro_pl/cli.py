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
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from baldro_pl.callbacks import HParamsTable
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

    def before_fit(self) -> None:
        """Fill TensorBoard's HParams table with the hyperparameters and the evaluation headline metrics."""
        self._add_hparams_table()

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
    lightning_cli(None if from_command_line else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
