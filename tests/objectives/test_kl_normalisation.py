"""The KL retain loss's two normalisations: answer tokens (default) and the reference code's (every padded position).

The reference is open-unlearning's ``compute_kl_divergence`` (BalDRO @ 7b338ed, ``src/trainer/utils.py``)::

    ref_probs = F.log_softmax(ref_outputs.logits, dim=-1).view(-1, V)
    current_probs = F.log_softmax(outputs.logits, dim=-1).view(-1, V)
    return nn.functional.kl_div(current_probs, ref_probs, reduction="batchmean", log_target=True)
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import KL, GradAscent, Mean, kl_retain_loss

# [B=2, T=3, V=2]: row 0 has a 1-token prompt and 2 answer tokens; row 1 a 1-token prompt, 1 answer token, 1 pad
LOGITS = [[[0.0, 1.0], [2.0, 0.0], [0.5, 0.5]], [[1.0, -1.0], [0.0, 0.0], [3.0, 1.0]]]
REFERENCE = [[[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]], [[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]]
LABELS = [[-100, 5, 6], [-100, 7, -100]]


def _kl(p_logits: list[float], q_logits: list[float]) -> float:
    """KL(softmax(p) || softmax(q)) of one position, by hand."""
    zp = sum(math.exp(x) for x in p_logits)
    zq = sum(math.exp(x) for x in q_logits)
    return sum(
        (math.exp(a) / zp) * (math.log(math.exp(a) / zp) - math.log(math.exp(b) / zq))
        for a, b in zip(p_logits, q_logits, strict=True)
    )


def _tensors():
    return torch.tensor(LOGITS), torch.tensor(REFERENCE), torch.tensor(LABELS)


def test_reference_normalisation_by_hand() -> None:
    """Sum of KL(p_ref || p_theta) over all 6 positions (prompt, padding and last ones included) / (2 x 3)."""
    logits, reference, labels = _tensors()
    expected = sum(_kl(REFERENCE[b][t], LOGITS[b][t]) for b in range(2) for t in range(3)) / 6
    assert KL(normalise="reference")(logits, labels, reference).item() == pytest.approx(expected, rel=1e-6)
    assert kl_retain_loss(logits, reference, labels, "reference").item() == pytest.approx(expected, rel=1e-6)


def test_answer_token_normalisation_by_hand() -> None:
    """Positions predicting an answer token: (0, 0), (0, 1), (1, 0); the mean over those 3."""
    logits, reference, labels = _tensors()
    expected = (
        _kl(REFERENCE[0][0], LOGITS[0][0]) + _kl(REFERENCE[0][1], LOGITS[0][1]) + _kl(REFERENCE[1][0], LOGITS[1][0])
    ) / 3
    assert KL()(logits, labels, reference).item() == pytest.approx(expected, rel=1e-6)
    assert KL(normalise="answer_tokens")(logits, labels, reference).item() == pytest.approx(expected, rel=1e-6)
    assert KL().needs_all_positions is False and KL(normalise="reference").needs_all_positions is True


def test_reference_normalisation_refuses_trimmed_logits() -> None:
    logits, reference, labels = _tensors()
    message = r"^KL\(normalise='reference'\) averages over every position: it needs logits for all 3 positions, got 2"
    with pytest.raises(ValueError, match=message):
        KL(normalise="reference")(logits[:, 1:], labels, reference[:, 1:])


def test_unknown_normalisation_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^KL: normalise must be 'answer_tokens' or 'reference', got 'tokens'$"):
        KL(normalise="tokens")


@pytest.mark.parametrize("normalise", ["reference", "answer_tokens"])
def test_module_retain_term_matches_the_reference_code(normalise: str, tiny_model, toy_tokenizer) -> None:
    """UnlearningModule with KL(normalise="reference") computes open-unlearning's KL on the same retain batch
    (so it must give the model every position, not only those from the first answer token on)."""
    torch.manual_seed(0)
    module = UnlearningModule(copy.deepcopy(tiny_model), GradAscent(), Mean(), KL(normalise=normalise), alpha=1.0)
    module.configure_model()
    with torch.no_grad():  # move the trained copy away from the frozen reference so that the KL is not 0
        for p in module.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vocab = len(toy_tokenizer)
    ids = torch.randint(4, vocab, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = toy_tokenizer.pad_token_id
    labels = ids.clone()
    labels[:, :4] = -100  # prompts
    labels[mask == 0] = -100
    retain = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    forget = {**retain, "index": torch.arange(3)}
    out, _ = module.compute_step({"forget": forget, "retain": retain})

    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        ref_outputs = module.reference_model(**inputs)
        outputs = module.model(**inputs)
    v = outputs.logits.shape[-1]
    ref_probs = F.log_softmax(ref_outputs.logits, dim=-1).view(-1, v)
    current_probs = F.log_softmax(outputs.logits, dim=-1).view(-1, v)
    reference_code = F.kl_div(current_probs, ref_probs, reduction="batchmean", log_target=True).item()
    assert reference_code > 1e-4
    if normalise == "reference":
        assert out.retain_loss.item() == pytest.approx(reference_code, rel=1e-5)
    else:  # the mean over the positions that predict an answer token
        scored = (labels[:, 1:] != -100).reshape(-1)
        per_position = F.kl_div(current_probs, ref_probs, reduction="none", log_target=True).sum(-1)
        per_position = per_position.view(3, 9)[:, :-1].reshape(-1)
        assert out.retain_loss.item() == pytest.approx(per_position[scored].mean().item(), rel=1e-5)
