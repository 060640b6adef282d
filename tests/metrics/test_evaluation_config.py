"""The Evaluation callback as a YAML config builds it (suite injected by class_path), and the suite's connect step."""

from __future__ import annotations

import pytest
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback

from baldro_pl.datamodules import PromptFormat
from baldro_pl.datamodules.encoder import RowEncoder
from baldro_pl.metrics import Evaluation, MUSESuite, TOFUSuite


def _parse(callback: dict) -> Callback:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callback", type=Callback)
    return parser.instantiate_classes(parser.parse_object({"callback": callback})).callback


def test_evaluation_and_suite_are_built_from_a_config() -> None:
    callback = _parse(
        {
            "class_path": "baldro_pl.metrics.Evaluation",
            "init_args": {
                "suite": {
                    "class_path": "baldro_pl.metrics.TOFUSuite",
                    "init_args": {"max_new_tokens": 3, "retain_logs_path": "retain.json", "exclude": ["mia_gradnorm"]},
                },
                "every_n_epochs": 2,
                "eval_on_start": False,
            },
        }
    )
    assert isinstance(callback, Evaluation) and isinstance(callback.suite, TOFUSuite)
    assert (callback.every_n_epochs, callback.eval_on_start, callback.suite_name) == (2, False, "TOFU")
    assert callback.suite.max_new_tokens == 3 and "mia_gradnorm" not in callback.suite.metrics
    assert str(callback.suite.reference.name) == "retain.json"
    muse = _parse(
        {
            "class_path": "baldro_pl.metrics.Evaluation",
            "init_args": {"suite": {"class_path": "baldro_pl.metrics.MUSESuite", "init_args": {"mia_batch_size": 4}}},
        }
    )
    assert isinstance(muse.suite, MUSESuite) and muse.suite.mia_batch_size == 4 and muse.suite_name == "MUSE"


def test_each_option_is_declared_once_where_it_is_used() -> None:
    """A scheduling option is the callback's, not the suite's (and the other way round)."""
    with pytest.raises(Exception, match="every_n_epochs"):
        _parse(
            {
                "class_path": "baldro_pl.metrics.Evaluation",
                "init_args": {
                    "suite": {"class_path": "baldro_pl.metrics.TOFUSuite", "init_args": {"every_n_epochs": 1}}
                },
            }
        )
    with pytest.raises(Exception, match="max_new_tokens"):
        _parse(
            {
                "class_path": "baldro_pl.metrics.Evaluation",
                "init_args": {"suite": {"class_path": "baldro_pl.metrics.TOFUSuite"}, "max_new_tokens": 3},
            }
        )


def test_a_suite_needs_an_encoder_before_it_evaluates(tiny_model, toy_tokenizer, tofu_rows) -> None:
    suite = TOFUSuite(metrics=["forget_Q_A_Prob"])
    assert not suite.connected
    with pytest.raises(RuntimeError, match=r"call suite.connect\(encoder="):
        suite.evaluate(tiny_model, tofu_rows(2))
    encoder = RowEncoder(toy_tokenizer, PromptFormat.llama2_chat(), 512)
    assert suite.connect(encoder=encoder, forget_split="forget10") is suite
    assert suite.connected and suite.encoder is encoder and suite.forget_split == "forget10"
    assert suite.evaluate(tiny_model, tofu_rows(2)).summary["forget_Q_A_Prob"] > 0


def test_a_hand_connected_suite_keeps_its_encoder(toy_tokenizer) -> None:
    encoder = RowEncoder(toy_tokenizer, PromptFormat.llama2_chat(), 512)
    callback = Evaluation(TOFUSuite().connect(encoder=encoder))

    class Trainer:
        datamodule = type("DM", (), {"encoder": RowEncoder(toy_tokenizer, PromptFormat.muse_qa(), 64)})()

    callback.setup(Trainer(), None, "test")  # type: ignore[arg-type]
    assert callback.suite.encoder is encoder
    fresh = Evaluation(TOFUSuite())
    fresh.setup(Trainer(), None, "test")  # type: ignore[arg-type]
    assert fresh.suite.encoder is Trainer.datamodule.encoder


def test_row_encoder_caches_by_text_and_cap(toy_tokenizer) -> None:
    encoder = RowEncoder(toy_tokenizer, PromptFormat.llama2_chat(), 512)
    first = encoder.qa("Where?", "Here.", 0)
    again = encoder.qa("Where?", "Here.", 7)
    assert (again.input_ids, again.labels, again.index) == (first.input_ids, first.labels, 7)
    assert len(encoder.prompt("Where?" * 50, max_length=8)) <= 8 < len(encoder.prompt("Where?" * 50))
    assert encoder.pad_token_id == toy_tokenizer.pad_token_id


def test_the_callback_offers_its_suites_headline_to_the_hparams_table() -> None:
    """HParamsTable reads ``headline`` from every callback: the Evaluation passes on its suite's."""
    assert Evaluation(TOFUSuite()).headline[:2] == ("forget_quality", "model_utility")
    assert "privleak" in Evaluation(MUSESuite()).headline
