"""Batched teacher-forced scoring for the metrics, built on the training primitives of ``objectives.logprobs``.

One forward pass per batch yields everything the likelihood metrics need (metrics-spec §1.5):

* primitive A, ``avg_loss`` over all target tokens (EOS included): :attr:`TokenLogProbs.avg_nll`;
* primitive B, the target log-probs without the last target token: :meth:`TokenLogProbs.drop_last_target`,
  giving the min-k score (§4.1);
* full-vocabulary statistics at the primitive-B positions (:func:`vocab_statistics`): the mean and variance of
  ``log p`` for min-k++ (§4.1) and the argmax for exact memorisation / extraction strength (§5).

Samples are sorted by length before batching (less padding) and the LM head is applied only from the earliest
target position on (``logits_to_keep``); results come back in input order. Log-softmax is always fp32 (P4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from baldro_pl.datamodules.collate import pad_samples
from baldro_pl.datamodules.formatting import EncodedSample
from baldro_pl.forward import forward_logprobs, teacher_forced_logits
from baldro_pl.labels import shift_labels
from baldro_pl.metrics.functional.memorization import exact_memorization, extraction_strength
from baldro_pl.metrics.functional.mia import min_k_plus_plus_z, min_k_scores
from baldro_pl.objectives.logprobs import TokenLogProbs, token_logprobs

CallContext = Callable[[], AbstractContextManager]

#: Per-sample statistics returned by :func:`score_samples`.
SCORE_KEYS: tuple[str, ...] = (
    "avg_loss",
    "n_targets",
    "min_k",
    "min_k_plus_plus",
    "exact_memorization",
    "extraction_strength",
)


@dataclass(frozen=True)
class VocabStatistics:
    """Full-vocabulary statistics at selected (shifted) target positions, fp32.

    Attributes:
        mu: ``[B, T']`` ``Σ_v p_v log p_v``; 0 off ``mask``.
        var: ``[B, T']`` ``Σ_v p_v (log p_v)^2 - mu^2`` (computed as ``Σ_v p_v (log p_v - mu)^2``); 0 off ``mask``.
        argmax: ``[B, T']`` argmax of the log-probabilities; 0 off ``mask``.
        mask: ``[B, T']`` the positions covered.
    """

    mu: Tensor
    var: Tensor
    argmax: Tensor
    mask: Tensor


def vocab_statistics(
    logits: Tensor, labels: Tensor, mask: Tensor | None = None, *, chunk_tokens: int = 1024
) -> VocabStatistics:
    """Mean / variance of ``log p`` over the vocabulary and the argmax, at target positions (metrics-spec §4.1, §5).

    The logits are aligned with the labels exactly as :func:`token_logprobs` does (``logits[:, :-1]`` against the
    labels shifted by :func:`shift_labels`; trailing-window logits from ``logits_to_keep`` are supported). Only the
    selected positions are upcast, in chunks of ``chunk_tokens`` rows, so the ``[B, T, V]`` fp32 tensor is never
    materialised.

    Args:
        logits: ``[B, L, V]`` model logits, ``L <= T``.
        labels: ``[B, T]`` labels with -100 on unscored positions.
        mask: ``[B, L - 1]`` positions to cover; default: every target position.
        chunk_tokens: positions upcast at a time.
    """
    if logits.shape[1] < labels.shape[1]:
        labels = labels[:, labels.shape[1] - logits.shape[1] :]
    _, target_mask = shift_labels(labels)
    mask = target_mask if mask is None else mask
    rows, cols = mask.nonzero(as_tuple=True)
    shape = mask.shape
    mu = torch.zeros(shape, dtype=torch.float32, device=logits.device)
    var = torch.zeros(shape, dtype=torch.float32, device=logits.device)
    argmax = torch.zeros(shape, dtype=torch.long, device=logits.device)
    for start in range(0, rows.numel(), chunk_tokens):
        r, c = rows[start : start + chunk_tokens], cols[start : start + chunk_tokens]
        logp = torch.log_softmax(logits[r, c].float(), dim=-1)
        p = logp.exp()
        m = (p * logp).sum(-1)
        mu[r, c] = m
        # Σ p (log p - mu)^2 equals the spec's Σ p (log p)^2 - mu^2 but avoids its cancellation in fp32 (the two
        # terms are ~(log V)^2 while the variance can be 1e-3 of that): min-k++ z-scores agree with an fp64
        # computation to ~1e-6 instead of ~1e-4.
        var[r, c] = (p * (logp - m.unsqueeze(-1)).square()).sum(-1)
        argmax[r, c] = logp.argmax(-1)
    return VocabStatistics(mu, var, argmax, mask)


def _shifted_targets(logits: Tensor, labels: Tensor) -> Tensor:
    if logits.shape[1] < labels.shape[1]:
        labels = labels[:, labels.shape[1] - logits.shape[1] :]
    targets, _ = shift_labels(labels)
    return targets


def batch_scores(
    logits: Tensor, labels: Tensor, *, vocab_rows: Tensor | None = None, k: float = 0.4
) -> dict[str, Tensor]:
    """Per-sample likelihood statistics of one batch from its logits (no per-sample Python loop).

    Args:
        logits: ``[B, L, V]`` (``L <= T``, see :func:`token_logprobs`).
        labels: ``[B, T]``.
        vocab_rows: ``[B]`` bool, rows that need the full-vocabulary statistics (min-k++, EM, ES); None = none.
        k: min-k fraction.

    Returns:
        ``{key: [B] float64}`` for :data:`SCORE_KEYS`; NaN where a statistic was not requested (and for EM / the
        min-k++ score of rows without targets, as in open-unlearning).
    """
    lp: TokenLogProbs = token_logprobs(logits, labels)
    lp_b = lp.drop_last_target()
    out = {
        "avg_loss": lp.avg_nll.double(),
        "n_targets": lp.n_tokens.double(),
        "min_k": min_k_scores(lp_b.logp, lp_b.mask, k),
    }
    nan = torch.full_like(out["avg_loss"], float("nan"))
    out.update(min_k_plus_plus=nan, exact_memorization=nan.clone(), extraction_strength=nan.clone())
    if vocab_rows is not None and bool(vocab_rows.any()):
        mask = lp_b.mask & vocab_rows.unsqueeze(-1)
        stats = vocab_statistics(logits, labels, mask)
        z = min_k_plus_plus_z(lp_b.logp, stats.mu, stats.var)
        correct = stats.argmax == _shifted_targets(logits, labels)
        rows = vocab_rows.to(out["avg_loss"].device)
        out["min_k_plus_plus"] = torch.where(rows, min_k_scores(z, mask, k), nan)
        out["exact_memorization"] = torch.where(rows, exact_memorization(correct, mask), nan)
        out["extraction_strength"] = torch.where(rows, extraction_strength(correct, mask), nan)
    return out


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def length_sorted_batches(lengths: Sequence[int], batch_size: int, *, sort: bool = True) -> list[list[int]]:
    """Index batches of at most ``batch_size``, longest first when ``sort`` (stable), else in input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if sort else list(range(len(lengths)))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_samples(
    model: torch.nn.Module,
    samples: Sequence[EncodedSample],
    *,
    pad_token_id: int,
    batch_size: int = 32,
    vocab: Sequence[bool] | bool = False,
    k: float = 0.4,
    sort_by_length: bool = True,
    call_context: CallContext | None = None,
) -> dict[str, Tensor]:
    """Score many tokenised samples with one forward pass each batch (right padding, trimmed logits).

    Args:
        model: a Hugging Face causal LM (its mode is not changed: callers put it in eval mode).
        samples: the tokenised samples (:func:`baldro_pl.datamodules.formatting.encode_qa` / ``encode_completion``).
        pad_token_id: id used for padding (the attention mask comes from the true lengths).
        batch_size: samples per forward pass.
        vocab: per sample (or for all) whether to compute the full-vocabulary statistics.
        k: min-k fraction.
        sort_by_length: batch samples of similar length together.
        call_context: factory of a context manager entered around each forward (FSDP parameter gathering).

    Returns:
        ``{key: [N] float64 CPU tensor}`` for :data:`SCORE_KEYS`, in the order of ``samples``.
    """
    n = len(samples)
    flags = [bool(vocab)] * n if isinstance(vocab, bool) else [bool(v) for v in vocab]
    if len(flags) != n:
        raise ValueError(f"score_samples: {n} samples but {len(flags)} vocab flags")
    out = {key: torch.full((n,), float("nan"), dtype=torch.float64) for key in SCORE_KEYS}
    if n == 0:
        return out
    device = model_device(model)
    context = call_context or contextlib.nullcontext
    for idx in length_sorted_batches([len(s.input_ids) for s in samples], batch_size, sort=sort_by_length):
        batch = pad_samples([samples[i] for i in idx], pad_token_id, side="right")
        labels = batch["labels"].to(device)
        with context():
            logits = teacher_forced_logits(
                model, batch["input_ids"].to(device), batch["attention_mask"].to(device), labels
            )
        vocab_rows = torch.tensor([flags[i] for i in idx], device=device)
        scores = batch_scores(logits, labels, vocab_rows=vocab_rows, k=k)
        rows = torch.tensor(idx)
        for key in SCORE_KEYS:
            out[key][rows] = scores[key].detach().to("cpu", torch.float64)
    return out


def gradnorm_scores(
    model: torch.nn.Module,
    samples: Sequence[EncodedSample],
    *,
    p: float = 2.0,
    call_context: CallContext | None = None,
) -> Tensor:
    """``mia_gradnorm`` scores: per sample (batch size 1) the mean over parameters of ``||∂loss/∂θ||_p``.

    ``loss = -mean`` of the primitive-B target log-probs (last target dropped), as in open-unlearning's
    ``GradNormAttack`` (metrics-spec §4.1). Runs in ``model.train()`` mode with gradients enabled (also inside
    Lightning's inference mode). Unlike open-unlearning, which leaves the last sample's gradients in ``.grad`` (P11),
    the gradients that existed before the call are put back afterwards and the module modes are restored, so the
    call can run between training steps without touching the optimiser state.

    Returns:
        ``[N]`` float64 CPU tensor (NaN for a sample without primitive-B tokens).
    """
    if p not in (1, 2, float("inf")):
        raise ValueError(f"gradnorm p must be 1, 2 or inf, got {p}")
    params = [q for q in model.parameters() if q.requires_grad]
    if not params:
        raise ValueError("mia_gradnorm needs parameters with requires_grad=True; the model has none")
    device = model_device(model)
    context = call_context or contextlib.nullcontext
    saved_grads = [q.grad for q in params]
    saved_modes = {m: m.training for m in model.modules()}
    scores = [float("nan")] * len(samples)  # plain floats: tensors made here under inference mode stay read-only
    try:
        model.train()
        with torch.inference_mode(False), torch.enable_grad():
            for i, sample in enumerate(samples):
                for q in params:
                    q.grad = None
                batch = pad_samples([sample], 0, side="right")
                with context():
                    lp = forward_logprobs(
                        model,
                        batch["input_ids"].to(device),
                        batch["attention_mask"].to(device),
                        batch["labels"].to(device),
                    ).drop_last_target()
                    if not bool(lp.mask.any()):
                        continue
                    loss = -(lp.logp.sum() / lp.n_tokens.sum())
                    loss.backward()
                norms = [q.grad.detach().norm(p=p) for q in params if q.grad is not None]
                scores[i] = float(torch.stack(norms).double().mean())
    finally:
        for q, g in zip(params, saved_grads):
            q.grad = g
        for m, mode in saved_modes.items():
            m.training = mode
    return torch.tensor(scores, dtype=torch.float64)
