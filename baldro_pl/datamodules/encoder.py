"""The encoder of evaluation rows: how a datamodule's rows become token ids for the evaluation suites.

A :class:`RowEncoder` holds what the datamodule already knows (tokenizer, prompt format, token cap) and keeps every
tokenisation it made: the rows and the tokenizer do not change between evaluations, so later evaluations of a run
re-use them. The suites receive it once (``suite.connect(encoder=datamodule.encoder)``) instead of reading the
datamodule's attributes one by one.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from baldro_pl.datamodules.formatting import EncodedSample, PromptFormat, encode_completion, encode_prompt, encode_qa

FewShot = tuple[tuple[str, str], ...]


class RowEncoder:
    """Tokenisations of evaluation rows (metrics-spec §1.2, §1.3), cached by their texts.

    Keys are the texts themselves, so the cache survives re-ordered or re-sharded rows.

    Args:
        tokenizer: the model's tokenizer.
        prompt_format: how questions become prompts.
        max_length: token cap of prompts and QA pairs (a call may ask for another cap).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format
        self.max_length = max_length
        self._qa: dict[tuple, tuple[list[int], list[int]]] = {}
        self._prompt: dict[tuple, list[int]] = {}
        self._completion: dict[tuple, tuple[list[int], list[int]]] = {}

    @property
    def pad_token_id(self) -> int:
        """The id that pads batches: the pad token, else EOS (open-unlearning sets ``pad_token = eos_token``).

        Raises:
            ValueError: the tokenizer has neither.
        """
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token")
        return pad

    def qa(
        self, question: str, answer: str, index: int, few_shot: FewShot = (), *, max_length: int | None = None
    ) -> EncodedSample:
        """Scoring sample of a QA pair (metrics-spec §1.2): prompt masked, answer + EOS scored."""
        cap = max_length or self.max_length
        key = (question, answer, few_shot, cap)
        if key not in self._qa:
            prompt = self.prompt(question, few_shot, max_length=cap)  # cached: one question, several answers
            fmt = self.prompt_format
            s = encode_qa(self.tokenizer, question, answer, fmt, few_shot=few_shot, max_length=cap, prompt_ids=prompt)
            self._qa[key] = (s.input_ids, s.labels)
        ids, labels = self._qa[key]
        return EncodedSample(ids, labels, index)

    def prompt(self, question: str, few_shot: FewShot = (), *, max_length: int | None = None) -> list[int]:
        """Generation prompt of a question (special tokens included)."""
        cap = max_length or self.max_length
        key = (question, few_shot, cap)
        if key not in self._prompt:
            self._prompt[key] = encode_prompt(
                self.tokenizer, question, self.prompt_format, few_shot=few_shot, max_length=cap
            )
        return self._prompt[key]

    def completion(self, prefix: str, text: str, index: int, *, max_length: int, insert_space: bool) -> EncodedSample:
        """Scoring sample of a continuation (metrics-spec §1.3): prefix masked, continuation scored, no EOS."""
        key = (prefix, text, max_length, insert_space)
        if key not in self._completion:
            s = encode_completion(self.tokenizer, prefix, text, max_length=max_length, insert_space=insert_space)
            self._completion[key] = (s.input_ids, s.labels)
        ids, labels = self._completion[key]
        return EncodedSample(ids, labels, index)
