"""The heterogeneity benchmark: a synthetic TOFU-style set whose forget samples are memorised to different degrees.

BalDRO is about forget sets whose samples are not equally hard to forget. Here the ``forget10`` authors are split into
strata (complete authors) that the target model sees 1, 2, 4 and 8 times during its fine-tuning (their rows are
repeated in its training file), so the 8x samples are much more memorised than the 1x ones; the forget rows carry
their stratum (``"stratum": "x1"`` ... ``"x8"``, :mod:`baldro_pl.datamodules.synthetic`) and the TOFU evaluation
reports the forget truth ratio, answer probability and balance fractions per stratum as well
(``stratum/<s>/...``, :mod:`baldro_pl.metrics.strata`).

:func:`prepare_heterogeneity` writes everything a study needs before its fine-tunes, on a CPU, in seconds::

    <out_dir>/data/                 the synthetic splits (<split>.jsonl, TOFU's layout; forget rows with "stratum")
    <out_dir>/train_target.jsonl    full, each forget stratum's rows repeated its number of times, + general knowledge
    <out_dir>/train_retain.jsonl    retain90 + the same general knowledge (the reference model never sees forget10)
    <out_dir>/models/base/          a tiny Llama built from a config + a BPE tokenizer trained on the set
    <out_dir>/finetune_{target,retain}.yaml   `baldro-pl fit -c` configs of the two fine-tunes (:func:`finetune_config`)
    <out_dir>/heterogeneity.json    the arguments (written last: the set is complete when it is there)

The target and retain models are then fine-tuned from ``models/base`` with ``baldro-pl fit``
(``baldro_pl.modules.FinetuneModule`` + ``baldro_pl.datamodules.FinetuneDataModule``, prompt format Llama-2 chat, the
datamodule default) with the settings of :data:`FINETUNE` (:func:`finetune_config` gives the config). Calibration on
a CPU core, the numbers behind the defaults, is in the comments below.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from baldro_pl.datamodules.formatting import PromptFormat
from baldro_pl.datamodules.synthetic import (
    generate_synthetic_tofu,
    repeat_by_stratum,
    synthetic_texts,
    write_synthetic_tofu,
)
from baldro_pl.demo import DEMO_VOCAB
from baldro_pl.files import share_like_new_files, write_text_atomic
from baldro_pl.toy import tiny_llama, train_tokenizer

MANIFEST = "heterogeneity.json"
_FINETUNE_HEADER = (
    "# The heterogeneity benchmark's {which} model: baldro-pl fit -c <this file> [--model.init_args.output_dir DIR]\n"
    "# (written by baldro_pl.heterogeneity.prepare_heterogeneity; settings: baldro_pl.heterogeneity.FINETUNE)\n"
)
UTILITY_SPLITS = ("real_authors_perturbed", "world_facts_perturbed")

# Sizes. 120 authors x 10 QA: forget10 = 12 authors = 120 forget rows, 3 authors (30 rows) per stratum, the smallest
# set with >= 100 forget samples and >= 25 per stratum in 4 strata of complete authors (forget10 is 10% of the
# authors). 44 utility rows per set (the most the generator has): model utility is read on them.
STRATA: tuple[int, ...] = (1, 2, 4, 8)
N_AUTHORS = 120
QA_PER_AUTHOR = 10
N_UTILITY = 44
# The demo's model (hidden 128, 4 layers, ~1M parameters) and tokenizer size.
MODEL: dict[str, int] = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2}
VOCAB = DEMO_VOCAB
# Fine-tuning of the target and retain models (answer-only NLL, AdamW, linear decay to 0, no warm-up).
#
# Calibrated on a 2-core CPU shared with other jobs (one thread, torch 2 / Lightning 2, seed 0; the full TOFU suite on
# the results, max_new_tokens 32, about 12 s per model). By construction a 1x forget row is seen as often as a retain
# row, so the epoch count trades the retain model's quality against the spread between strata:
#
#   epochs  lr    target forget Q_A_Prob  x1 / x2 / x4 / x8     under-forgotten x1 / x8   retain model retain_Q_A_Prob
#   10      2e-3  0.80 / 0.87 / 0.92 / 0.98 (NLL 0.23 .. 0.02)  0.20 / 0.67               0.77 (target 0.79)
#   12      3e-3  0.75 / 0.83 / 0.88 / 0.96                     0.07 / 0.13               0.74 (lr too high: noisier)
#   20      2e-3  0.99 / 1.00 / 1.00 / 1.00 (saturated)         0.47 / 0.70               0.96
#
# (the retain model's forget Q_A_Prob is about 0.6 in every stratum: the templated answers are mostly predictable,
# the attribute value is what is memorised; its forget truth ratio is 0.88, the target's 0.82 / 0.73 / 0.72 / 0.60.)
# 10 epochs at 2e-3 keep the strata clearly apart while the retain model knows the retain set about as well as the
# target does. Cost: 43 s (retain, 1,168 rows) + 73 s (target, 1,618 rows) with the machine lightly loaded (load
# 1.2), 95 s + 104 s through `baldro-pl fit` with its two cores loaded 2.5-3.5; 20 epochs: 189 s + 234 s (load ~4).
FINETUNE: dict[str, float | int] = {"learning_rate": 2e-3, "batch_size": 16, "epochs": 10}


def _plain_qa(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    return [{"question": r["question"], "answer": r["answer"]} for r in rows]


def training_rows(splits: Mapping[str, Sequence[Mapping[str, Any]]], model: str) -> list[dict]:
    """The fine-tuning rows (``question`` / ``answer``) of the ``"target"`` or ``"retain"`` model.

    ``target``: ``retain90``, then each ``forget10`` row as many times as its stratum says (a row without a stratum
    once: then it is ``full``), then the utility sets' QA pairs: the tiny model's "general knowledge" (a pretrained
    model brings it from pretraining; without it model utility would be 0 by construction). ``retain``: ``retain90``
    and the same general knowledge.
    """
    if model not in ("target", "retain"):
        raise ValueError(f"model must be 'target' or 'retain', got {model!r}")
    rows = _plain_qa(splits["retain90"])
    if model == "target":
        rows += repeat_by_stratum(splits["forget10"])
    for split in UTILITY_SPLITS:
        rows += _plain_qa(splits[split])
    return rows


def _jsonl(rows: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _build_base(splits: Mapping[str, list[dict]], base: Path, *, vocab_size: int, model: Mapping[str, int], seed: int):
    """Tokenizer trained on the set (prompts included) + a randomly initialised tiny Llama, as the demo's base model.

    Written to a temporary folder and renamed into place.
    """
    tokenizer = train_tokenizer(synthetic_texts(splits, PromptFormat.llama2_chat()), vocab_size=vocab_size)
    config = dict(model)
    config.setdefault("intermediate_size", 4 * config["hidden_size"])
    llama = tiny_llama(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        seed=seed,
        **config,
    )
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{base.name}.", dir=base.parent))
    try:
        llama.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        share_like_new_files(tmp)
        if base.exists():  # left by an interrupted run (no manifest yet): replace it
            shutil.rmtree(base)
        try:
            os.rename(tmp, base)
        except OSError:
            if not (base / "config.json").exists():  # not a concurrent run that finished the same base first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_heterogeneity(
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    strata: Sequence[int] = STRATA,
    n_authors: int = N_AUTHORS,
    qa_per_author: int = QA_PER_AUTHOR,
    n_utility: int = N_UTILITY,
    vocab_size: int = VOCAB,
    model: Mapping[str, int] | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the heterogeneity benchmark's data, training files and base model (see the module docstring).

    Idempotent: a second call with the same arguments finds the manifest and returns at once. Every file and folder is
    written to a temporary name and renamed into place, the manifest last, so an interrupted call leaves no
    half-written piece and the next call completes the set (one call at a time per folder).

    Args:
        out_dir: the folder (created; other content in it is left alone).
        seed: seed of the data, of the stratum draw and of the base model's initialisation.
        strata: repeat counts of the forget strata (``forget10``'s authors must split evenly).
        n_authors: number of synthetic authors (:func:`generate_synthetic_tofu`).
        qa_per_author: question-answer pairs per author.
        n_utility: rows of each utility split (real authors, world facts; 1 to 44).
        vocab_size: size of the BPE tokenizer.
        model: the tiny Llama's config (:func:`baldro_pl.toy.tiny_llama` arguments; default :data:`MODEL`).
        overwrite: replace a set made with other arguments instead of raising.

    Returns:
        ``{"data": <out_dir>/data, "base": <out_dir>/models/base, "train_target": <out_dir>/train_target.jsonl,
        "train_retain": <out_dir>/train_retain.jsonl, "finetune_target": <out_dir>/finetune_target.yaml,
        "finetune_retain": <out_dir>/finetune_retain.yaml}``; the last two are :func:`finetune_config`'s configs
        (absolute paths, output ``<out_dir>/models/<target|retain>``, TensorBoard logs in ``<out_dir>/runs``) for
        ``baldro-pl fit -c``.

    Raises:
        ValueError: ``out_dir`` holds a set made with other arguments (and ``overwrite`` is false); bad sizes or strata.
    """
    out = Path(out_dir).expanduser()
    paths = {
        "data": out / "data",
        "base": out / "models" / "base",
        "train_target": out / "train_target.jsonl",
        "train_retain": out / "train_retain.jsonl",
        "finetune_target": out / "finetune_target.yaml",
        "finetune_retain": out / "finetune_retain.yaml",
    }
    model = dict(MODEL if model is None else model)
    manifest = {
        "generator": "baldro_pl.heterogeneity",
        "seed": seed,
        "strata": list(strata),
        "n_authors": n_authors,
        "qa_per_author": qa_per_author,
        "n_utility": n_utility,
        "vocab_size": vocab_size,
        "model": model,
    }
    manifest_path = out / MANIFEST
    try:
        found = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    if found == manifest and all(p.exists() for p in paths.values()):
        return paths
    if found is not None and found != manifest and not overwrite:
        raise ValueError(
            f"{out} holds a heterogeneity set made with other arguments ({manifest_path}); pass overwrite=True to "
            "replace it, or choose another folder"
        )
    manifest_path.unlink(missing_ok=True)  # being (re)built: the set is complete only when the manifest is back
    sizes = {"n_authors": n_authors, "qa_per_author": qa_per_author, "n_utility": n_utility}
    splits = generate_synthetic_tofu(seed, strata=strata, **sizes)
    out.mkdir(parents=True, exist_ok=True)
    # the data folder of another set is replaced only when asked to; an interrupted run's (same set) is kept as it is
    write_synthetic_tofu(paths["data"], seed, strata=strata, overwrite=found is not None, **sizes)
    write_text_atomic(paths["train_target"], _jsonl(training_rows(splits, "target")))
    write_text_atomic(paths["train_retain"], _jsonl(training_rows(splits, "retain")))
    absolute = {k: p.resolve() for k, p in paths.items()}  # the configs work from any directory
    for which in ("target", "retain"):
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(out.resolve() / "runs"), "name": f"finetune_{which}"},
        }
        config = finetune_config(absolute, which, out.resolve() / "models" / which, seed=seed, logger=logger)
        write_text_atomic(paths[f"finetune_{which}"], _FINETUNE_HEADER.format(which=which) + yaml.safe_dump(config))
    _build_base(splits, paths["base"], vocab_size=vocab_size, model=model, seed=seed)
    write_text_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")
    return paths


