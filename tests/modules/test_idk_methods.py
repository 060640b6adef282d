"""IdkNLL and IdkDPO end to end: the forget batch carries the "I don't know" answers, their reference NLL is cached.

The toy task (toy_task.py): a tiny Llama fine-tuned on 32 QA strings about 16 people, then unlearned on 8 of them
with a JsonDataModule whose forget rows get an alternative answer each from a small idk file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from toy_task import FORGET_QA, RETAIN_QA, mean_avg_nll
from trainers import quiet_trainer

from baldro_pl.datamodules import JsonDataModule, PromptFormat, encode_qa
from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import NLL, IdkDPO, IdkNLL, Mean

IDK = ["Nobody knows that.", "I do not know.", "That is unknown."]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("idk_data")
    paths = {"forget": root / "forget.jsonl", "retain": root / "retain.jsonl", "idk": root / "idk.jsonl"}
    for name, rows in (("forget", FORGET_QA), ("retain", RETAIN_QA)):
        paths[name].write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    paths["idk"].write_text("\n".join(IDK))  # plain strings, as TOFU's idontknow.jsonl
    return paths


def _data(tok, files, *, alternate: bool = True) -> JsonDataModule:
    return JsonDataModule(
        forget=str(files["forget"]),
        retain=str(files["retain"]),
        tokenizer=tok,
        batch_size=4,
        seed=3,
        shuffle=False,
        alternate_answers=str(files["idk"]) if alternate else None,
    )


def _module(model, forget_loss, alpha: float = 1.0, lr: float = 3e-3) -> UnlearningModule:
    return UnlearningModule(
        copy.deepcopy(model), forget_loss, Mean(), NLL(), alpha=alpha, learning_rate=lr, warmup_epochs=0
    )


def _encoded(tok, qa):
    fmt = PromptFormat.llama2_chat()
    return [encode_qa(tok, q, a, fmt, index=i) for i, (q, a) in enumerate(qa)]


@pytest.mark.parametrize("forget_loss", [IdkNLL(), IdkDPO(beta=0.1)], ids=["IdkNLL", "IdkDPO"])
def test_idk_methods_move_the_forget_answers_towards_i_dont_know(forget_loss, target_model, people_tokenizer, files):
    tok = people_tokenizer
    forget, retain = _encoded(tok, FORGET_QA), _encoded(tok, RETAIN_QA)
    # the idk answer each forget row got (seeded by the datamodule): the model should come to prefer it
    data = _data(tok, files)
    data.setup("fit")
    idk_rows = [data.alternate_dataset[i] for i in range(len(FORGET_QA))]
    before = [mean_avg_nll(target_model, s, tok.pad_token_id) for s in (forget, retain, idk_rows)]
    module = _module(target_model, copy.deepcopy(forget_loss), alpha=5.0, lr=3e-3)  # the toy's answers share templates
    module.tokenizer = tok
    quiet_trainer(None, max_epochs=12).fit(module, datamodule=_data(tok, files))
    model = module.model.eval()
    forget_rise, retain_rise, idk_rise = (
        mean_avg_nll(model, s, tok.pad_token_id) - b for s, b in zip((forget, retain, idk_rows), before)
    )
    assert idk_rise < -0.5, f"the idk answers' NLL fell only {-idk_rise:.3f} nats/token"
    assert forget_rise > 0.3, f"the original answers' NLL rose only {forget_rise:.3f}"
    assert retain_rise < 0.45 * forget_rise, f"retain NLL rose {retain_rise:.3f} vs forget {forget_rise:.3f}"


def test_idkdpo_caches_both_reference_nlls_once_and_restores_them(
    target_model, people_tokenizer, files, tmp_path, monkeypatch
):
    tok = people_tokenizer
    module = _module(target_model, IdkDPO(beta=0.1))
    module.tokenizer = tok
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    trainer.fit(module, datamodule=_data(tok, files))
    n = len(FORGET_QA)
    assert len(module.reference_cache) == n and len(module.reference_cache_alternate) == n
    # the alternative answers' reference NLL is that of the initial model on the rows' idk answers
    data = _data(tok, files)
    data.setup("fit")
    idk = [data.alternate_dataset[i] for i in range(n)]
    expected = torch.tensor([mean_avg_nll(target_model, [s], tok.pad_token_id) for s in idk], dtype=torch.float64)
    cached = module.reference_cache_alternate.lookup_avg(torch.arange(n)).cpu().double()
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(cached, module.reference_cache.lookup_avg(torch.arange(n)).cpu().double())
    # resumed: both caches come from the checkpoint, nothing is scored again
    checkpoint = next((tmp_path / "checkpoints").glob("*.ckpt"))
    resumed = _module(target_model, IdkDPO(beta=0.1))
    resumed.tokenizer = tok
    calls: list[bool] = []
    original = UnlearningModule.build_reference_cache

    def counting(self, alternate: bool = False) -> None:
        calls.append(alternate)
        original(self, alternate)

    monkeypatch.setattr(UnlearningModule, "build_reference_cache", counting)
    quiet_trainer(tmp_path / "resumed", max_epochs=2).fit(resumed, datamodule=_data(tok, files), ckpt_path=checkpoint)
    assert calls == []
    torch.testing.assert_close(resumed.reference_cache_alternate.lookup_avg(torch.arange(n)).cpu().double(), cached)


@pytest.mark.parametrize("forget_loss", [IdkNLL(), IdkDPO()], ids=["IdkNLL", "IdkDPO"])
def test_idk_method_without_an_idk_file_fails_before_training(forget_loss, target_model, people_tokenizer, files):
    tok = people_tokenizer
    module = _module(target_model, forget_loss)
    module.tokenizer = tok
    steps: list[int] = []
    module.on_train_batch_start = lambda batch, batch_idx: steps.append(batch_idx)
    with pytest.raises(ValueError, match=r"^data\.alternate_answers: Idk(NLL|DPO) needs an alternative answer"):
        quiet_trainer(None, max_epochs=1).fit(module, datamodule=_data(tok, files, alternate=False))
    assert steps == []
