"""Lightning's FSDP strategy set up for Hugging Face causal LMs (and their frozen reference copies).

Why Lightning's ``FSDPStrategy`` (FSDP1) and not the FSDP2-based ``ModelParallelStrategy``: with lightning 2.6 the
FSDP1 strategy is the stable one: it takes a wrap policy and an activation-checkpointing policy, saves full or
sharded checkpoints, and its state-dict gathering is what the HF export uses. ``ModelParallelStrategy`` is marked
experimental, needs hand-written ``fully_shard`` calls in ``configure_model``, and its checkpoint format differs.
FSDP1's one known gap for this library, ``generate()`` on a sharded model, is closed by summoning the root unit's
full parameters during evaluation (see :func:`model_call_context`).

:class:`HFFSDPStrategy` adds what a YAML config cannot express:

* the wrap policy is resolved from the model itself (``_no_split_modules``, e.g. ``LlamaDecoderLayer``), not from a
  hard-coded list; every decoder layer is an FSDP unit;
* each Hugging Face root model (the model being trained and, with the KL retain loss, the frozen reference model)
  is an FSDP unit of its own, so frozen and trainable parameters never share a unit (a mixed unit costs gradient
  memory as if nothing were frozen: pytorch #104690);
* activation checkpointing of the same decoder layers (instead of Hugging Face's own; never both);
* an explicit gradient-reduction dtype (Lightning's ``bf16-*`` presets reduce gradients in bf16).

Private Lightning and torch APIs: every use in baldro-pl is in this file, each marked ``PRIVATE API`` with why it
is needed and the versions it was checked against (lightning 2.6.6, torch 2.13.0). A Lightning or torch upgrade
should start by re-reading these places; the CPU FSDP tests (``tests/distributed``) exercise each of them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from transformers import PreTrainedModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def decoder_layer_classes(root: nn.Module, names: list[str] | Literal["auto"] = "auto") -> set[type[nn.Module]]:
    """The module classes to wrap as FSDP units, found in ``root`` by name.

    ``"auto"`` takes the names from every Hugging Face model's ``_no_split_modules`` inside ``root`` (how accelerate
    chooses ``transformer_cls_names_to_wrap``).

    Raises:
        ValueError: no name was found, or a name matches no module of ``root``.
    """
    if names == "auto":
        wanted: set[str] = set()
        for module in root.modules():
            if isinstance(module, PreTrainedModel):
                wanted.update(module._no_split_modules or [])
        if not wanted:
            raise ValueError(
                "HFFSDPStrategy: layer_names='auto' found no _no_split_modules in the model; give the decoder layer "
                "class names explicitly, e.g. layer_names: [LlamaDecoderLayer]"
            )
    else:
        wanted = set(names)
    found = {type(m) for m in root.modules() if type(m).__name__ in wanted}
    missing = wanted - {cls.__name__ for cls in found}
    if names != "auto" and missing:
        raise ValueError(f"HFFSDPStrategy: layer_names {sorted(missing)} match no module of the model")
    if not found:
        raise ValueError(f"HFFSDPStrategy: no module of the model is one of {sorted(wanted)}")
    return found


def root_model_classes(root: nn.Module) -> set[type[nn.Module]]:
    """Classes of the outermost Hugging Face models inside ``root`` (the trained model, the frozen reference)."""
    classes = set()
    for name, module in root.named_modules():
        if isinstance(module, PreTrainedModel) and not any(
            isinstance(parent, PreTrainedModel)
            for parent_name, parent in root.named_modules()
            if parent_name and name.startswith(parent_name + ".")
        ):
            classes.add(type(module))
    return classes


class HFFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` whose wrap and checkpointing policies come from the Hugging Face model.

    Args:
        layer_names: decoder layer class names to wrap, or ``"auto"`` (from ``_no_split_modules``).
        activation_checkpointing_layers: checkpoint the activations of those layers (saves memory, ~30% compute).
        gradient_reduce_dtype: dtype of gradient reduce-scatter: ``"float32"`` (safer with bf16 weights) or None
            (Lightning's default for the precision: bf16 under ``bf16-*``).
        **kwargs: every other ``FSDPStrategy`` argument (``sharding_strategy``, ``state_dict_type``,
            ``cpu_offload``, ...). ``timeout`` defaults to :data:`baldro_pl.distributed.DEFAULT_PG_TIMEOUT_S`.
    """

    strategy_name = "hf_fsdp"

    def __init__(
        self,
        *,
        layer_names: list[str] | Literal["auto"] = "auto",
        activation_checkpointing_layers: bool = True,
        gradient_reduce_dtype: Literal["float32", "bfloat16"] | None = "float32",
        **kwargs: Any,
    ) -> None:
        policies = ("auto_wrap_policy", "activation_checkpointing_policy", "activation_checkpointing")
        if any(kwargs.get(k) is not None for k in policies):
            raise ValueError("HFFSDPStrategy: set layer_names / activation_checkpointing_layers, not the raw policies")
        for key in policies:  # the CLI passes every inherited argument, these as None
            kwargs.pop(key, None)
        if gradient_reduce_dtype not in (None, *DTYPES):
            raise ValueError(f"HFFSDPStrategy: gradient_reduce_dtype must be None or one of {sorted(DTYPES)}")
        if kwargs.get("timeout") is None:  # Python API: no half-hour hang (the CLI sets its --pg_timeout on top)
            from datetime import timedelta

            from baldro_pl.distributed import DEFAULT_PG_TIMEOUT_S

            kwargs["timeout"] = timedelta(seconds=DEFAULT_PG_TIMEOUT_S)
        super().__init__(**kwargs)
        self.layer_names = layer_names
        self.activation_checkpointing_layers = activation_checkpointing_layers
        self.gradient_reduce_dtype = gradient_reduce_dtype

    @property
    def mixed_precision_config(self):
        """Lightning's mixed-precision config with the chosen gradient-reduction dtype."""
        config = super().mixed_precision_config
        if config is None or self.gradient_reduce_dtype is None:
            return config
        from torch.distributed.fsdp import MixedPrecision

        return MixedPrecision(
            param_dtype=config.param_dtype,
            reduce_dtype=DTYPES[self.gradient_reduce_dtype],
            buffer_dtype=config.buffer_dtype,
        )

    def _setup_model(self, model: nn.Module) -> nn.Module:
        """Wrap with the policies resolved from the model (Lightning's ``_setup_model``, plus CPU devices)."""
        # PRIVATE API (lightning 2.6.6): FSDPStrategy._setup_model is the one place where the wrap policy meets the
        # model; the policy depends on the model's own classes, which a constructor argument cannot know yet.
        # _move_torchmetrics_to_device and _setup_activation_checkpointing are the two helpers Lightning's own
        # _setup_model calls after wrapping; reusing them keeps this override identical to Lightning's elsewhere.
        from lightning.fabric.strategies.fsdp import _move_torchmetrics_to_device, _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        layers = decoder_layer_classes(model, self.layer_names)
        if self.activation_checkpointing_layers:
            # PRIVATE API (lightning 2.6.6): the attribute __init__ fills from activation_checkpointing_policy
            self._activation_checkpointing_kwargs = {"auto_wrap_policy": ModuleWrapPolicy(layers)}
        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            # a second stage on the same module (trainer.test after trainer.fit): keep the existing wrapping
            _move_torchmetrics_to_device(model, self.root_device)
            return model
        # FSDPStrategy.kwargs (public attribute, lightning 2.6.6) holds the extra FullyShardedDataParallel arguments
        self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(layers | root_model_classes(model))
        # Lightning passes device_id=None on CPU, which torch's FSDP refuses; an explicit CPU device works (gloo),
        # which lets the FSDP path run in CPU tests.
        device = self.root_device
        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=device if device.type == "cpu" else device.index,
            **self.kwargs,
        )
        _move_torchmetrics_to_device(model, device)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


