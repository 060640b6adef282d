"""BalDRO over the global batch: 2 gloo processes x 4 samples against 1 process x 8 samples (issue 12, item 2).

Each process runs a tiny random Llama wrapped in torch's DistributedDataParallel on its 4 forget and 4 retain rows
(rank 0 rows 0-3, rank 1 rows 4-7); the reference is one process without a process group on the 8 rows. With
``scope="global"`` the aggregated forget loss must equal the single-process one on every rank, and the parameter
gradients after DDP's average must equal the single-process gradients (so must the update of any optimiser), to
1e-5. The retain term is ``NLL(per="sequence")``, a sample mean, so its DDP average is the single-process value.
Also with gradient accumulation (2 micro-batches of 2 x 4 against 2 of 8: "global" is the micro-batch of both
processes at one accumulation step), and ``scope="device"`` as the control that the comparison can fail.
BalDRO-G also as the module runs it (``*_two_pass``, issue 13): a no-grad pass over each process's rows, the global
selection, the gradient pass on the kept rows only, against the single-process one-pass value; with ratio 1/8 one
process keeps no row and back-propagates a stand-in row with zero weight.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from baldro_pl.forward import forward_logprobs
from baldro_pl.modules.unlearning import select_rows
from baldro_pl.objectives import NLL, NPO, BalDRODV, BalDROG, GradAscent, UnlearningObjective
from baldro_pl.toy import tiny_llama

VOCAB = 64
ROWS = 16  # two accumulation steps of 8 rows
LENGTH = 10
PER_RANK = 4


def _batch(seed: int) -> dict[str, torch.Tensor]:
    """``ROWS`` sequences with prompts of 2-5 tokens, answers of 2-7 tokens and right padding."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (ROWS, LENGTH), generator=g)
    prompt = torch.randint(2, 6, (ROWS,), generator=g)
    length = prompt + torch.randint(2, LENGTH - 4, (ROWS,), generator=g)
    position = torch.arange(LENGTH)
    attention_mask = (position < length[:, None]).long()
    labels = input_ids.masked_fill((position < prompt[:, None]) | (attention_mask == 0), -100)
    return {
        "input_ids": input_ids.masked_fill(attention_mask == 0, 0),
        "attention_mask": attention_mask,
        "labels": labels,
    }


FORGET, RETAIN = _batch(1), _batch(2)
REFERENCE_NLL = torch.linspace(4.0, 19.0, ROWS)[torch.randperm(ROWS, generator=torch.Generator().manual_seed(3))]

# settings that spread the weights (no one-hot softmax) and keep BalDRO-G's groups unlike the per-process ones
CASES = {
    "dv": (NPO(beta=0.5), dict(cls=BalDRODV, temperature=4.0)),
    "dv_easy_nll": (NPO(beta=0.5), dict(cls=BalDRODV, temperature=0.05, emphasis="easy", score="nll")),
    "dv_token": (GradAscent(), dict(cls=BalDRODV, temperature=0.5, unit="token")),
    "g": (NPO(beta=0.5), dict(cls=BalDROG, ratio=0.5, subsample_retain=False)),  # keeps 1 row of rank 0, 3 of rank 1
    "g_token": (GradAscent(), dict(cls=BalDROG, ratio=0.375, subsample_retain=False)),  # 3 of 8; 1 of 4 per rank
    "g_one": (NPO(beta=0.5), dict(cls=BalDROG, ratio=0.125, subsample_retain=False)),  # 1 of 8: one rank keeps none
}
# the two-pass step of UnlearningModule.compute_step, compared with the one-pass value of the same case
TWO_PASS = {f"{case}_two_pass": case for case in ("g", "g_token", "g_one")}


