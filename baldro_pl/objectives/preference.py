"""Forget losses on an alternative ("I don't know") answer: IdkDPO and IdkNLL (issue 12), each with a functional twin.

Both need a second encoded side of the forget batch, the same questions with an alternative answer
(``batch["forget"]["alternate"]``, see :mod:`baldro_pl.datamodules.alternate`), so they take its target log-probs as
the keyword argument ``alternate`` (:class:`AlternateForgetLoss`); the original answers still come in as ``policy``,
from which the hardness ``-avg NLL`` (what BalDRO-G ranks by) is computed, as for every other forget loss.

* **IdkDPO** (Maini et al. 2024, TOFU §4; Rafailov et al. 2023, DPO Eq. 7) prefers the alternative answer (chosen,
  ``w``) to the original one (rejected, ``l``), against the model before unlearning::

      l_i = -(2/beta) * log sigmoid(beta * ((ref_w,i - NLL_w,i) - (ref_l,i - NLL_l,i)))

  with summed (not length-averaged) NLLs over each answer's target tokens, EOS included, and the ``2/beta`` factor,
  as open-unlearning computes it (``src/trainer/utils.py`` ``compute_dpo_loss``: ``win_log_ratio = -(win_loss -
  win_ref_loss)``, ``loss = -2 / beta * F.logsigmoid(beta * (win_log_ratio - lose_log_ratio)).mean()``, with
  ``compute_batch_nll`` the summed cross-entropy; ``src/trainer/unlearn/dpo.py``: ``win_inputs`` = the alternate,
  ``lose_inputs`` = the original; ``configs/trainer/DPO.yaml``: ``beta: 0.1``, ``alpha: 1``, ``gamma: 1``, NLL
  retain). locuslab/tofu's ``dataloader.py`` (loss type ``dpo``) computes the same value (``-logsigmoid(...).mean()
  * 2 / beta``). Both reference NLLs come from the cache (``ref_l`` = NPO's ``ref_i``; ``ref_w`` from
  ``reference_dataloader(alternate=True)``), so no reference model stays in memory. At the start of unlearning every
  sample has the loss ``(2/beta) log 2``; without the chosen term it is NPO.
* **IdkNLL** (locuslab/tofu ``dataloader.py``, loss type ``idk``) fine-tunes on the alternative answers: the per-token
  NLL ``c_t`` of the alternative answer's target tokens, token mean over the batch. The reference concatenates the idk
  and retain batches into one forward and takes Hugging Face's token mean over both, ``(sum idk NLL + sum retain NLL)
  / (idk tokens + retain tokens)``; ``gamma * IdkNLL + alpha * NLL`` (token means taken separately) equals it only
  when both sides have as many target tokens, and otherwise weighs the two sides equally.

What BalDRO weighs: IdkDPO's value is high where the preference for the alternative answer has moved least since
unlearning began (like NPO, length-unnormalised); IdkNLL's where the alternative answer is least learned (per token).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from baldro_pl.objectives.base import ForgetLoss, ForgetLosses, safe_mean_nll
from baldro_pl.objectives.logprobs import TokenLogProbs


def dpo_loss(
    chosen_nll: Tensor,
    rejected_nll: Tensor,
    reference_chosen_nll: Tensor,
    reference_rejected_nll: Tensor,
    beta: float,
) -> Tensor:
    """DPO per-sample loss in open-unlearning's form, from summed NLLs (Rafailov et al. 2023, Eq. 7, times 2/beta).

    ``l_i = -(2/beta) * log sigmoid(beta * ((ref_w - NLL_w) - (ref_l - NLL_l)))``, where ``w`` is the chosen
    (alternative) answer and ``l`` the rejected (original) one; ``ref_* - NLL_*`` is the log-likelihood ratio
    ``log pi(y|x) - log pi_ref(y|x)``.

    Args:
        chosen_nll: ``[B]`` summed NLL of the chosen answers under the current model.
        rejected_nll: ``[B]`` summed NLL of the rejected answers under the current model.
        reference_chosen_nll: ``[B]`` summed NLL of the chosen answers under the reference model.
        reference_rejected_nll: ``[B]`` summed NLL of the rejected answers under the reference model.
        beta: inverse temperature (> 0).

    Returns:
        ``[B]`` losses; ``(2/beta) log 2`` where neither answer has moved from the reference.

    >>> import torch
    >>> one = torch.tensor([1.0])
    >>> dpo_loss(one, one, one, one, beta=2.0)  # no movement: (2/2) log 2
    tensor([0.6931])
    >>> dpo_loss(torch.tensor([0.0]), torch.tensor([2.0]), one, one, beta=1.0)  # margin 2: -2 log sigmoid(2)
    tensor([0.2539])
    """
    margin = (reference_chosen_nll - chosen_nll) - (reference_rejected_nll - rejected_nll)
    return -(2.0 / beta) * F.logsigmoid(beta * margin)


def _positive_beta(beta: float, cls: str) -> None:
    if not beta > 0:
        raise ValueError(f"{cls}: beta must be > 0, got {beta!r}")


class AlternateForgetLoss(ForgetLoss):
    """A forget loss that also scores the alternative answers of the forget rows (``batch["forget"]["alternate"]``).

    :attr:`needs_alternate` tells the module to run the alternate side through the model and pass its target
    log-probs as ``alternate``; :attr:`needs_reference_alternate` to cache the reference NLL of the alternate answers
    (``reference_dataloader(alternate=True)``) and pass it as ``reference_alternate_nll``. :attr:`needs_policy_grad`
    False means the original answers' log-probs feed only the detached hardness, so their forward may run without
    gradients.
    """

    needs_alternate: ClassVar[bool] = True

    @abstractmethod
    def __call__(
        self,
        policy: TokenLogProbs,
        reference_nll: Tensor | None = None,
        *,
        alternate: TokenLogProbs | None = None,
        reference_alternate_nll: Tensor | None = None,
    ) -> ForgetLosses:
        """Unreduced losses of the forget batch.

        Args:
            policy: target log-probs of the original answers under the model being unlearned.
            reference_nll: ``[B]`` summed NLL of the original answers before unlearning (if :attr:`needs_reference`).
            alternate: target log-probs of the same rows' alternative answers under the model being unlearned.
            reference_alternate_nll: ``[B]`` summed NLL of the alternative answers before unlearning (if
                :attr:`needs_reference_alternate`).
        """

    def _check_alternate(self, policy: TokenLogProbs, alternate: TokenLogProbs | None) -> TokenLogProbs:
        if alternate is None:
            raise ValueError(
                f"{type(self).__name__} needs the alternate answers' log-probs (set data.alternate_answers, e.g. the "
                "TOFU idontknow.jsonl)"
            )
        if alternate.logp.shape[0] != policy.logp.shape[0]:
            n_alternate, n_forget = alternate.logp.shape[0], policy.logp.shape[0]
            raise ValueError(f"{type(self).__name__}: {n_alternate} alternate rows for {n_forget} forget rows")
        return alternate


class IdkDPO(AlternateForgetLoss):
    """DPO with the alternative ("I don't know") answer chosen and the original answer rejected; sample mean.

    ``l_i = -(2/beta) log sigmoid(beta ((ref_w - NLL_w) - (ref_l - NLL_l)))`` (:func:`dpo_loss`); both reference NLLs
    from the cache.

    Args:
        beta: inverse temperature (> 0); open-unlearning's ``configs/trainer/DPO.yaml`` uses 0.1.
    """

    needs_reference = True
    needs_reference_alternate = True

    def __init__(self, *, beta: float = 0.1) -> None:
        _positive_beta(beta, "IdkDPO")
        self.beta = beta

    def __call__(
        self,
        policy: TokenLogProbs,
        reference_nll: Tensor | None = None,
        *,
        alternate: TokenLogProbs | None = None,
        reference_alternate_nll: Tensor | None = None,
    ) -> ForgetLosses:
        """Per-sample :func:`dpo_loss` of the alternate (chosen) against the original (rejected) answers."""
        reference_nll = self._check_reference(reference_nll)
        alternate = self._check_alternate(policy, alternate)
        if reference_alternate_nll is None:
            raise ValueError("IdkDPO needs reference_alternate_nll (the pre-unlearning NLL of each alternate answer)")
        per_sample = dpo_loss(
            alternate.nll,
            policy.nll,
            reference_alternate_nll.to(alternate.nll),
            reference_nll.to(policy.nll),
            self.beta,
        )
        return self._sample_losses(policy, per_sample)


class IdkNLL(AlternateForgetLoss):
    """NLL of the alternative ("I don't know") answers: ``l_t = c_t`` on their target tokens, token mean over the batch.

    ``per_token`` and ``mask`` are over the alternate answers' tokens; the hardness is that of the original answers.
    """

    reduction = "token"
    needs_policy_grad = False

    def __call__(
        self,
        policy: TokenLogProbs,
        reference_nll: Tensor | None = None,
        *,
        alternate: TokenLogProbs | None = None,
        reference_alternate_nll: Tensor | None = None,
    ) -> ForgetLosses:
        """Per-token NLL ``c_t`` of the alternate answers (token mean over the batch)."""
        alternate = self._check_alternate(policy, alternate)
        per_token = alternate.token_nll.masked_fill(~alternate.mask, 0.0)
        per_sample = per_token.sum(-1) / alternate.n_tokens.clamp(min=1.0)
        hardness = -safe_mean_nll(policy).detach()
        return ForgetLosses(per_sample, per_token, alternate.mask, "token", hardness)