def prepare_direct_calls(strategy_model: nn.Module | None) -> None:
    """Initialise FSDP's root before code calls the wrapped Hugging Face model directly.

    FSDP1 sets up its unit hierarchy lazily, in the first forward of whichever unit runs first. The reference pass
    before training and the evaluation callbacks call the inner (Hugging Face) unit directly; without this, that
    unit would make itself the root and the first training step would fail ("Non-root FSDP instance's `_is_root`
    should not have been set"). No-op for anything that is not an FSDP root, and once initialised.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    # PRIVATE API (torch 2.13.0): FSDP1 has no public way to initialise the root early; _is_root is None until
    # _lazy_init has run, and _lazy_init(root, root) is exactly what the root's first forward calls.
    if isinstance(strategy_model, FullyShardedDataParallel) and strategy_model._is_root is None:
        from torch.distributed.fsdp._runtime_utils import _lazy_init

        _lazy_init(strategy_model, strategy_model)


def is_fsdp(trainer: pl.Trainer) -> bool:
    """Whether the trainer runs Lightning's FSDP strategy (FSDP1)."""
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(getattr(trainer, "strategy", None), FSDPStrategy)


@contextlib.contextmanager
def model_call_context(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[None]:
    """The context every evaluation forward / generate runs in.

    Under Lightning's ``FSDPStrategy`` (FSDP1), the parameters owned directly by the root unit, and by the Hugging
    Face model's own unit when it is one (``HFFSDPStrategy`` wraps each HF model separately), are gathered with
    ``FullyShardedDataParallel.summon_full_params(unit, recurse=False, writeback=False)``, so that the Hugging Face
    model can be called directly and ``generate()`` works (ecosystem-notes §2.3); the decoder-layer units gather
    their own parameters in their forward. The FSDP root is initialised first if no forward has run yet
    (:func:`prepare_direct_calls`). Otherwise a null context.
    """
    if not is_fsdp(trainer):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    root = trainer.strategy.model
    prepare_direct_calls(root)
    with contextlib.ExitStack() as stack:
        if isinstance(root, FullyShardedDataParallel):
            stack.enter_context(FullyShardedDataParallel.summon_full_params(root, recurse=False, writeback=False))
        unit = pl_module.model
        if isinstance(unit, FullyShardedDataParallel) and unit is not root:
            stack.enter_context(FullyShardedDataParallel.summon_full_params(unit, recurse=False, writeback=False))
        yield


def hf_model(pl_module: pl.LightningModule) -> torch.nn.Module:
    """``pl_module.model`` without an FSDP wrapper of its own (calls then go through :func:`model_call_context`)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = pl_module.model
    return model.module if isinstance(model, FullyShardedDataParallel) else model


def full_module_state_dict(trainer: pl.Trainer) -> dict[str, torch.Tensor]:
    """The LightningModule's full state dict, on every rank's call (collective under FSDP; rank 0 holds the values).

    Under FSDP, whatever the checkpoint format (a "sharded" strategy returns ShardedTensors), FSDP1's
    ``FULL_STATE_DICT`` gathers the full tensors to rank 0 only, offloaded to CPU on accelerator devices (on CPU
    devices the offload crashes torch 2.13's clone hook). Elsewhere Lightning's own ``lightning_module_state_dict``.
    """
    strategy = trainer.strategy
    if not isinstance(strategy, FSDPStrategy):
        return strategy.lightning_module_state_dict()
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    config = FullStateDictConfig(offload_to_cpu=strategy.root_device.type != "cpu", rank0_only=True)
    with FSDP.state_dict_type(strategy.model, StateDictType.FULL_STATE_DICT, config):
        return strategy.model.state_dict()


def clip_gradients_fsdp_aware(pl_module: pl.LightningModule, optimizer, clip_val, algorithm) -> None:
    """Clip gradients by norm over all FSDP shards, or as Lightning does elsewhere.

    Under FSDP norm clipping goes through FSDP's own ``clip_grad_norm_`` (the norm over all shards: Lightning's FSDP
    precision plugin refuses norm clipping); elsewhere, and for value clipping, Lightning's ``clip_gradients``.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    wrapped = pl_module.trainer.strategy.model
    if isinstance(wrapped, FullyShardedDataParallel) and clip_val and algorithm != "value":
        wrapped.clip_grad_norm_(clip_val)
        return
    pl_module.clip_gradients(optimizer, clip_val, algorithm)


def load_sharded_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sharded (FSDP distributed-checkpoint) directory into one full, CPU checkpoint dict.

    Used by ``baldro-pl export`` on the ``state_dict_type: sharded`` checkpoints that :class:`HFFSDPStrategy` writes.
    """
    # PRIVATE API (lightning 2.6.6): Lightning's own loader of a distributed-checkpoint folder into a plain dict
    # (torch.distributed.checkpoint's format_utils with Lightning's key layout); there is no public equivalent.
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    return _load_distributed_checkpoint(Path(path))
