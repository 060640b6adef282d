"""``baldro-pl demo``: the whole pipeline on a synthetic TOFU-style set, with no download, in minutes on a CPU.

Layout of the output directory (default ``outputs/demo``)::

    data/                    synthetic TOFU-style splits (<split>.jsonl), as ../shared/data/tofu
    models/base/             a tiny Llama built from a config + a BPE tokenizer trained on the set
    models/target/           base fine-tuned on all data (``full`` + the utility sets' QA: its general knowledge)
    models/retain/           base fine-tuned without the forget set (``retain90`` + the same general knowledge)
    eval/retain/TOFU_EVAL.json   the retain model's evaluation: the reference of forget quality and privleak
    models/unlearned/<method>/   each unlearned model (Hugging Face directory, tokenizer included)
    runs/                    TensorBoard logs of every step, with the HParams of every run
    comparison.csv           the comparison tables: one row per (method, metric), full precision
    summary.md               the same tables in Markdown, with where everything is

The unlearning settings (learning rate, epochs, batch, NPO's beta, alpha, gamma, the DV aggregator, the evaluation's
generation budget) are read from ``configs/demo.yaml`` (:data:`DEMO_CONFIG`, or ``--config``), the file that
``baldro-pl fit -c configs/demo.yaml`` runs, so that the two cannot drift apart.

CPU threads: torch's intra-op thread count follows the cores that other processes leave free
(:mod:`baldro_pl.threads`), so that a busy neighbour does not stall the demo; ``--threads N`` or ``OMP_NUM_THREADS``
fix it instead.
"""

from __future__ import annotations

import csv
import io
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baldro_pl.datamodules.formatting import PromptFormat
from baldro_pl.datamodules.synthetic import generate_synthetic_tofu, synthetic_texts, write_synthetic_tofu
from baldro_pl.files import write_text_atomic
from baldro_pl.objectives import BalDRODV, BalDROG, Mean
from baldro_pl.tables import TABLE_ROWS as HEADLINE_ROWS
from baldro_pl.tables import format_value
from baldro_pl.toy import tiny_llama, train_tokenizer

DEMO_SEED = 0
DEMO_VOCAB = 1024
DEMO_MODEL = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2}