class Step(nn.Module):
    """A model and an objective: one call = the forget pass, the retain pass and the objective (one DDP forward)."""

    def __init__(self, objective: UnlearningObjective) -> None:
        super().__init__()
        self.model = tiny_llama(VOCAB, hidden_size=32, intermediate_size=64, seed=1)
        self.objective = objective

    def forward(self, rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        forget = {k: v[rows] for k, v in FORGET.items()}
        retain = {k: v[rows] for k, v in RETAIN.items()}
        policy = forward_logprobs(self.model, **forget, trim_logits=False)
        retain_logits = self.model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
        out = self.objective(
            policy, reference_nll=REFERENCE_NLL[rows], retain_logits=retain_logits, retain_labels=retain["labels"]
        )
        return out.loss, out.forget_loss, out.weights


class TwoPassStep(Step):
    """BalDRO-G as the module runs it: no-grad pass, selection, the gradient pass on the kept rows alone."""

    def forward(self, rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        forget = {k: v[rows] for k, v in FORGET.items()}
        retain = {k: v[rows] for k, v in RETAIN.items()}
        with torch.no_grad():
            whole = forward_logprobs(self.model, **forget)
        selection = self.objective.select_forget_rows(whole)
        policy = forward_logprobs(self.model, **select_rows(forget, selection.rows))
        retain_logits = self.model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
        out = self.objective(
            policy,
            reference_nll=REFERENCE_NLL[rows][selection.rows],
            retain_logits=retain_logits,
            retain_labels=retain["labels"],
            selection=selection,
            selected_from=whole,
        )
        return out.loss, out.forget_loss, out.weights


def _step(case: str, scope: str) -> Step:
    forget_loss, spec = CASES[TWO_PASS.get(case, case)]
    spec = dict(spec)
    aggregator = spec.pop("cls")(**spec, scope=scope)
    objective = UnlearningObjective(forget_loss, aggregator, NLL(per="sequence"), gamma=1.0, alpha=0.5)
    return (TwoPassStep if case in TWO_PASS else Step)(objective)


def _run(step: nn.Module, micro_batches: list[slice], sync: list[bool]) -> dict:
    """Forward and backward over the micro-batches (loss / their number, as Lightning's accumulation)."""
    losses, forget_losses, weights = [], [], []
    for rows, synced in zip(micro_batches, sync, strict=True):
        context = step.no_sync() if not synced else torch.enable_grad()
        with context:
            loss, forget_loss, w = step(rows)
            (loss / len(micro_batches)).backward()
        losses.append(loss.item())
        forget_losses.append(forget_loss.item())
        weights.append(w)
    module = step.module if isinstance(step, DistributedDataParallel) else step
    grads = {name: p.grad.clone() for name, p in module.model.named_parameters() if p.grad is not None}
    return {"loss": losses, "forget_loss": forget_losses, "weights": weights, "grads": grads}


def _rank_rows(rank: int, accumulation: int) -> list[slice]:
    """Rank ``rank``'s micro-batches: at step ``j`` it holds rows ``8 j + 4 rank ...`` of the single-process step."""
    return [slice(8 * j + PER_RANK * rank, 8 * j + PER_RANK * (rank + 1)) for j in range(accumulation)]


RUNS = [(case, "global", 1) for case in [*CASES, *TWO_PASS]] + [("dv", "global", 2), ("g", "global", 2)]
RUNS += [("g_two_pass", "global", 2)]
RUNS += [("dv", "device", 1), ("g", "device", 1)]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = {}
        for case, scope, accumulation in RUNS:
            step = DistributedDataParallel(_step(case, scope))
            sync = [j == accumulation - 1 for j in range(accumulation)]
            results[case, scope, accumulation] = _run(step, _rank_rows(rank, accumulation), sync)
        # BalDRO-G's retain rows under the real group: 3 forget rows per process at ratio 0.5, global k = 3 -> 2, 1
        results["retain_rows"] = BalDROG(ratio=0.5, seed=0).retain_rows(3, 8).numel()
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("global_dro")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(2)]


def _single(case: str, accumulation: int) -> dict:
    """One process, one pass over all 8 rows (for a two-pass case: its one-pass case)."""
    rows = [slice(8 * j, 8 * (j + 1)) for j in range(accumulation)]
    return _run(_step(TWO_PASS.get(case, case), "global"), rows, [True] * accumulation)


def _assert_same_grads(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys() and len(expected) > 10
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize(
    ("case", "accumulation"),
    [(case, 1) for case in [*CASES, *TWO_PASS]] + [("dv", 2), ("g", 2), ("g_two_pass", 2)],
)
def test_global_scope_on_two_processes_is_one_process_on_the_concatenated_batch(two_processes, case, accumulation):
    single = _single(case, accumulation)
    for result in (r[case, "global", accumulation] for r in two_processes):
        # the forget term is the global value on every rank; the total's retain part is each rank's own sample mean
        assert result["forget_loss"] == pytest.approx(single["forget_loss"], rel=1e-5, abs=1e-7)
        for got, expected in zip(result["weights"], single["weights"], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)  # the global micro-batch's weights
        _assert_same_grads(result["grads"], single["grads"])  # DDP-averaged, identical on both ranks
    mean_loss = [sum(pair) / 2 for pair in zip(*(r[case, "global", accumulation]["loss"] for r in two_processes))]
    assert mean_loss == pytest.approx(single["loss"], rel=1e-5)


@pytest.mark.parametrize("case", ["dv", "g"])
def test_device_scope_differs_so_the_comparison_can_fail(two_processes, case) -> None:
    single = _single(case, 1)
    device = two_processes[0][case, "device", 1]
    assert device["forget_loss"][0] != pytest.approx(single["forget_loss"][0], rel=1e-3)
    assert device["weights"][0].shape == (PER_RANK,)
    with pytest.raises(AssertionError):
        _assert_same_grads(device["grads"], single["grads"])


def test_g_keeps_a_share_of_the_global_number_of_retain_rows_on_each_process(two_processes) -> None:
    assert [r["retain_rows"] for r in two_processes] == [2, 1]


def test_two_pass_with_ratio_one_eighth_leaves_one_process_without_kept_rows(two_processes) -> None:
    """The case the stand-in row exists for: the global k = 1 row lies on one process only."""
    kept = [int((r["g_one_two_pass", "global", 1]["weights"][0] > 0).sum()) for r in two_processes]
    assert kept == [1, 1]  # both ranks report the global weights: one row of 8
    single = _single("g_one", 1)["weights"][0]
    assert int(single.nonzero()[0, 0]) // PER_RANK in (0, 1)
