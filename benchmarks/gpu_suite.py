"""One-shot GPU benchmark of baldro-pl's training step: step time, tokens/s, MFU and peak memory, in <= 8 minutes.

On one GPU, a Llama built from a config (random init, no download; TinyLlama's shape: hidden 2048, 22 layers,
32 heads, 4 kv heads, intermediate 5632, vocab 32000, ~1.1B parameters), bf16 weights, forget 8 x 256 + retain
8 x 256 tokens per step (``benchmarks/step_time.py``'s batches: 64 prompt tokens masked, ragged answers). Cases:

* baldro-pl (``UnlearningModule.compute_step``, backward, the optimiser the module builds itself through
  ``configure_optimizers``): NPO, NPO + BalDRO-G, NPO + BalDRO-DV, SimNPO + BalDRO-DV, SatImp + BalDRO-DV, each
  composed as its TOFU preset;
* the public code's patterns (``step_time._public_step``: the frozen reference model run on every step; BalDRO-G
  with a selection pass that keeps its graph), stepping the same optimiser;
* the floor: forward + backward of the Hugging Face model's own NLL on the same tokens (one pass over the 16 rows),
  no objective, no optimiser step;
* Lightning's default strategy vs ``HFFSDPStrategy`` with ``devices=1``, through ``benchmarks/fsdp_step.py`` (its
  NPO + BalDRO-DV module, its batches of the same shape, one process per strategy, on this suite's model);
* a micro-batch sweep of NPO + BalDRO-DV (4, 8, 16, 32, 64 forget rows and as many retain rows; an out-of-memory
  size is recorded and the larger ones skipped).

MFU = 6 * N * T / (step time * peak), N = the parameters without the input token embedding (the LM head is counted:
it is a matmul), T = the tokens of the rows the step trains on (forget rows, BalDRO-G's k kept ones where it takes
two passes, + the retain rows the objective uses; padding included, since the model processes it). Not counted as
model FLOPs: the attention score matmuls (~2% here), and any work beyond one forward + backward of those tokens: the
public patterns' frozen reference forward
(2 * N * tokens of the rows it scores) and BalDRO-G's selection pass; baldro-pl's LM head, which starts at the first
answer position, does a little less work than 6 * N * T assumes. Peak: bf16 dense FLOP/s of the GPU from a small
table (H100 SXM and H200 989e12, H100 PCIe 756e12, A100 312e12), ``--peak-tflops`` to override; n/a on a CPU.

Each case runs ``--warmup`` steps, then ``--steps`` timed ones (median reported); a global ``--budget-s`` skips the
cases left once it is spent (recorded as skipped) and cuts a running case's timed steps short. The JSON and the
Markdown table are (re)written atomically after every case.

Usage:
    bash benchmarks/gpu_suite.sh                                # on a GPU; results in benchmarks/results/
    python benchmarks/gpu_suite.py --out DIR                    # the same without the wrapper
    python benchmarks/gpu_suite.py --tiny --out /tmp/suite      # smoke test on a CPU: every case, tiny model
    python benchmarks/gpu_suite.py --cases floor,npo_dv,sweep   # a subset (ids or groups; see --help)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `benchmarks` and an uninstalled `baldro_pl` importable
    sys.path.insert(0, str(REPO))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from baldro_pl.files import write_text_atomic  # noqa: E402
from baldro_pl.modules import UnlearningModule  # noqa: E402
from baldro_pl.modules.optim import AdamWFp32State  # noqa: E402
from baldro_pl.objectives import (  # noqa: E402
    NLL,
    NPO,
    Aggregator,
    BalDRODV,
    BalDROG,
    ForgetLoss,
    Mean,
    RetainLoss,
    SatImp,
    SimNPO,
)
from baldro_pl.toy import tiny_llama, train_tokenizer  # noqa: E402
from benchmarks.step_time import _batch, _public_step, _sync  # noqa: E402

#: bf16 dense peak FLOP/s (no sparsity) by a substring of ``torch.cuda.get_device_name``; first match wins
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
)
JSON_NAME, MARKDOWN_NAME = "gpu_suite.json", "gpu_suite.md"
BETA, TAU, RATIO = 0.1, 1.0, 0.5  # NPO beta, BalDRO-DV temperature, BalDRO-G ratio (the TOFU presets' values)
MODULE_GROUP, PUBLIC_GROUP, FLOOR_GROUP, FSDP_GROUP, SWEEP_GROUP = "baldro-pl", "public", "floor", "fsdp", "sweep"


def peak_flops_for(device_name: str) -> float | None:
    """bf16 dense peak FLOP/s of a GPU from :data:`PEAK_BF16_FLOPS`, or None for a device not in the table.

    Examples:
        >>> peak_flops_for("NVIDIA H100 PCIe") / 1e12
        756.0
        >>> peak_flops_for("NVIDIA H100 80GB HBM3") / 1e12
        989.0
        >>> peak_flops_for("cpu") is None
        True
    """
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def model_flops(non_embedding_parameters: int, tokens: int) -> float:
    """Model FLOPs of one forward + backward over ``tokens`` tokens: ``6 * N * T``.

    Examples:
        >>> model_flops(1_000_000, 10)
        60000000.0
    """
    return 6.0 * non_embedding_parameters * tokens


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (None without a peak).

    Examples:
        >>> mfu(500e12, 1.0, 1000e12)
        0.5
        >>> mfu(1.0, 1.0, None) is None
        True
    """
    if peak_flops is None or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak_flops


