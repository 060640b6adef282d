"""What a person watching a run sees (issue 10, problem 7): plain progress lines in a log file, less library noise,
the evaluation's headline numbers once at the end (console, summary.csv, summary.md), each test metric printed once,
a learning-rate scalar, and notes about missing values said once and plainly."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import warnings
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from capture_logger import CaptureLogger
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from baldro_pl.metrics import TOFUSuite
from baldro_pl.metrics.callbacks import Evaluation, EvaluationRecord
from baldro_pl.run_output import (
    PlainProgressBar,
    RunSummary,
    add_run_output_callbacks,
    configure_console_output,
    format_value,
    render_csv,
    render_text,
    suite_summaries,
)

TOKENS = 2  # generated tokens per answer: the tiny random model's ROUGE is 0 anyway


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def run_inputs(tmp_path_factory, toy_tokenizer):
    """A tiny synthetic TOFU set (2 forget rows, 2 rows in every evaluation split) and a tiny Llama directory."""
    from baldro_pl.datamodules.synthetic import write_synthetic_tofu
    from baldro_pl.toy import tiny_llama

    root = tmp_path_factory.mktemp("run_output")
    data = write_synthetic_tofu(root / "data", n_authors=4, qa_per_author=2, n_utility=2)
    model_dir = root / "model"
    tok = toy_tokenizer
    tiny_llama(
        len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    ).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return SimpleNamespace(data=data, model=model_dir)


def _module(inputs):
    from baldro_pl.modules import UnlearningModule
    from baldro_pl.objectives import NPO

    return UnlearningModule(str(inputs.model), NPO(), learning_rate=1e-3, warmup_epochs=0.5)


def _data(inputs, batch_size: int = 2):
    from baldro_pl.datamodules import TOFUDataModule

    return TOFUDataModule(
        data_dir=str(inputs.data), forget_split="forget10", tokenizer=str(inputs.model), batch_size=batch_size
    )


def _trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    kwargs.setdefault("enable_progress_bar", False)
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Progress lines


class FakeClock:
    """A clock the test moves: every training batch takes ``batch_s`` seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tick(Callback):
    def __init__(self, clock: FakeClock, batch_s: float) -> None:
        self.clock, self.batch_s = clock, batch_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.now += self.batch_s


def test_plain_progress_prints_a_line_every_interval_and_at_each_epoch_end(tmp_path, run_inputs) -> None:
    """2 epochs of 2 batches, 20 s per batch, a line every 30 s: lines after batches 2 and 4 (40 s since the last
    line) and at both epoch ends, never after batches 1 and 3 (20 s); steps/s, elapsed and ETA from the clock."""
    clock, out = FakeClock(), io.StringIO()
    bar = PlainProgressBar(interval_s=30, stream=out, clock=clock)
    trainer = _trainer(tmp_path, [Tick(clock, 20.0), bar], max_epochs=2, logger=False, enable_progress_bar=True)
    assert trainer.progress_bar_callback is bar
    trainer.fit(_module(run_inputs), datamodule=_data(run_inputs, batch_size=1))
    lines = out.getvalue().splitlines()
    assert [re.sub(r"loss \S+", "loss L", line) for line in lines] == [
        "fit: 2 epochs, 4 optimiser steps (2 batches per epoch); a line every 30 s and at each epoch end",
        "epoch 1/2  step 2/4  loss L  0.05 steps/s  elapsed 0:00:40  ETA 0:00:40",
        "epoch 1/2 done  step 2/4  loss L  0.05 steps/s  elapsed 0:00:40  ETA 0:00:40",
        "epoch 2/2  step 4/4  loss L  0.05 steps/s  elapsed 0:01:20  ETA 0:00:00",
        "epoch 2/2 done  step 4/4  loss L  0.05 steps/s  elapsed 0:01:20  ETA 0:00:00",
    ]
    # the loss shown is the module's progress-bar loss
    assert lines[-1].split("  ")[2] == f"loss {float(trainer.progress_bar_metrics['loss']):.4g}"


