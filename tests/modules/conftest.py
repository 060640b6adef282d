"""Fixtures of the module tests (the toy task itself is in toy_task.py)."""

from __future__ import annotations

import pytest
import torch
from toy_task import ToyUnlearningData, people_tokenizer_for_tests
from trainers import quiet_trainer

from baldro_pl.modules import FinetuneModule
from baldro_pl.toy import tiny_llama


@pytest.fixture(scope="session")
def people_tokenizer():
    """A toy tokenizer trained on the people QA strings."""
    return people_tokenizer_for_tests()


@pytest.fixture(scope="module")
def target_model(people_tokenizer, tmp_path_factory):
    """A tiny Llama fine-tuned on all 32 QA strings (the 'target' model of the toy benchmark)."""
    tok = people_tokenizer
    torch.manual_seed(0)
    model = tiny_llama(len(tok), hidden_size=64, num_hidden_layers=2, intermediate_size=128)
    module = FinetuneModule(model, learning_rate=3e-3, warmup_epochs=0)
    module.tokenizer = tok
    data = ToyUnlearningData(tok, batch_size=8, mode="finetune")
    quiet_trainer(tmp_path_factory.mktemp("ft"), max_epochs=60).fit(module, datamodule=data)
    return module.model
