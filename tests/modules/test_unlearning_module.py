"""UnlearningModule and FinetuneModule end to end on a tiny Llama: forgetting, resume, memory, export."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from toy_task import ToyUnlearningData, mean_avg_nll
from trainers import quiet_trainer

from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import KL, NLL, NPO, BalDRODV, BalDROG, GradAscent, SatImp, SimNPO
from baldro_pl.toy import tiny_llama


def test_finetune_memorises_the_answers(target_model, people_tokenizer) -> None:
    data = ToyUnlearningData(people_tokenizer)
    assert mean_avg_nll(target_model, data.forget, people_tokenizer.pad_token_id) < 0.3
    assert mean_avg_nll(target_model, data.retain, people_tokenizer.pad_token_id) < 0.3


def test_npo_baldro_dv_forgets_the_forget_set_and_keeps_the_rest(target_model, people_tokenizer, tmp_path) -> None:
    tok = people_tokenizer
    data = ToyUnlearningData(tok, batch_size=4)
    before_forget = mean_avg_nll(target_model, data.forget, tok.pad_token_id)
    before_retain = mean_avg_nll(target_model, data.retain, tok.pad_token_id)
    module = UnlearningModule(
        copy.deepcopy(target_model),
        NPO(beta=0.1),
        BalDRODV(temperature=1.0),
        NLL(),
        alpha=10.0,
        learning_rate=3e-4,
        warmup_epochs=0,
    )
    module.tokenizer = tok
    quiet_trainer(tmp_path, max_epochs=10).fit(module, datamodule=data)
    model = module.model.eval()
    forget_rise = mean_avg_nll(model, data.forget, tok.pad_token_id) - before_forget
    retain_rise = mean_avg_nll(model, data.retain, tok.pad_token_id) - before_retain
    # the answers share templates ("X lives in Y."), so a tiny model cannot keep the retain set perfectly
    assert forget_rise > 0.8, f"forget NLL rose only {forget_rise:.3f} nats/token"
    assert retain_rise < 0.35 * forget_rise, f"retain NLL rose {retain_rise:.3f} vs forget {forget_rise:.3f}"
    assert len(module.reference_cache) == len(data.forget)


def _unlearning_module(model, tok, **kwargs) -> UnlearningModule:
    module = UnlearningModule(
        model, NPO(beta=0.1), BalDRODV(temperature=0.5), NLL(), learning_rate=1e-3, warmup_steps=2, **kwargs
    )
    module.tokenizer = tok
    return module


class _StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def test_resume_from_checkpoint_equals_uninterrupted_run(target_model, people_tokenizer, tmp_path, monkeypatch) -> None:
    tok = people_tokenizer
    full = _unlearning_module(copy.deepcopy(target_model), tok)
    quiet_trainer(tmp_path / "full", max_epochs=3).fit(full, datamodule=ToyUnlearningData(tok))

    first = _unlearning_module(copy.deepcopy(target_model), tok)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    interrupted = quiet_trainer(
        tmp_path / "a", max_epochs=3, enable_checkpointing=True, callbacks=[_StopAfterFirstEpoch(), ckpt]
    )
    interrupted.fit(first, datamodule=ToyUnlearningData(tok))
    assert interrupted.current_epoch == 1 and interrupted.global_step == 2
    initial_cache = first.reference_cache.state_dict()

    calls = []
    original = UnlearningModule.build_reference_cache
    monkeypatch.setattr(UnlearningModule, "build_reference_cache", lambda self: calls.append(1) or original(self))
    # a fresh module from the *initial* weights: everything must come from the checkpoint
    resumed = _unlearning_module(copy.deepcopy(target_model), tok)
    quiet_trainer(tmp_path / "b", max_epochs=3).fit(
        resumed, datamodule=ToyUnlearningData(tok), ckpt_path=ckpt.last_model_path
    )

    assert calls == [], "the reference cache was recomputed instead of restored from the checkpoint"
    torch.testing.assert_close(resumed.reference_cache.state_dict()["nll"], initial_cache["nll"], rtol=0, atol=0)
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"parameter {name} differs after resume")


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("forget_loss", [NPO(), SimNPO(), SatImp(), GradAscent()], ids=repr)
def test_only_kl_keeps_a_reference_model(forget_loss, tiny_model) -> None:
    n_model = _n_params(tiny_model)
    module = UnlearningModule(copy.deepcopy(tiny_model), forget_loss, BalDROG(), NLL())
    module.configure_model()
    assert module.reference_model is None
    assert _n_params(module) == n_model
    kl = UnlearningModule(copy.deepcopy(tiny_model), forget_loss, None, KL())
    kl.configure_model()
    assert _n_params(kl) == 2 * n_model
    assert not any(p.requires_grad for p in kl.reference_model.parameters())
    assert sum(p.numel() for _, p in kl.trainable_parameters()) == n_model
    checkpoint = {"state_dict": kl.state_dict()}
    kl.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("reference_model.") for k in checkpoint["state_dict"])


def test_kl_retain_trains_and_leaves_the_reference_untouched(tiny_model, people_tokenizer, tmp_path) -> None:
    tok = people_tokenizer
    model = tiny_llama(len(tok))
    module = UnlearningModule(model, GradAscent(), None, KL(), learning_rate=1e-3, warmup_epochs=0)
    module.tokenizer = tok
    before = copy.deepcopy(model.state_dict())
    quiet_trainer(tmp_path, max_steps=2).fit(module, datamodule=ToyUnlearningData(tok))
    for name, value in module.reference_model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert any(not torch.equal(p, before[n]) for n, p in module.model.state_dict().items())