@pytest.mark.parametrize(
    ("interval_s", "shown"),
    [(0, "0"), (-1.0, "-1.0"), (float("nan"), "nan"), ("30", "'30'")],
    ids=["zero", "negative", "nan", "string"],
)
def test_plain_progress_rejects_a_bad_interval(interval_s, shown) -> None:
    with pytest.raises(ValueError) as err:
        PlainProgressBar(interval_s=interval_s)
    assert str(err.value) == f"PlainProgressBar interval_s must be a number of seconds > 0, got {shown}"


@pytest.mark.parametrize(
    ("tty", "enable_progress_bar", "stage", "bar", "lr_monitors"),
    [
        (False, True, "fit", PlainProgressBar, 1),  # a log file: plain lines instead of Lightning's bar
        (True, True, "fit", (RichProgressBar, TQDMProgressBar), 1),  # a terminal: Lightning's bar stays
        (False, False, "fit", None, 1),  # enable_progress_bar: false stays without a bar
        (False, True, "test", PlainProgressBar, 0),  # no learning rate outside fit
    ],
)
def test_run_output_callbacks(tmp_path, tty, enable_progress_bar, stage, bar, lr_monitors) -> None:
    trainer = _trainer(tmp_path, [], logger=CaptureLogger(), enable_progress_bar=enable_progress_bar)
    add_run_output_callbacks(trainer, stage, tty=tty)
    add_run_output_callbacks(trainer, stage, tty=tty)  # idempotent
    if bar is None:
        assert trainer.progress_bar_callback is None
    else:
        assert isinstance(trainer.progress_bar_callback, bar)
    assert sum(isinstance(c, RichProgressBar | TQDMProgressBar | PlainProgressBar) for c in trainer.callbacks) == (
        bar is not None
    )
    assert sum(isinstance(c, RunSummary) for c in trainer.callbacks) == 1
    assert sum(isinstance(c, LearningRateMonitor) for c in trainer.callbacks) == lr_monitors


def test_fit_logs_the_learning_rate_at_every_step(tmp_path, run_inputs) -> None:
    """4 steps, warm-up over 1 (warmup_epochs 0.5 of 2 epochs), then linear decay to 0: the logged rate of both
    parameter groups (decay / no decay) is the scheduler's at each step."""
    logger = CaptureLogger()
    trainer = _trainer(tmp_path, [], max_epochs=2, logger=logger, log_every_n_steps=1)
    add_run_output_callbacks(trainer, "fit", tty=True)
    trainer.fit(_module(run_inputs), datamodule=_data(run_inputs, batch_size=1))
    for group in ("lr-AdamW/pg1", "lr-AdamW/pg2"):
        rates = {step: m[group] for step, m in logger.calls if group in m}
        assert rates == pytest.approx({0: 0.0, 1: 1e-3, 2: 2e-3 / 3, 3: 1e-3 / 3}), group


# ---------------------------------------------------------------------------------------------------------------------
# Console noise


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _trainer_messages(tmp_path) -> list[str]:
    """What Lightning's rank-zero logger says while a trainer is built and fitted for one step."""
    keep = Keep()
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
    for name in names:
        logging.getLogger(name).addHandler(keep)
    try:
        from lightning.pytorch.demos.boring_classes import BoringModel

        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=1,
            limit_train_batches=1,
            limit_val_batches=0,
            logger=TensorBoardLogger(tmp_path),
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(BoringModel())
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(keep)
    return keep.messages


def test_console_output_drops_lightning_noise_and_keeps_the_rest(tmp_path) -> None:
    from torch.utils._pytree import LeafSpec
    from transformers.utils import logging as hf_logging

    noise = ("💡 Tip:", "GPU available:", "TPU available:")
    before = _trainer_messages(tmp_path / "before")
    assert all(any(m.startswith(n) for m in before) for n in noise)  # what the fix removes is really printed
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        bars = hf_logging.is_progress_bar_enabled()
        undo = configure_console_output(tty=False)
        configure_console_output(tty=False)()  # a second call is a no-op, and so is its undo
        try:
            after = _trainer_messages(tmp_path / "after")
            LeafSpec()  # what Lightning's pytree helper does at every fit
            warnings.warn("a real warning", UserWarning, stacklevel=1)
            assert not hf_logging.is_progress_bar_enabled()
        finally:
            undo()
        assert hf_logging.is_progress_bar_enabled() == bars
        LeafSpec()  # undone: the warning is back
    assert not [m for m in after if m.startswith(noise)]
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in after  # other lines stay
    messages = [str(w.message) for w in seen]
    assert "a real warning" in messages
    assert sum("LeafSpec" in m for m in messages) == 1  # only the one after undo


