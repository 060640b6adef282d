"""The Evaluation callback (TOFU, MUSE) inside Lightning: scheduling, files, logged scalars, weights left untouched."""

from __future__ import annotations

import copy
import json

import lightning.pytorch as pl
import pytest
import torch
from capture_logger import CaptureLogger
from suites import evaluate_muse, evaluate_tofu
from torch.utils.data import DataLoader

from baldro_pl.datamodules import PadCollator, PromptFormat, encode_qa
from baldro_pl.datamodules.encoder import RowEncoder
from baldro_pl.metrics import Evaluation, MUSESuite, TOFUSuite
from baldro_pl.metrics.functional import privleak
from baldro_pl.metrics.tofu import TOFU_METRICS

N_ROWS = 4
TOKENS = 3


class StubModule(pl.LightningModule):
    """The module contract: ``.model`` is the Hugging Face model."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss

    def validation_step(self, batch, batch_idx) -> None:
        pass

    def test_step(self, batch, batch_idx) -> None:
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class StubData(pl.LightningDataModule):
    """The datamodule contract: ``evaluation_rows()``, ``encoder`` (tokenizer, prompt format, ``max_length``)."""

    def __init__(self, tokenizer, rows, prompt_format, forget_split="forget10") -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format
        self.max_length = 512
        self.forget_split = forget_split
        self._rows = rows
        self.calls = 0

    @property
    def encoder(self) -> RowEncoder:
        return RowEncoder(self.tokenizer, self.prompt_format, self.max_length)

    def evaluation_rows(self):
        self.calls += 1
        return self._rows

    def _loader(self):
        qa = [
            encode_qa(self.tokenizer, "Where was Jaime born?", "In Santiago.", self.prompt_format, index=i)
            for i in range(4)
        ]
        return DataLoader(qa, batch_size=2, collate_fn=PadCollator(self.tokenizer.pad_token_id))

    def train_dataloader(self):
        return self._loader()

    def val_dataloader(self):
        return self._loader()

    def test_dataloader(self):
        return self._loader()


def _trainer(tmp_path, callback, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        logger=kwargs.pop("logger", CaptureLogger()),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=kwargs.pop("limit_val_batches", 0),
        **kwargs,
    )


def _aggs(logs: dict) -> dict:
    return {k: v.get("agg_value") for k, v in logs.items()}


def assert_same_aggregates(logs: dict, other: dict) -> None:
    a, b = _aggs(logs), _aggs(other)
    assert set(a) == set(b)
    for name, value in a.items():
        if value is None:
            assert b[name] is None, name
        else:
            assert b[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_fit_schedule_files_and_logging(tmp_path, tiny_model, toy_tokenizer, tofu_rows) -> None:
    rows = tofu_rows(N_ROWS)
    data = StubData(toy_tokenizer, rows, PromptFormat.llama2_chat())
    initial = copy.deepcopy(tiny_model).eval()
    callback = Evaluation(TOFUSuite(max_new_tokens=TOKENS), every_n_epochs=2, output_dir=tmp_path / "eval")
    logger = CaptureLogger()
    trainer = _trainer(tmp_path, callback, logger=logger, max_epochs=2, limit_train_batches=2)
    trainer.fit(StubModule(tiny_model), datamodule=data)

    folders = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert folders == ["epoch_1", "start"]  # every 2nd epoch: epoch index 1 only
    start = json.loads((tmp_path / "eval" / "start" / "TOFU_EVAL.json").read_text())
    summary = json.loads((tmp_path / "eval" / "start" / "TOFU_SUMMARY.json").read_text())
    assert set(start) == set(TOFU_METRICS)
    assert start["forget_quality"] == {"agg_value": None}  # no retain log: None (and a warning)
    assert "forget_quality" not in summary and summary["model_utility"] == start["model_utility"]["agg_value"]
    # the start evaluation saw the initial weights, exactly as a direct call does
    direct = evaluate_tofu(initial, toy_tokenizer, rows, max_new_tokens=TOKENS)
    assert_same_aggregates(start, direct.logs)
    assert start["forget_Q_A_ROUGE"]["value_by_index"] == direct.logs["forget_Q_A_ROUGE"]["value_by_index"]
    # the start values went to the logger at step 0; the epoch values through self.log
    step0 = [m for step, m in logger.calls if step == 0 and "eval/model_utility" in m]
    assert step0 and step0[0]["eval/model_utility"] == pytest.approx(summary["model_utility"])
    assert step0[0]["hp/model_utility"] == pytest.approx(summary["model_utility"])
    epoch1 = json.loads((tmp_path / "eval" / "epoch_1" / "TOFU_SUMMARY.json").read_text())
    assert trainer.callback_metrics["eval/model_utility"].item() == pytest.approx(epoch1["model_utility"], rel=1e-6)
    assert epoch1["forget_Q_A_Prob"] != summary["forget_Q_A_Prob"]  # training changed the model in between
    assert not list((tmp_path / "eval").rglob("*.tmp"))


def test_test_and_validate_leave_the_model_untouched(tmp_path, tiny_model, toy_tokenizer, tofu_rows) -> None:
    rows = tofu_rows(N_ROWS)
    data = StubData(toy_tokenizer, rows, PromptFormat.llama2_chat())
    module = StubModule(tiny_model)
    weights = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    callback = Evaluation(TOFUSuite(max_new_tokens=TOKENS, exclude=["forget_balance"]), output_dir=tmp_path / "eval")
    trainer = _trainer(tmp_path, callback)
    trainer.test(module, datamodule=data)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None for p in tiny_model.parameters())  # gradnorm ran, nothing left behind
    test_logs = json.loads((tmp_path / "eval" / "test" / "TOFU_EVAL.json").read_text())
    assert "mia_gradnorm" in test_logs and "forget_balance_under" not in test_logs
    direct = evaluate_tofu(tiny_model.eval(), toy_tokenizer, rows, max_new_tokens=TOKENS, exclude=["forget_balance"])
    assert_same_aggregates(test_logs, direct.logs)
    assert trainer.callback_metrics["hp/forget_truth_ratio"].item() == pytest.approx(
        test_logs["forget_truth_ratio"]["agg_value"], rel=1e-6
    )
    trainer = _trainer(tmp_path, callback, limit_val_batches=1)
    trainer.validate(module, datamodule=data)
    assert (tmp_path / "eval" / "validate" / "TOFU_EVAL.json").is_file()
    assert data.calls == 2


def test_default_output_dir_is_the_log_dir(tmp_path, tiny_model, toy_tokenizer, tofu_rows) -> None:
    from lightning.pytorch.loggers import CSVLogger

    data = StubData(toy_tokenizer, tofu_rows(2), PromptFormat.llama2_chat())
    callback = Evaluation(TOFUSuite(metrics=["forget_Q_A_Prob", "privleak"], max_new_tokens=TOKENS))
    trainer = _trainer(tmp_path, callback, logger=CSVLogger(tmp_path / "logs"))
    trainer.test(StubModule(tiny_model), datamodule=data)
    written = json.loads((tmp_path / "logs" / "lightning_logs" / "version_0" / "test" / "TOFU_EVAL.json").read_text())
    assert set(written) == {"forget_Q_A_Prob", "privleak", "mia_min_k"}  # privleak brings its dependency


def test_retain_log_gives_forget_quality_one_against_itself(tmp_path, tiny_model, toy_tokenizer, tofu_rows) -> None:
    """The model's own log as the reference: forget quality 1, privleak 0, and with 4 rows the 5th / 95th
    percentiles fall strictly inside the range, so the smallest and the largest ratio lie outside."""
    rows = tofu_rows(N_ROWS)
    own = evaluate_tofu(copy.deepcopy(tiny_model).eval(), toy_tokenizer, rows, max_new_tokens=TOKENS)
    reference = tmp_path / "retain_TOFU_EVAL.json"
    reference.write_text(json.dumps(own.logs))
    data = StubData(toy_tokenizer, rows, PromptFormat.llama2_chat())
    callback = Evaluation(
        TOFUSuite(max_new_tokens=TOKENS, retain_logs_path=str(reference)), output_dir=tmp_path / "eval"
    )
    _trainer(tmp_path, callback).test(StubModule(tiny_model), datamodule=data)
    summary = callback.last_result.summary
    assert summary["forget_quality"] == 1.0
    assert summary["privleak"] == pytest.approx(0.0, abs=1e-9)
    assert [summary[f"forget_balance_{k}"] for k in ("under", "within", "over")] == [0.25, 0.5, 0.25]
    assert callback.last_result.warnings == []


def test_muse_callback_in_validate(tmp_path, tiny_model, toy_tokenizer, muse_rows, reference_log) -> None:
    from shared_data import shared_path

    rows = muse_rows(3)
    ref = shared_path("data", "reference_logs", "muse_Llama-2-7b-hf_News_retrain_MUSE_EVAL.json")
    data = StubData(toy_tokenizer, rows, PromptFormat.muse_qa())
    callback = Evaluation(
        MUSESuite(max_new_tokens=TOKENS, retain_logs_path=str(ref), exclude=["mia_gradnorm"]),
        output_dir=tmp_path / "eval",
    )
    model = copy.deepcopy(tiny_model)
    _trainer(tmp_path, callback, limit_val_batches=1).validate(StubModule(tiny_model), datamodule=data)
    logs = json.loads((tmp_path / "eval" / "validate" / "MUSE_EVAL.json").read_text())
    retrain_auc = reference_log("muse_Llama-2-7b-hf_News_retrain_MUSE_EVAL.json")["mia_min_k"]["agg_value"]
    assert logs["privleak"]["agg_value"] == pytest.approx(
        privleak(logs["mia_min_k"]["agg_value"], retrain_auc), abs=1e-12
    )
    assert "mia_gradnorm" not in logs
    direct = evaluate_muse(
        model.eval(), toy_tokenizer, rows, max_new_tokens=TOKENS, retain_logs_path=str(ref), exclude=["mia_gradnorm"]
    )
    assert_same_aggregates(logs, direct.logs)


def test_missing_contract_is_a_clear_error(tmp_path, tiny_model) -> None:
    class NoRows(pl.LightningDataModule):
        def test_dataloader(self):
            return DataLoader([0], batch_size=1)

    callback = Evaluation(TOFUSuite(max_new_tokens=TOKENS), output_dir=tmp_path)
    with pytest.raises(AttributeError, match="needs `tokenizer`"):
        _trainer(tmp_path, callback).test(StubModule(tiny_model), datamodule=NoRows())


@pytest.mark.parametrize(
    ("cls", "setting"),
    [
        ("TOFUSuite", "batch_size"),
        ("TOFUSuite", "max_new_tokens"),
        ("MUSESuite", "max_new_tokens"),
        ("MUSESuite", "verbmem_batch_size"),
        ("MUSESuite", "knowmem_batch_size"),
        ("MUSESuite", "mia_batch_size"),
    ],
)
def test_evaluation_counts_below_one_are_refused_when_built(cls: str, setting: str) -> None:
    """Refused at construction, not at the first evaluation (which may come after hours of training)."""
    import baldro_pl.metrics as metrics

    with pytest.raises(ValueError, match=rf"^{setting} must be >= 1, got 0$"):
        getattr(metrics, cls)(**{setting: 0})
