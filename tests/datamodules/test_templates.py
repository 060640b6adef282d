"""Prompt templates and answer-only labels on real TOFU rows (metrics-spec §1.1-1.2).

For every sample the scored positions must be exactly the tokenised answer followed by EOS, and every prompt
token must be masked with -100.
"""

from __future__ import annotations

import pytest
import torch
from shared_data import shared_path
from transformers import AutoTokenizer

from baldro_pl.datamodules import PromptFormat, TOFUDataModule, load_tofu_split
from baldro_pl.labels import IGNORE_INDEX


def _check_answer_only(sample, tokenizer, prompt_ids: list[int], answer: str) -> None:
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    n_masked = sum(1 for x in sample.labels if x == IGNORE_INDEX)
    assert sample.labels[:n_masked] == [IGNORE_INDEX] * n_masked  # the mask is one prefix
    assert sample.input_ids[:n_masked] == prompt_ids
    assert sample.labels[n_masked:] == answer_ids + [tokenizer.eos_token_id]
    assert sample.input_ids[n_masked:] == answer_ids + [tokenizer.eos_token_id]


@pytest.mark.parametrize("tokenizer_name", ["toy", "gpt2-tokenizer"])
def test_llama2_form_scores_answer_plus_eos(tokenizer_name, toy_tokenizer):
    data_dir = shared_path("data", "tofu")
    if tokenizer_name == "toy":
        tokenizer = toy_tokenizer
    else:
        tokenizer = AutoTokenizer.from_pretrained(shared_path("models", tokenizer_name))
    dm = TOFUDataModule(data_dir=str(data_dir), tokenizer=tokenizer, forget_split="forget10")
    dm.setup("fit")
    rows, _ = load_tofu_split(data_dir, "forget10")
    assert len(dm.forget_dataset) == len(rows) == 400
    n_clean = 0
    for i, row in enumerate(rows):
        prompt = "[INST] " + row["question"] + " [/INST]"
        prompt_ids = list(dm.tokenizer(prompt)["input_ids"])
        sample = dm.forget_dataset[i]
        # open-unlearning's definition: tok(prompt + answer) + EOS, masked on the separately tokenised prompt
        full_ids = list(dm.tokenizer(prompt + row["answer"])["input_ids"]) + [dm.tokenizer.eos_token_id]
        assert sample.input_ids == full_ids
        assert sample.labels == [IGNORE_INDEX] * len(prompt_ids) + full_ids[len(prompt_ids) :]
        if row["answer"][0].isalnum():
            # a clean boundary: the scored tokens are exactly the answer's own tokens plus EOS
            _check_answer_only(sample, dm.tokenizer, prompt_ids, row["answer"])
            n_clean += 1
    # answers opening with a quote may merge with "]" in GPT-2's vocabulary (metrics-spec P3); 20 of 400 do
    assert n_clean == 380
    # the first row, decoded, is the Llama-2 chat form with the answer right after "]"
    text = dm.tokenizer.decode(dm.forget_dataset[0].input_ids, skip_special_tokens=True)
    assert text == "[INST] " + rows[0]["question"] + " [/INST]" + rows[0]["answer"]


def test_chat_template_scores_answer_plus_eos():
    data_dir = shared_path("data", "tofu")
    tok_dir = shared_path("models", "smollm2-135m-instruct-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    dm = TOFUDataModule(
        data_dir=str(data_dir), tokenizer=tokenizer, forget_split="forget01", prompt_format=PromptFormat.chat_template()
    )
    dm.setup("validate")  # encodes forget01_perturbed and retain_perturbed (QA pairs), no retain training set
    assert dm.retain_dataset is None
    forget_loader, retain_loader = dm.val_dataloader()
    assert len(retain_loader.dataset) == 400
    rows = dm.evaluation_rows()["forget"]
    batch = next(iter(forget_loader))
    assert batch["index"].tolist() == list(range(dm.eval_batch_size))  # row order, first batch of 40 rows
    for b, i in enumerate(batch["index"].tolist()):
        prompt_ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": rows[i]["question"]}], add_generation_prompt=True, tokenize=True
        )
        prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
        length = int(batch["attention_mask"][b].sum())
        ids, labels = batch["input_ids"][b, :length].tolist(), batch["labels"][b, :length].tolist()
        answer_ids = list(tokenizer(rows[i]["answer"], add_special_tokens=False)["input_ids"])
        assert ids[: len(prompt_ids)] == prompt_ids
        assert labels == [IGNORE_INDEX] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id]
        assert (batch["labels"][b, length:] == IGNORE_INDEX).all()  # right padding is never scored
    prompt_text = tokenizer.decode(prompt_ids)
    assert prompt_text.startswith("<|im_start|>system\n")
    assert prompt_text.endswith("<|im_start|>user\n" + rows[i]["question"] + "<|im_end|>\n<|im_start|>assistant\n")


def test_collated_batch_is_right_padded(toy_tokenizer):
    dm = TOFUDataModule(data_dir=str(shared_path("data", "tofu")), tokenizer=toy_tokenizer, forget_split="forget01")
    dm.setup("fit")
    batch = next(iter(dm.reference_dataloader()))
    lengths = batch["attention_mask"].sum(-1)
    for row, n in enumerate(lengths.tolist()):
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert (batch["input_ids"][row, n:] == toy_tokenizer.pad_token_id).all()
    assert batch["input_ids"].dtype == torch.long