@dataclass(frozen=True)
class Settings:
    """What the suite runs: the model's shape, the batch, the step counts, the device and the budget."""

    tiny: bool
    device: torch.device
    dtype: torch.dtype
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    batch: int
    length: int
    prompt: int
    warmup: int
    steps: int
    micro_batches: tuple[int, ...]
    budget_s: float
    peak_flops: float | None
    peak_source: str
    optimizer_state_dtype: str
    cases: frozenset[str] | None


@dataclass
class Measured:
    """What one case measured (step times in seconds) and how to read it."""

    times: list[float]
    tokens_per_step: int
    optimizer_times: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    truncated: bool = False
    steps_timed: int | None = None  # when ``times`` holds only the median (a subprocess's report)
    median_only: bool = False


@dataclass
class Case:
    """One benchmark case: an id, a group, a display name, the function that measures it and a note."""

    id: str
    group: str
    name: str
    run: Callable[[], Measured]
    notes: str = ""


class Suite:
    """Runs the cases in order within the time budget and keeps the JSON and Markdown outputs up to date."""

    def __init__(self, settings: Settings, out: Path) -> None:
        self.settings = settings
        self.out = out
        self.start = time.perf_counter()
        self.deadline = self.start + settings.budget_s
        self.results: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        self.non_embedding = 0

    def elapsed(self) -> float:
        """Seconds since the suite started."""
        return time.perf_counter() - self.start

    def log(self, message: str) -> None:
        """One progress line, prefixed with the elapsed time."""
        print(f"[{self.elapsed():7.1f} s] {message}", flush=True)

    # ------------------------------------------------------------------ timing
    def timed_steps(self, step: Callable[[], None], optimizer_step: Callable[[], None] | None = None) -> Measured:
        """``warmup`` + ``steps`` calls of ``step`` (then ``optimizer_step``), each timed between device syncs.

        Past the deadline the timed steps stop early (at least one is kept); the optimiser step is timed on its
        own too (one extra sync between backward and the optimiser, which leaves the device idle for microseconds).
        """
        s, device = self.settings, self.settings.device
        times, optimizer_times, truncated = [], [], False
        for i in range(s.warmup + s.steps):
            if time.perf_counter() > self.deadline and times:
                truncated = True
                break
            _sync(device)
            start = time.perf_counter()
            step()
            middle = start
            if optimizer_step is not None:
                _sync(device)
                middle = time.perf_counter()
                optimizer_step()
            _sync(device)
            end = time.perf_counter()
            if i >= s.warmup:
                times.append(end - start)
                if optimizer_step is not None:
                    optimizer_times.append(end - middle)
        return Measured(times, 0, optimizer_times, truncated=truncated)

    # ------------------------------------------------------------------ running
    def skip(self, case: Case, reason: str) -> None:
        """Record ``case`` as not run, with the reason."""
        self.log(f"{case.name}: skipped ({reason})")
        self.results.append(self._row(case, "skipped", reason=reason))

    def run_case(self, case: Case) -> str:
        """Measure one case; returns its status (``ok``, ``oom``, ``error`` or ``skipped``)."""
        if time.perf_counter() > self.deadline:
            self.skip(case, f"time budget of {self.settings.budget_s:g} s spent")
            return "skipped"
        self.log(f"{case.name} ...")
        cuda = self.settings.device.type == "cuda"
        _free(cuda)
        before = torch.cuda.memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        status, reason, measured = "ok", "", None
        try:
            measured = case.run()
        except torch.cuda.OutOfMemoryError as exc:
            status, reason = "oom", str(exc).splitlines()[0] if str(exc) else "out of memory"
        except _BudgetSpent as exc:
            status, reason = "skipped", str(exc)
        except _SubprocessFailed as exc:
            # on a CPU (--tiny), an FSDP run this environment cannot make is recorded, not failed
            status, reason = ("skipped" if self.settings.tiny else "error"), str(exc)
        except Exception as exc:  # noqa: BLE001 - one broken case must not cost the other cases' GPU time
            traceback.print_exc()
            status, reason = "error", f"{type(exc).__name__}: {exc}"
        if measured is not None and not measured.times:
            status, reason, measured = "skipped", "no timed step fitted in the time budget", None
        if measured is not None and measured.peak_bytes is None and cuda:
            measured.peak_bytes = torch.cuda.max_memory_allocated() - before
        _free(cuda)
        row = self._row(case, status, reason=reason, measured=measured)
        self.results.append(row)
        if status == "ok":
            mfu_text = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
            peak = "n/a" if row["peak_gib"] is None else f"{row['peak_gib']:.2f} GiB"
            self.log(
                f"{case.name}: {row['ms_per_step']:.1f} ms/step, {row['tokens_per_s']:,.0f} tokens/s, "
                f"MFU {mfu_text}, peak {peak}"
            )
        else:
            self.log(f"{case.name}: {status} ({reason})")
        return status

    def _row(self, case: Case, status: str, *, reason: str = "", measured: Measured | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": case.id,
            "group": case.group,
            "name": case.name,
            "status": status,
            "reason": reason or None,
            "notes": case.notes or None,
            "ms_per_step": None,
            "ms_min": None,
            "ms_max": None,
            "steps_timed": 0,
            "truncated": False,
            "tokens_per_step": None,
            "tokens_per_s": None,
            "model_flops_per_step": None,
            "mfu": None,
            "peak_gib": None,
            "optimizer_ms": None,
        }
        if measured is None:
            return row
        seconds = statistics.median(measured.times)
        flops = model_flops(self.non_embedding, measured.tokens_per_step)
        row.update(
            ms_per_step=1000 * seconds,
            ms_min=None if measured.median_only else 1000 * min(measured.times),
            ms_max=None if measured.median_only else 1000 * max(measured.times),
            steps_timed=measured.steps_timed or len(measured.times),
            truncated=measured.truncated,
            tokens_per_step=measured.tokens_per_step,
            tokens_per_s=measured.tokens_per_step / seconds,
            model_flops_per_step=flops,
            mfu=mfu(flops, seconds, self.settings.peak_flops),
            peak_gib=None if measured.peak_bytes is None else measured.peak_bytes / 2**30,
            optimizer_ms=1000 * statistics.median(measured.optimizer_times) if measured.optimizer_times else None,
        )
        return row

    # ------------------------------------------------------------------ outputs
    def best_micro_batch(self) -> dict[str, Any] | None:
        """The sweep's micro-batch with the most tokens/s (the highest MFU: N and the peak are fixed)."""
        done = [r for r in self.results if r["group"] == SWEEP_GROUP and r["status"] == "ok"]
        if not done:
            return None
        best = max(done, key=lambda r: r["tokens_per_s"])
        return {
            "micro_batch": int(best["id"].removeprefix("sweep_mb")),
            "tokens_per_s": best["tokens_per_s"],
            "mfu": best["mfu"],
            "id": best["id"],
        }

    def document(self, finished: bool) -> dict[str, Any]:
        """The JSON document: settings, environment, MFU definition and one row per case."""
        return {
            "suite": "baldro-pl gpu_suite",
            "finished": finished,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "elapsed_s": round(self.elapsed(), 1),
            "budget_s": self.settings.budget_s,
            "mode": "tiny" if self.settings.tiny else "full",
            **self.meta,
            "cases": self.results,
            "best_micro_batch": self.best_micro_batch(),
        }

    def write(self, finished: bool) -> None:
        """(Re)write the JSON and the Markdown atomically (temporary file in the folder, then rename)."""
        doc = self.document(finished)
        write_text_atomic(self.out / JSON_NAME, json.dumps(doc, indent=2) + "\n")
        write_text_atomic(self.out / MARKDOWN_NAME, markdown(doc))


