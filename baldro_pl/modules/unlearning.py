"""UnlearningModule: any Hugging Face causal LM trained with any (forget loss, aggregator, retain loss).

One training step (design.md §2, "data flows one way")::

    batch {"forget": {...}, "retain": {...}}
      -> one forward pass on the forget side -> logits -> target log-probs (fp32)
      -> (UNDIAL: the frozen reference model's forget logits, without gradient)
      -> (BalDRO-G: the retain rows the objective keeps) -> one forward pass on the retain side
      -> UnlearningObjective(log-probs, forget logits, cached reference NLL, retain logits) -> loss, weights, avg NLL

The module asks the :class:`~baldro_pl.objectives.UnlearningObjective` what a step needs (reference NLL, forget logits,
reference model, all forget or retain positions, retain rows) and never looks inside its parts. The reference NLL of
every forget sample is computed once, before the first step, from the initial weights
(:class:`~baldro_pl.modules.reference.ReferenceCache`); a frozen reference model is built only when a loss needs its
logits (the KL retain loss, UNDIAL's teacher) or hidden states (RMU's ``EmbedDiff``). For RMU the forget pass also
takes the output of the chosen decoder layer (a forward hook; the later layers see it detached, so the backward pass
stops there) and the retain passes stop after that layer; the RMU direction is saved in checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from baldro_pl.forward import forward_logprobs_joint, teacher_forced_logits
from baldro_pl.modules.base import CausalLMModule, from_config, plain_config
from baldro_pl.modules.reference import ReferenceCache
from baldro_pl.objectives import (
    Aggregator,
    ForgetLoss,
    ObjectiveOutput,
    RetainLoss,
    TokenLogProbs,
    UnlearningObjective,
    token_logprobs,
)
from baldro_pl.strategies import prepare_direct_calls

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "baldro_pl_reference_cache"
ALTERNATE_CHECKPOINT_KEY = "baldro_pl_reference_cache_alternate"
DIRECTION_CHECKPOINT_KEY = "baldro_pl_rmu_direction"


class _StopForward(Exception):
    """Raised by the hidden-state hook to end a forward pass once the chosen layer has run."""


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM (``model.get_decoder().layers``).

    Raises:
        ValueError: the model has no such list.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"forget_loss.layer: {type(model).__name__} has no decoder layer list (get_decoder().layers)")
    return layers


def layer_hidden_states(
    model: torch.nn.Module, batch: dict[str, Tensor], layer: int, *, logits: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The ``[B, T, d]`` output of decoder layer ``layer`` on ``batch`` (a forward hook, as open-unlearning's RMU).

    Without ``logits`` the forward pass stops once that layer has run (the later layers and the LM head are not
    computed). With ``logits`` it runs to the end, but the layers after ``layer`` see a detached copy of its output:
    their logits (for the hardness and the forgetting spread) carry no graph, so the backward pass only reaches the
    layers up to ``layer``.

    Returns:
        ``(hidden states, logits from the earliest target position on, or None)``.
    """
    captured: list[Tensor] = []

    def capture(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if captured:  # a recomputation (gradient checkpointing): leave it alone
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        captured.append(hidden)
        if not logits:
            return None
        detached = hidden.detach()
        return (detached, *output[1:]) if isinstance(output, tuple) else detached

    def stop(module: torch.nn.Module, args: Any) -> None:
        # a pre-hook of the next layer, so that no checkpointed layer is left half-run
        raise _StopForward

    layers = decoder_layers(model)
    handles = [layers[layer].register_forward_hook(capture)]
    if not logits and layer + 1 < len(layers):
        handles.append(layers[layer + 1].register_forward_pre_hook(stop))
    try:
        if logits:
            out = teacher_forced_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            return captured[0], out
        with contextlib.suppress(_StopForward):
            model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, logits_to_keep=1
            )
        return captured[0], None
    finally:
        for handle in handles:
            handle.remove()


