"""Step-count and warm-up parity with the published runs (``schedule="hf_trainer"``) and Lightning's own schedule.

The published runs are open-unlearning's HF Trainer on ``transformers==4.45.1`` (pinned by the BalDRO repository).
:func:`hf_trainer_4_45_steps` transcribes that Trainer's step loop (``_inner_training_loop``: a step when the count of
micro-batches since the start of the run reaches a multiple of the accumulation, or at the end of an epoch shorter
than one window; a stop at ``max_steps = epochs * max(batches // accumulate, 1)``), and
:func:`open_unlearning_warmup` transcribes open-unlearning's ``load_trainer_args``. The module's counts are checked
against both, by formula for the presets' numbers and by counting the optimiser steps of real fits.
"""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader
from toy_task import RETAIN_QA, ToyUnlearningData
from trainers import quiet_trainer

from baldro_pl.datamodules import PromptFormat, encode_qa, pad_samples
from baldro_pl.modules import FinetuneModule, UnlearningModule
from baldro_pl.modules.optim import steps_per_epoch, trained_batches_per_epoch, warmup_steps_for
from baldro_pl.objectives import NLL, NPO, BalDRODV
from baldro_pl.toy import tiny_llama


def hf_trainer_4_45_steps(batches: int, accumulate: int, epochs: int) -> int:
    """Optimiser steps transformers 4.45.1's Trainer takes (its loop, reduced to the step decisions)."""
    max_steps = math.ceil(epochs * max(batches // accumulate, 1))
    total_batched_samples = global_step = 0
    for _epoch in range(epochs):
        for step in range(batches):
            total_batched_samples += 1
            last_step_of_short_epoch = batches <= accumulate and step + 1 == batches
            if total_batched_samples % accumulate == 0 or last_step_of_short_epoch:
                global_step += 1
                if global_step >= max_steps:  # DefaultFlowCallback: should_training_stop
                    return global_step
    return global_step


def open_unlearning_warmup(warmup_epochs: float, rows: int, batch_size: int, accumulate: int, devices: int) -> int:
    """open-unlearning's ``load_trainer_args``: ``warmup_epochs`` turned into ``warmup_steps``."""
    return int((warmup_epochs * rows) // (batch_size * accumulate * devices)) if warmup_epochs else 0


# (preset, rows, per-device batch, accumulation, epochs): the reproduction presets' numbers
PRESETS = [
    ("tofu/npo.yaml forget10", 400, 8, 4, 10),
    ("tofu/satimp.yaml forget10", 400, 4, 8, 10),
    ("tofu/npo_dv_release.yaml forget01", 40, 8, 4, 10),
    ("tofu/finetune_target.yaml full", 4000, 8, 4, 5),
    ("tofu/finetune_retain.yaml retain90", 3600, 8, 4, 5),
    ("a window longer than the epoch", 24, 8, 4, 3),
]


@pytest.mark.parametrize(
    ("rows", "batch", "accumulate", "epochs"), [p[1:] for p in PRESETS], ids=[p[0] for p in PRESETS]
)
def test_hf_trainer_schedule_counts_the_published_steps_and_warmup(rows, batch, accumulate, epochs) -> None:
    batches = math.ceil(rows / batch)
    total = steps_per_epoch(batches, accumulate, "hf_trainer") * epochs
    assert total == hf_trainer_4_45_steps(batches, accumulate, epochs)
    warmup = warmup_steps_for(
        "hf_trainer", 1.0, total_steps=total, epochs=epochs, batches=batches, accumulate=accumulate, rows=rows,
        batch_size=batch,
    )  # fmt: skip
    assert warmup == open_unlearning_warmup(1.0, rows, batch, accumulate, 1)
    # each epoch trains on whole windows only (all of it when shorter than one window)
    trained = trained_batches_per_epoch(batches, accumulate, "hf_trainer")
    assert trained == (batches if batches <= accumulate else accumulate * (batches // accumulate))


def test_tofu_forget10_numbers() -> None:
    """The issue's numbers: Lightning's schedule makes 130 steps with 13 warm-up; the published runs 120 with 12."""
    plan = {}
    for schedule in ("lightning", "hf_trainer"):
        total = steps_per_epoch(50, 4, schedule) * 10
        warmup = warmup_steps_for(
            schedule, 1.0, total_steps=total, epochs=10, batches=50, accumulate=4, rows=400, batch_size=8
        )
        plan[schedule] = (total, warmup)
    assert plan == {"lightning": (130, 13), "hf_trainer": (120, 12)}
    assert hf_trainer_4_45_steps(50, 4, 10) == 120


def test_schedule_is_validated(tiny_model) -> None:
    with pytest.raises(ValueError, match=r"^schedule must be 'lightning' or 'hf_trainer', got 'hf'$"):
        FinetuneModule(tiny_model, schedule="hf")


# ---------------------------------------------------------------------- real fits
class _StepRecorder(pl.Callback):
    """The learning rate of every optimiser step and the number of micro-batches trained."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.micro_batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.micro_batches += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


def _expected_lrs(lr: float, warmup: int, total: int) -> list[float]:
    """transformers' get_linear_schedule_with_warmup, read before each of the ``total`` steps."""
    return [
        lr * (k / max(1, warmup) if k < warmup else max(0.0, (total - k) / max(1, total - warmup)))
        for k in range(total)
    ]


ROWS, BATCH, ACCUMULATE, EPOCHS = 20, 2, 4, 3  # 10 micro-batches per epoch: two whole windows and a half one


@pytest.mark.parametrize(
    ("schedule", "steps", "warmup", "micro_batches"),
    [
        ("hf_trainer", 3 * (10 // 4), 20 // (2 * 4), 3 * 8),  # 6 steps, 2 warm-up, 8 micro-batches per epoch
        ("lightning", 3 * math.ceil(10 / 4), 3, 3 * 10),  # 9 steps (one on a half window per epoch), floor(9/3)
    ],
)
def test_fit_takes_the_schedules_steps_and_warmup(
    schedule, steps, warmup, micro_batches, people_tokenizer, tmp_path
) -> None:
    tok = people_tokenizer
    fmt = PromptFormat.llama2_chat()
    rows = [encode_qa(tok, q, a, fmt, index=i) for i, (q, a) in enumerate(RETAIN_QA[:ROWS])]
    assert len(rows) == ROWS
    loader = DataLoader(rows, batch_size=BATCH, collate_fn=lambda s: pad_samples(s, tok.pad_token_id))
    module = FinetuneModule(tiny_llama(len(tok)), learning_rate=1e-3, warmup_epochs=1.0, schedule=schedule)
    module.tokenizer = tok
    recorder = _StepRecorder()
    trainer = quiet_trainer(tmp_path, max_epochs=EPOCHS, accumulate_grad_batches=ACCUMULATE, callbacks=[recorder])
    trainer.fit(module, train_dataloaders=loader)

    assert (trainer.global_step, recorder.micro_batches) == (steps, micro_batches)
    assert module.step_plan == (steps, warmup)
    assert recorder.lrs == pytest.approx(_expected_lrs(1e-3, warmup, steps), rel=1e-12, abs=1e-15)
    if schedule == "hf_trainer":
        assert steps == hf_trainer_4_45_steps(ROWS // BATCH, ACCUMULATE, EPOCHS)
        assert warmup == open_unlearning_warmup(1.0, ROWS, BATCH, ACCUMULATE, 1)


def _module(model, tok) -> UnlearningModule:
    module = UnlearningModule(
        model, NPO(beta=0.1), BalDRODV(temperature=0.5), NLL(), learning_rate=1e-3, schedule="hf_trainer"
    )
    module.tokenizer = tok
    return module


class _StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def test_hf_trainer_schedule_resumes_like_an_uninterrupted_run(people_tokenizer, tmp_path) -> None:
    """8 forget rows in batches of 2 (4 micro-batches per epoch), accumulation 3: one whole window per epoch."""
    tok = people_tokenizer
    initial = tiny_llama(len(tok), seed=3)
    settings = dict(max_epochs=3, accumulate_grad_batches=3)
    full = _module(copy.deepcopy(initial), tok)
    full_trainer = quiet_trainer(tmp_path / "full", **settings)
    full_trainer.fit(full, datamodule=ToyUnlearningData(tok, batch_size=2))
    assert full_trainer.global_step == 3 and full.step_plan == (3, 1)  # warm-up: 4 batches // 3 (no rows known)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = _module(copy.deepcopy(initial), tok)
    interrupted = quiet_trainer(
        tmp_path / "a", enable_checkpointing=True, callbacks=[_StopAfterFirstEpoch(), ckpt], **settings
    )
    interrupted.fit(first, datamodule=ToyUnlearningData(tok, batch_size=2))
    assert (interrupted.current_epoch, interrupted.global_step) == (1, 1)

    resumed = _module(copy.deepcopy(initial), tok)
    resumed_trainer = quiet_trainer(tmp_path / "b", **settings)
    resumed_trainer.fit(resumed, datamodule=ToyUnlearningData(tok, batch_size=2), ckpt_path=ckpt.last_model_path)
    assert resumed_trainer.global_step == 3
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"parameter {name} differs after resume")
