"""``baldro-pl demo``: the whole pipeline on a synthetic TOFU-style set, with no download, in minutes on a CPU.

Layout of the output directory (default ``outputs/demo``)::

    data/                    synthetic TOFU-style splits (<split>.jsonl), as ../shared/data/tofu
    models/base/             a tiny Llama built from a config + a BPE tokenizer trained on the set
    models/target/           base fine-tuned on all data (``full`` + the utility sets' QA: its general knowledge)
    models/retain/           base fine-tuned without the forget set (``retain90`` + the same general knowledge)
    eval/retain/TOFU_EVAL.json   the retain model's evaluation: the reference of forget quality and privleak
    runs/                    TensorBoard logs of every step
"""

from __future__ import annotations

from pathlib import Path

from baldro_pl.datamodules.formatting import PromptFormat
from baldro_pl.datamodules.synthetic import generate_synthetic_tofu, synthetic_texts, write_synthetic_tofu
from baldro_pl.objectives import BalDRODV, BalDROG, Mean
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
TABLE_ROWS = [
    ("forget_quality", "forget quality (KS p vs retain, higher = closer)"),
    ("model_utility", "model utility (higher = better)"),
    ("forget_truth_ratio", "forget truth ratio"),
    ("forget_Q_A_Prob", "forget answer probability"),
    ("forget_Q_A_ROUGE", "forget ROUGE-L recall"),
    ("retain_Q_A_Prob", "retain answer probability"),
    ("privleak", "privleak (0 = like retain)"),
    ("forget_balance_within", "forget samples within retain range"),
]
EVAL_MAX_NEW_TOKENS = 32  # the synthetic answers are a dozen tokens; the published TOFU budget is 200


def _trainer(out: Path, name: str, epochs: int, callbacks: list | None = None):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    return pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=TensorBoardLogger(out / "runs", name=name, default_hp_metric=False),
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks or [],
        log_every_n_steps=1,
    )


def _finetune(out: Path, source: Path, train_file: Path, target: Path, name: str, epochs: int) -> Path:
    from baldro_pl.datamodules import FinetuneDataModule
    from baldro_pl.modules import FinetuneModule

    if (target / "config.json").exists():
        print(f"    {target} exists, reused")
        return target
    module = FinetuneModule(
        str(source), output_dir=str(target), learning_rate=FINETUNE["learning_rate"], warmup_epochs=0.0
    )
    data = FinetuneDataModule(train=str(train_file), tokenizer=str(source), batch_size=FINETUNE["batch_size"])
    _trainer(out, name, epochs).fit(module, datamodule=data)
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
        tmp = target.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(target)
    return target


def _evaluate(model_dir: Path, data: Path, retain_log: Path | None):
    from transformers import AutoModelForCausalLM

    from baldro_pl.datamodules import TOFUDataModule
    from baldro_pl.metrics import evaluate_tofu

    dm = TOFUDataModule(data_dir=str(data), forget_split="forget10", tokenizer=str(model_dir))
    dm.setup("test")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return evaluate_tofu(
        model,
        dm.tokenizer,
        dm.evaluation_rows(),
        prompt_format=dm.prompt_format,
        retain_logs_path=None if retain_log is None else str(retain_log),
        forget_split="forget10",
        max_new_tokens=EVAL_MAX_NEW_TOKENS,
    )


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(title: str, columns: dict[str, dict]) -> str:
    names = list(columns)
    width = max(len(label) for _, label in TABLE_ROWS)
    lines = [title, f"  {'metric':{width}s}  " + "  ".join(f"{n:>12s}" for n in names)]
    for key, label in TABLE_ROWS:
        cells = "  ".join(f"{_format(columns[n].get(key)):>12s}" for n in names)
        lines.append(f"  {label:{width}s}  {cells}")
    return "\n".join(lines)


def run_demo(out_dir: str | Path = "outputs/demo", seed: int = DEMO_SEED, methods: list[str] | None = None) -> dict:
    """Fine-tune, then unlearn with NPO, NPO + BalDRO-G and NPO + BalDRO-DV; print one table per method.

    Returns the summaries: ``{"target": ..., "retain": ..., <method>: ...}``.
    """
    import time

    import torch

    from baldro_pl.datamodules import TOFUDataModule
    from baldro_pl.metrics import TOFUEvaluation, write_json_atomic
    from baldro_pl.modules import UnlearningModule
    from baldro_pl.objectives import NLL, NPO

    start = time.perf_counter()
    torch.manual_seed(seed)
    out = Path(out_dir)
    methods = methods or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"demo: unknown methods {unknown}; choose from {list(METHODS)}")

    def step(i: int, text: str) -> None:
        print(f"\n[{i}/5] {text}  ({time.perf_counter() - start:.0f} s)", flush=True)

    step(1, f"synthetic TOFU-style data and a tiny Llama in {out}")
    paths = prepare_demo(out, seed)
    data = paths["data"]
    models = out / "models"
    base = paths["base"]
    step(2, "fine-tuning the target model on all data (full + general knowledge)")
    target = _finetune(out, base, _training_file(data, "full"), models / "target", "target", FINETUNE["epochs"])
    step(3, "fine-tuning the retain model on everything but the forget set (retain90 + general knowledge)")
    retain = _finetune(out, base, _training_file(data, "retain90"), models / "retain", "retain", FINETUNE["epochs"])
    step(4, "evaluating the retain model (the reference of forget quality) and the target model")
    retain_result = _evaluate(retain, data, None)
    retain_log = write_json_atomic(out / "eval" / "retain" / "TOFU_EVAL.json", retain_result.logs)
    write_json_atomic(out / "eval" / "retain" / "TOFU_SUMMARY.json", retain_result.summary)
    summaries = {"retain": retain_result.summary, "target": _evaluate(target, data, retain_log).summary}
    step(5, "unlearning the target's forget10 with " + ", ".join(METHODS[m][0] for m in methods))
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
        trainer = _trainer(out, f"unlearn_{name}", UNLEARN["epochs"], callbacks=[evaluation])
        trainer.fit(module, datamodule=dm)
        summaries[name] = evaluation.last_result.summary
        print(f"    logs and TOFU_EVAL.json: {trainer.log_dir}")
    print()
    for name in methods:
        columns = {"target": summaries["target"], "unlearned": summaries[name], "retain": summaries["retain"]}
        print(_table(f"{METHODS[name][0]}: forget10 of the synthetic set", columns) + "\n")
    print("(retain: the reference itself: forget quality and the balance are measured against it, so not shown for it)")
    print(f"TensorBoard: tensorboard --logdir {out / 'runs'}")
    print(f"done in {time.perf_counter() - start:.0f} s; everything is under {out}")
    return summaries


def main(argv: list[str] | None = None) -> int:
    """``baldro-pl demo [--output-dir DIR] [--seed N] [--methods npo npo_group npo_dv]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="baldro-pl demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir", default="outputs/demo", help="where everything is written (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args(argv)
    run_demo(args.output_dir, args.seed, args.methods)
    return 0