def select_rows(side: dict[str, Any], rows: Tensor) -> dict[str, Any]:
    """The rows ``rows`` of a batch side (every tensor, nested sides such as ``"alternate"`` too), padding trimmed.

    Positions past the last attended token of every kept row are dropped: with right padding (every datamodule of
    this package) that changes no kept row's logits, and it spares the forward pass the columns only other rows
    needed.
    """
    picked = {
        key: select_rows(value, rows) if isinstance(value, dict) else value.index_select(0, rows)
        for key, value in side.items()
    }
    mask = picked.get("attention_mask")
    if mask is not None and mask.shape[0] > 0:
        attended = mask.any(0).nonzero()
        length = int(attended[-1, 0]) + 1 if attended.numel() else mask.shape[1]
        if length < mask.shape[1]:
            for key in ("input_ids", "attention_mask", "labels"):
                picked[key] = picked[key][:, :length]
    return picked


class UnlearningModule(CausalLMModule):
    """Unlearn a forget set from a causal LM while keeping the retain set (BalDRO and its base methods).

    Args:
        model: hub name, local directory, ``pkg:<package>`` or a built ``PreTrainedModel`` (see
            :class:`~baldro_pl.modules.base.CausalLMModule` for the loading and optimiser arguments).
        forget_loss: base forget loss: ``NPO``, ``SimNPO``, ``SatImp``, ``GradAscent``, ``WGA``, ``CEU``,
            ``UNDIAL`` or ``RMU`` (whose ``layer`` and ``trainable`` settings are applied to the model in
            :meth:`configure_model`: only the matching parameters stay trainable).
        aggregator: ``Mean`` (default; the published base method), ``BalDRODV`` or ``BalDROG``.
        retain_loss: ``NLL`` (None means NLL), ``KL`` or (with ``RMU``) ``EmbedDiff``. Set ``alpha: 0`` for no retain
            term (plain gradient ascent).
            The three objects may also be given as ``{"class_path": ..., "init_args": {...}}`` mappings, the form in
            which the module saves them as hyperparameters (``hparams.yaml``, checkpoints: plain YAML-safe data).
        gamma: weight of the forget term.
        alpha: weight of the retain term.
        track_forgetting: log the spread of per-token NLL increases across forget samples (asynchronous
            forgetting): ``train/forget_nll_increase_{mean,std}`` and the ``forgetting/nll_increase`` histogram. Its
            extra work (the reference pass over the forget set when the loss itself needs no reference NLL, and the
            per-step lookup) runs only where the metrics go somewhere: when the trainer has a logger (see
            :attr:`tracks_forgetting`).
        **kwargs: loading and optimiser settings of :class:`~baldro_pl.modules.base.CausalLMModule`.
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        forget_loss: ForgetLoss,
        aggregator: Aggregator | None = None,
        retain_loss: RetainLoss | None = None,
        *,
        gamma: float = 1.0,
        alpha: float = 1.0,
        track_forgetting: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        forget_loss = from_config(forget_loss, ForgetLoss, "forget_loss")
        aggregator = from_config(aggregator, Aggregator, "aggregator")
        retain_loss = from_config(retain_loss, RetainLoss, "retain_loss")
        self.objective = UnlearningObjective(forget_loss, aggregator, retain_loss, gamma=gamma, alpha=alpha)
        self.track_forgetting = track_forgetting
        self.reference_cache = ReferenceCache()
        self.reference_cache_alternate = ReferenceCache()  # IdkDPO: the alternative answers' reference NLL
        self.reference_model: PreTrainedModel | None = None
        self.strict_loading = False  # the frozen reference model is rebuilt from its source, not checkpointed
        # save_hyperparameters records the current values of the arguments: make the three objects plain
        # {class_path, init_args} data first, so that hparams.yaml is yaml.safe_load-able and a checkpoint's
        # hyperparameters rebuild the module (LightningCLI passes its own plain config instead of these values)
        forget_loss, aggregator, retain_loss = (plain_config(part) for part in self.objective.parts())
        self.save_hyperparameters(ignore=["model"] if isinstance(model, PreTrainedModel) else None)

    @property
    def tracks_forgetting(self) -> bool:
        """Whether this run computes the forgetting spread: ``track_forgetting`` and the trainer has a logger.

        Without a logger the spread (``train/forget_nll_increase_*``, ``forgetting/nll_increase``) would be
        computed for nothing, so neither the reference pass it needs nor the per-step lookup runs.
        """
        return self.track_forgetting and bool(self.loggers)

    @property
    def needs_reference_cache(self) -> bool:
        """Whether the per-sample reference NLL is computed before training (the loss or the spread uses it)."""
        return self.objective.needs_reference_nll or self.tracks_forgetting

    @property
    def needs_reference_model(self) -> bool:
        """Whether a live frozen copy of the initial model is kept (only for the KL retain loss and UNDIAL)."""
        return self.objective.needs_reference_model

    def configure_model(self) -> None:
        """Build the model and, for the KL retain loss, UNDIAL and RMU only, a frozen reference copy (before wrapping).

        For RMU, also check the layer, draw the direction and freeze every parameter but the configured ones.
        """
        initial_copy = self.model is None and self.needs_reference_model
        super().configure_model()
        if self.needs_reference_model and self.reference_model is None:
            if initial_copy or self.model_source is None:
                import copy

                reference = copy.deepcopy(self.model)
            else:
                reference = self.load_pretrained()
            reference.requires_grad_(False)
            reference.eval()
            reference.config.use_cache = False
            self.reference_model = reference
        if self.objective.needs_forget_hidden:
            self._configure_hidden_layer()

    def _configure_hidden_layer(self) -> None:
        """RMU: check the layer, draw (or check) the direction, freeze every parameter but the trainable ones.

        Runs in :meth:`configure_model`, before the optimiser is built (it takes only ``requires_grad`` parameters).

        Raises:
            ValueError: ``forget_loss.layer`` out of range for the model, or no parameter matches
                ``forget_loss.trainable``.
        """
        forget_loss = self.objective.forget_loss
        n_layers = len(decoder_layers(self.model))
        if forget_loss.layer >= n_layers:  # type: ignore[attr-defined]
            raise ValueError(
                f"forget_loss.layer: {forget_loss.layer} is out of range for a model with {n_layers} decoder layers "  # type: ignore[attr-defined]
                f"(0 to {n_layers - 1})"
            )
        forget_loss.direction_for(self.model.config.hidden_size)  # type: ignore[attr-defined]
        trained = 0
        for name, parameter in self.model.named_parameters():
            keep = forget_loss.is_trainable(name)  # type: ignore[attr-defined]
            parameter.requires_grad_(keep)
            trained += keep
        if not trained:
            raise ValueError(
                f"forget_loss.trainable: no parameter of the model matches {forget_loss.trainable!r} "  # type: ignore[attr-defined]
                f"(names look like {next(n for n, _ in self.model.named_parameters())!r})"
            )

    def on_fit_start(self) -> None:
        """Train mode for the model being unlearned, eval mode for the frozen reference (if any)."""
        self.model.train()
        if self.reference_model is not None:
            self.reference_model.eval()

    # ------------------------------------------------------------------ reference cache
    def on_train_start(self) -> None:
        """Compute the reference NLL of every forget sample with the initial weights, unless restored.

        Only the loss's need is served after the first step: a run resumed without a cache (its first part had no
        logger) cannot score the initial weights any more, so it logs no forgetting spread instead.
        """
        self._check_alternate_answers()
        if self.objective.needs_reference_alternate_nll and self.reference_cache_alternate.is_empty:
            self.build_reference_cache(alternate=True)
        if not (self.needs_reference_cache and self.reference_cache.is_empty):
            return
        if self.objective.needs_reference_nll or self.global_step == 0:
            self.build_reference_cache()
        else:
            log.warning("track_forgetting: the checkpoint holds no reference NLL, so no forgetting spread is logged")

    def _check_alternate_answers(self) -> None:
        """Refuse, before the first step, a forget loss that needs alternative answers the datamodule does not give."""
        if not self.objective.needs_alternate:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(datamodule, "alternate_answers", None) is None:
            name = type(self.objective.parts()[0]).__name__
            raise ValueError(
                f"data.alternate_answers: {name} needs an alternative answer per forget row; set it to a file of "
                '"I don\'t know" answers (for TOFU: ../shared/data/tofu/idontknow.jsonl)'
            )

    def build_reference_cache(self, alternate: bool = False) -> None:
        """Score the forget set once (sharded across processes, then gathered so every process holds all of it).

        With ``alternate``, the forget rows' alternative answers go into :attr:`reference_cache_alternate` (IdkDPO).
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "reference_dataloader"):
            user = (
                type(self.objective.parts()[0]).__name__ if self.objective.needs_reference_nll else "track_forgetting"
            )
            raise ValueError(
                f"{user} needs the reference NLL of every forget sample: the "
                "datamodule must provide reference_dataloader() (every UnlearningDataModule does)"
            )
        prepare_direct_calls(self.trainer.strategy.model)
        if alternate:
            if self.global_step > 0:
                raise ValueError(
                    "IdkDPO: the checkpoint holds no reference NLL of the alternative answers, and the initial weights "
                    "are gone; resume from a checkpoint written by this version"
                )
            cache, loader = self.reference_cache_alternate, datamodule.reference_dataloader(alternate=True)
        else:
            cache, loader = self.reference_cache, datamodule.reference_dataloader()
        cache.build(self.model, loader, self.device, all_gather=self.all_gather, chunk_size=self.logprob_chunk_size)
        log.info("reference NLL cached for %d forget samples%s", len(cache), " (alternative answers)" * alternate)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the reference cache; leave the frozen reference model out of the checkpoint."""
        checkpoint[CHECKPOINT_KEY] = self.reference_cache.state_dict()
        direction = getattr(self.objective.forget_loss, "direction", None)
        if direction is not None:
            checkpoint[DIRECTION_CHECKPOINT_KEY] = direction.detach().cpu().clone()
        if not self.reference_cache_alternate.is_empty:
            checkpoint[ALTERNATE_CHECKPOINT_KEY] = self.reference_cache_alternate.state_dict()
        state = checkpoint.get("state_dict")
        if state is not None:
            for key in [k for k in state if k.startswith("reference_model.")]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the reference cache computed before the interrupted run's first step."""
        if CHECKPOINT_KEY in checkpoint:
            self.reference_cache.load_state_dict(checkpoint[CHECKPOINT_KEY])
        if ALTERNATE_CHECKPOINT_KEY in checkpoint:
            self.reference_cache_alternate.load_state_dict(checkpoint[ALTERNATE_CHECKPOINT_KEY])
        if DIRECTION_CHECKPOINT_KEY in checkpoint and self.objective.needs_forget_hidden:
            self.objective.forget_loss.direction = checkpoint[DIRECTION_CHECKPOINT_KEY].float().cpu()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ training
    def forget_logprobs(self, forget: dict[str, Tensor]) -> TokenLogProbs:
        """Target log-probs of the forget batch (one forward pass, fp32 log-softmax)."""
        return self.batch_logprobs(self.model, forget)

    def forget_logits(self, forget: dict[str, Tensor]) -> tuple[TokenLogProbs, Tensor, Tensor | None]:
        """One forward pass on the forget batch: ``(target log-probs, logits, reference model's logits or None)``.

        The logits cover every position when the forget loss asks for it (UNDIAL "reference"); the frozen reference
        model runs without gradient, only when the forget loss needs its logits (UNDIAL).
        """
        objective = self.objective
        all_positions = objective.needs_all_forget_positions
        logits = self.batch_logits(self.model, forget, all_positions=all_positions)
        reference_logits = None
        if objective.needs_reference_forget_logits:
            with torch.no_grad():
                reference_logits = self.batch_logits(self.reference_model, forget, all_positions=all_positions)
        return token_logprobs(logits, forget["labels"]), logits, reference_logits

    def compute_step(self, batch: dict[str, dict[str, Tensor]]) -> tuple[ObjectiveOutput, TokenLogProbs]:
        """The objective on one batch. Returns ``(ObjectiveOutput, the whole forget batch's log-probs)``.

        One forward pass per side; BalDRO-G (``ratio < 1``) runs two on the forget side: a no-grad pass over the
        whole batch for the hardness, then the gradient pass on the ``k`` rows it keeps (their right padding trimmed),
        which costs about ``1 + 3 * ratio`` forward-equivalents instead of ``3``.

        Raises:
            ValueError: the objective has a retain term and the batch has no ``"retain"`` side.
        """
        objective = self.objective
        forget = batch["forget"]
        n_forget = forget["input_ids"].shape[0]
        selection = whole = None
        if objective.selects_forget_rows(n_forget):
            with torch.no_grad():
                whole = self.forget_logprobs(forget)
            selection = objective.select_forget_rows(whole)
            forget = select_rows(forget, selection.rows)
        known = whole.select(selection.rows) if whole is not None else None
        retain = None
        if objective.uses_retain:
            retain = batch.get("retain")
            if retain is None:
                raise ValueError("the retain loss needs a 'retain' side in every batch")
            n_retain = retain["input_ids"].shape[0]
            device = retain["input_ids"].device
            rows = objective.retain_rows(n_forget, n_retain, step=self.global_step, device=device)
            if rows is not None:
                retain = {k: v.index_select(0, rows) for k, v in retain.items()}
        forget_lp = retain_lp = None
        if retain is not None and self._joins_forget_and_retain():
            forget_lp, retain_lp = forward_logprobs_joint(
                self.model, [forget, retain], chunk_size=self.logprob_chunk_size
            )
        forget_inputs = self._forget_inputs(forget, known, logprobs=forget_lp)
        retain_logits = retain_labels = reference_logits = retain_hidden = reference_retain_hidden = None
        if retain is not None:
            retain_labels = retain["labels"]
            if objective.needs_retain_hidden:  # RMU's EmbedDiff: the layer's hidden states, the passes stop there
                retain_hidden, _ = layer_hidden_states(self.model, retain, objective.hidden_layer)
                with torch.no_grad():
                    reference_retain_hidden, _ = layer_hidden_states(
                        self.reference_model, retain, objective.hidden_layer
                    )
            elif objective.needs_retain_logprobs:  # NLL: the target log-probs (chunked with logprob_chunk_size)
                if retain_lp is None:
                    retain_lp = self.batch_logprobs(self.model, retain)
            else:
                # KL(normalise="reference") averages over every position of the padded batch: it needs all the logits
                all_positions = objective.needs_all_retain_positions
                retain_logits = self.batch_logits(self.model, retain, all_positions=all_positions)
            if objective.needs_reference_retain_logits:
                with torch.no_grad():
                    reference_logits = self.batch_logits(self.reference_model, retain, all_positions=all_positions)
        out = objective(
            **forget_inputs,
            retain_logits=retain_logits,
            retain_labels=retain_labels,
            reference_retain_logits=reference_logits,
            retain_logprobs=retain_lp,
            retain_hidden=retain_hidden,
            reference_retain_hidden=reference_retain_hidden,
            selection=selection,
            selected_from=whole,
        )
        return out, forget_inputs["forget"] if whole is None else whole

    def _joins_forget_and_retain(self) -> bool:
        """Whether the step scores its forget and retain rows in one forward pass (:func:`forward_logprobs_joint`).

        Where both sides need only target log-probs with gradient from the policy model: the forget side's plain
        pass of :meth:`_forget_inputs` and the retain side's NLL. Not with hidden states (RMU), logits (CE-U,
        UNDIAL, KL) or a forget side without gradient (IdkNLL's original answers).
        """
        objective = self.objective
        return (
            torch.is_grad_enabled()
            and objective.needs_forget_grad
            and not objective.needs_forget_hidden
            and not objective.needs_forget_logits
            and objective.needs_retain_logprobs
            and not objective.needs_retain_hidden
        )

    def _forget_inputs(
        self, forget: dict[str, Tensor], known: TokenLogProbs | None = None, *, logprobs: TokenLogProbs | None = None
    ) -> dict[str, Any]:
        """The objective's forget-side arguments for the rows of ``forget``.

        One forward pass (RMU's hidden states, CEU/UNDIAL's logits, or log-probs only), the cached reference NLL and
        the alternative answers' pass (IdkNLL, IdkDPO).

        ``known``: these rows' log-probs from a no-grad pass already run, reused when the loss takes no gradient
        through them and no logits or hidden states (IdkNLL). ``logprobs``: these rows' log-probs with gradient,
        already computed by the step's joint forward pass (:meth:`_joins_forget_and_retain`).
        """
        objective = self.objective
        forget_logits = reference_forget_logits = forget_hidden = None
        if logprobs is not None:
            forget_lp = logprobs
        elif objective.needs_forget_hidden:
            forget_hidden, logits = layer_hidden_states(self.model, forget, objective.hidden_layer, logits=True)
            forget_lp = token_logprobs(logits, forget["labels"])
        elif objective.needs_forget_logits:
            forget_lp, forget_logits, reference_forget_logits = self.forget_logits(forget)
        elif known is not None and not objective.needs_forget_grad:
            forget_lp = known
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and objective.needs_forget_grad):
                forget_lp = self.forget_logprobs(forget)
        alternate_lp = reference_alternate_nll = None
        if objective.needs_alternate:
            alternate = forget.get("alternate")
            if alternate is None:
                raise ValueError("the forget loss needs batch['forget']['alternate']: set data.alternate_answers")
            alternate_lp = self.forget_logprobs(alternate)
            if objective.needs_reference_alternate_nll:
                reference_alternate_nll = self.reference_cache_alternate.lookup(alternate["index"])
        return {
            "forget": forget_lp,
            "reference_nll": self.reference_cache.lookup(forget["index"]) if objective.needs_reference_nll else None,
            "forget_logits": forget_logits,
            "forget_labels": forget["labels"] if forget_logits is not None or forget_hidden is not None else None,
            "reference_forget_logits": reference_forget_logits,
            "alternate": alternate_lp,
            "reference_alternate_nll": reference_alternate_nll,
            "forget_hidden": forget_hidden,
        }

    def on_train_epoch_end(self) -> None:
        """Raise if a step of this epoch looked up a forget index the reference cache lacks (one device sync)."""
        self.reference_cache.verify()
        self.reference_cache_alternate.verify()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Keep the frozen reference model in eval mode (Lightning puts every submodule in train mode)."""
        if self.reference_model is not None:
            self.reference_model.eval()

    def training_step(self, batch: dict[str, dict[str, Tensor]], batch_idx: int) -> Tensor:
        """One unlearning step; logs losses, hardness, aggregator ESS and (see :attr:`tracks_forgetting`) spread."""
        out, _ = self.compute_step(batch)
        weights = out.weights
        ess = 1.0 / (weights.float() ** 2).sum()
        metrics = {
            "train/loss": out.loss.detach(),
            "train/forget_loss": out.forget_loss.detach(),
            "train/retain_loss": out.retain_loss.detach(),
            "train/hardness_mean": out.hardness.mean(),
            "train/ess": ess,
            "train/ess_fraction": ess / weights.numel(),
            "train/weight_max": weights.max(),
        }
        increase = None
        if self.tracks_forgetting and not self.reference_cache.is_empty:
            increase = out.avg_nll - self.reference_cache.lookup_avg(batch["forget"]["index"])
            metrics["train/forget_nll_increase_mean"] = increase.mean()
            metrics["train/forget_nll_increase_std"] = increase.std(unbiased=False)
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, batch_size=weights.numel())
        self.log("loss", out.loss.detach(), prog_bar=True, logger=False, batch_size=weights.numel())
        if self.histogram_due():
            self.log_histogram("dro/weights", weights)
            self.log_histogram("dro/per_sample_forget_loss", out.per_sample_loss)
            if increase is not None:
                self.log_histogram("forgetting/nll_increase", increase)
        return out.loss