# ---------------------------------------------------------------------------------------------------------------------
# The summary at the end of fit / test


def test_fit_summary_table_files_and_notes_said_once(tmp_path, run_inputs, caplog) -> None:
    """Three evaluations (start, epoch_0, epoch_1) without a retain log: the table shows start and epoch_1, the CSV
    all three, each value as written in the evaluation's TOFU_SUMMARY.json; the missing forget quality is explained
    once in plain words (not at every evaluation, not as 'are None')."""
    out = io.StringIO()
    evaluation = Evaluation(TOFUSuite(max_new_tokens=TOKENS), every_n_epochs=1, eval_on_start=True)
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False)
    trainer = _trainer(tmp_path, [evaluation, RunSummary(stream=out)], max_epochs=2, logger=logger)
    with caplog.at_level(logging.INFO):
        trainer.fit(_module(run_inputs), datamodule=_data(run_inputs))
    log_dir = tmp_path / "run" / "version_0"
    summaries = {
        t: json.loads((log_dir / t / "TOFU_SUMMARY.json").read_text()) for t in ("start", "epoch_0", "epoch_1")
    }

    with (log_dir / "summary.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["suite", "metric", "description", "start", "epoch_0", "epoch_1"]
    metrics = [r[1] for r in rows[1:]]
    assert metrics == [
        "forget_quality",
        "model_utility",
        "forget_truth_ratio",
        "forget_Q_A_Prob",
        "forget_Q_A_ROUGE",
        "retain_Q_A_Prob",
        "privleak",
        "forget_balance_within",
    ]
    for row in rows[1:]:
        for tag, cell in zip(("start", "epoch_0", "epoch_1"), row[3:], strict=True):
            expected = summaries[tag].get(row[1])
            assert cell == ("" if expected is None else repr(float(expected))), (row[1], tag)
    assert rows[1][3:] == ["", "", ""]  # forget quality: no retain log

    text = out.getvalue()
    assert text.startswith("\nfit finished: 2 optimiser steps, 2 epochs completed in ")
    table = text.splitlines()[2:]
    assert table[0] == "TOFU evaluation (fit): start at step 0, epoch_1 at step 2"
    assert table[1].split() == ["metric", "start", "epoch_1"]
    utility = next(line for line in table if line.lstrip().startswith("model utility"))
    assert utility.split()[-2:] == [
        format_value(summaries["start"]["model_utility"]),
        format_value(summaries["epoch_1"]["model_utility"]),
    ]
    quality = next(line for line in table if line.lstrip().startswith("forget quality"))
    assert quality.split()[-2:] == ["-", "-"]
    fq_note = (
        "forget quality and the forgetting balance are not computed: both compare the model with the retain model, "
        "and retain_logs_path (the retain model's TOFU_EVAL.json on the same forget split) is not set"
    )
    assert f"  - {fq_note}" in table
    assert (
        "  - 3 TOFU evaluations in this run; the first and the last are shown, all are in summary.csv and TensorBoard"
    ) in table
    assert table[-1] == f"summary written to {log_dir / 'summary.md'} and summary.csv"
    md = (log_dir / "summary.md").read_text()
    assert "| metric | start (step 0) | epoch_1 (step 2) |" in md and f"- {fq_note}" in md
    assert not list(log_dir.glob(".summary*"))  # no temporary file left

    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert messages.count(f"TOFU evaluation: {fq_note}") == 1
    assert not [m for m in messages if "are None" in m]


def test_test_prints_each_metric_once(tmp_path, run_inputs, capsys) -> None:
    """The test loop has two dataloaders (forget, retain): Lightning's table used to repeat every eval/* and hp/*
    value in both columns. Now it holds the module's own test/* values; the evaluation's numbers go to the loggers
    and to callback_metrics once, and the summary prints the headline once."""
    logger = CaptureLogger()
    evaluation = Evaluation(TOFUSuite(max_new_tokens=TOKENS, metrics=["model_utility", "forget_Q_A_Prob"]))
    trainer = _trainer(tmp_path, [evaluation, RunSummary(write_files=False)], logger=logger)
    results = trainer.test(_module(run_inputs), datamodule=_data(run_inputs), verbose=True)
    printed = capsys.readouterr().out
    assert "eval/" not in printed and "hp/" not in printed
    assert printed.count("test/forget_nll") == 1 and printed.count("test/retain_nll") == 1
    assert [sorted(r) for r in results] == [["test/forget_nll"], ["test/retain_nll"]]

    summary = evaluation.last_result.summary
    logged = [m for _, m in logger.calls if "eval/model_utility" in m]
    assert len(logged) == 1 and logged[0]["hp/model_utility"] == summary["model_utility"]
    assert trainer.callback_metrics["eval/model_utility"].item() == pytest.approx(summary["model_utility"], rel=1e-6)
    assert "TOFU evaluation (test): test at step 0" in printed
    assert printed.count("model utility (higher = better)") == 1


# ---------------------------------------------------------------------------------------------------------------------
# The table itself (no training)


def _callback(records, every_n_epochs=1, eval_on_start=False, suite="TOFU"):
    return SimpleNamespace(
        suite_name=suite, evaluations=records, every_n_epochs=every_n_epochs, eval_on_start=eval_on_start
    )


def test_summary_says_when_the_curves_have_one_point_and_which_values_are_not_finite() -> None:
    record = EvaluationRecord(
        tag="epoch_4",
        step=15,
        summary={"model_utility": 0.5, "forget_Q_A_Prob": 2e-5},
        metrics=("model_utility", "forget_Q_A_Prob", "forget_truth_ratio"),
        no_value=("forget_truth_ratio",),
    )
    trainer = SimpleNamespace(callbacks=[_callback([record], every_n_epochs=5)], max_epochs=5)
    summaries, idle = suite_summaries(trainer, "fit")
    assert idle == []
    assert render_text(summaries, "fit").splitlines() == [
        "TOFU evaluation (fit): epoch_4 at step 15",
        "  metric                                epoch_4",
        "  model utility (higher = better)        0.5000",
        "  forget truth ratio                          -",
        "  forget answer probability            2.00e-05",
        "  - forget truth ratio: no finite value in epoch_4 (NaN or inf in the model's scores)",
        "  - the TOFU evaluation ran once in this fit (epoch_4, step 15): TensorBoard's eval/* curves have a single "
        "point (every_n_epochs: 5, eval_on_start: false; every_n_epochs: 1 and eval_on_start: true draw curves)",
    ]
    assert render_csv(summaries).splitlines() == [
        "suite,metric,description,epoch_4",
        "TOFU,model_utility,model utility (higher = better),0.5",
        "TOFU,forget_truth_ratio,forget truth ratio,",
        "TOFU,forget_Q_A_Prob,forget answer probability,2e-05",
    ]
    # in test, one evaluation is the normal case: no note about curves
    summaries, _ = suite_summaries(SimpleNamespace(callbacks=[_callback([record])], max_epochs=5), "test")
    assert not [n for n in summaries[0].notes if "curves" in n]


def test_summary_of_a_fit_without_evaluation_and_of_non_headline_metrics() -> None:
    trainer = SimpleNamespace(callbacks=[_callback([], every_n_epochs=5)], max_epochs=3)
    assert suite_summaries(trainer, "fit") == (
        [],
        ["no TOFU evaluation ran in this fit (every_n_epochs: 5, eval_on_start: false, max_epochs: 3)"],
    )
    record = EvaluationRecord(tag="test", step=0, summary={"mia_loss": 0.25}, metrics=("mia_loss",))
    summaries, _ = suite_summaries(SimpleNamespace(callbacks=[_callback([record])], max_epochs=1), "test")
    assert summaries[0].rows == [("mia_loss", "mia_loss")]  # none of the headline metrics: the ones reported


@pytest.mark.parametrize(
    ("value", "text"), [(None, "-"), (0.0, "0.0000"), (0.12345, "0.1235"), (2e-5, "2.00e-05"), (12345.0, "1.23e+04")]
)
def test_format_value_is_the_demo_format(value, text) -> None:
    assert format_value(value) == text