def prepare_demo(out_dir: str | Path = "outputs/demo", seed: int = DEMO_SEED) -> dict[str, Path]:
    """Write the synthetic data, train the tokenizer and build the base model (idempotent for the same seed).

    Returns:
        Paths of ``data`` and ``base`` (the base model directory, tokenizer included).
    """
    out = Path(out_dir)
    data = write_synthetic_tofu(out / "data", seed=seed)
    base = out / "models" / "base"
    if not (base / "config.json").exists():
        splits = generate_synthetic_tofu(seed)
        tokenizer = train_tokenizer(synthetic_texts(splits, PromptFormat.llama2_chat()), vocab_size=DEMO_VOCAB)
        model = tiny_llama(
            len(tokenizer),
            intermediate_size=4 * DEMO_MODEL["hidden_size"],
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            seed=seed,
            **DEMO_MODEL,
        )
        tmp = base.with_name(".base.tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.replace(base)
    return {"data": data, "base": base}


# ---------------------------------------------------------------------------------------------------------------------
# The whole demo. The fine-tuning settings are the demo's own; the unlearning ones come from configs/demo.yaml.
FINETUNE = {"learning_rate": 2e-3, "batch_size": 16, "epochs": 30}
#: The unlearning settings of ``baldro-pl demo``: ``configs/demo.yaml`` of the source tree (an editable install).
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
METHODS = {
    "npo": ("NPO", lambda settings: Mean()),
    "npo_group": ("NPO + BalDRO-G (ratio 0.5)", lambda settings: BalDROG(ratio=0.5)),
    "npo_dv": ("NPO + BalDRO-DV (temperature 1, hard)", lambda settings: BalDRODV(**settings.dv)),
}
TABLE_ROWS = list(HEADLINE_ROWS["TOFU"])


@dataclass(frozen=True)
class UnlearnSettings:
    """The unlearning and evaluation settings the demo takes from ``configs/demo.yaml``.

    Attributes:
        learning_rate, weight_decay, warmup_epochs, lr_schedule, gamma, alpha: ``model.init_args``.
        beta: ``model.init_args.forget_loss.init_args.beta`` (NPO).
        retain_per: ``model.init_args.retain_loss.init_args.per`` (NLL).
        dv: ``model.init_args.aggregator.init_args``, the BalDRO-DV of the ``npo_dv`` method.
        batch_size, forget_split: ``data.init_args``.
        epochs: ``trainer.max_epochs``.
        max_new_tokens: the evaluation suite's (``suite.init_args`` of the last of ``trainer.callbacks``).
        every_n_epochs: the evaluation callback's.
    """

    learning_rate: float
    weight_decay: float
    warmup_epochs: float
    lr_schedule: str
    gamma: float
    alpha: float
    beta: float
    retain_per: str
    dv: dict[str, Any]
    batch_size: int
    forget_split: str
    epochs: int
    max_new_tokens: int
    every_n_epochs: int


def load_settings(path: str | Path | None = None) -> UnlearnSettings:
    """Read the demo's unlearning settings from ``path`` (default :data:`DEMO_CONFIG`).

    Raises:
        FileNotFoundError: the file does not exist (a wheel install carries no configs/: give ``--config``).
        ValueError: a setting the demo needs is missing or the file is not a YAML mapping.
    """
    import yaml

    path = Path(DEMO_CONFIG if path is None else path)
    if not path.is_file():
        raise FileNotFoundError(
            f"demo config {path} not found: `baldro-pl demo` reads configs/demo.yaml of a source checkout "
            "(pip install -e .); give another with --config FILE"
        )
    config = yaml.safe_load(path.read_text())

    def get(*keys: str | int) -> Any:
        value: Any = config
        for key in keys:
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                name = ".".join(str(k) for k in keys)
                raise ValueError(f"demo config {path}: {name} is missing (see configs/demo.yaml)") from None
        return value

    model, data = ("model", "init_args"), ("data", "init_args")
    evaluation = ("trainer", "callbacks", -1, "init_args")
    return UnlearnSettings(
        learning_rate=float(get(*model, "learning_rate")),
        weight_decay=float(get(*model, "weight_decay")),
        warmup_epochs=float(get(*model, "warmup_epochs")),
        lr_schedule=get(*model, "lr_schedule"),
        gamma=float(get(*model, "gamma")),
        alpha=float(get(*model, "alpha")),
        beta=float(get(*model, "forget_loss", "init_args", "beta")),
        retain_per=get(*model, "retain_loss", "init_args", "per"),
        dv=dict(get(*model, "aggregator", "init_args")),
        batch_size=int(get(*data, "batch_size")),
        forget_split=get(*data, "forget_split"),
        epochs=int(get("trainer", "max_epochs")),
        max_new_tokens=int(get(*evaluation, "suite", "init_args", "max_new_tokens")),
        every_n_epochs=int(get(*evaluation, "every_n_epochs")),
    )


def _trainer(out: Path, name: str, epochs: int, callbacks: list | None = None):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from baldro_pl.run_output import PlainProgressBar, output_is_terminal

    callbacks = list(callbacks or [])
    if not output_is_terminal():  # a log file or a pipe: plain lines instead of a bar redrawn in place
        callbacks.append(PlainProgressBar())
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=TensorBoardLogger(out / "runs", name=name, default_hp_metric=False),
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
        log_every_n_steps=1,
    )


