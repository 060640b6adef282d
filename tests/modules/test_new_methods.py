"""GradDiff, CEU and UNDIAL end to end on a tiny Llama: each forgets the forget set and keeps most of the rest.

The toy task (toy_task.py): a tiny Llama fine-tuned on 32 QA strings about 16 people, then unlearned on 4 of them for
a few steps. The forget answers' NLL must rise clearly, the retain answers' far less.
"""

from __future__ import annotations

import copy

import pytest
from toy_task import ToyUnlearningData, mean_avg_nll
from trainers import quiet_trainer

from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import CEU, NLL, UNDIAL, BalDROG, GradAscent, Mean

# (forget loss, aggregator, alpha, learning rate, epochs). The published configurations (GradDiff alpha 1; CEU and
# UNDIAL alpha 0, no retain term) are for a 7B model; the toy's answers share templates ("X lives in Y."), so a tiny
# model keeps its retain answers only with a heavier retain term. UNDIAL also under BalDRO-G.
METHODS = {
    "graddiff": (GradAscent(), Mean(), 5.0, 1e-3, 10),
    "ceu": (CEU(), Mean(), 10.0, 1e-3, 10),
    "undial": (UNDIAL(beta=10.0), Mean(), 10.0, 1e-3, 10),
    "undial_group": (UNDIAL(beta=10.0), BalDROG(ratio=0.5), 10.0, 1e-3, 10),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_forgets_the_forget_set_and_keeps_the_rest(method: str, target_model, people_tokenizer, tmp_path):
    tok = people_tokenizer
    forget_loss, aggregator, alpha, lr, epochs = METHODS[method]
    data = ToyUnlearningData(tok, batch_size=4)
    before_forget = mean_avg_nll(target_model, data.forget, tok.pad_token_id)
    before_retain = mean_avg_nll(target_model, data.retain, tok.pad_token_id)
    module = UnlearningModule(
        copy.deepcopy(target_model),
        copy.deepcopy(forget_loss),
        copy.deepcopy(aggregator),
        NLL(),
        alpha=alpha,
        learning_rate=lr,
        warmup_epochs=0,
    )
    module.tokenizer = tok
    quiet_trainer(tmp_path, max_epochs=epochs).fit(module, datamodule=data)
    model = module.model.eval()
    forget_rise = mean_avg_nll(model, data.forget, tok.pad_token_id) - before_forget
    retain_rise = mean_avg_nll(model, data.retain, tok.pad_token_id) - before_retain
    assert forget_rise > 0.8, f"forget NLL rose only {forget_rise:.3f} nats/token"
    assert retain_rise < 0.35 * forget_rise, f"retain NLL rose {retain_rise:.3f} vs forget {forget_rise:.3f}"


def test_undial_keeps_a_frozen_teacher_and_runs_it_on_the_forget_side_only(target_model, people_tokenizer) -> None:
    tok = people_tokenizer
    module = UnlearningModule(
        copy.deepcopy(target_model),
        {"class_path": "baldro_pl.objectives.UNDIAL", "init_args": {"beta": 3.0}},  # the hparams / CLI form
        None,
        NLL(),
        learning_rate=1e-3,
        warmup_epochs=0,
    )
    module.configure_model()
    assert module.objective.forget_loss.beta == 3.0
    assert module.reference_model is not None and not any(p.requires_grad for p in module.reference_model.parameters())
    calls = []

    def counting(original):
        def call(model, batch, **kwargs):
            calls.append((model is module.reference_model, batch["input_ids"].shape[0]))
            return original(model, batch, **kwargs)

        return call

    module.batch_logits = counting(module.batch_logits)
    module.batch_logprobs = counting(module.batch_logprobs)  # the NLL retain term takes log-probs
    batch = next(iter(ToyUnlearningData(tok, batch_size=4).train_dataloader()))
    out, _ = module.compute_step(batch)
    out.loss.backward()
    # policy on forget, teacher on forget (no gradient), policy on retain: no teacher pass on the NLL retain side
    assert calls == [(False, 4), (True, 4), (False, 4)]
    assert all(p.grad is None for p in module.reference_model.parameters())
    assert module.hparams.forget_loss == {
        "class_path": "baldro_pl.objectives.UNDIAL",
        "init_args": {"beta": 3.0, "positions": "answer_tokens"},
    }


def test_a_bad_method_setting_fails_before_training(target_model) -> None:
    with pytest.raises(ValueError, match="beta"):
        UnlearningModule(
            copy.deepcopy(target_model), {"class_path": "baldro_pl.objectives.UNDIAL", "init_args": {"beta": 0.0}}
        )
    with pytest.raises(ValueError, match="aggregator"):
        UnlearningModule(copy.deepcopy(target_model), UNDIAL(positions="reference"), BalDROG())