def finetune_config(
    paths: Mapping[str, str | os.PathLike],
    which: str,
    output_dir: str | os.PathLike,
    *,
    seed: int = 0,
    **trainer: Any,
) -> dict[str, Any]:
    """A ``baldro-pl fit`` config (as a dict: dump it to YAML) that fine-tunes the target or retain model.

    Args:
        paths: :func:`prepare_heterogeneity`'s result.
        which: ``"target"`` (on ``train_target.jsonl``) or ``"retain"`` (on ``train_retain.jsonl``).
        output_dir: where the fine-tuned Hugging Face model is exported.
        seed: ``seed_everything`` and the datamodule's shuffle seed.
        **trainer: overrides of the ``trainer`` section.
    """
    if which not in ("target", "retain"):
        raise ValueError(f"which must be 'target' or 'retain', got {which!r}")
    base = str(paths["base"])
    return {
        "seed_everything": seed,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": FINETUNE["epochs"],
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "enable_checkpointing": False,
            "log_every_n_steps": 10,
            **trainer,
        },
        "model": {
            "class_path": "baldro_pl.modules.FinetuneModule",
            "init_args": {
                "model": base,
                "output_dir": str(output_dir),
                "learning_rate": FINETUNE["learning_rate"],
                "warmup_epochs": 0.0,
            },
        },
        "data": {
            "class_path": "baldro_pl.datamodules.FinetuneDataModule",
            "init_args": {
                "train": str(paths[f"train_{which}"]),
                "tokenizer": base,
                "batch_size": FINETUNE["batch_size"],
                "seed": seed,
            },
        },
    }