def _finetune_hparams():
    """A callback that puts a fine-tuning run into TensorBoard's HParams table.

    Its metric is the run's last training loss (``hp/train_loss``); the unlearning runs get theirs from
    :class:`~baldro_pl.callbacks.HParamsTable`.
    """
    from lightning.pytorch import Callback
    from lightning.pytorch.loggers import TensorBoardLogger

    class FinetuneHParams(Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            params = dict(pl_module.hparams)
            datamodule_hparams = getattr(trainer.datamodule, "hparams", None) or {}
            params.update({f"data.{k}": v for k, v in datamodule_hparams.items()})
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.log_hyperparams(params, metrics={"hp/train_loss": float("nan")})

        def on_train_end(self, trainer, pl_module) -> None:
            loss = trainer.callback_metrics.get("train/loss")
            if loss is not None:
                for logger in trainer.loggers:
                    logger.log_metrics({"hp/train_loss": float(loss)}, step=trainer.global_step)

    return FinetuneHParams()


def _finetune(out: Path, source: Path, train_file: Path, target: Path, name: str, epochs: int, callbacks: list) -> Path:
    from baldro_pl.datamodules import FinetuneDataModule
    from baldro_pl.modules import FinetuneModule

    if (target / "config.json").exists():
        print(f"    {target} exists, reused")
        return target
    module = FinetuneModule(
        str(source), output_dir=str(target), learning_rate=FINETUNE["learning_rate"], warmup_epochs=0.0
    )
    data = FinetuneDataModule(train=str(train_file), tokenizer=str(source), batch_size=FINETUNE["batch_size"])
    _trainer(out, name, epochs, [*callbacks, _finetune_hparams()]).fit(module, datamodule=data)
    return target


def _training_file(data: Path, split: str) -> Path:
    """Write ``split`` plus the utility sets' QA pairs as one training file, and return its path.

    The tiny model learns its "general knowledge" alongside the authors (a pretrained model brings it from
    pretraining; without it model utility would be 0 by construction).
    """
    import json

    target = data.parent / f"train_{split}.jsonl"
    if not target.exists():
        rows = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]
        for utility in ("real_authors_perturbed", "world_facts_perturbed"):
            for line in (data / f"{utility}.jsonl").read_text().splitlines():
                row = json.loads(line)
                rows.append({"question": row["question"], "answer": row["answer"]})
        write_text_atomic(target, "".join(json.dumps(r) + "\n" for r in rows))
    return target


@contextmanager
def _quiet_reference_notes():
    """Hold back the evaluator's notes that the retain model has no retain log: it is the reference itself."""

    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "no retain_logs_path" not in record.getMessage()

    logger, drop = logging.getLogger("baldro_pl.metrics.tofu"), Drop()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _evaluate(model_dir: Path, data: Path, retain_log: Path | None, settings: UnlearnSettings | None = None):
    from transformers import AutoModelForCausalLM

    from baldro_pl.datamodules import TOFUDataModule
    from baldro_pl.metrics import TOFUSuite

    settings = settings or load_settings()
    dm = TOFUDataModule(data_dir=str(data), forget_split=settings.forget_split, tokenizer=str(model_dir))
    dm.setup("test")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    suite = TOFUSuite(
        retain_logs_path=None if retain_log is None else str(retain_log), max_new_tokens=settings.max_new_tokens
    )
    suite.connect(encoder=dm.encoder, forget_split=dm.forget_split)
    with _quiet_reference_notes():
        return suite.evaluate(model, dm.evaluation_rows())


COLUMNS = ("target", "unlearned", "retain")


def _table(title: str, columns: dict[str, dict]) -> str:
    names = list(columns)
    width = max(len(label) for _, label in TABLE_ROWS)
    lines = [title, f"  {'metric':{width}s}  " + "  ".join(f"{n:>12s}" for n in names)]
    for key, label in TABLE_ROWS:
        cells = "  ".join(f"{format_value(columns[n].get(key)):>12s}" for n in names)
        lines.append(f"  {label:{width}s}  {cells}")
    return "\n".join(lines)


def _title(name: str) -> str:
    return f"{METHODS[name][0]}: forget10 of the synthetic set"


RETAIN_NOTE = (
    "retain: the reference itself: forget quality and the balance are measured against it, so not shown for it"
)


