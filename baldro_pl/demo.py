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

CPU threads: torch's intra-op thread count follows the cores that other processes leave free
(:mod:`baldro_pl.threads`), so that a busy neighbour does not stall the demo; ``--threads N`` or ``OMP_NUM_THREADS``
fix it instead.
"""

from __future__ import annotations

import csv
import io
import logging
from contextlib import contextmanager
from pathlib import Path

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
# The whole demo. The unlearning settings below are the ones of configs/demo.yaml (a test keeps the two in step).
FINETUNE = {"learning_rate": 2e-3, "batch_size": 16, "epochs": 30}
UNLEARN = {"learning_rate": 3e-4, "batch_size": 8, "epochs": 5, "beta": 0.1, "alpha": 1.0}
METHODS = {
    "npo": ("NPO", lambda: Mean()),
    "npo_group": ("NPO + BalDRO-G (ratio 0.5)", lambda: BalDROG(ratio=0.5)),
    "npo_dv": ("NPO + BalDRO-DV (temperature 1, hard)", lambda: BalDRODV(temperature=1.0)),
}
TABLE_ROWS = list(HEADLINE_ROWS["TOFU"])
EVAL_MAX_NEW_TOKENS = 32  # the synthetic answers are a dozen tokens; the published TOFU budget is 200


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
    """A callback that puts a fine-tuning run into TensorBoard's HParams table, with its last training loss as the
    metric (``hp/train_loss``); the unlearning runs get theirs from :class:`~baldro_pl.callbacks.HParamsTable`."""
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
    """``split`` plus the utility sets' QA pairs: the tiny model learns its "general knowledge" alongside the
    authors (a pretrained model brings it from pretraining; without it model utility would be 0 by construction)."""
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


def _evaluate(model_dir: Path, data: Path, retain_log: Path | None):
    from transformers import AutoModelForCausalLM

    from baldro_pl.datamodules import TOFUDataModule
    from baldro_pl.metrics import evaluate_tofu

    dm = TOFUDataModule(data_dir=str(data), forget_split="forget10", tokenizer=str(model_dir))
    dm.setup("test")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with _quiet_reference_notes():
        return evaluate_tofu(
            model,
            dm.tokenizer,
            dm.evaluation_rows(),
            prompt_format=dm.prompt_format,
            retain_logs_path=None if retain_log is None else str(retain_log),
            forget_split="forget10",
            max_new_tokens=EVAL_MAX_NEW_TOKENS,
        )


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
    """``comparison.csv``: one row per (method, metric) with the target's, the unlearned model's and the retain
    model's value, full precision (``repr`` of the float; an empty cell where there is no value)."""
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
) -> dict:
    """Fine-tune, then unlearn with NPO, NPO + BalDRO-G and NPO + BalDRO-DV; print one table per method and write
    them as ``comparison.csv`` and ``summary.md``; keep each unlearned model under ``models/unlearned/<method>``.

    ``threads``: torch's intra-op thread count; None follows the free cores (:class:`baldro_pl.threads.CPUThreads`:
    ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` fix it if set). The count found at the start is put back at the end.

    Returns the summaries: ``{"target": ..., "retain": ..., <method>: ...}``.
    """
    from baldro_pl.threads import CPUThreads

    methods = methods or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"demo: unknown methods {unknown}; choose from {list(METHODS)}")
    cpu_threads = CPUThreads(threads)
    try:
        return _run_demo(Path(out_dir), seed, methods, cpu_threads)
    finally:
        cpu_threads.restore()


def _run_demo(out: Path, seed: int, methods: list[str], cpu_threads) -> dict:
    import time

    import torch

    from baldro_pl.callbacks import HFExport, HParamsTable
    from baldro_pl.datamodules import TOFUDataModule
    from baldro_pl.metrics import TOFUEvaluation, write_json_atomic
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
        retain_result = _evaluate(retain, data, None)
        retain_log = write_json_atomic(out / "eval" / "retain" / "TOFU_EVAL.json", retain_result.logs)
        write_json_atomic(out / "eval" / "retain" / "TOFU_SUMMARY.json", retain_result.summary)
        cpu_threads.update()
        summaries = {"retain": retain_result.summary, "target": _evaluate(target, data, retain_log).summary}
        step(5, "unlearning the target's forget10 with " + ", ".join(METHODS[m][0] for m in methods))
        unlearned: dict[str, Path] = {}
        logs: dict[str, str] = {}
        for name in methods:
            label, aggregator = METHODS[name]
            print(f"\n--- {label}", flush=True)
            module = UnlearningModule(
                str(target),
                NPO(beta=UNLEARN["beta"]),
                aggregator(),
                NLL(),
                alpha=UNLEARN["alpha"],
                learning_rate=UNLEARN["learning_rate"],
                warmup_epochs=0.0,
            )
            dm = TOFUDataModule(
                data_dir=str(data), forget_split="forget10", tokenizer=str(target), batch_size=UNLEARN["batch_size"]
            )
            evaluation = TOFUEvaluation(
                retain_logs_path=str(retain_log),
                every_n_epochs=UNLEARN["epochs"],
                eval_on_start=False,
                max_new_tokens=EVAL_MAX_NEW_TOKENS,
            )
            unlearned[name] = models / "unlearned" / name
            export = HFExport(dirpath=str(unlearned[name]), overwrite=True)
            callbacks = [adaptive, evaluation, HParamsTable(), export]
            trainer = _trainer(out, f"unlearn_{name}", UNLEARN["epochs"], callbacks=callbacks)
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
    """``baldro-pl demo [--output-dir DIR] [--seed N] [--methods npo npo_group npo_dv] [--threads N]``."""
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
    args = parser.parse_args(argv)
    run_demo(args.output_dir, args.seed, args.methods, threads=args.threads)
    return 0


def _positive_int(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)
