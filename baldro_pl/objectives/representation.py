"""Representation-level losses: RMU (Representation Misdirection for Unlearning).

RMU (Li et al., ICML 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning",
arXiv 2403.03218, §5.2, Eq. 1-2) works on the hidden states ``h^(l)`` that one decoder layer ``l`` outputs, not on
the logits. With a fixed random unit vector ``u`` (entries drawn uniformly from ``[0, 1)``, then normalised) and the
steering coefficient ``c``::

    L_forget = mean_{x in forget} 1/|x| sum_{t in x} 1/d ||h^(l)_theta(t) - c u||^2
    L_retain = mean_{x in retain} 1/|x| sum_{t in x} 1/d ||h^(l)_theta(t) - h^(l)_frozen(t)||^2
    L = gamma * L_forget + alpha * L_retain

The sums run over the scored positions of each sample: as open-unlearning's ``compute_activation_loss``
(``src/trainer/unlearn/rmu.py``), the positions whose label is not -100 (the answer tokens themselves, labels *not*
shifted), each sample averaged over its own tokens, then the batch over samples. ``d`` is the hidden size (the
reference's ``mse_loss(...).mean(dim=2)``; the paper writes the squared norm without ``1/d``). The batch value here is
the mean of the per-sample means; the reference code divides its ``[b]`` per-sample sums by ``[b, 1]`` token counts,
which broadcasts to ``[b, b]`` and gives ``mean_i(sum_i) * mean_j(1 / n_j)`` instead: the same value when every sample
has as many scored tokens, not otherwise (tests/objectives/test_rmu.py shows both).

The training module computes the hidden states (a forward hook on decoder layer ``l``, the frozen copy of the initial
model for the retain side) and passes them; these losses call no model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from baldro_pl.labels import IGNORE_INDEX
from baldro_pl.objectives.base import ForgetLoss, ForgetLosses, RetainLoss
from baldro_pl.objectives.logprobs import TokenLogProbs, upcast

#: open-unlearning ``RMU.__init__`` default ``trainable_params_regex`` (after the WMDP reference's ``layer_ids 5,6,7``
#: and ``param_ids 6``, the MLP down-projection of Zephyr-7B's layers)
DEFAULT_TRAINABLE = (r"model\.layers\.(5|6|7)\.mlp\.down_proj\.weight",)


def rmu_direction(dim: int, steering_coeff: float, seed: int) -> Tensor:
    """The RMU control vector ``c * u``: ``u`` uniform in ``[0, 1)^d`` (seeded), normalised to unit length.

    As open-unlearning's ``get_control_vector`` (``torch.rand(1, 1, dim)``, divided by its norm, times
    ``steering_coeff``), drawn from a generator seeded with ``seed`` instead of the global one.

    Args:
        dim: the hidden size ``d``.
        steering_coeff: ``c`` (> 0).
        seed: seed of the CPU generator.

    Returns:
        ``[d]`` fp32 tensor of norm ``steering_coeff``.

    >>> v = rmu_direction(8, 5.0, 0)
    >>> round(v.norm().item(), 4), bool((v >= 0).all()), bool(torch.equal(v, rmu_direction(8, 5.0, 0)))
    (5.0, True, True)
    """
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(dim, generator=generator, dtype=torch.float32)
    return u / u.norm() * steering_coeff


def activation_mse(hidden: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` per-sample ``1/|x| sum_{t in x} 1/d ||h_t - target_t||^2`` over the positions of ``mask``.

    Args:
        hidden: ``[B, T, d]`` hidden states (upcast to at least fp32).
        target: ``[B, T, d]`` or ``[d]`` (broadcast) targets.
        mask: ``[B, T]`` positions to score.

    Returns:
        ``[B]`` values; 0 for a sample without scored positions (the reference divides by 0 there).

    One sample, ``d = 2``, two scored positions at ``(1, 1)`` and ``(3, 1)`` against the target ``(1, 1)``, one
    unscored at ``(9, 9)``: ``(0 + (4 + 0) / 2) / 2 = 1``.

    >>> h = torch.tensor([[[1.0, 1.0], [3.0, 1.0], [9.0, 9.0]]])
    >>> activation_mse(h, torch.ones(2), torch.tensor([[True, True, False]]))
    tensor([1.])
    """
    hidden = upcast(hidden)
    squared = (hidden - upcast(target).to(hidden.device)).pow(2).mean(-1)
    mask = mask.to(squared.dtype)
    return (squared * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def scored_positions(labels: Tensor) -> Tensor:
    """``[B, T]`` mask of the positions RMU scores: those whose label is not ``IGNORE_INDEX`` (not shifted)."""
    return labels != IGNORE_INDEX


class RMU(ForgetLoss):
    r"""RMU forget loss: each forget sample's layer-``l`` hidden states pulled towards the fixed vector ``c u``.

    Per-sample values are the mean over the sample's answer tokens of ``||h - c u||^2 / d`` (:func:`activation_mse`,
    the positions open-unlearning's ``compute_activation_loss`` uses), so ``Mean`` gives the published batch value and
    BalDRO weighs samples whose representations are still far from the direction. The hardness is ``-avg NLL`` as for
    every loss (the forget pass also returns the logits, without a graph beyond layer ``l``).

    The module reads :attr:`layer` (which decoder layer's output, 0-based: open-unlearning's ``module_regex
    model\.layers\.7`` is ``layer=7``) and :attr:`trainable` (regular expressions, matched in full against the
    Hugging Face model's parameter names; every other parameter is frozen before the optimiser is built). The
    direction is drawn once from ``seed`` for the model's hidden size (:meth:`direction_for`) and saved in
    checkpoints.

    Args:
        layer: decoder layer whose output is steered, an integer >= 0 (checked against the model before training).
            Default 7: open-unlearning ``configs/trainer/RMU.yaml`` ``module_regex: model\.layers\.7`` (the WMDP
            reference's ``layer_id 7``).
        steering_coeff: ``c`` > 0. Default 300: open-unlearning ``configs/trainer/RMU.yaml`` (its ``RMU.__init__``
            default: 20; the WMDP paper: 6.5 for Zephyr-7B). "Dependent on model and dataset" (the same file): the
            norm of a layer's hidden states varies by model.
        trainable: parameters left trainable. Default: open-unlearning's ``trainable_params_regex``,
            ``model\.layers\.(5|6|7)\.mlp\.down_proj\.weight``. None trains every parameter.
        seed: seed of the random direction (open-unlearning draws it from the global generator at the first step).

    Raises:
        ValueError: a ``layer`` that is no integer >= 0, a ``steering_coeff`` <= 0, a ``trainable`` that is not a
            list of valid regular expressions, or a ``seed`` that is no integer.
    """

    needs_hidden_states: ClassVar[bool] = True

    def __init__(
        self,
        *,
        layer: int = 7,
        steering_coeff: float = 300.0,
        trainable: Sequence[str] | None = DEFAULT_TRAINABLE,
        seed: int = 0,
    ) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"RMU: layer must be an integer >= 0 (a decoder layer index), got {layer!r}")
        if isinstance(steering_coeff, bool) or not isinstance(steering_coeff, int | float) or not steering_coeff > 0:
            raise ValueError(f"RMU: steering_coeff must be a number > 0, got {steering_coeff!r}")
        if trainable is not None:
            if isinstance(trainable, str) or not all(isinstance(p, str) for p in trainable) or not trainable:
                raise ValueError(
                    f"RMU: trainable must be a non-empty list of regular expressions or None, got {trainable!r}"
                )
            for pattern in trainable:
                try:
                    re.compile(pattern)
                except re.error as error:
                    raise ValueError(f"RMU: trainable: {pattern!r} is not a regular expression ({error})") from None
            trainable = list(trainable)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"RMU: seed must be an integer, got {seed!r}")
        self.layer = layer
        self.steering_coeff = float(steering_coeff)
        self.trainable = trainable
        self.seed = seed
        self.direction: Tensor | None = None

    def is_trainable(self, name: str) -> bool:
        """Whether the parameter called ``name`` is trained (matches one of :attr:`trainable` in full)."""
        return self.trainable is None or any(re.fullmatch(p, name) for p in self.trainable)

    def direction_for(self, dim: int) -> Tensor:
        """The ``[dim]`` control vector ``c u``: drawn from :attr:`seed` on first use, then kept (and checkpointed).

        Raises:
            ValueError: a direction restored from a checkpoint has another size than ``dim``.
        """
        if self.direction is None:
            self.direction = rmu_direction(dim, self.steering_coeff, self.seed)
        elif self.direction.shape != (dim,):
            raise ValueError(
                f"RMU: the checkpointed direction has size {tuple(self.direction.shape)}, "
                f"the model's hidden size is {dim}"
            )
        return self.direction

    def __call__(
        self,
        policy: TokenLogProbs,
        reference_nll: Tensor | None = None,
        *,
        hidden: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> ForgetLosses:
        """Per-sample ``1/|x| sum_t ||h_t - c u||^2 / d`` of the forget batch.

        Args:
            policy: target log-probs of the forget batch (for the hardness ``-avg NLL`` only).
            reference_nll: unused.
            hidden: ``[B, T, d]`` layer-:attr:`layer` hidden states of the forget batch (with gradient).
            labels: ``[B, T]`` labels of the forget batch (the scored positions, not shifted).

        Raises:
            ValueError: ``hidden`` or ``labels`` is missing or their shapes disagree.
        """
        if hidden is None or labels is None:
            raise ValueError("RMU needs the forget batch's hidden states and labels")
        if hidden.shape[:2] != labels.shape:
            raise ValueError(f"RMU: hidden states {tuple(hidden.shape)} do not match labels {tuple(labels.shape)}")
        direction = self.direction_for(hidden.shape[-1])
        per_sample = activation_mse(hidden, direction, scored_positions(labels))
        return self._sample_losses(policy, per_sample)

    def __repr__(self) -> str:
        return (
            f"RMU(layer={self.layer!r}, steering_coeff={self.steering_coeff!r}, trainable={self.trainable!r}, "
            f"seed={self.seed!r})"
        )


class EmbedDiff(RetainLoss):
    """RMU's retain loss: ``||h_theta - h_frozen||^2 / d`` at the forget loss's layer on the retain answer tokens.

    open-unlearning's ``retain_loss_type: EMBED_DIFF``: :func:`activation_mse` between the model's and the frozen
    initial model's layer-``l`` hidden states, averaged per sample over its scored positions, then over samples. The
    layer is the forget loss's (:class:`RMU` ``layer``); the module keeps a frozen copy of the initial model for it.
    """

    needs_reference_model: ClassVar[bool] = True
    needs_hidden_states: ClassVar[bool] = True

    def __call__(self, logits: Tensor, labels: Tensor, reference_logits: Tensor | None = None) -> Tensor:
        """Scalar retain loss.

        Args:
            logits: ``[B, T, d]`` the model's hidden states at the forget loss's layer (the name is the contract's).
            labels: ``[B, T]`` labels of the retain batch.
            reference_logits: ``[B, T, d]`` the frozen initial model's hidden states there.

        Raises:
            ValueError: ``reference_logits`` is missing or of another shape.
        """
        if reference_logits is None:
            raise ValueError("EmbedDiff needs the frozen reference model's hidden states on the retain batch")
        if reference_logits.shape != logits.shape:
            raise ValueError(
                f"EmbedDiff: hidden states {tuple(logits.shape)} and reference {tuple(reference_logits.shape)} differ"
            )
        return activation_mse(logits, reference_logits.detach(), scored_positions(labels)).mean()