def comparison_csv(summaries: dict[str, dict], methods: list[str]) -> str:
    """Return ``comparison.csv``: one row per (method, metric).

    Each row holds the target's, the unlearned model's and the retain model's value, full precision (``repr`` of the
    float; an empty cell where there is no value).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "method_label", "metric", "description", *COLUMNS])
    for name in methods:
        columns = {"target": summaries["target"], "unlearned": summaries[name], "retain": summaries["retain"]}
        for key, label in TABLE_ROWS:
            cells = [columns[c].get(key) for c in COLUMNS]
            writer.writerow([name, METHODS[name][0], key, label, *("" if v is None else repr(float(v)) for v in cells)])
    return buffer.getvalue()


def summary_markdown(summaries: dict[str, dict], methods: list[str], paths: dict[str, str]) -> str:
    """``summary.md``: the printed tables in Markdown, then where the models, logs and files are."""
    out = ["# baldro-pl demo: unlearning forget10 of the synthetic TOFU-style set", ""]
    for name in methods:
        columns = {"target": summaries["target"], "unlearned": summaries[name], "retain": summaries["retain"]}
        out += [f"## {_title(name)}", "", "| metric | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * 3]
        for key, label in TABLE_ROWS:
            out.append(f"| {label} | " + " | ".join(format_value(columns[c].get(key)) for c in COLUMNS) + " |")
        out.append("")
    out += [f"({RETAIN_NOTE})", "", "## Files", ""]
    out += [f"- {what}: `{where}`" for what, where in paths.items()]
    return "\n".join(out) + "\n"


def run_demo(
    out_dir: str | Path = "outputs/demo",
    seed: int = DEMO_SEED,
    methods: list[str] | None = None,
    threads: int | None = None,
    config: str | Path | None = None,
) -> dict:
    """Fine-tune, then unlearn with NPO, NPO + BalDRO-G and NPO + BalDRO-DV.

    Prints one table per method and writes them as ``comparison.csv`` and ``summary.md``; keeps each unlearned model
    under ``models/unlearned/<method>``.

    Args:
        out_dir: where everything is written.
        seed: the seed of the synthetic data, the tiny model and training.
        methods: which of :data:`METHODS` to run (default: all).
        threads: torch's intra-op thread count; None follows the free cores (:class:`baldro_pl.threads.CPUThreads`:
            ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` fix it if set). The count found at the start is put back.
        config: the unlearning settings (default :data:`DEMO_CONFIG`, configs/demo.yaml; :func:`load_settings`).

    Returns:
        The summaries: ``{"target": ..., "retain": ..., <method>: ...}``.
    """
    from baldro_pl.threads import CPUThreads

    methods = methods or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"demo: unknown methods {unknown}; choose from {list(METHODS)}")
    settings = load_settings(config)
    cpu_threads = CPUThreads(threads)
    try:
        return _run_demo(Path(out_dir), seed, methods, cpu_threads, settings)
    finally:
        cpu_threads.restore()


def _run_demo(out: Path, seed: int, methods: list[str], cpu_threads, settings: UnlearnSettings) -> dict:
    import time

    import torch

    from baldro_pl.callbacks import HFExport, HParamsTable
    from baldro_pl.datamodules import TOFUDataModule
    from baldro_pl.metrics import Evaluation, TOFUSuite
    from baldro_pl.metrics.logs import eval_log_path, write_evaluation
    from baldro_pl.modules import UnlearningModule
    from baldro_pl.objectives import NLL, NPO
    from baldro_pl.run_output import configure_console_output
    from baldro_pl.threads import AdaptiveThreads

    start = time.perf_counter()
    torch.manual_seed(seed)
    undo_console = configure_console_output()
    adaptive = AdaptiveThreads(cpu_threads)

    def step(i: int, text: str) -> None:
        print(f"\n[{i}/5] {text}  ({time.perf_counter() - start:.0f} s)", flush=True)

    try:
        step(1, f"synthetic TOFU-style data and a tiny Llama in {out}")
        paths = prepare_demo(out, seed)
        data = paths["data"]
        models = out / "models"
        base = paths["base"]
        epochs = FINETUNE["epochs"]
        step(2, "fine-tuning the target model on all data (full + general knowledge)")
        full = _training_file(data, "full")
        target = _finetune(out, base, full, models / "target", "target", epochs, [adaptive])
        step(3, "fine-tuning the retain model on everything but the forget set (retain90 + general knowledge)")
        retain90 = _training_file(data, "retain90")
        retain = _finetune(out, base, retain90, models / "retain", "retain", epochs, [adaptive])
        step(4, "evaluating the retain model (the reference of forget quality) and the target model")
        cpu_threads.update()
        retain_result = _evaluate(retain, data, None, settings)
        retain_folder = write_evaluation(out / "eval" / "retain", "TOFU", retain_result.logs, retain_result.summary)
        retain_log = eval_log_path(retain_folder, "TOFU")
        cpu_threads.update()
        summaries = {"retain": retain_result.summary, "target": _evaluate(target, data, retain_log, settings).summary}
        step(5, "unlearning the target's forget10 with " + ", ".join(METHODS[m][0] for m in methods))
        unlearned: dict[str, Path] = {}
        logs: dict[str, str] = {}
        for name in methods:
            label, aggregator = METHODS[name]
            print(f"\n--- {label}", flush=True)
            module = UnlearningModule(
                str(target),
                NPO(beta=settings.beta),
                aggregator(settings),
                NLL(per=settings.retain_per),
                gamma=settings.gamma,
                alpha=settings.alpha,
                learning_rate=settings.learning_rate,
                weight_decay=settings.weight_decay,
                warmup_epochs=settings.warmup_epochs,
                lr_schedule=settings.lr_schedule,
            )
            dm = TOFUDataModule(
                data_dir=str(data),
                forget_split=settings.forget_split,
                tokenizer=str(target),
                batch_size=settings.batch_size,
            )
            evaluation = Evaluation(
                TOFUSuite(retain_logs_path=str(retain_log), max_new_tokens=settings.max_new_tokens),
                every_n_epochs=settings.every_n_epochs,
                eval_on_start=False,
            )
            unlearned[name] = models / "unlearned" / name
            export = HFExport(dirpath=str(unlearned[name]), overwrite=True)
            callbacks = [adaptive, evaluation, HParamsTable(), export]
            trainer = _trainer(out, f"unlearn_{name}", settings.epochs, callbacks=callbacks)
            trainer.fit(module, datamodule=dm)
            summaries[name] = evaluation.last_result.summary
            logs[name] = str(trainer.log_dir)
            print(f"    logs and TOFU_EVAL.json: {trainer.log_dir}\n    unlearned model: {unlearned[name]}", flush=True)
        print()
        for name in methods:
            columns = {"target": summaries["target"], "unlearned": summaries[name], "retain": summaries["retain"]}
            print(_table(_title(name), columns) + "\n")
        files = {
            "target model": str(target),
            "retain model": str(retain),
            **{f"unlearned model ({METHODS[n][0]})": str(unlearned[n]) for n in methods},
            **{f"logs and TOFU_EVAL.json ({METHODS[n][0]})": logs[n] for n in methods},
            "retain model's evaluation (the reference)": str(retain_log),
            "TensorBoard logs (HParams tab: every run)": str(out / "runs"),
        }
        comparison = write_text_atomic(out / "comparison.csv", comparison_csv(summaries, methods))
        summary = write_text_atomic(out / "summary.md", summary_markdown(summaries, methods, files))
        print(f"({RETAIN_NOTE})")
        print(f"comparison: {comparison} and {summary}")
        print(f"unlearned models (Hugging Face directories): {models / 'unlearned'}/{{{','.join(methods)}}}")
        print(f"TensorBoard: tensorboard --logdir {out / 'runs'}")
        print(f"{cpu_threads.describe()}")
        print(f"done in {time.perf_counter() - start:.0f} s; everything is under {out}")
        return summaries
    finally:
        undo_console()


def main(argv: list[str] | None = None) -> int:
    """``baldro-pl demo [--output-dir DIR] [--seed N] [--methods npo npo_group npo_dv] [--threads N] [--config F]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="baldro-pl demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir", default="outputs/demo", help="where everything is written (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch's CPU threads (default: one per core other processes leave free, re-measured every second; "
        "OMP_NUM_THREADS fixes it too)",
    )
    parser.add_argument(
        "--config",
        default=str(DEMO_CONFIG),
        help="the unlearning settings: a YAML laid out as configs/demo.yaml (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not Path(args.config).is_file():
        parser.error(f"--config: demo config {args.config} not found (configs/demo.yaml of a source checkout)")
    run_demo(args.output_dir, args.seed, args.methods, threads=args.threads, config=args.config)
    return 0


def _positive_int(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)
