"""The module <-> objective contract (issue 11, item 3): what the objective answers for, the reference cache, the
trigger of track_forgetting, BalDRO-G's resumable retain draws and ``retain_loss=None``."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from toy_task import ToyUnlearningData
from trainers import quiet_trainer

from baldro_pl.distributed import gather_ragged
from baldro_pl.forward import forward_logprobs
from baldro_pl.modules import ReferenceCache, UnlearningModule, compute_reference_nll
from baldro_pl.modules.base import plain_config
from baldro_pl.objectives import KL, NLL, NPO, BalDRODV, BalDROG, GradAscent, Mean, SimNPO, UnlearningObjective
from baldro_pl.toy import tiny_llama


def test_the_objective_answers_for_its_parts() -> None:
    npo_kl = UnlearningObjective(NPO(), BalDROG(ratio=0.5, seed=0), KL(normalise="reference"))
    assert npo_kl.needs_reference_nll and npo_kl.needs_reference_model and npo_kl.needs_all_retain_positions
    assert npo_kl.retain_rows(8, 6).numel() == 4
    plain = UnlearningObjective(SimNPO(), Mean(), KL())
    assert not plain.needs_reference_nll and plain.needs_reference_model and not plain.needs_all_retain_positions
    assert plain.retain_rows(8, 6) is None
    no_retain = UnlearningObjective(GradAscent(), BalDROG(seed=0), KL(normalise="reference"), alpha=0.0)
    assert not no_retain.uses_retain and not no_retain.needs_reference_model
    assert not no_retain.needs_all_retain_positions and no_retain.retain_rows(8, 6) is None


def test_retain_loss_none_means_token_nll_in_the_objective_and_the_module(tiny_model) -> None:
    objective = UnlearningObjective(NPO())
    forget_loss, aggregator, retain_loss = objective.parts()
    assert type(aggregator) is Mean and type(retain_loss) is NLL and retain_loss.per == "token"
    assert objective.uses_retain
    module = UnlearningModule(tiny_model, NPO(), None, None)
    assert repr(module.objective) == repr(objective)
    assert (
        module.hparams["retain_loss"]
        == plain_config(NLL())
        == {"class_path": "baldro_pl.objectives.NLL", "init_args": {"per": "token"}}
    )


def test_the_output_carries_the_average_nll(tiny_model) -> None:
    ids = torch.randint(4, 60, (3, 7))
    labels = ids.clone()
    labels[:, :3] = -100
    labels[2, 3:] = -100  # a sample without targets: average 0, not NaN
    lp = forward_logprobs(tiny_model, ids, torch.ones_like(ids), labels)
    out = UnlearningObjective(SimNPO(), alpha=0.0)(lp)
    expected = lp.nll / lp.n_tokens.clamp(min=1)
    torch.testing.assert_close(out.avg_nll, expected, rtol=0, atol=0)
    assert out.avg_nll[2].item() == 0.0 and not out.avg_nll.requires_grad
    torch.testing.assert_close(out.avg_nll, -out.hardness, rtol=0, atol=0)


# --------------------------------------------------------------------------- reference cache
def _state_of_today() -> dict[str, torch.Tensor]:
    """A cache state dict in the format written by the checkpoints of earlier versions (CPU fp64, bool)."""
    return {
        "nll": torch.tensor([6.0, 0.0, 3.0, 8.0], dtype=torch.float64),
        "n_tokens": torch.tensor([3.0, 0.0, 0.0, 4.0], dtype=torch.float64),
        "filled": torch.tensor([True, False, True, True]),
    }


def test_the_cache_loads_a_state_dict_of_today_and_writes_the_same_one() -> None:
    cache = ReferenceCache()
    cache.load_state_dict(_state_of_today())
    assert len(cache) == 3 and not cache.is_empty
    index = torch.tensor([3, 0, 2])
    torch.testing.assert_close(cache.lookup(index), torch.tensor([8.0, 6.0, 3.0]), rtol=0, atol=0)
    torch.testing.assert_close(cache.lookup_avg(index), torch.tensor([2.0, 2.0, 3.0]), rtol=0, atol=0)  # n clamped
    state = cache.state_dict()
    assert state.keys() == _state_of_today().keys()
    for key, value in _state_of_today().items():
        assert state[key].dtype == value.dtype and state[key].device.type == "cpu"
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    with pytest.raises(KeyError, match=r"no reference NLL for forget indices \[1, 7\] \(cache holds 3 samples\)"):
        cache.lookup(torch.tensor([0, 1, 7]))


def test_a_lookup_on_the_device_reads_nothing_back_to_the_host() -> None:
    """On the meta device any read of a value (``int()``, ``.item()``, ``.cpu()``) raises: a lookup makes none."""
    cache = ReferenceCache()
    cache.load_state_dict(_state_of_today())
    cache.to("meta")
    index = torch.tensor([0, 3], device="meta")
    assert cache.lookup(index).shape == (2,) and cache.lookup_avg(index).device.type == "meta"
    assert cache.device.type == "meta" and len(cache) == 3


def test_build_scores_gathers_and_stores_on_the_model_device(tiny_model) -> None:
    ids = torch.randint(4, 60, (5, 8))
    labels = ids.clone()
    labels[:, :3] = -100
    batches = [
        {
            "input_ids": ids[:3],
            "attention_mask": torch.ones(3, 8, dtype=torch.long),
            "labels": labels[:3],
            "index": torch.tensor([4, 0, 2]),
        },
        {
            "input_ids": ids[3:],
            "attention_mask": torch.ones(2, 8, dtype=torch.long),
            "labels": labels[3:],
            "index": torch.tensor([1, 3]),
        },
    ]
    cache = ReferenceCache()
    cache.build(tiny_model, batches, torch.device("cpu"))
    index, nll, _ = compute_reference_nll(tiny_model, batches, torch.device("cpu"))
    assert len(cache) == 5 and cache.device.type == "cpu"
    torch.testing.assert_close(cache.lookup(index, dtype=torch.float64), nll, rtol=0, atol=0)


def test_gather_ragged_concatenates_in_rank_order_and_drops_the_padding() -> None:
    """Two simulated ranks through an injected all-gather (the real collective: tests/distributed)."""
    theirs = iter([torch.tensor([3]), torch.tensor([7, 8, 9]), torch.tensor([0.5, 0.25, 0.125])])  # rank 1: 3 rows

    def fake_all_gather(t: torch.Tensor) -> torch.Tensor:
        return torch.stack([t, next(theirs)])  # fails unless rank 0 padded its 2 rows to 3

    index, value = gather_ragged(torch.tensor([4, 5]), torch.tensor([2.0, 1.0]), all_gather=fake_all_gather)
    assert index.tolist() == [4, 5, 7, 8, 9] and value.tolist() == [2.0, 1.0, 0.5, 0.25, 0.125]
    with pytest.raises(ValueError, match="differ in length"):
        gather_ragged(torch.tensor([1, 2]), torch.tensor([1.0]))


# --------------------------------------------------------------------------- track_forgetting
@pytest.mark.parametrize("track_forgetting", [False, True])
def test_no_reference_pass_when_nothing_uses_it(track_forgetting, people_tokenizer, tmp_path, monkeypatch) -> None:
    """GradAscent needs no reference NLL; without a logger (or with tracking off) the spread goes nowhere."""
    calls = []
    monkeypatch.setattr(ReferenceCache, "build", lambda self, *a, **k: calls.append("build"))
    monkeypatch.setattr(ReferenceCache, "lookup_avg", lambda self, *a, **k: calls.append("lookup_avg"))
    tok = people_tokenizer
    module = UnlearningModule(
        tiny_llama(len(tok)), GradAscent(), None, NLL(), track_forgetting=track_forgetting, warmup_epochs=0
    )
    module.tokenizer = tok
    quiet_trainer(tmp_path, max_steps=2).fit(module, datamodule=ToyUnlearningData(tok))
    assert calls == [] and module.reference_cache.is_empty and not module.tracks_forgetting


def test_track_forgetting_with_a_logger_logs_the_spread(people_tokenizer, tmp_path) -> None:
    tok = people_tokenizer
    module = UnlearningModule(tiny_llama(len(tok)), GradAscent(), None, NLL(), warmup_epochs=0)
    module.tokenizer = tok
    trainer = quiet_trainer(tmp_path, max_steps=2, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    trainer.fit(module, datamodule=ToyUnlearningData(tok))
    assert module.tracks_forgetting and len(module.reference_cache) == 8
    assert {"train/forget_nll_increase_mean", "train/forget_nll_increase_std"} <= set(trainer.logged_metrics)
    assert trainer.logged_metrics["train/forget_nll_increase_mean"] > 0  # gradient ascent raised the forget NLL


# --------------------------------------------------------------------------- BalDRO-G retain draws
def test_seeded_retain_draws_depend_on_seed_and_step_only() -> None:
    uninterrupted = BalDROG(ratio=0.5, seed=3)
    stream = [uninterrupted.retain_rows(8, 8, step=s).tolist() for s in range(6)]
    resumed = BalDROG(ratio=0.5, seed=3)  # a fresh object (as after a restart) at step 3
    assert [resumed.retain_rows(8, 8, step=s).tolist() for s in range(3, 6)] == stream[3:]
    assert len({tuple(r) for r in stream}) > 1  # the rows change from step to step
    accumulating = BalDROG(ratio=0.5, seed=3)  # two micro-batches in one step get two different draws
    first, second = accumulating.retain_rows(8, 8, step=7), accumulating.retain_rows(8, 8, step=7)
    assert first.tolist() != second.tolist()
    assert copy.deepcopy(accumulating).retain_rows(8, 8, step=7).tolist() == first.tolist()  # state not pickled


class _StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def _group_module(tok, rows: list) -> UnlearningModule:
    torch.manual_seed(0)
    module = UnlearningModule(
        tiny_llama(len(tok)), NPO(), BalDROG(ratio=0.5, seed=11), NLL(), learning_rate=1e-3, warmup_epochs=0
    )
    module.tokenizer = tok
    draw = module.objective.retain_rows

    def recording(n_forget, n_retain, *, step=0, device=None):
        out = draw(n_forget, n_retain, step=step, device=device)
        rows.append((step, out.tolist()))
        return out

    module.objective.retain_rows = recording
    return module


def test_a_resumed_run_draws_the_retain_rows_of_the_uninterrupted_run(people_tokenizer, tmp_path) -> None:
    tok = people_tokenizer
    full_rows: list = []
    full = _group_module(tok, full_rows)
    quiet_trainer(tmp_path / "full", max_epochs=3).fit(full, datamodule=ToyUnlearningData(tok))
    assert [s for s, _ in full_rows] == [0, 1, 2, 3, 4, 5]

    first_rows: list = []
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    quiet_trainer(
        tmp_path / "a", max_epochs=3, enable_checkpointing=True, callbacks=[_StopAfterFirstEpoch(), ckpt]
    ).fit(_group_module(tok, first_rows), datamodule=ToyUnlearningData(tok))
    resumed_rows: list = []
    resumed = _group_module(tok, resumed_rows)
    quiet_trainer(tmp_path / "b", max_epochs=3).fit(
        resumed, datamodule=ToyUnlearningData(tok), ckpt_path=ckpt.last_model_path
    )
    assert first_rows + resumed_rows == full_rows
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"parameter {name} differs after resume")


def test_the_module_builds_the_cache_it_needs(tiny_model, people_tokenizer) -> None:
    npo = UnlearningModule(copy.deepcopy(tiny_model), NPO(), BalDRODV(), NLL(), track_forgetting=False)
    assert npo.needs_reference_cache and not npo.needs_reference_model
    simnpo = UnlearningModule(copy.deepcopy(tiny_model), SimNPO(), None, KL(), track_forgetting=False)
    assert not simnpo.needs_reference_cache and simnpo.needs_reference_model
