"""FinetuneModule: answer-only NLL fine-tuning that makes the target and retain models of an unlearning benchmark.

TOFU's target model is the base model fine-tuned on all data (``full``); its retain model is fine-tuned on everything
but the forget set (``retain90`` for ``forget10``). The result is written as a Hugging Face directory (safetensors,
config, tokenizer) that :class:`~baldro_pl.modules.unlearning.UnlearningModule` loads by path.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback
from torch import Tensor
from transformers import PreTrainedModel

from baldro_pl.modules.base import CausalLMModule
from baldro_pl.objectives import nll_from_logprobs


class FinetuneModule(CausalLMModule):
    """Fine-tune a causal LM on answer tokens only (token-mean NLL, prompt masked).

    Args:
        model: hub name, local directory, ``pkg:<package>`` or a built ``PreTrainedModel``.
        output_dir: where to write the fine-tuned model as a Hugging Face directory at the end of ``fit``, replacing
            an earlier one atomically (None: do not export; the checkpoint still holds the weights).
        **kwargs: loading and optimiser settings of :class:`~baldro_pl.modules.base.CausalLMModule`.
    """

    def __init__(self, model: str | PreTrainedModel, *, output_dir: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("warmup_epochs", 0.0)
        kwargs.setdefault("weight_decay", 0.0)
        super().__init__(model, **kwargs)
        self.output_dir = output_dir
        self.save_hyperparameters(ignore=["model"] if isinstance(model, PreTrainedModel) else None)

    def configure_callbacks(self) -> list[Callback]:
        """Export the fine-tuned weights as a Hugging Face directory when ``output_dir`` is set."""
        if self.output_dir is None:
            return []
        from baldro_pl.callbacks import HFExport

        return [HFExport(self.output_dir, overwrite=True)]  # the module's own output: a rerun replaces it

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Token-mean NLL of the answers (the Hugging Face ``loss`` with the prompt masked)."""
        loss = nll_from_logprobs(self.batch_logprobs(self.model, batch))
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss
