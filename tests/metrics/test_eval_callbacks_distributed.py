"""TOFUEvaluation with two CPU processes (gloo): ``ddp`` and FSDP (``HFFSDPStrategy``), against one process.

Each run is a subprocess running ``callback_worker.py`` (Lightning re-launches that script for rank 1). The evaluation
before training must equal a single-process :func:`evaluate_tofu` of the initial model: every process scores its shard
of the rows (padded with repeats), generates under FSDP with the root parameters summoned and ``synced_gpus``, and
the gathered states are de-duplicated by row index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from suites import evaluate_tofu
from transformers import AutoModelForCausalLM, AutoTokenizer

from baldro_pl.datamodules import PromptFormat, generate_synthetic_tofu, synthetic_texts, write_synthetic_tofu
from baldro_pl.toy import tiny_llama, train_tokenizer

WORKER = Path(__file__).with_name("callback_worker.py")
SPLITS = {
    "forget": "forget01_perturbed",
    "retain": "retain_perturbed",
    "real_authors": "real_authors_perturbed",
    "world_facts": "world_facts_perturbed",
    "holdout": "holdout01",
}


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("callback_distributed")
    data = write_synthetic_tofu(root / "data", seed=0)
    tokenizer = train_tokenizer(synthetic_texts(generate_synthetic_tofu(0), PromptFormat.llama2_chat()), vocab_size=600)
    model_dir = root / "model"
    tiny_llama(len(tokenizer), hidden_size=32, intermediate_size=64, seed=1).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return root, Path(data), model_dir


def _run(root: Path, data: Path, model_dir: Path, strategy: str) -> tuple[list[dict], Path]:
    out = root / strategy
    out.mkdir()
    spec_path = out / "spec.json"
    spec_path.write_text(
        json.dumps({"out": str(out), "model": str(model_dir), "data": str(data), "strategy": strategy})
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(spec_path)], cwd=out, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{strategy} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)], out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_callback_in_two_processes(setup_dirs, strategy) -> None:
    root, data, model_dir = setup_dirs
    ranks, out = _run(root, data, model_dir, strategy)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(r["test_unchanged"] and not r["grads_left"] for r in ranks)
    assert ranks[0]["test_logs"] == ranks[1]["test_logs"]
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["epoch_0", "start", "test"]
    start = json.loads((out / "eval" / "start" / "TOFU_EVAL.json").read_text())

    rows = {k: [json.loads(line) for line in (data / f"{v}.jsonl").read_text().splitlines()] for k, v in SPLITS.items()}
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    single = evaluate_tofu(model, AutoTokenizer.from_pretrained(model_dir), rows, max_new_tokens=4, batch_size=4).logs
    assert set(start) == set(single)
    for name, entry in single.items():
        if name == "mia_gradnorm" and strategy == "fsdp":  # per-parameter norms of sharded gradients: skipped
            assert start[name] == {"agg_value": None}
            continue
        if entry["agg_value"] is None:
            assert start[name]["agg_value"] is None, name
            continue
        assert start[name]["agg_value"] == pytest.approx(entry["agg_value"], rel=1e-5, abs=1e-7), name
        if name.endswith("_ROUGE"):
            for k, row in entry["value_by_index"].items():
                assert start[name]["value_by_index"][k]["generation"] == row["generation"], (name, k)
