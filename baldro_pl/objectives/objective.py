"""The full unlearning objective ``gamma * A(l_1..l_n) + alpha * L_retain`` (design.md §1) as a pure function.

:class:`UnlearningObjective` is also the one party the training module asks about the method: whether it needs the
reference NLL of the forget samples, the forget logits (CEU, UNDIAL), a live reference model (for the KL retain loss or
UNDIAL's teacher), the logits of every position, and which retain rows to keep for a forget batch. The module never
looks inside the forget loss, aggregator or retain loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from baldro_pl.objectives.aggregators import Mean
from baldro_pl.objectives.base import Aggregator, ForgetLoss, RetainLoss, Selection, safe_mean_nll
from baldro_pl.objectives.logprobs import TokenLogProbs
from baldro_pl.objectives.retain import NLL


@dataclass(frozen=True)
class ObjectiveOutput:
    """Everything one step of the objective produced.

    Attributes:
        loss: scalar total loss ``gamma * forget_loss + alpha * retain_loss``.
        forget_loss: scalar aggregated forget loss.
        retain_loss: scalar retain loss (0 when there is no retain term).
        per_sample_loss: ``[B]`` detached per-sample forget losses (``[k]``, the kept rows', in the two-pass step of
            BalDRO-G).
        weights: ``[B]`` detached aggregator weights (sum 1).
        hardness: ``[B]`` detached ``-avg NLL`` of each forget sample.
        avg_nll: ``[B]`` detached per-token average NLL ``avg_i = NLL_i / max(n_i, 1)`` of each forget sample
            (design.md §1.1; 0 for a sample without target tokens), for the forgetting-spread metrics.
    """

    loss: Tensor
    forget_loss: Tensor
    retain_loss: Tensor
    per_sample_loss: Tensor
    weights: Tensor
    hardness: Tensor
    avg_nll: Tensor


class UnlearningObjective:
    """A method = (forget loss, aggregator, retain loss, gamma, alpha). No model, no Lightning.

    Args:
        forget_loss: the base forget loss (NPO, SimNPO, SatImp, GradAscent, WGA, CEU, UNDIAL).
        aggregator: Mean (the published method; None means Mean), BalDRODV or BalDROG.
        retain_loss: NLL (None means ``NLL()``, the token mean) or KL. ``alpha=0`` means no retain term.
        gamma: weight of the forget term (> 0).
        alpha: weight of the retain term (>= 0).

    Raises:
        ValueError: a BalDRO aggregator with a forget loss that refuses it (``supports_dro`` False), or a bad
            ``gamma`` / ``alpha``.
    """

    def __init__(
        self,
        forget_loss: ForgetLoss,
        aggregator: Aggregator | None = None,
        retain_loss: RetainLoss | None = None,
        *,
        gamma: float = 1.0,
        alpha: float = 1.0,
    ) -> None:
        if not isinstance(forget_loss, ForgetLoss):
            raise TypeError(f"forget_loss must be a ForgetLoss (NPO, SimNPO, ...), got {forget_loss!r}")
        if aggregator is not None and not isinstance(aggregator, Aggregator):
            raise TypeError(f"aggregator must be an Aggregator (Mean, BalDRODV, BalDROG), got {aggregator!r}")
        if retain_loss is not None and not isinstance(retain_loss, RetainLoss):
            raise TypeError(f"retain_loss must be a RetainLoss (NLL, KL) or None, got {retain_loss!r}")
        if aggregator is not None and not isinstance(aggregator, Mean) and not forget_loss.supports_dro:
            raise ValueError(
                f"aggregator: {forget_loss!r} cannot be weighed by BalDRO (see its docstring), so only Mean is "
                f"allowed, got {aggregator!r}"
            )
        if retain_loss is not None and retain_loss.needs_hidden_states and not forget_loss.needs_hidden_states:
            raise ValueError(
                f"retain_loss: {retain_loss!r} compares the hidden states of the forget loss's layer; use it with a "
                f"forget loss that names one (RMU), got {forget_loss!r}"
            )
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        self.forget_loss = forget_loss
        self.aggregator = aggregator if aggregator is not None else Mean()
        self.retain_loss = retain_loss if retain_loss is not None else NLL()
        self.gamma = gamma
        self.alpha = alpha

    def parts(self) -> tuple[ForgetLoss, Aggregator, RetainLoss]:
        """``(forget_loss, aggregator, retain_loss)`` with the defaults filled in (to save them as settings)."""
        return self.forget_loss, self.aggregator, self.retain_loss

    @property
    def uses_retain(self) -> bool:
        """Whether the retain batch is used at all (``alpha > 0``)."""
        return self.alpha > 0

    @property
    def needs_reference_nll(self) -> bool:
        """Whether a step needs ``reference_nll``, each forget sample's NLL before unlearning (NPO)."""
        return self.forget_loss.needs_reference

    @property
    def needs_alternate(self) -> bool:
        """Whether a step needs the alternative answers' target log-probs (IdkNLL, IdkDPO)."""
        return self.forget_loss.needs_alternate

    @property
    def needs_reference_alternate_nll(self) -> bool:
        """Whether a step needs each alternative answer's NLL before unlearning (IdkDPO; cached like the NPO one)."""
        return self.forget_loss.needs_reference_alternate

    @property
    def needs_forget_grad(self) -> bool:
        """Whether gradients flow through the original forget answers' log-probs (not for IdkNLL)."""
        return self.forget_loss.needs_policy_grad

    @property
    def needs_forget_logits(self) -> bool:
        """Whether the forget loss takes the forget batch's full-vocabulary logits (CEU, UNDIAL)."""
        return self.forget_loss.needs_logits

    @property
    def hidden_layer(self) -> int | None:
        """The decoder layer whose hidden states the losses take (RMU's ``layer``), or None."""
        return self.forget_loss.layer if self.forget_loss.needs_hidden_states else None  # type: ignore[attr-defined]

    @property
    def needs_forget_hidden(self) -> bool:
        """Whether the forget loss takes the forget batch's hidden states at :attr:`hidden_layer` (RMU)."""
        return self.forget_loss.needs_hidden_states

    @property
    def needs_retain_hidden(self) -> bool:
        """Whether the retain loss takes the hidden states at :attr:`hidden_layer`, the model's and the frozen one's."""
        return self.uses_retain and self.retain_loss.needs_hidden_states

    @property
    def needs_reference_forget_logits(self) -> bool:
        """Whether a step needs ``reference_forget_logits``, the frozen reference model's (UNDIAL's teacher)."""
        return self.forget_loss.needs_reference_logits

    @property
    def needs_reference_retain_logits(self) -> bool:
        """Whether a step needs ``reference_retain_logits``, the frozen reference model's (the KL retain loss)."""
        return self.uses_retain and self.retain_loss.needs_reference_model and not self.retain_loss.needs_hidden_states

    @property
    def needs_reference_model(self) -> bool:
        """Whether a live frozen reference model is needed (the KL retain loss, UNDIAL, RMU's ``EmbedDiff``)."""
        return self.needs_reference_retain_logits or self.needs_reference_forget_logits or self.needs_retain_hidden

    @property
    def needs_all_forget_positions(self) -> bool:
        """Whether the forget logits must cover every position, prompt and padding included (UNDIAL "reference")."""
        return self.forget_loss.needs_all_positions

    @property
    def needs_retain_logprobs(self) -> bool:
        """Whether the retain term takes the retain batch's target log-probs instead of its logits (NLL)."""
        return self.uses_retain and self.retain_loss.takes_logprobs

    @property
    def needs_all_retain_positions(self) -> bool:
        """Whether the retain logits must cover every position, prompt and padding included (KL "reference")."""
        return self.uses_retain and self.retain_loss.needs_all_positions and not self.retain_loss.needs_hidden_states

    def selects_forget_rows(self, batch_size: int) -> bool:
        """Whether a step keeps only some forget rows, chosen by a no-grad pass first (BalDRO-G, ``ratio < 1``).

        The module then runs :meth:`select_forget_rows` on the whole batch's log-probs and the gradient pass on the
        kept rows alone, and passes both to :meth:`__call__` (``selection``, ``selected_from``).
        """
        return self.aggregator.selects_rows(batch_size)

    def select_forget_rows(self, forget: TokenLogProbs) -> Selection:
        """The forget rows the aggregator keeps, from the no-grad log-probs of the whole forget batch."""
        return self.aggregator.select(-safe_mean_nll(forget).detach())

    def retain_rows(
        self, n_forget: int, n_retain: int, *, step: int = 0, device: torch.device | None = None
    ) -> Tensor | None:
        """The retain rows to keep for a forget batch of ``n_forget`` samples at optimiser step ``step``.

        Returns:
            ``[k]`` row numbers on ``device``, or None for every row (all aggregators but BalDRO-G, and no retain
            term at all).
        """
        if not self.uses_retain:
            return None
        return self.aggregator.retain_rows(n_forget, n_retain, device, step=step)

    def __call__(
        self,
        forget: TokenLogProbs,
        *,
        reference_nll: Tensor | None = None,
        forget_logits: Tensor | None = None,
        forget_labels: Tensor | None = None,
        reference_forget_logits: Tensor | None = None,
        retain_logits: Tensor | None = None,
        retain_labels: Tensor | None = None,
        reference_retain_logits: Tensor | None = None,
        retain_logprobs: TokenLogProbs | None = None,
        alternate: TokenLogProbs | None = None,
        reference_alternate_nll: Tensor | None = None,
        forget_hidden: Tensor | None = None,
        retain_hidden: Tensor | None = None,
        reference_retain_hidden: Tensor | None = None,
        selection: Selection | None = None,
        selected_from: TokenLogProbs | None = None,
    ) -> ObjectiveOutput:
        """Evaluate the objective on one step's forget log-probs (and logits) and retain logits.

        Args:
            forget: target log-probs of the forget batch under the model being unlearned.
            reference_nll: ``[B]`` summed NLL of each forget sample before unlearning (if
                :attr:`needs_reference_nll`).
            forget_logits: ``[B, L, V]`` logits of the forget batch (if :attr:`needs_forget_logits`).
            forget_labels: ``[B, T]`` labels of the forget batch (with ``forget_logits``).
            reference_forget_logits: ``[B, L, V]`` frozen reference model's logits of the forget batch (if
                :attr:`needs_reference_forget_logits`).
            retain_logits: ``[B', L', V]`` logits of the retain batch (if :attr:`uses_retain`).
            retain_labels: ``[B', T']`` labels of the retain batch.
            reference_retain_logits: the frozen reference model's retain logits (if
                :attr:`needs_reference_retain_logits`).
            retain_logprobs: the retain batch's target log-probs, in place of ``retain_logits`` and ``retain_labels``
                (if :attr:`needs_retain_logprobs`).
            alternate: target log-probs of the forget rows' alternative answers (if :attr:`needs_alternate`).
            reference_alternate_nll: ``[B]`` summed NLL of those answers before unlearning (if
                :attr:`needs_reference_alternate_nll`).
            forget_hidden: ``[B, T, d]`` hidden states of the forget batch at :attr:`hidden_layer` (if
                :attr:`needs_forget_hidden`; its labels are ``forget_labels``).
            retain_hidden: ``[B', T', d]`` hidden states of the retain batch there (if :attr:`needs_retain_hidden`,
                in place of ``retain_logits``).
            reference_retain_hidden: the frozen reference model's (with ``retain_hidden``).
            selection: the rows :meth:`select_forget_rows` kept; every forget input above then holds those rows only
                (the two-pass step of BalDRO-G), and the output's weights cover the whole batch.
            selected_from: with ``selection``, the no-grad log-probs of the whole forget batch (the hardness and
                average NLL of every row come from them).

        Raises:
            ValueError: the objective has a retain term and ``retain_logits`` or ``retain_labels`` is missing, or the
                forget loss needs logits that were not passed.
        """
        if self.forget_loss.needs_hidden_states:
            losses = self.forget_loss(forget, reference_nll, hidden=forget_hidden, labels=forget_labels)  # type: ignore[call-arg]
        elif self.forget_loss.needs_logits:
            losses = self.forget_loss(
                forget,
                reference_nll,
                logits=forget_logits,
                labels=forget_labels,
                reference_logits=reference_forget_logits,
            )
        elif self.forget_loss.needs_alternate:
            losses = self.forget_loss(
                forget, reference_nll, alternate=alternate, reference_alternate_nll=reference_alternate_nll
            )
        else:
            losses = self.forget_loss(forget, reference_nll)
        if selection is None:
            aggregated = self.aggregator(losses)
        else:
            aggregated = self.aggregator.aggregate_selected(losses, selection)
        whole = forget if selected_from is None else selected_from
        forget_term = aggregated.loss
        if self.needs_retain_hidden:
            if retain_hidden is None or retain_labels is None:
                raise ValueError(
                    "this objective's retain loss takes hidden states: pass retain_hidden and retain_labels"
                )
            retain_term = self.retain_loss(retain_hidden, retain_labels, reference_retain_hidden)
        elif self.uses_retain and retain_logprobs is not None:
            retain_term = self.retain_loss.from_logprobs(retain_logprobs)
        elif self.uses_retain:
            if retain_logits is None or retain_labels is None:
                raise ValueError("this objective has a retain term: pass retain_logits and retain_labels")
            retain_term = self.retain_loss(retain_logits, retain_labels, reference_retain_logits)
        else:
            retain_term = forget_term.new_zeros(())
        loss = self.gamma * forget_term + self.alpha * retain_term
        return ObjectiveOutput(
            loss=loss,
            forget_loss=forget_term,
            retain_loss=retain_term,
            per_sample_loss=losses.per_sample.detach(),
            weights=aggregated.weights.detach(),
            hardness=losses.hardness if selected_from is None else -safe_mean_nll(whole).detach(),
            avg_nll=safe_mean_nll(whole).detach(),
        )

    def __repr__(self) -> str:
        return (
            f"UnlearningObjective({self.forget_loss!r}, {self.aggregator!r}, {self.retain_loss!r}, "
            f"gamma={self.gamma!r}, alpha={self.alpha!r})"
        )
