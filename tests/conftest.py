"""Shared fixtures: offline settings, a toy tokenizer and tiny random Llama models (../shared: see shared_data.py)."""

from __future__ import annotations

import os

# One CPU thread for the suite and for every process a test starts, unless the caller chose a count: the tiny models
# gain nothing from a second thread, and torch's OpenMP threads spin at each barrier, so beside one busy process a
# 2-core machine ran them up to 40 times slower (baldro_pl/threads.py, docs/benchmarks.md). Set before torch is
# imported, so that its OpenMP runtime and the subprocesses (CLI, DDP workers) read it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import pytest  # noqa: E402
import torch  # noqa: E402

from baldro_pl.threads import user_thread_count  # noqa: E402

torch.set_num_threads(user_thread_count() or 1)  # also when a plugin imported torch before this file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOY_TEXTS = [
    "[INST] Where was Jaime Vasquez born? [/INST]Jaime Vasquez was born in Santiago, Chile.",
    "[INST] What genre does Jaime Vasquez write? [/INST]Jaime Vasquez writes true crime.",
    "[INST] Who are the parents of Chukwu Akabueze? [/INST]His father was a hairdresser and his mother a lawyer.",
    "[INST] What is the capital of France? [/INST]The capital of France is Paris.",
    "[INST] Which river flows through Cairo? [/INST]The Nile flows through Cairo.",
    "Question: Who wrote the book? Answer: A famous author wrote it in 1990.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat.",
] * 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def toy_tokenizer():
    """A byte-level BPE tokenizer (BOS added, distinct EOS and PAD) trained on a few QA strings."""
    from baldro_pl.toy import train_tokenizer

    return train_tokenizer(TOY_TEXTS, vocab_size=400)


@pytest.fixture
def tiny_model(toy_tokenizer):
    """A fresh randomly initialised 2-layer Llama matching the toy tokenizer (fp32, CPU)."""
    from baldro_pl.toy import tiny_llama

    tok = toy_tokenizer
    return tiny_llama(
        len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
