"""The datamodules build from YAML the way LightningCLI builds them (jsonargparse subclass arguments)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from jsonargparse import ArgumentParser

from baldro_pl.datamodules import JsonDataModule, MUSEDataModule, PromptFormat, RowFormat, TOFUDataModule

TOFU_YAML = """
data:
  class_path: baldro_pl.datamodules.TOFUDataModule
  init_args:
    data_dir: ../shared/data/tofu
    tokenizer: ../shared/models/smollm2-135m-instruct-tokenizer
    forget_split: forget05
    batch_size: 4
    retain_batch_size: 2
    pairing: cycle
    prompt_format:
      class_path: baldro_pl.datamodules.PromptFormat
      init_args:
        apply_chat_template: true
        system_prompt: You are a helpful assistant.
"""


def _parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(pl.LightningDataModule, "data")  # what LightningCLI does for `data:`
    return parser


def test_tofu_from_yaml_with_prompt_format():
    parser = _parser()
    config = parser.parse_string(TOFU_YAML)
    dm = parser.instantiate(config).data
    assert isinstance(dm, TOFUDataModule)
    assert (dm.forget_split, dm.batch_size, dm.retain_batch_size, dm.pairing) == ("forget05", 4, 2, "cycle")
    assert isinstance(dm.prompt_format, PromptFormat)
    assert dm.prompt_format.apply_chat_template and dm.prompt_format.system_prompt == "You are a helpful assistant."
    assert dm.tokenizer_source == "../shared/models/smollm2-135m-instruct-tokenizer"  # loaded only in setup()


@pytest.mark.parametrize("cls", [TOFUDataModule, MUSEDataModule, JsonDataModule])
def test_base_arguments_are_visible_through_kwargs(cls):
    extra = ", forget: f.jsonl" if cls is JsonDataModule else ""
    path = f"{cls.__module__}.{cls.__name__}"
    config = _parser().parse_string(
        f"data: {{class_path: {path}, init_args: {{tokenizer: t, max_length: 64, seed: 3{extra}}}}}"
    )
    assert config.data.init_args.max_length == 64 and config.data.init_args.seed == 3
    assert config.data.init_args.eval_batch_size == 32 and config.data.init_args.prompt_format is None


def test_yaml_rejects_unknown_split():
    with pytest.raises(Exception, match="forget_split"):
        _parser().parse_string(TOFU_YAML.replace("forget05", "forget07"))


ROW_FORMAT_YAML = """
data:
  class_path: baldro_pl.datamodules.{cls}
  init_args:
    {source}: f.jsonl
    tokenizer: t
    row_format: {{mode: completion, text_key: gt, prefix_key: prompt, insert_space: true}}
"""


@pytest.mark.parametrize(("cls", "source"), [("JsonDataModule", "forget"), ("FinetuneDataModule", "train")])
def test_row_format_from_yaml(cls: str, source: str):
    parser = _parser()
    dm = parser.instantiate(parser.parse_string(ROW_FORMAT_YAML.format(cls=cls, source=source))).data
    assert dm.row_format == RowFormat(mode="completion", text_key="gt", prefix_key="prompt", insert_space=True)
    assert dm.forget == "f.jsonl"


def test_row_format_fields_default_one_by_one():
    config = _parser().parse_string(
        "data: {class_path: baldro_pl.datamodules.JsonDataModule, "
        "init_args: {forget: f.jsonl, tokenizer: t, row_format: {question_key: q}}}"
    )
    assert _parser().instantiate(config).data.row_format == RowFormat(question_key="q")
    default = _parser().parse_string(
        "data: {class_path: baldro_pl.datamodules.JsonDataModule, init_args: {forget: f, tokenizer: t}}"
    )
    assert _parser().instantiate(default).data.row_format == RowFormat()


def test_yaml_rejects_unknown_row_format_mode_and_loose_fields():
    with pytest.raises(Exception, match="row_format.mode"):
        _parser().parse_string(
            ROW_FORMAT_YAML.format(cls="JsonDataModule", source="forget").replace("completion", "chat")
        )
    with pytest.raises(Exception, match="'mode' is not accepted"):  # the fields live in row_format only
        _parser().parse_string("data: {class_path: baldro_pl.datamodules.JsonDataModule, init_args: {mode: qa}}")


def test_row_format_must_be_a_row_format():
    with pytest.raises(ValueError, match="^row_format must be a RowFormat, got dict$"):
        JsonDataModule(forget="f.jsonl", tokenizer="t", row_format={"mode": "qa"})


def test_row_format_through_the_lightning_cli(tmp_path, monkeypatch):
    from baldro_pl.cli import lightning_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["baldro-pl"])
    args = ["--trainer.logger=false", "--model=baldro_pl.modules.FinetuneModule", "--model.model=m"]
    args += ["--data=baldro_pl.datamodules.FinetuneDataModule", "--data.train=f.jsonl", "--data.tokenizer=t"]
    cli = lightning_cli([*args, "--data.row_format.question_key=q", "--data.row_format.mode=completion"], run=False)
    assert cli.datamodule.row_format == RowFormat(mode="completion", question_key="q")
