"""RMU in the training module on a tiny Llama: hidden states, frozen parameters, direction, training, bad settings."""

from __future__ import annotations

import copy

import pytest
import torch
from toy_task import ToyUnlearningData
from trainers import quiet_trainer

from baldro_pl.modules import UnlearningModule
from baldro_pl.modules.unlearning import DIRECTION_CHECKPOINT_KEY, layer_hidden_states
from baldro_pl.objectives import NLL, RMU, EmbedDiff, Mean

TRAINABLE = [r"model\.layers\.(0|1)\.mlp\.down_proj\.weight"]


def rmu_module(model, *, layer: int = 1, steering_coeff: float = 20.0, seed: int = 0, **kwargs) -> UnlearningModule:
    settings = {"learning_rate": 1e-3, "warmup_epochs": 0, "alpha": 1.0, **kwargs}
    forget = RMU(layer=layer, steering_coeff=steering_coeff, trainable=TRAINABLE, seed=seed)
    return UnlearningModule(copy.deepcopy(model), forget, Mean(), EmbedDiff(), **settings)


def layer_output(model, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """``[T, d]`` output of ``model.model.layers[layer]`` on one unpadded sample (a test-side hook)."""
    seen = []
    handle = model.model.layers[layer].register_forward_hook(
        lambda module, args, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            model(input_ids=ids.unsqueeze(0))
    finally:
        handle.remove()
    return seen[0][0]


def scored_mse(model, samples, target, layer: int) -> float:
    """Mean over samples of the mean over answer tokens of ||h - target||^2 / d (target: a vector or a model)."""
    values = []
    for sample in samples:
        ids, mask = torch.tensor(sample.input_ids), torch.tensor(sample.labels) != -100
        hidden = layer_output(model, ids, layer)[mask]
        reference = target if isinstance(target, torch.Tensor) else layer_output(target, ids, layer)[mask]
        values.append(((hidden - reference) ** 2).mean(-1).mean())
    return torch.stack(values).mean().item()


def test_hook_gives_the_layer_output_and_the_loss_is_the_published_formula(target_model, people_tokenizer) -> None:
    module = rmu_module(target_model, layer=0)
    module.configure_model()
    batch = next(iter(ToyUnlearningData(people_tokenizer, batch_size=4).train_dataloader()))
    forget, retain = batch["forget"], batch["retain"]
    model = module.model
    expected = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"], output_hidden_states=True)
    hidden, logits = layer_hidden_states(model, forget, 0, logits=True)
    assert torch.allclose(hidden, expected.hidden_states[1], atol=1e-6)
    assert torch.allclose(logits, expected.logits[:, -logits.shape[1] :], atol=1e-5)
    stopped, none = layer_hidden_states(model, retain, 0)
    assert none is None and torch.allclose(
        stopped,
        model(**{k: retain[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True).hidden_states[1],
        atol=1e-6,
    )

    out, _ = module.compute_step(batch)
    # the published loss written out: gamma * forget MSE to c u + alpha * retain MSE to the frozen model
    direction = module.objective.forget_loss.direction
    h_forget = model(
        input_ids=forget["input_ids"], attention_mask=forget["attention_mask"], output_hidden_states=True
    ).hidden_states[1]
    h_retain = model(
        input_ids=retain["input_ids"], attention_mask=retain["attention_mask"], output_hidden_states=True
    ).hidden_states[1]
    with torch.no_grad():
        h_frozen = module.reference_model(
            input_ids=retain["input_ids"], attention_mask=retain["attention_mask"], output_hidden_states=True
        ).hidden_states[1]

    def per_sample(h, target, labels):
        mask = (labels != -100).float()
        return (((h - target) ** 2).mean(-1) * mask).sum(-1) / mask.sum(-1)

    literal = (
        per_sample(h_forget, direction, forget["labels"]).mean()
        + per_sample(h_retain, h_frozen, retain["labels"]).mean()
    )
    assert torch.allclose(out.loss, literal, atol=1e-5)
    # layer 0's output depends on layer 0's down_proj only (layer 1's is trainable but unused here)
    weight = model.model.layers[0].mlp.down_proj.weight
    grads = torch.autograd.grad(out.loss, [weight])
    expected_grads = torch.autograd.grad(literal, [weight])
    for g, e in zip(grads, expected_grads, strict=True):
        assert torch.allclose(g, e, atol=1e-5)


def test_only_the_configured_parameters_receive_gradients(target_model, people_tokenizer) -> None:
    module = rmu_module(target_model)
    module.configure_model()
    trained = [name for name, _ in module.trainable_parameters()]
    assert trained == ["model.model.layers.0.mlp.down_proj.weight", "model.model.layers.1.mlp.down_proj.weight"]
    assert not any(p.requires_grad for p in module.reference_model.parameters())
    batch = next(iter(ToyUnlearningData(people_tokenizer, batch_size=4).train_dataloader()))
    out, _ = module.compute_step(batch)
    out.loss.backward()
    with_grad = sorted(n for n, p in module.model.named_parameters() if p.grad is not None)
    assert with_grad == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    assert all(p.grad is None for p in module.reference_model.parameters())
    # only layer 0 feeds layer 0's output: training layers 0 and 1 while steering layer 0 leaves layer 1's without one
    module0 = rmu_module(target_model, layer=0)
    module0.configure_model()
    out, _ = module0.compute_step(batch)
    out.loss.backward()
    assert [n for n, p in module0.model.named_parameters() if p.grad is not None] == [
        "model.layers.0.mlp.down_proj.weight"
    ]


def test_unlearning_moves_forget_states_to_the_direction_and_keeps_retain_states(
    target_model, people_tokenizer, tmp_path
) -> None:
    tok = people_tokenizer
    data = ToyUnlearningData(tok, batch_size=4)
    module = rmu_module(target_model, steering_coeff=20.0, alpha=10.0, learning_rate=3e-2)
    module.tokenizer = tok
    module.configure_model()
    direction = module.objective.forget_loss.direction
    frozen = copy.deepcopy(target_model)
    forget_before = scored_mse(target_model, data.forget, direction, 1)
    quiet_trainer(tmp_path, max_epochs=10).fit(module, datamodule=data)
    model = module.model.eval()
    forget_after = scored_mse(model, data.forget, direction, 1)
    retain_drift = scored_mse(model, data.retain, frozen, 1)
    # 20 steps on the toy (measured: 6.39 -> 1.70, retain drift 0.84): the forget states approach c u, the retain
    # states move far less than the forget states did
    assert forget_after < 0.35 * forget_before, f"forget MSE {forget_before:.3f} -> {forget_after:.3f}"
    assert retain_drift < 0.5 * (forget_before - forget_after), f"retain drift {retain_drift:.3f}"


def test_direction_is_fixed_by_the_seed_saved_and_restored_on_resume(target_model, people_tokenizer, tmp_path) -> None:
    tok = people_tokenizer
    data = ToyUnlearningData(tok, batch_size=4)
    module = rmu_module(target_model, seed=7)
    module.tokenizer = tok
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, datamodule=data)
    first = module.objective.forget_loss.direction.clone()
    same_seed = rmu_module(target_model, seed=7)
    same_seed.configure_model()
    assert torch.equal(same_seed.objective.forget_loss.direction, first)
    path = tmp_path / "rmu.ckpt"
    trainer.save_checkpoint(path)
    assert torch.equal(torch.load(path, weights_only=True)[DIRECTION_CHECKPOINT_KEY], first)
    # a resumed run keeps the checkpoint's direction, whatever its own seed draws
    resumed = rmu_module(target_model, seed=8)
    resumed.tokenizer = tok
    quiet_trainer(tmp_path, max_epochs=2).fit(resumed, datamodule=data, ckpt_path=path)
    assert resumed.global_step == 4
    assert torch.equal(resumed.objective.forget_loss.direction, first)


@pytest.mark.parametrize(
    ("forget", "setting"),
    [
        ({"layer": 2}, "forget_loss.layer"),
        ({"layer": 1, "trainable": [r"lm_head\.bias"]}, "forget_loss.trainable"),
    ],
)
def test_bad_settings_fail_before_training(forget, setting, target_model, people_tokenizer, tmp_path) -> None:
    module = UnlearningModule(copy.deepcopy(target_model), RMU(**forget), Mean(), EmbedDiff(), learning_rate=1e-3)
    module.tokenizer = people_tokenizer
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    with pytest.raises(ValueError, match=setting):
        trainer.fit(module, datamodule=ToyUnlearningData(people_tokenizer, batch_size=4))
    assert trainer.global_step == 0


def test_bad_steering_coefficient_fails_at_construction(target_model) -> None:
    with pytest.raises(ValueError, match="steering_coeff"):
        UnlearningModule(
            copy.deepcopy(target_model), {"class_path": "baldro_pl.objectives.RMU", "init_args": {"steering_coeff": 0}}
        )
    with pytest.raises(ValueError, match="retain_loss"):
        UnlearningModule(copy.deepcopy(target_model), {"class_path": "baldro_pl.objectives.NPO"}, None, EmbedDiff())


def test_rmu_with_an_nll_retain_term_and_hparams(target_model, people_tokenizer) -> None:
    module = UnlearningModule(copy.deepcopy(target_model), RMU(layer=1, trainable=TRAINABLE), None, NLL())
    module.configure_model()
    assert module.reference_model is None  # no frozen copy without EmbedDiff
    batch = next(iter(ToyUnlearningData(people_tokenizer, batch_size=4).train_dataloader()))
    out, _ = module.compute_step(batch)
    assert torch.isfinite(out.loss)
    assert module.hparams.forget_loss == {
        "class_path": "baldro_pl.objectives.RMU",
        "init_args": {"layer": 1, "steering_coeff": 300.0, "trainable": TRAINABLE, "seed": 0},
    }


def test_gradient_checkpointing_gives_the_same_gradients(target_model, people_tokenizer) -> None:
    # the hooks must survive the recomputation of checkpointed layers (the retain passes stop after the layer)
    batch = next(iter(ToyUnlearningData(people_tokenizer, batch_size=4).train_dataloader()))
    grads = []
    for checkpointing in (False, True):
        module = rmu_module(target_model, layer=0, gradient_checkpointing=checkpointing)
        module.configure_model()
        module.model.train()
        out, _ = module.compute_step(batch)
        out.loss.backward()
        grads.append(module.model.model.layers[0].mlp.down_proj.weight.grad.clone())
    assert module.model.is_gradient_checkpointing
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
