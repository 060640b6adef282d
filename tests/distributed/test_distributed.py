"""Multi-process training on CPU (gloo): DDP and Lightning's FSDP (through HFFSDPStrategy) against one process.

Each run is a subprocess running ``fit_worker.py`` (Lightning re-launches that script for rank 1). The objective is
NPO + Mean + NLL(per="sequence"): both terms are sample means, so with the same global batch the data-parallel
gradient (the average of per-rank gradients over equal shards) is exactly the single-process gradient, and the loss
trajectories agree up to float32 reduction order. Tolerance: relative 1e-4 on every step's loss over 6 steps.
BalDRO-DV and -G over the global batch (``scope="global"``, the default) are run the same way: 2 processes x 4 rows
give the weights of 1 process x 8 rows (README "Scaling out"; step-level parity: test_global_dro.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from baldro_pl.datamodules import PromptFormat, generate_synthetic_tofu, synthetic_texts, write_synthetic_tofu
from baldro_pl.toy import tiny_llama, train_tokenizer

WORKER = Path(__file__).with_name("fit_worker.py")
N_FORGET = 20  # forget10 of the default synthetic set: 2 authors x 10 QA


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    data = write_synthetic_tofu(root / "data", seed=0)
    splits = generate_synthetic_tofu(0)
    tokenizer = train_tokenizer(synthetic_texts(splits, PromptFormat.llama2_chat()), vocab_size=600)
    model_dir = root / "model"
    tiny_llama(len(tokenizer), hidden_size=32, intermediate_size=64, seed=1).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return root, str(data), str(model_dir)


def _run(root: Path, name: str, **spec) -> list[dict]:
    out = root / name
    out.mkdir()
    # clipping at a norm the gradients exceed, so that FSDP's sharded clip_grad_norm_ is exercised too
    spec = {"out": str(out), "epochs": 2, "gradient_clip_val": 5.0, **spec}
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(spec_path)],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(spec["devices"])]
    for r in results:
        assert r.get("world_size", spec["devices"]) == spec["devices"]
    return results


def _global_losses(results: list[dict]) -> list[float]:
    """Per-step loss of the global batch: the mean over ranks (equal shards)."""
    return [sum(step) / len(step) for step in zip(*(r["losses"] for r in results))]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.fixture(scope="module")
def single_process(setup_dirs):
    root, data, model = setup_dirs
    return _run(
        root, "single", data=data, model=model, devices=1, strategy="auto", batch_size=8, export=str(root / "e1")
    )


def test_ddp_two_processes_match_one_process(setup_dirs, single_process) -> None:
    root, data, model = setup_dirs
    ddp = _run(root, "ddp", data=data, model=model, devices=2, strategy="ddp", batch_size=4)
    assert len(single_process[0]["losses"]) == 6 == len(ddp[0]["losses"])
    assert _global_losses(ddp) == pytest.approx(single_process[0]["losses"], rel=1e-4)
    # the reference NLL is computed shard-wise and gathered: every process holds all forget samples
    assert [r["reference_cache_size"] for r in ddp] == [N_FORGET, N_FORGET]
    assert ddp[0]["losses"] != ddp[1]["losses"]  # the ranks really saw different shards


@pytest.mark.parametrize("aggregator", ["dv", "group"])
def test_global_baldro_under_ddp_trains_the_weights_of_one_process(setup_dirs, aggregator: str) -> None:
    """Through Lightning's Trainer: BalDRO weighs / selects over both processes' rows, as one process over all 8."""
    root, data, model = setup_dirs
    common = dict(data=data, model=model, aggregator=aggregator, epochs=1)
    one = _run(
        root,
        f"{aggregator}_1",
        **common,
        devices=1,
        strategy="auto",
        batch_size=8,
        export=str(root / f"{aggregator}_e1"),
    )
    two = _run(
        root,
        f"{aggregator}_2",
        **common,
        devices=2,
        strategy="ddp",
        batch_size=4,
        export=str(root / f"{aggregator}_e2"),
    )
    assert len(one[0]["losses"]) == 3 == len(two[0]["losses"])
    # each process's loss is the global forget term + its own retain term: their mean is the one-process loss
    assert _global_losses(two) == pytest.approx(one[0]["losses"], rel=1e-5)
    single, ddp = _weights(root / f"{aggregator}_e1"), _weights(root / f"{aggregator}_e2")
    moved = max((single[name] - value).abs().max().item() for name, value in _weights(Path(model)).items())
    assert moved > 1e-4  # the weights really changed
    for name, value in single.items():
        # Adam divides by sqrt(v): on lm_head rows whose gradients are ~0 the reduction order moves the update by
        # up to ~1e-5, against a move of 3e-3 (3 steps at lr 1e-3)
        torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=3e-5, msg=name)


def test_fsdp_on_cpu_matches_one_process_and_resumes_from_a_sharded_checkpoint(setup_dirs, single_process) -> None:
    root, data, model = setup_dirs
    common = dict(data=data, model=model, devices=2, strategy="fsdp", batch_size=4, state_dict_type="sharded")
    full = _run(root, "fsdp", **common, export=str(root / "e_fsdp"))
    assert _global_losses(full) == pytest.approx(single_process[0]["losses"], rel=1e-4)
    assert [r["reference_cache_size"] for r in full] == [N_FORGET, N_FORGET]
    units = full[0]["fsdp_units"]
    assert sum(u.endswith(("layers.0", "layers.1")) for u in units) == 2, units
    assert any(u.endswith("model") and "layers" not in u for u in units), units  # the HF root is a unit of its own
    # the export gathers the full state dict: same weights as the single-process run (up to reduction order)
    single, sharded = _weights(root / "e1"), _weights(root / "e_fsdp")
    for name, value in single.items():
        torch.testing.assert_close(sharded[name], value, rtol=1e-4, atol=1e-5, msg=name)

    # interrupted after one epoch (sharded checkpoint), then resumed: identical to the uninterrupted run
    ckpt_dir = root / "ckpt"
    _run(root, "first", **common, checkpoint_dir=str(ckpt_dir), stop_after_epochs=1)
    assert (ckpt_dir / "last.ckpt").is_dir(), "FSDP sharded checkpoints are directories"
    resumed = _run(root, "resumed", **common, resume=str(ckpt_dir / "last.ckpt"), export=str(root / "e_resumed"))
    assert resumed[0]["losses"] == pytest.approx(full[0]["losses"][3:], rel=1e-6)
    for name, value in _weights(root / "e_fsdp").items():
        torch.testing.assert_close(_weights(root / "e_resumed")[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_fsdp_kl_reference_model_gets_frozen_units_of_its_own(setup_dirs) -> None:
    root, data, model = setup_dirs
    results = _run(root, "kl", data=data, model=model, devices=2, strategy="fsdp", batch_size=4, epochs=1, kl=True)
    units = results[0]["fsdp_units"]
    reference_units = [u for u in units if "reference_model" in u]
    trained_units = [u for u in units if "reference_model" not in u and u]
    assert len(reference_units) == 3 and len(trained_units) == 3, units  # root + 2 decoder layers each
    assert results[0]["reference_requires_grad"] is False


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_continues_identically(setup_dirs, single_process) -> None:
    root, data, model = setup_dirs
    common = dict(data=data, model=model, devices=1, strategy="auto", batch_size=8)
    ckpt_dir = root / "sigterm_ckpt"
    # 3 steps per epoch: SIGTERM after step 4 stops the run in the middle of the second epoch
    # Lightning raises SIGTERMException (a SystemExit without a code: exit status 0) after the exception checkpoint
    stopped = _run(root, "sigterm", **common, checkpoint_dir=str(ckpt_dir), sigterm_at_step=4)
    assert stopped[0]["sigterm_at"] == 4
    saved = ckpt_dir / "epoch=1-step=4.ckpt"  # written by ModelCheckpoint(save_on_exception=True)
    assert saved.is_file(), sorted(ckpt_dir.iterdir())
    resumed = _run(root, "after_sigterm", **common, resume=str(saved), export=str(root / "e_sigterm"))
    assert resumed[0]["global_step"] == 6
    assert resumed[0]["losses"] == pytest.approx(single_process[0]["losses"][4:], rel=1e-6)
    for name, value in _weights(root / "e1").items():
        torch.testing.assert_close(_weights(root / "e_sigterm")[name], value, rtol=1e-6, atol=1e-7, msg=name)