def _free(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    if value is None:
        return "n/a"
    return format(value * scale if scale != 1.0 else value, spec)


def markdown(doc: dict[str, Any]) -> str:
    """The Markdown report: a few lines of context, one table of every case, the best micro-batch."""
    env, model, batch, mfu_def, opt = doc["environment"], doc["model"], doc["batch"], doc["mfu"], doc["optimizer"]
    peak = "n/a" if mfu_def["peak_flops"] is None else f"{mfu_def['peak_flops'] / 1e12:g} TFLOP/s"
    lines = [
        "# baldro-pl GPU suite" + (" (tiny smoke run)" if doc["mode"] == "tiny" else ""),
        "",
        f"- device: {env['device_name']} (peak bf16 dense: {peak}, {mfu_def['peak_source']}); "
        f"torch {env['torch']}, transformers {env['transformers']}, lightning {env['lightning']}; "
        f"{doc['date_utc']}, {doc['elapsed_s']:g} s of a {doc['budget_s']:g} s budget"
        + ("" if doc["finished"] else " (**not finished**)"),
        f"- model: Llama, hidden {model['hidden']}, {model['layers']} layers, {model['heads']} heads "
        f"({model['kv_heads']} kv), intermediate {model['intermediate']}, vocab {model['vocab']}: "
        f"{model['parameters']:,} parameters, N = {model['non_embedding_parameters']:,} without the input "
        f"embedding; {model['dtype']} weights",
        f"- batch: forget {batch['forget_rows']} x {batch['length']} + retain {batch['retain_rows']} x "
        f"{batch['length']} tokens ({batch['prompt']} prompt tokens masked, ragged answers); "
        f"{batch['warmup_steps']} warm-up + {batch['timed_steps']} timed steps per case, median",
        f"- optimiser of the baldro-pl and public rows: the module's own ({opt['class']}, "
        f"optimizer_state_dtype {opt['state_dtype']}, fused {opt['fused']}, foreach {opt['foreach']})",
        f"- MFU = {mfu_def['formula']}",
        *(f"- {key}: {text}" for key, text in doc["definitions"].items()),
        "",
        "| case | status | ms/step | tokens/step | tokens/s | MFU | peak GiB | optimizer ms | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in doc["cases"]:
        status = r["status"] + (f": {r['reason']}" if r["reason"] else "")
        if r["truncated"]:
            status += f" ({r['steps_timed']} timed steps: budget)"
        lines.append(
            f"| {r['name']} | {status} | {_fmt(r['ms_per_step'], '.1f')} | {_fmt(r['tokens_per_step'], ',d')} | "
            f"{_fmt(r['tokens_per_s'], ',.0f')} | {_fmt(r['mfu'], '.1f', 100)}{'%' if r['mfu'] is not None else ''} | "
            f"{_fmt(r['peak_gib'], '.2f')} | {_fmt(r['optimizer_ms'], '.1f')} | {r['notes'] or ''} |"
        )
    best = doc["best_micro_batch"]
    lines.append("")
    if best is None:
        lines.append("Best micro-batch (NPO + BalDRO-DV): none measured.")
    else:
        lines.append(
            f"Best micro-batch for MFU (NPO + BalDRO-DV): {best['micro_batch']} forget + {best['micro_batch']} "
            f"retain rows ({best['tokens_per_s']:,.0f} tokens/s, MFU {_fmt(best['mfu'], '.1f', 100)}"
            f"{'%' if best['mfu'] is not None else ''})."
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- the cases
def build_model(s: Settings) -> torch.nn.Module:
    """The randomly initialised Llama of the settings, on the device, in the settings' dtype."""
    with torch.device(s.device):
        model = tiny_llama(
            s.vocab,
            hidden_size=s.hidden,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            num_key_value_heads=s.kv_heads,
            intermediate_size=s.intermediate,
            max_position_embeddings=max(512, s.length),
        )
    return model.to(dtype=s.dtype)


def _module_kwargs(s: Settings) -> dict[str, Any]:
    return {
        "learning_rate": 1e-5,
        "warmup_steps": 0,
        "lr_schedule": "constant",
        "optimizer_state_dtype": s.optimizer_state_dtype,
    }


def _attach_trainer(module: pl.LightningModule, s: Settings) -> None:
    """Give ``module`` a Trainer (not fitting) so that its own ``configure_optimizers`` can run."""
    module.trainer = pl.Trainer(
        accelerator="gpu" if s.device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=-1,  # with max_steps: estimated_stepping_batches is max_steps, no data loader needed
        max_steps=s.warmup + s.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _module_optimizer(module: UnlearningModule, s: Settings) -> tuple[torch.optim.Optimizer, Any]:
    _attach_trainer(module, s)
    config = module.configure_optimizers()
    return config["optimizer"], config["lr_scheduler"]["scheduler"]


def _optimizer_step(optimizer: torch.optim.Optimizer, scheduler: Any) -> Callable[[], None]:
    def step() -> None:
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _sides(s: Settings, rows: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    forget = _batch(rows, s.length, s.vocab, s.prompt, s.device)
    retain = _batch(rows, s.length, s.vocab, s.prompt, s.device)
    return forget, retain


def ours_case(
    suite: Suite,
    base: torch.nn.Module,
    rows: int,
    forget_loss: ForgetLoss,
    aggregator: Aggregator,
    retain_loss: RetainLoss,
    gamma: float,
) -> Callable[[], Measured]:
    """A measuring function for baldro-pl's step: ``compute_step`` + backward + the module's optimiser."""

    def run() -> Measured:
        s = suite.settings
        forget, retain = _sides(s, rows)
        module = UnlearningModule(
            copy.deepcopy(base), forget_loss, aggregator, retain_loss, gamma=gamma, **_module_kwargs(s)
        ).to(s.device)
        module.configure_model()
        if module.objective.needs_reference_nll:
            module.reference_cache.build(module.model, [forget], s.device)
        optimizer, scheduler = _module_optimizer(module, s)
        suite.meta["optimizer"] = _optimizer_meta(optimizer, s)
        kept = module.objective.retain_rows(rows, rows, step=0, device=s.device)
        # the forget rows the gradient pass trains on: BalDRO-G's k after its no-grad selection pass (uncounted)
        trained = aggregator.group_size(rows) if module.objective.selects_forget_rows(rows) else rows
        tokens = (trained + (rows if kept is None else kept.numel())) * s.length
        module.train()
        batch = {"forget": forget, "retain": retain}
        torch.manual_seed(2)

        def step() -> None:
            module.compute_step(batch)[0].loss.backward()

        measured = suite.timed_steps(step, _optimizer_step(optimizer, scheduler))
        measured.tokens_per_step = tokens
        return measured

    return run


def public_case(suite: Suite, base: torch.nn.Module, kind: str) -> Callable[[], Measured]:
    """A measuring function for the public pattern ``kind`` (``step_time._public_step``) with the module's optimiser."""

    def run() -> Measured:
        s = suite.settings
        forget, retain = _sides(s, s.batch)
        model = copy.deepcopy(base).train()
        reference = copy.deepcopy(base).eval().requires_grad_(False)
        holder = UnlearningModule(model, NPO(beta=BETA), Mean(), NLL(), **_module_kwargs(s))  # for its optimiser
        optimizer, scheduler = _module_optimizer(holder, s)
        k = max(1, int(s.batch * RATIO)) if kind == "group" else s.batch
        torch.manual_seed(2)

        def step() -> None:
            _public_step(model, reference, forget, retain, kind, BETA, TAU, RATIO).backward()

        measured = suite.timed_steps(step, _optimizer_step(optimizer, scheduler))
        measured.tokens_per_step = (s.batch + k) * s.length
        return measured

    return run


def floor_case(suite: Suite, base: torch.nn.Module, *, two_passes: bool = False) -> Callable[[], Measured]:
    """A measuring function for the floor: forward + backward of the plain NLL over forget and retain rows at once.

    With ``two_passes``, the forget rows and the retain rows run as two forward passes (one backward of the sum of
    their losses), as every unlearning step does: the cost of that structure alone, without any objective.
    """

    def run() -> Measured:
        s = suite.settings
        keys = ("input_ids", "attention_mask", "labels")
        forget, retain = ({key: side[key] for key in keys} for side in _sides(s, s.batch))
        rows = {key: torch.cat([forget[key], retain[key]]) for key in keys}
        model = copy.deepcopy(base).train()

        def step() -> None:
            if two_passes:
                (model(**forget).loss + model(**retain).loss).backward()
            else:
                model(**rows).loss.backward()
            model.zero_grad(set_to_none=True)

        measured = suite.timed_steps(step)
        measured.tokens_per_step = rows["input_ids"].numel()
        return measured

    return run


def fsdp_case(suite: Suite, model_dir: Path, strategy: str) -> Callable[[], Measured]:
    """A measuring function that runs ``benchmarks/fsdp_step.py --strategy <strategy>`` in its own process.

    ``fsdp_step.py`` loads the model this suite saved in ``model_dir``, fits ``2 + steps`` steps of its NPO +
    BalDRO-DV module through a Lightning ``Trainer`` and reports the median of the steps after its first two and the
    process's peak GPU memory.
    """

    def run() -> Measured:
        s = suite.settings
        remaining = suite.deadline - time.perf_counter()
        if remaining < 1:
            raise _BudgetSpent("time budget spent before the subprocess started")
        steps = 2 + s.steps
        cmd = [sys.executable, str(REPO / "benchmarks" / "fsdp_step.py"), "--strategy", strategy]
        cmd += ["--workdir", str(model_dir.parent), "--steps", str(steps), "--batch", str(s.batch)]
        cmd += ["--length", str(s.length)]
        if s.tiny:
            cmd += ["--tiny", "--accelerator", "cpu", "--precision", "32-true"]
        else:
            cmd += ["--accelerator", "gpu", "--precision", "bf16-true"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=remaining, cwd=REPO)
        except subprocess.TimeoutExpired as exc:
            raise _BudgetSpent(f"stopped at the end of the time budget, after {remaining:.0f} s") from exc
        result = next((line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
        if proc.returncode != 0 or result is None:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise _SubprocessFailed(f"fsdp_step.py --strategy {strategy} exited {proc.returncode}: {tail}")
        value = json.loads(result)
        peak = value.get("peak_gib")
        return Measured(
            [value["ms_per_step"] / 1000],
            2 * s.batch * s.length,
            peak_bytes=None if peak is None else round(peak * 2**30),
            steps_timed=steps - 2,
            median_only=True,
        )

    return run


class _BudgetSpent(Exception):
    """The time budget ran out before or during a subprocess case."""


class _SubprocessFailed(Exception):
    """A case's subprocess failed (its last lines are in the message)."""


def _optimizer_meta(optimizer: torch.optim.Optimizer, s: Settings) -> dict[str, Any]:
    defaults = optimizer.defaults
    fused, foreach = defaults.get("fused"), defaults.get("foreach")
    if isinstance(optimizer, AdamWFp32State):  # its own choice, per device: fused on CUDA unless told otherwise
        fused = optimizer.fused if optimizer.fused is not None else torch.device(s.device).type == "cuda"
        foreach = not fused
    return {
        "class": f"{type(optimizer).__module__}.{type(optimizer).__name__}",
        "state_dtype": s.optimizer_state_dtype,
        "fused": fused,
        "foreach": foreach,
    }


def build_cases(suite: Suite, base: torch.nn.Module, model_dir: Path) -> list[Case]:
    """Every case, in the order they run (the most wanted first, so that a spent budget skips the least wanted)."""
    s = suite.settings
    n = s.batch

    def npo_dv() -> tuple[ForgetLoss, Aggregator, RetainLoss, float]:  # the npo_dv.yaml preset
        return NPO(beta=BETA), BalDRODV(temperature=TAU), NLL(per="sequence"), 1.0

    def ours(case_id: str, name: str, parts: tuple, rows: int = n, group: str = MODULE_GROUP, notes: str = "") -> Case:
        return Case(case_id, group, name, ours_case(suite, base, rows, *parts), notes)

    k = max(1, int(n * RATIO))
    cases = [
        Case(
            "floor",
            FLOOR_GROUP,
            "floor: forward + backward of the plain NLL",
            floor_case(suite, base),
            f"one pass over the {2 * n} rows, Hugging Face loss, no optimiser step",
        ),
        Case(
            "floor_two_passes",
            FLOOR_GROUP,
            "floor, forget and retain as two passes",
            floor_case(suite, base, two_passes=True),
            f"{n} forget rows, then {n} retain rows, one backward; no optimiser step",
        ),
        ours("npo", "NPO (baldro-pl)", (NPO(beta=BETA), Mean(), NLL(), 1.0), notes="reference NLL cached"),
        ours(
            "npo_g",
            "NPO + BalDRO-G (baldro-pl)",
            (NPO(beta=BETA), BalDROG(ratio=RATIO), NLL(), 1.0),
            notes=f"no-grad selection pass over {n} rows (uncounted), then the gradient pass on {k} + {k} rows",
        ),
        ours(
            "npo_g_one_pass",
            'NPO + BalDRO-G, passes="one" (baldro-pl)',
            (NPO(beta=BETA), BalDROG(ratio=RATIO, passes="one"), NLL(), 1.0),
            notes=f"one gradient pass over {n} rows, {n - k} of them with zero weight, and {k} retain rows",
        ),
        ours("npo_dv", "NPO + BalDRO-DV (baldro-pl)", npo_dv()),
        ours(
            "simnpo_dv",
            "SimNPO + BalDRO-DV (baldro-pl)",
            (SimNPO(beta=4.5, delta=0.0), BalDRODV(temperature=TAU), NLL(), 0.125),
        ),
        ours(
            "satimp_dv",
            "SatImp + BalDRO-DV (baldro-pl)",
            (SatImp(beta1=5.0, beta2=1.0), BalDRODV(temperature=TAU, unit="token"), NLL(per="sequence"), 0.1),
        ),
        Case(
            "public_npo",
            PUBLIC_GROUP,
            "NPO (public pattern)",
            public_case(suite, base, "mean"),
            f"+ uncounted frozen reference forward on {n} rows",
        ),
        Case(
            "public_npo_g",
            PUBLIC_GROUP,
            "NPO + BalDRO-G (public pattern)",
            public_case(suite, base, "group"),
            f"selection pass with graph on {n} rows, then {k} + {k} rows; reference forward on {k} rows",
        ),
        Case(
            "public_npo_dv",
            PUBLIC_GROUP,
            "NPO + BalDRO-DV (public pattern)",
            public_case(suite, base, "dv"),
            f"+ uncounted frozen reference forward on {n} rows",
        ),
    ]
    fsdp_note = (
        "fsdp_step.py's NPO + BalDRO-DV module (optimizer_state_dtype param), its batches (no padding), "
        "own process; median"
    )
    cases += [
        Case(
            "lightning_single",
            FSDP_GROUP,
            "Lightning, default strategy",
            fsdp_case(suite, model_dir, "single"),
            fsdp_note,
        ),
        Case(
            "lightning_fsdp",
            FSDP_GROUP,
            "Lightning, HFFSDPStrategy (devices=1)",
            fsdp_case(suite, model_dir, "fsdp"),
            fsdp_note,
        ),
    ]
    for rows in s.micro_batches:
        cases.append(
            ours(f"sweep_mb{rows}", f"sweep: NPO + BalDRO-DV, micro-batch {rows}", npo_dv(), rows, SWEEP_GROUP)
        )
    if s.cases is not None:
        cases = [c for c in cases if c.id in s.cases or c.group in s.cases]
    return cases


def environment(s: Settings) -> dict[str, Any]:
    """Versions and the device, for the report."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = (git("rev-parse", "--short", "HEAD") or "").strip()
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "device_name": torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "lightning": pl.__version__,
        "git_commit": commit or None,
        # files changed since that commit (a working tree copied to a GPU machine is often uncommitted)
        "git_changed_files": None if status is None else len(status.splitlines()),
    }


def settings_from(args: argparse.Namespace) -> Settings:
    """The run's settings from the command line (``--tiny``: the CPU smoke-test sizes)."""
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        shape = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 512}
        batch, length, warmup, steps, micro = 2, 32, 1, 2, (1, 2)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_suite.py: no CUDA device; use --tiny for the CPU smoke test")
        device, dtype = torch.device("cuda", torch.cuda.current_device()), torch.bfloat16
        shape = {"hidden": 2048, "layers": 22, "heads": 32, "kv_heads": 4, "intermediate": 5632, "vocab": 32000}
        batch, length, warmup, steps, micro = 8, 256, 3, 10, (4, 8, 16, 32, 64)
    if args.peak_tflops is not None:
        peak, source = args.peak_tflops * 1e12, "--peak-tflops"
    elif device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = peak_flops_for(name)
        source = "the table's value for this GPU" if peak is not None else "not in the table: pass --peak-tflops"
    else:
        peak, source = None, "none on a CPU"
    return Settings(
        tiny=args.tiny,
        device=device,
        dtype=dtype,
        **shape,
        batch=batch,
        length=length,
        prompt=length // 4,
        warmup=warmup if args.warmup is None else args.warmup,
        steps=steps if args.steps is None else args.steps,
        micro_batches=micro if args.micro_batches is None else tuple(args.micro_batches),
        budget_s=args.budget_s,
        peak_flops=peak,
        peak_source=source,
        optimizer_state_dtype=args.optimizer_state_dtype,
        cases=None if args.cases is None else frozenset(c.strip() for c in args.cases.split(",") if c.strip()),
    )


def run_suite(s: Settings, out: Path) -> int:
    """Build the model, run every case within the budget, write the outputs; returns the exit status."""
    suite = Suite(s, out)
    suite.log(f"device {s.device}, model hidden {s.hidden} x {s.layers} layers, budget {s.budget_s:g} s")
    torch.manual_seed(0)
    base = build_model(s)
    parameters = sum(p.numel() for p in base.parameters())
    suite.non_embedding = parameters - base.get_input_embeddings().weight.numel()
    suite.meta = {
        "environment": environment(s),
        "model": {
            "architecture": "LlamaForCausalLM (random init from a config)",
            "hidden": s.hidden,
            "layers": s.layers,
            "heads": s.heads,
            "kv_heads": s.kv_heads,
            "intermediate": s.intermediate,
            "vocab": s.vocab,
            "parameters": parameters,
            "non_embedding_parameters": suite.non_embedding,
            "dtype": str(s.dtype).removeprefix("torch."),
        },
        "batch": {
            "forget_rows": s.batch,
            "retain_rows": s.batch,
            "length": s.length,
            "prompt": s.prompt,
            "warmup_steps": s.warmup,
            "timed_steps": s.steps,
            "micro_batches": list(s.micro_batches),
        },
        "optimizer": {"class": None, "state_dtype": s.optimizer_state_dtype, "fused": None, "foreach": None},
        "mfu": {
            "formula": (
                "6 * N * T / (step time * peak); N = parameters without the input embedding (LM head counted), "
                "T = tokens of the rows trained on per step (forget rows, the k kept ones of a two-pass BalDRO-G, "
                "+ retain rows used, padding included); "
                "not counted: attention score matmuls, the public patterns' frozen reference forward "
                "(2 * N * its tokens) and BalDRO-G's selection pass"
            ),
            "peak_flops": s.peak_flops,
            "peak_source": s.peak_source,
        },
        "definitions": {
            "ms/step": "median of the timed steps, each between two device syncs (fsdp rows: fsdp_step.py's median)",
            "peak GiB": (
                "the case's own allocations: max_memory_allocated above what was allocated when it started (its "
                "model copy, gradients, optimiser state, activations; not the suite's kept base weights); fsdp rows: "
                "the subprocess's max_memory_allocated; n/a on a CPU"
            ),
            "optimizer ms": "optimizer.step + scheduler.step + zero_grad, timed between syncs inside the step, median",
        },
    }
    suite.log(f"model built: {parameters:,} parameters ({suite.non_embedding:,} without the input embedding)")
    gc.collect()
    gc.freeze()  # the imports' objects: later collections (two per case, to free its memory) skip them, ~1 s each
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as workdir:
        model_dir = Path(workdir) / "model"
        cases = build_cases(suite, base, model_dir)
        if any(c.group == FSDP_GROUP for c in cases):  # fsdp_step.py loads this suite's model from here
            base.save_pretrained(model_dir)
            train_tokenizer(["a b c d e f g h"], vocab_size=300).save_pretrained(model_dir)
        suite.write(finished=False)
        oom_at = None
        for case in cases:
            if case.group == SWEEP_GROUP and oom_at is not None:
                suite.skip(case, f"micro-batch {oom_at} ran out of memory")
            elif suite.run_case(case) == "oom" and case.group == SWEEP_GROUP:
                oom_at = int(case.id.removeprefix("sweep_mb"))
            suite.write(finished=False)
    suite.write(finished=True)
    suite.log(f"done: {out / JSON_NAME}, {out / MARKDOWN_NAME}")
    return 1 if any(r["status"] == "error" for r in suite.results) else 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the suite; exit status 1 if a case failed (not: skipped, out of memory)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, every case, seconds")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="skip the cases left after this many seconds (counted after the imports, ~10 s)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (10; --tiny: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per case (3; --tiny: 1)")
    parser.add_argument(
        "--micro-batches", type=int, nargs="+", default=None, help="sweep sizes (4 8 16 32 64; --tiny: 1 2)"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 dense TFLOP/s of the device")
    parser.add_argument(
        "--optimizer-state-dtype",
        choices=("float32", "param"),
        default="float32",
        help="the module's optimizer_state_dtype (float32: the TOFU/MUSE presets' setting)",
    )
    parser.add_argument(
        "--cases",
        default=None,
        help="comma-separated case ids or groups to run (groups: floor, baldro-pl, public, fsdp, sweep; ids: floor, "
        "floor_two_passes, npo, npo_g, npo_g_one_pass, npo_dv, simnpo_dv, satimp_dv, public_npo, public_npo_g, "
        "public_npo_dv, lightning_single, lightning_fsdp, sweep_mb<N>)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" lines per Trainer
    transformers.utils.logging.disable_progress_bar()
    return run_suite(settings_from(args), args.out)


if __name__ == "__main__":
    sys.exit(main())
