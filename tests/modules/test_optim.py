"""AdamW with fp32 state, the fused/foreach choice, parameter groups and the warm-up schedule."""

from __future__ import annotations

import copy
import io
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from toy_task import ToyUnlearningData
from trainers import quiet_trainer

from baldro_pl.modules import UnlearningModule
from baldro_pl.modules.optim import AdamWFp32State, build_optimizer, warmup_linear_schedule
from baldro_pl.objectives import NLL, NPO, BalDRODV
from baldro_pl.toy import tiny_llama

cuda = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)


class LoopAdamWFp32State(torch.optim.Optimizer):
    """AdamWFp32State as it was before issue 13 (one parameter at a time), verbatim: the reference."""

    def __init__(self, params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = float(state["step"])
                grad = p.grad.float()
                master = p.float()
                master.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
                master.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**t))
                p.copy_(master)
        return loss


def _params(dtype: torch.dtype, device: str = "cpu") -> list[torch.nn.Parameter]:
    """Matrices, a vector and a non-contiguous (transposed) matrix, in ``dtype``."""
    shapes = [(5, 3), (7,), (4, 6), (1, 1), (33, 2)]
    params = [torch.nn.Parameter(torch.randn(shape, device=device).to(dtype)) for shape in shapes]
    params.append(torch.nn.Parameter(torch.randn(6, 4, device=device).to(dtype).t()))  # non-contiguous
    return params


def _groups(params: list[torch.nn.Parameter]) -> list[dict]:
    return [{"params": params[::2], "weight_decay": 0.1}, {"params": params[1::2], "weight_decay": 0.0}]


def _clone(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone(memory_format=torch.preserve_format)) for p in params]


def _run(optimizers, param_sets, steps: int, *, lrs=None, skip=None, seed: int = 1) -> None:
    """Step every optimiser on the same gradients; ``lrs[i]`` sets the learning rate of step i, ``skip[i]`` the
    index of a parameter left without a gradient at step i."""
    generator = torch.Generator().manual_seed(seed)
    for i in range(steps):
        grads = [torch.randn(p.shape, generator=generator) for p in param_sets[0]]
        for optimizer, params in zip(optimizers, param_sets):
            for j, (p, g) in enumerate(zip(params, grads)):
                p.grad = None if skip and skip.get(i) == j else g.to(device=p.device, dtype=p.dtype)
            if lrs is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lrs[i]
            optimizer.step()


def _assert_same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer, pa, pb) -> None:
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        sa, sb = a.state[p], b.state[q]
        assert sb["exp_avg"].dtype == torch.float32 and sb["exp_avg_sq"].dtype == torch.float32
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)


# ------------------------------------------------------------------ AdamWFp32State against the per-parameter loop
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("block_numel", [None, 1, 7, 16, 40])
def test_fp32_state_adamw_is_bit_for_bit_the_per_parameter_loop(dtype: torch.dtype, block_numel: int | None) -> None:
    # blocks of 1, 7, 16 and 40 elements split parameters across blocks and put several in one block
    old_params = _params(dtype)
    new_params = _clone(old_params)
    assert not new_params[-1].is_contiguous()
    old = LoopAdamWFp32State(_groups(old_params), lr=1e-2)
    new = AdamWFp32State(_groups(new_params), lr=1e-2, block_numel=block_numel)
    # a zero learning rate (the warm-up's first step), then a schedule; parameters left without a gradient on some
    # steps, so that their step counts (and bias corrections) differ within a block
    lrs = [0.0, 1e-3, 3e-2, 1e-2, 5e-3, 2e-3, 1e-2, 1e-4]
    _run([old, new], [old_params, new_params], len(lrs), lrs=lrs, skip={2: 0, 3: 4, 5: 5})
    _assert_same_state(old, new, old_params, new_params)
    assert [float(new.state[p]["step"]) for p in new_params] == [7.0, 8.0, 8.0, 8.0, 7.0, 7.0]
    assert all(p.dtype == dtype for p in new_params)


