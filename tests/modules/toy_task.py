"""A toy forget/retain task for module tests: 16 fictitious people, 4 to forget, 12 to keep."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from baldro_pl.datamodules import PromptFormat, encode_qa, pad_samples

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
CITIES = ["Oslo", "Lima", "Cairo", "Quito", "Hanoi", "Dakar", "Perth", "Turin"]
NAMES = ["Ava", "Ben", "Cid", "Dee", "Eli", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lou", "Max", "Ned", "Oli", "Pam"]


def people_qa() -> list[tuple[str, str]]:
    """Two questions per person, with person-specific answers."""
    qa = []
    for i, name in enumerate(NAMES):
        qa.append((f"Where does {name} live?", f"{name} lives in {CITIES[(3 * i) % 8]}."))
        qa.append((f"What color does {name} like?", f"{name} likes {COLORS[(5 * i + 1) % 8]}."))
    return qa


FORGET_QA = people_qa()[:8]
RETAIN_QA = people_qa()[8:]


class ToyUnlearningData(pl.LightningDataModule):
    """Forget sample i paired with retain sample (i mod n_retain); fixed order, so runs are exactly repeatable."""

    def __init__(self, tokenizer, batch_size: int = 4, mode: str = "unlearn") -> None:
        super().__init__()
        fmt = PromptFormat.llama2_chat()
        self.tokenizer = tokenizer
        self.forget = [encode_qa(tokenizer, q, a, fmt, index=i) for i, (q, a) in enumerate(FORGET_QA)]
        self.retain = [encode_qa(tokenizer, q, a, fmt, index=i) for i, (q, a) in enumerate(RETAIN_QA)]
        self.batch_size = batch_size
        self.mode = mode

    def _pad(self, samples):
        return pad_samples(samples, self.tokenizer.pad_token_id)

    def train_dataloader(self):
        b = self.batch_size
        if self.mode == "finetune":
            everything = self.forget + self.retain
            batches = [self._pad(everything[i : i + b]) for i in range(0, len(everything), b)]
        else:
            batches = []
            for i in range(0, len(self.forget), b):
                retain = [self.retain[j % len(self.retain)] for j in range(i, i + b)]
                batches.append({"forget": self._pad(self.forget[i : i + b]), "retain": self._pad(retain)})
        return DataLoader(batches, batch_size=None)

    def reference_dataloader(self):
        return [self._pad(self.forget[i : i + 3]) for i in range(0, len(self.forget), 3)]

    def val_dataloader(self):
        return [
            DataLoader([self._pad(self.forget)], batch_size=None),
            DataLoader([self._pad(self.retain)], batch_size=None),
        ]


def mean_avg_nll(model, samples, pad_id: int) -> float:
    """Mean over samples of the per-token NLL of the answer."""
    from baldro_pl.forward import forward_logprobs

    batch = pad_samples(samples, pad_id)
    with torch.no_grad():
        lp = forward_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return float(lp.avg_nll.mean())


def people_tokenizer_for_tests():
    """A toy tokenizer trained on the people QA strings."""
    from baldro_pl.toy import train_tokenizer

    texts = [f"[INST] {q} [/INST]{a}" for q, a in people_qa()]
    return train_tokenizer(texts, vocab_size=300)


def random_side(
    seed: int, *, vocab: int, rows: int, length: int, prompt: tuple[int, int], answer: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """A right-padded batch of random tokens: prompts of ``prompt`` tokens (range, high excluded), then answers of
    ``answer`` tokens, the prompts and padding labelled -100 (the shape of a collated forget or retain side)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (rows, length), generator=g)
    prompt_len = torch.randint(*prompt, (rows,), generator=g)
    total = prompt_len + torch.randint(*answer, (rows,), generator=g)
    position = torch.arange(length)
    attention_mask = (position < total[:, None]).long()
    labels = input_ids.masked_fill((position < prompt_len[:, None]) | (attention_mask == 0), -100)
    return {
        "input_ids": input_ids.masked_fill(attention_mask == 0, 0),
        "attention_mask": attention_mask,
        "labels": labels,
        "index": torch.arange(rows),
    }
