"""Contracts of the three parts every unlearning method is composed of (design.md §1-2).

* a :class:`ForgetLoss` maps the forget batch's target log-probs to unreduced losses (lower = more forgotten by the
  method's own measure; "higher = still remembered" holds for GradAscent, NPO and SimNPO only, see
  :mod:`baldro_pl.objectives.forget`) and to each sample's hardness ``-avg NLL``; a :class:`LogitForgetLoss` (CEU,
  UNDIAL) also takes the forget batch's full-vocabulary logits and, if it says so, the frozen reference model's;
* an :class:`Aggregator` turns those into one scalar and says which weight each sample got (Mean, BalDRO-DV,
  BalDRO-G);
* a :class:`RetainLoss` scores the retain batch (NLL or KL to the reference model).

All of them are pure tensor code: no model, no Lightning, testable on hand-made tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor

from baldro_pl.objectives.logprobs import TokenLogProbs

Reduction = Literal["sample", "token"]


@dataclass(frozen=True)
class ForgetLosses:
    """Unreduced forget losses of one batch.

    Attributes:
        per_sample: ``[B]`` loss of each sample (for token-level losses: the mean over its target tokens).
        per_token: ``[B, T']`` loss of each target token (0 off ``mask``), or None for sample-level losses.
        mask: ``[B, T']`` target-token mask.
        reduction: how the published method reduces a batch: ``"sample"`` (mean over samples) or ``"token"``
            (mean over all target tokens of the batch).
        hardness: ``[B]`` detached ``-avg NLL`` of each sample (high = still well remembered, for every base loss;
            what BalDRO-G and ``BalDRODV(score="nll")`` rank by).
    """

    per_sample: Tensor
    per_token: Tensor | None
    mask: Tensor
    reduction: Reduction
    hardness: Tensor

    @property
    def n_tokens(self) -> Tensor:
        """``[B]`` number of target tokens per sample, as float."""
        return self.mask.sum(-1).to(self.per_sample.dtype)


@dataclass(frozen=True)
class Aggregated:
    """An aggregator's result: the scalar ``loss`` and the ``[B]`` per-sample ``weights`` it applied (sum 1)."""

    loss: Tensor
    weights: Tensor


class Selection(NamedTuple):
    """The forget rows BalDRO-G keeps for a step, chosen from a no-grad pass before the gradient pass.

    Attributes:
        rows: ``[m]`` this process's rows to run with gradient, ascending.
        live: ``[m]`` bool, False only for the stand-in row of a process none of whose rows is kept (under
            ``scope="global"``): it runs so that every process back-propagates through the model, with zero weight.
        positions: ``[m]`` position of each row in the batch :attr:`size` counts (its own micro-batch, or the global
            one in rank order), -1 for the stand-in row.
        size: ``B`` (``scope="device"`` or one process) or ``N = sum_r B_r`` (``scope="global"``): the length of the
            weights vector.
    """

    rows: Tensor
    live: Tensor
    positions: Tensor
    size: int


def safe_mean_nll(policy: TokenLogProbs) -> Tensor:
    """``[B]`` per-token average NLL with empty samples mapped to 0 instead of NaN (training-side use)."""
    return policy.nll / policy.n_tokens.clamp(min=1.0)


class ForgetLoss(ABC):
    """A base forget loss: per-sample (and, for token-level losses, per-token) values from one forward pass.

    Subclasses set :attr:`reduction` and, when they need the reference log-likelihood of each forget sample
    (the model before unlearning, cached once per dataset index), :attr:`needs_reference`. What the training module
    must compute for a step is read from the class attributes, never from the loss's internals:

    * :attr:`needs_logits`: the loss takes the forget batch's ``[B, L, V]`` logits (a :class:`LogitForgetLoss`);
    * :attr:`needs_reference_logits`: it also takes the frozen reference model's logits on the forget batch (the
      module then keeps a frozen copy of the initial model);
    * :attr:`needs_all_positions`: those logits must cover every position (prompt and padding included);
    * :attr:`supports_dro`: False for a loss whose per-sample values BalDRO cannot meaningfully weigh; the
      objective then refuses every aggregator but ``Mean`` at construction;
    * :attr:`needs_alternate`: the loss takes the target log-probs of each forget row's alternative ("I don't know")
      answer (``batch["forget"]["alternate"]``, :mod:`baldro_pl.objectives.preference`);
    * :attr:`needs_reference_alternate`: it also takes the cached pre-unlearning NLL of those answers;
    * :attr:`needs_policy_grad`: False when the original answers' log-probs only give the hardness (no gradient
      through them, so their forward pass runs without a graph);
    * :attr:`needs_hidden_states`: the loss takes the hidden states one decoder layer outputs on the forget batch
      (RMU, :mod:`baldro_pl.objectives.representation`; the loss names the layer as ``layer``).
    """

    reduction: ClassVar[Reduction] = "sample"
    needs_reference: ClassVar[bool] = False
    needs_logits: ClassVar[bool] = False
    needs_reference_logits: ClassVar[bool] = False
    supports_dro: ClassVar[bool] = True
    needs_alternate: ClassVar[bool] = False
    needs_reference_alternate: ClassVar[bool] = False
    needs_policy_grad: ClassVar[bool] = True
    needs_hidden_states: ClassVar[bool] = False

    @property
    def needs_all_positions(self) -> bool:
        """Whether the forget logits must cover every position (not only from the first answer token on)."""
        return False

    @abstractmethod
    def __call__(self, policy: TokenLogProbs, reference_nll: Tensor | None = None) -> ForgetLosses:
        """Unreduced losses of the batch whose target log-probs are ``policy``.

        Args:
            policy: target log-probs under the model being unlearned.
            reference_nll: ``[B]`` summed NLL of each sample under the reference model (only if
                :attr:`needs_reference`).
        """

    def _check_reference(self, reference_nll: Tensor | None) -> Tensor:
        if reference_nll is None:
            raise ValueError(f"{type(self).__name__} needs reference_nll (the pre-unlearning NLL of each sample)")
        return reference_nll

    def _sample_losses(self, policy: TokenLogProbs, per_sample: Tensor) -> ForgetLosses:
        return ForgetLosses(per_sample, None, policy.mask, "sample", -safe_mean_nll(policy).detach())

    def _token_losses(self, policy: TokenLogProbs, per_token: Tensor, mask: Tensor | None = None) -> ForgetLosses:
        """Token-level :class:`ForgetLosses` over ``mask`` (default: the target tokens of ``policy``)."""
        mask = policy.mask if mask is None else mask
        per_token = per_token.masked_fill(~mask, 0.0)
        per_sample = per_token.sum(-1) / mask.sum(-1).to(per_token.dtype).clamp(min=1.0)
        return ForgetLosses(per_sample, per_token, mask, "token", -safe_mean_nll(policy).detach())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class LogitForgetLoss(ForgetLoss):
    """A forget loss that needs more than the target log-probs: the full-vocabulary logits of the forget batch.

    CEU (the whole next-token distribution at each answer token) and UNDIAL (also the frozen reference model's
    logits, :attr:`needs_reference_logits`) are of this kind. The module computes the logits
    (:func:`baldro_pl.forward.teacher_forced_logits`) and passes them; the loss itself calls no model.
    """

    needs_logits: ClassVar[bool] = True

    @abstractmethod
    def __call__(
        self,
        policy: TokenLogProbs,
        reference_nll: Tensor | None = None,
        *,
        logits: Tensor | None = None,
        labels: Tensor | None = None,
        reference_logits: Tensor | None = None,
    ) -> ForgetLosses:
        """Unreduced losses of the forget batch.

        Args:
            policy: target log-probs under the model being unlearned (for the hardness ``-avg NLL``).
            reference_nll: unused by the logit losses (kept for the common signature).
            logits: ``[B, L, V]`` policy logits of the forget batch (``L <= T``: the last ``L`` positions).
            labels: ``[B, T]`` labels of the forget batch, ``IGNORE_INDEX`` on unscored positions.
            reference_logits: ``[B, L, V]`` logits of the frozen reference model (only if
                :attr:`needs_reference_logits`).
        """

    def _check_logits(self, logits: Tensor | None, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        if logits is None or labels is None:
            raise ValueError(f"{type(self).__name__} needs the forget batch's logits and labels")
        if logits.shape[1] > labels.shape[1]:
            raise ValueError(
                f"{type(self).__name__}: logits cover {logits.shape[1]} positions, labels only {labels.shape[1]}"
            )
        return logits, labels[:, labels.shape[1] - logits.shape[1] :]


class RetainLoss(ABC):
    """A loss on the retain batch (design.md §1.2).

    :attr:`needs_reference_model` marks losses that need the frozen reference model's logits (only then does the
    module keep a second copy of the model). :attr:`needs_hidden_states` marks losses that take the hidden states of
    the forget loss's layer instead of logits (RMU's ``EmbedDiff``): ``logits`` and ``reference_logits`` are then
    ``[B, T, d]`` hidden states.
    """

    needs_reference_model: ClassVar[bool] = False
    needs_hidden_states: ClassVar[bool] = False
    takes_logprobs: ClassVar[bool] = False

    @property
    def needs_all_positions(self) -> bool:
        """Whether the loss needs the logits of every position (not only from the first answer token on)."""
        return False

    def from_logprobs(self, retain: TokenLogProbs) -> Tensor:
        """The loss from the retain batch's target log-probs alone (only where :attr:`takes_logprobs`).

        The module then never holds the retain logits whole (``logprob_chunk_size``: computed in chunks).
        """
        raise NotImplementedError(f"{type(self).__name__} needs the retain logits")

    @abstractmethod
    def __call__(self, logits: Tensor, labels: Tensor, reference_logits: Tensor | None = None) -> Tensor:
        """Scalar retain loss.

        Args:
            logits: ``[B, L, V]`` policy logits (possibly only the last ``L`` positions, see ``token_logprobs``).
            labels: ``[B, T]`` labels, -100 on unscored positions.
            reference_logits: ``[B, L, V]`` logits of the frozen reference model (only if needed).
        """

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Aggregator(ABC):
    """Reduces a batch of forget losses to one scalar (ERM mean, or a distributionally robust worst case)."""

    @abstractmethod
    def __call__(self, losses: ForgetLosses) -> Aggregated:
        """The aggregated loss and the per-sample weights applied."""

    def selects_rows(self, batch_size: int) -> bool:
        """Whether this aggregator keeps only some forget rows, chosen before the step's gradient pass.

        Only BalDRO-G does (with ``ratio < 1``): the module then runs a no-grad pass over the whole forget batch for
        the hardness, asks :meth:`~baldro_pl.objectives.BalDROG.select` which rows to keep and runs the forward and
        backward pass on those rows alone.
        """
        return False

    def select(self, hardness: Tensor) -> Selection:
        """The forget rows to keep, from the detached per-sample hardness (only where :meth:`selects_rows`)."""
        raise NotImplementedError(f"{type(self).__name__} keeps every forget row (selects_rows is False)")

    def aggregate_selected(self, losses: ForgetLosses, selection: Selection) -> Aggregated:
        """The aggregate from the losses of the rows :meth:`select` kept (only where :meth:`selects_rows`)."""
        raise NotImplementedError(f"{type(self).__name__} keeps every forget row (selects_rows is False)")

    def retain_rows(
        self, n_forget: int, n_retain: int, device: torch.device | None = None, *, step: int = 0
    ) -> Tensor | None:
        """Which retain rows to keep for this step (None: all). Only BalDRO-G subsamples the retain batch.

        Args:
            n_forget: forget batch size ``B``.
            n_retain: retain batch size.
            device: device of the returned row numbers.
            step: the optimiser step (``trainer.global_step``), for draws that a resumed run must repeat.
        """
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"