def _bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 numbers at ``|x|`` (8 significant bits: ``2 ** (floor(log2 |x|) - 7)``)."""
    exponent = torch.floor(torch.log2(x.float().abs().clamp(min=2.0**-126)))
    return torch.exp2(exponent - 7)


@pytest.mark.parametrize(("device", "fused"), [("cpu", True), pytest.param(*cuda.values, None, marks=cuda.marks)])
def test_fp32_state_adamw_fused_within_one_bf16_ulp_of_the_loop(device: str, fused: bool | None) -> None:
    # the fused kernel (CUDA's default; asked for on the CPU) computes the update in one pass, not op by op: the
    # moments agree to fp32 rounding of terms of the gradients' size (|g| < ~5 here; on an H200 a moment near 0 was
    # 3.5e-9 off), and the rounded weights by at most one bf16 ulp
    old_params = _params(torch.bfloat16, device)
    new_params = _clone(old_params)
    old = LoopAdamWFp32State(_groups(old_params), lr=1e-2)
    new = AdamWFp32State(_groups(new_params), lr=1e-2, fused=fused)
    _run([old, new], [old_params, new_params], 6)
    for p, q in zip(old_params, new_params):
        assert new.state[q]["exp_avg"].dtype == torch.float32
        difference = (q.float() - p.float()).abs()
        assert bool((difference <= _bf16_ulp(torch.maximum(p.abs(), q.abs()))).all()), difference.max()
        torch.testing.assert_close(new.state[q]["exp_avg"], old.state[p]["exp_avg"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(new.state[q]["exp_avg_sq"], old.state[p]["exp_avg_sq"], rtol=1e-5, atol=1e-6)


def test_fp32_state_adamw_equals_torch_adamw_on_fp32_params() -> None:
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours = AdamWFp32State([a], lr=1e-2, weight_decay=0.1)
    theirs = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        grad = torch.randn(5, 3)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_fp32_state_adamw_keeps_fp32_moments_for_bf16_params() -> None:
    p = torch.nn.Parameter(torch.randn(4, 4).bfloat16())
    optimizer = AdamWFp32State([p], lr=1e-3)
    start = p.detach().float().clone()
    grad = torch.randn(4, 4)
    p.grad = grad.bfloat16()
    optimizer.step()
    state = optimizer.state[p]
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    assert p.dtype == torch.bfloat16
    # first Adam step moves every weight by lr * sign(grad) (bias-corrected m / sqrt(v) = g / |g|)
    expected = (start - 1e-3 * torch.sign(p.grad.float())).bfloat16()
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=0)


def test_fp32_state_adamw_rejects_an_empty_block() -> None:
    with pytest.raises(ValueError, match="block_numel must be positive"):
        AdamWFp32State([torch.nn.Parameter(torch.zeros(2))], block_numel=0)


def test_fp32_state_adamw_copies_keep_the_block_size() -> None:
    optimizer = AdamWFp32State([torch.nn.Parameter(torch.zeros(2))], block_numel=3, fused=True)
    assert copy.deepcopy(optimizer).block_numel == 3
    assert copy.deepcopy(optimizer).fused is True


# ------------------------------------------------------------------ checkpoints
def test_a_state_saved_by_the_per_parameter_loop_loads_and_continues_bit_for_bit() -> None:
    loop_params = _params(torch.bfloat16)
    loop = LoopAdamWFp32State(_groups(loop_params), lr=1e-2)
    _run([loop], [loop_params], 3)
    buffer = io.BytesIO()
    torch.save(loop.state_dict(), buffer)  # the layout of checkpoints written before issue 13
    resumed_params = _clone(loop_params)
    resumed = AdamWFp32State(_groups(resumed_params), lr=1e-2, block_numel=10)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    _assert_same_state(loop, resumed, loop_params, resumed_params)  # fp32 moments, not cast to the bf16 weights
    _run([loop, resumed], [loop_params, resumed_params], 4, seed=2)
    _assert_same_state(loop, resumed, loop_params, resumed_params)


def test_fp32_state_adamw_state_dict_round_trip_continues_identically() -> None:
    params = _params(torch.bfloat16)
    optimizer = AdamWFp32State(_groups(params), lr=1e-2)
    _run([optimizer], [params], 3)
    resumed_params = _clone(params)
    resumed = AdamWFp32State(_groups(resumed_params), lr=1e-2)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert set(resumed.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    _run([optimizer, resumed], [params, resumed_params], 3, seed=2)
    _assert_same_state(optimizer, resumed, params, resumed_params)


def test_a_torch_adamw_state_from_before_the_fused_choice_loads_into_build_optimizer() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = build_optimizer(model.named_parameters(), lr=1e-2, weight_decay=0.1).param_groups
    # what build_optimizer returned before: torch's AdamW left to its default (the single-tensor loop on CPU)
    before = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups], lr=1e-2)
    assert before.defaults["fused"] is None
    params = list(model.parameters())
    _run([before], [params], 3)
    twin = copy.deepcopy(model)
    now = build_optimizer(twin.named_parameters(), lr=1e-2, weight_decay=0.1)
    assert now.defaults["fused"] is True
    now.load_state_dict(copy.deepcopy(before.state_dict()))  # torch aliases same-dtype state tensors on load
    assert all(g["fused"] is True and g["foreach"] is None for g in now.param_groups)  # not the saved flags
    _run([before, now], [params, list(twin.parameters())], 3, seed=2)
    for p, q in zip(params, twin.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-6)


class _StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def test_a_bf16_fit_with_fp32_moments_resumes_from_its_checkpoint(people_tokenizer, tmp_path) -> None:
    # before issue 13 the resumed run failed at its first step: loading cast the moments to bf16
    tok = people_tokenizer

    def module() -> UnlearningModule:
        torch.manual_seed(0)
        model = tiny_llama(len(tok), hidden_size=32, num_hidden_layers=1, intermediate_size=64)
        unlearning = UnlearningModule(
            model,
            NPO(beta=0.1),
            BalDRODV(temperature=0.5),
            NLL(),
            learning_rate=1e-3,
            warmup_steps=1,
            weight_decay=0.01,
            optimizer_state_dtype="float32",
        )
        unlearning.tokenizer = tok
        return unlearning

    full = module()
    quiet_trainer(tmp_path / "full", max_epochs=3, precision="bf16-true").fit(full, datamodule=ToyUnlearningData(tok))
    first = module()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    quiet_trainer(
        tmp_path / "a",
        max_epochs=3,
        precision="bf16-true",
        enable_checkpointing=True,
        callbacks=[_StopAfterFirstEpoch(), ckpt],
    ).fit(first, datamodule=ToyUnlearningData(tok))
    resumed = module()
    trainer = quiet_trainer(tmp_path / "b", max_epochs=3, precision="bf16-true")
    trainer.fit(resumed, datamodule=ToyUnlearningData(tok), ckpt_path=ckpt.last_model_path)

    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, AdamWFp32State)
    assert all(p.dtype == torch.bfloat16 for p in resumed.model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 and float(s["step"]) == 6 for s in optimizer.state.values())
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"parameter {name} differs after resume")


# ------------------------------------------------------------------ build_optimizer: groups and kernel choice
def test_build_optimizer_groups_and_dtype_choice() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model.named_parameters(), lr=1e-3, weight_decay=0.01)
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and [p.shape for p in decayed["params"]] == [torch.Size([4, 4])]
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3  # linear bias, norm weight and bias
    model.bfloat16()
    assert isinstance(build_optimizer(model.named_parameters(), lr=1e-3, weight_decay=0.0), torch.optim.AdamW)
    fp32_state = build_optimizer(model.named_parameters(), lr=1e-3, weight_decay=0.0, state_dtype="float32")
    assert isinstance(fp32_state, AdamWFp32State)


@pytest.mark.parametrize("device", ["cpu", cuda])
@pytest.mark.parametrize(
    ("dtype", "state_dtype"),
    [(torch.float32, "param"), (torch.float32, "float32"), (torch.bfloat16, "param")],
)
def test_build_optimizer_chooses_torch_fused_adamw(device: str, dtype: torch.dtype, state_dtype: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)).to(device=device, dtype=dtype)
    optimizer = build_optimizer(model.named_parameters(), lr=1e-3, weight_decay=0.01, state_dtype=state_dtype)
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["fused"] is True and optimizer.defaults["foreach"] is None
    model(torch.randn(2, 4, device=device, dtype=dtype)).sum().backward()
    optimizer.step()
    state = optimizer.state[model[0].weight]
    assert state["exp_avg"].dtype == dtype and state["step"].device == model[0].weight.device


def test_build_optimizer_leaves_the_kernel_to_torch_off_cpu_and_cuda() -> None:
    model = torch.nn.Linear(4, 4, device="meta")
    optimizer = build_optimizer(model.named_parameters(), lr=1e-3, weight_decay=0.01)
    assert optimizer.defaults["fused"] is None and optimizer.defaults["foreach"] is None


def test_fused_adamw_matches_torch_reference_adamw_on_fp32() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    twin = copy.deepcopy(model)
    start = [p.detach().clone() for p in model.parameters()]
    fused = build_optimizer(model.named_parameters(), lr=1e-2, weight_decay=0.1)
    assert fused.defaults["fused"] is True
    # torch's single-tensor loop (what build_optimizer returned on CPU before), over the same two groups
    groups = [
        {"params": [twin[0].weight, twin[2].weight], "weight_decay": 0.1},
        {"params": [twin[0].bias, twin[1].weight, twin[1].bias, twin[2].bias], "weight_decay": 0.0},
    ]
    assert [[p.shape for p in g["params"]] for g in fused.param_groups] == [
        [p.shape for p in g["params"]] for g in groups
    ]
    reference = torch.optim.AdamW(groups, lr=1e-2, foreach=False)
    _run([fused, reference], [list(model.parameters()), list(twin.parameters())], 8, lrs=[1e-2, 2e-2] * 4)
    for p, q, p0 in zip(model.parameters(), twin.parameters(), start):
        assert (p - p0).abs().min() > 1e-3  # every weight moved
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_fused_adamw_on_bf16_weights_rounds_once_per_step() -> None:
    # the fused kernel computes in fp32 and rounds weight and moments into bf16 once; torch's single-tensor loop
    # rounds after each operation
    weight = torch.nn.Parameter(torch.randn(64, 64).bfloat16())
    optimizer = build_optimizer([("w", weight)], lr=1e-3, weight_decay=0.1)
    w, m, v = weight.detach().float(), torch.zeros(64, 64), torch.zeros(64, 64)
    generator = torch.Generator().manual_seed(3)
    for t in range(1, 5):
        grad = (torch.randn(64, 64, generator=generator) * 1e-3).bfloat16()
        weight.grad = grad
        optimizer.step()
        g = grad.float()
        m = m.lerp(g, 0.1)
        v = v * 0.999 + 0.001 * g * g
        w = w * (1 - 1e-3 * 0.1) - (1e-3 / (1 - 0.9**t)) * m / (v.sqrt() / math.sqrt(1 - 0.999**t) + 1e-8)
        w, m, v = (x.bfloat16().float() for x in (w, m, v))
        torch.testing.assert_close(weight.detach().float(), w, rtol=2**-8, atol=0)  # at most one bf16 ulp
        torch.testing.assert_close(optimizer.state[weight]["exp_avg"].float(), m, rtol=2**-8, atol=0)


@pytest.mark.parametrize("decay", [True, False])
def test_warmup_then_linear_decay_like_the_hf_trainer(decay: bool) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_linear_schedule(optimizer, warmup_steps=4, total_steps=10, decay=decay)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [0.0, 0.25, 0.5, 0.75, 1.0] + ([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6] if decay else [1.0] * 5)
    assert lrs == pytest.approx(expected)
