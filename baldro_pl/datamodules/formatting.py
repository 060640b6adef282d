r"""Prompt formats and tokenisation of question/answer pairs and text completions.

This reproduces open-unlearning's ``preprocess_chat_instance`` / ``preprocess_pretraining_instance``
(metrics-spec §1.1-1.3) so that a sample scores the same tokens as in the published runs:

* QA scoring: ``input_ids = tok(prompt + answer)`` (special tokens, right truncation at ``max_length``), EOS appended
  if missing; ``labels`` are -100 on the separately tokenised prompt, so the answer tokens plus EOS are scored.
* Chat-template mode: the prompt is the tokenizer's chat template with ``add_generation_prompt=True``; the answer
  tokens and one EOS follow it. (open-unlearning tokenises the whole chat, which for templates that end a turn with
  something other than EOS, e.g. ``<|im_end|>\n``, scores the template's trailing tokens too; here only the answer
  and EOS are scored, which is the same for Llama-3 and cleaner elsewhere.)
* Completions (MUSE): ``tok(prefix + " " + text)`` with BOS, capped at ``len(prefix) + max_length`` tokens, no EOS;
  with an empty prefix only BOS is masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from baldro_pl.labels import IGNORE_INDEX


class PromptFormat:
    """How a question (and optional few-shot pairs) becomes the model's prompt.

    The fields are open-unlearning's ``template_args``. Use :meth:`llama2_chat`, :meth:`muse_qa` or
    :meth:`chat_template` for the published configurations.

    Args:
        user_start_tag: text before each question.
        user_end_tag: text after each question.
        asst_start_tag: text before each answer (the prompt ends with it).
        asst_end_tag: text after each in-context answer (few-shot only).
        apply_chat_template: use the tokenizer's chat template instead of the tags.
        system_prompt: system message for chat templates (None: the template's own default).
        date_string: passed to chat templates that take it (Llama-3.x: "10 Apr 2025" in the reference runs).
    """

    def __init__(
        self,
        *,
        user_start_tag: str = "[INST] ",
        user_end_tag: str = " [/INST]",
        asst_start_tag: str = "",
        asst_end_tag: str = " ",
        apply_chat_template: bool = False,
        system_prompt: str | None = None,
        date_string: str | None = None,
    ) -> None:
        self.user_start_tag = user_start_tag
        self.user_end_tag = user_end_tag
        self.asst_start_tag = asst_start_tag
        self.asst_end_tag = asst_end_tag
        self.apply_chat_template = apply_chat_template
        self.system_prompt = system_prompt
        self.date_string = date_string

    @classmethod
    def llama2_chat(cls) -> PromptFormat:
        """``[INST] q [/INST]`` with the answer right after ``]`` (the BalDRO TOFU default)."""
        return cls()

    @classmethod
    def muse_qa(cls) -> PromptFormat:
        r"""``Question: q\nAnswer: `` (MUSE knowmem, Llama-2-7b-hf)."""
        return cls(user_start_tag="Question: ", user_end_tag="\n", asst_start_tag="Answer: ", asst_end_tag="\n\n")

    @classmethod
    def chat_template(cls, system_prompt: str | None = None, date_string: str | None = None) -> PromptFormat:
        """The tokenizer's own chat template."""
        return cls(apply_chat_template=True, system_prompt=system_prompt, date_string=date_string)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"PromptFormat({fields})"

    def prompt_text(self, question: str, few_shot: Sequence[tuple[str, str]] = ()) -> str:
        """The prompt as text (tag mode only)."""
        shots = "".join(
            self.user_start_tag + q + self.user_end_tag + self.asst_start_tag + a + self.asst_end_tag
            for q, a in few_shot
        )
        return shots + self.user_start_tag + question + self.user_end_tag + self.asst_start_tag

    def chat_messages(self, question: str, few_shot: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
        """The prompt as chat messages (chat-template mode)."""
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        for q, a in few_shot:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        return messages


@dataclass
class EncodedSample:
    """One tokenised sample: ``input_ids`` and ``labels`` (-100 on unscored positions) of the same length."""

    input_ids: list[int]
    labels: list[int]
    index: int = -1
    extra: dict = field(default_factory=dict)

    @property
    def n_targets(self) -> int:
        """How many positions are scored."""
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, question: str, few_shot) -> list[int]:
    kwargs = {} if fmt.date_string is None else {"date_string": fmt.date_string}
    ids = tokenizer.apply_chat_template(
        fmt.chat_messages(question, few_shot), add_generation_prompt=True, tokenize=True, **kwargs
    )
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers >= 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    fmt: PromptFormat,
    *,
    few_shot: Sequence[tuple[str, str]] = (),
    max_length: int = 512,
) -> list[int]:
    """Token ids of the prompt alone (generation input), special tokens included, right-truncated."""
    if fmt.apply_chat_template:
        return _chat_prompt_ids(tokenizer, fmt, question, few_shot)[:max_length]
    return list(tokenizer(fmt.prompt_text(question, few_shot), max_length=max_length, truncation=True)["input_ids"])


def encode_qa(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    answer: str,
    fmt: PromptFormat,
    *,
    few_shot: Sequence[tuple[str, str]] = (),
    max_length: int = 512,
    index: int = -1,
    prompt_ids: Sequence[int] | None = None,
) -> EncodedSample:
    """Tokenise a QA pair for scoring or training: prompt masked, answer + EOS scored (metrics-spec §1.2).

    The sample may end up with no target at all (an answer truncated away by ``max_length``, or a BPE merge
    across the prompt/answer boundary); callers that train on it must check :attr:`EncodedSample.n_targets`.
    ``prompt_ids``: the question's :func:`encode_prompt` (same ``fmt``, ``few_shot`` and ``max_length``) when the
    caller already has it (TOFU scores up to seven answers after one question).
    """
    eos = tokenizer.eos_token_id
    if prompt_ids is None:
        prompt_ids = encode_prompt(tokenizer, question, fmt, few_shot=few_shot, max_length=max_length)
    prompt_ids = list(prompt_ids)
    if fmt.apply_chat_template:
        answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        full_ids = (prompt_ids + answer_ids)[:max_length]
    else:
        text = fmt.prompt_text(question, few_shot) + answer
        full_ids = list(tokenizer(text, max_length=max_length, truncation=True)["input_ids"])
    if eos is not None and (not full_ids or full_ids[-1] != eos):
        full_ids.append(eos)
    n_prompt = min(len(prompt_ids), len(full_ids))
    labels = [IGNORE_INDEX] * n_prompt + full_ids[n_prompt:]
    return EncodedSample(full_ids, labels, index)


def encode_completion(
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    text: str,
    *,
    max_length: int = 2048,
    insert_space: bool = False,
    index: int = -1,
) -> EncodedSample:
    """Tokenise ``prefix`` + continuation ``text`` (MUSE, metrics-spec §1.3): the continuation is scored, no EOS.

    ``max_length`` caps the continuation (the number of tokens after the prefix).
    """
    prefix_ids = list(tokenizer(prefix)["input_ids"])
    joined = prefix + (" " if insert_space else "") + text
    full_ids = list(tokenizer(joined)["input_ids"])[: len(prefix_ids) + max_length]
    n_masked = max(len(prefix_ids), 1)
    labels = [IGNORE_INDEX] * min(n_masked, len(full_ids)) + full_ids[n_masked:]
    return EncodedSample(full_ids, labels, index)
