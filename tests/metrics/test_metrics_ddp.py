"""Metric states and the TOFU suite across two processes (DDP on CPU, gloo) equal one process.

The rows are sharded with a distributed sampler's padding (an odd number of rows, so one row is evaluated twice);
the gathered states must be de-duplicated by index.
"""

from __future__ import annotations

import json

import pytest
import torch.multiprocessing as mp
from ddp_metrics_worker import main as worker_main
from ddp_metrics_worker import metric_results
from suites import evaluate_tofu

N_METRIC_ROWS = 9
N_TOFU_ROWS = 5


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, toy_tokenizer, tofu_rows):
    from baldro_pl.toy import tiny_llama

    out = tmp_path_factory.mktemp("ddp_metrics")
    model_dir = out / "model"
    model = tiny_llama(
        len(toy_tokenizer),
        bos_token_id=toy_tokenizer.bos_token_id,
        eos_token_id=toy_tokenizer.eos_token_id,
        pad_token_id=toy_tokenizer.pad_token_id,
        seed=3,
    )
    model.save_pretrained(model_dir)
    toy_tokenizer.save_pretrained(model_dir)
    rows = tofu_rows(N_TOFU_ROWS)
    (out / "rows.json").write_text(json.dumps(rows))
    mp.spawn(worker_main, args=(2, str(out), str(model_dir), N_METRIC_ROWS, N_TOFU_ROWS), nprocs=2, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return ranks, model, rows


def test_shards_are_padded_and_disjoint(ddp_run) -> None:
    ranks, _, _ = ddp_run
    shards = [r["shard"] for r in ranks]
    assert [len(s) for s in shards] == [5, 5]
    assert sorted(set(shards[0]) | set(shards[1])) == list(range(N_METRIC_ROWS))
    assert shards[1][-1] == 0  # the padding repeats row 0, evaluated on both ranks


def test_metric_states_sync_and_deduplicate(ddp_run) -> None:
    ranks, _, _ = ddp_run
    single = metric_results([list(range(N_METRIC_ROWS))], N_METRIC_ROWS)
    for rank in ranks:
        got = rank["metrics"]
        assert got["tr_index"] == list(range(N_METRIC_ROWS))
        assert got["tr_values"] == pytest.approx(single["tr_values"], abs=0)
        for name in ("prob", "normalised", "tr", "fq", "em", "rouge", "auc"):
            assert got[name] == pytest.approx(single[name], abs=1e-15), name


def test_tofu_suite_in_two_processes_equals_one(ddp_run, toy_tokenizer) -> None:
    ranks, model, rows = ddp_run
    single = evaluate_tofu(model.eval(), toy_tokenizer, rows, max_new_tokens=6, batch_size=2).logs
    assert ranks[0]["logs"] == ranks[1]["logs"]  # every rank ends with the whole result
    logs = ranks[0]["logs"]
    assert list(logs) == list(single)
    for name, entry in single.items():
        other = logs[name]
        if entry.get("agg_value") is None:
            assert other.get("agg_value") is None, name
            continue
        assert other["agg_value"] == pytest.approx(entry["agg_value"], rel=1e-5, abs=1e-7), name
        for side in ("value_by_index", "forget", "holdout"):
            if side in entry:
                by_index = entry[side]["value_by_index"] if side != "value_by_index" else entry[side]
                other_by_index = other[side]["value_by_index"] if side != "value_by_index" else other[side]
                assert list(other_by_index) == list(by_index), (name, side)
        if name.endswith("_ROUGE"):  # generations gathered from both ranks
            for k, row in entry["value_by_index"].items():
                assert other["value_by_index"][k]["generation"] == row["generation"]
                assert other["value_by_index"][k]["ground_truth"] == row["ground_truth"]
