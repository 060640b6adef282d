"""GradDiff, CEU and UNDIAL: hand-computed values, and parity with the published formulas on a tiny Llama.

The reference formulas are transcribed literally below (``_ref_*``): open-unlearning's ``GradDiff.compute_loss``
(``src/trainer/unlearn/grad_diff.py``), ``compute_batch_ceu`` (``src/trainer/unlearn/ceu.py``) and
``compute_undial_loss`` (``src/trainer/utils.py``), and the UNDIAL paper's loss restricted to answer tokens (Dong et al.
2025, Eq. 1-2) written as a loop. baldro-pl computes them from one forward pass per model and side; loss and every
parameter gradient must agree to 1e-5 on a tiny random Llama (fp64) and a fixed batch.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from parity_data import FORGET, RETAIN
from torch import nn

from baldro_pl.datamodules import PromptFormat, encode_qa, pad_samples
from baldro_pl.modules import UnlearningModule
from baldro_pl.objectives import (
    CEU,
    NLL,
    UNDIAL,
    BalDRODV,
    BalDROG,
    GradAscent,
    Mean,
    TokenLogProbs,
    UnlearningObjective,
    ceu_token_loss,
    token_logprobs,
    undial_token_loss,
)

BETA = 3.0
STRIP = ("input_ids", "attention_mask", "labels")
LOG2, LOG3 = math.log(2), math.log(3)


# ---------------------------------------------------------------- hand-computed values on small tensors
def test_ceu_token_loss_and_its_gradient_by_hand() -> None:
    # p = (1/4, 1/4, 1/2); target 2: q = (1/2, 1/2, 0), loss -log(1/4); target 0: q = (0, 1/3, 2/3), loss (4/3) log 2
    logits = torch.tensor([[0.0, 0.0, LOG2], [0.0, 0.0, LOG2]], requires_grad=True)
    loss = ceu_token_loss(logits, torch.tensor([2, 0]))
    torch.testing.assert_close(loss, torch.tensor([math.log(4), 4 / 3 * LOG2]))
    loss.sum().backward()
    # d loss / d z = p - q (q is a constant): (1/4 - 1/2, 1/4 - 1/2, 1/2) and (1/4, 1/4 - 1/3, 1/2 - 2/3)
    expected = torch.tensor([[-0.25, -0.25, 0.5], [0.25, 0.25 - 1 / 3, 0.5 - 2 / 3]])
    torch.testing.assert_close(logits.grad, expected)


def test_undial_token_loss_and_its_gradient_by_hand() -> None:
    # uniform teacher, target 0 lowered by log 2: q = (1/5, 2/5, 2/5)
    logits = torch.tensor([[0.0, 0.0, 0.0], [LOG2, 0.0, 0.0]], requires_grad=True)
    teacher = torch.zeros(2, 3)
    loss = undial_token_loss(logits, teacher, torch.tensor([0, 0]), beta=LOG2)
    torch.testing.assert_close(loss, torch.tensor([LOG3, 9 / 5 * LOG2]))
    loss.sum().backward()
    q = torch.tensor([0.2, 0.4, 0.4])
    expected = torch.stack([torch.full((3,), 1 / 3) - q, torch.tensor([0.5, 0.25, 0.25]) - q])
    torch.testing.assert_close(logits.grad, expected)
    # no gradient reaches the teacher, and beta -> 0 is plain self-distillation: the loss is the entropy H(teacher)
    assert undial_token_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([1]), 1e-12).item() == pytest.approx(
        LOG3
    )


def _one_sample(
    position_logits: list[list[float]], labels: list[int]
) -> tuple[TokenLogProbs, torch.Tensor, torch.Tensor]:
    logits = torch.tensor([position_logits])
    labels_t = torch.tensor([labels])
    return token_logprobs(logits, labels_t), logits, labels_t


def test_ceu_drops_the_first_answer_tokens_and_takes_the_token_mean() -> None:
    # shifted targets (2, 0, 1) at positions 0, 1, 2; the first answer token (target 2) is not scored with n = 1
    policy, logits, labels = _one_sample([[0, 0, LOG2], [0, 0, LOG2], [0, 0, 0], [0, 0, 0]], [-100, 2, 0, 1])
    out = CEU(ignore_first_n_answer_tokens=1)(policy, logits=logits, labels=labels)
    # target 0 under (1/4, 1/4, 1/2): (4/3) log 2; target 1 under uniform: q = (1/2, 0, 1/2), loss log 3
    torch.testing.assert_close(out.per_token, torch.tensor([[0.0, 4 / 3 * LOG2, LOG3]]))
    assert out.mask.tolist() == [[False, True, True]]
    torch.testing.assert_close(out.per_sample, torch.tensor([(4 / 3 * LOG2 + LOG3) / 2]))
    assert Mean()(out).loss.item() == pytest.approx((4 / 3 * LOG2 + LOG3) / 2)
    # the hardness is -avg NLL over all three answer tokens, whatever is scored
    assert out.hardness.item() == pytest.approx(-(math.log(2) + math.log(4) + LOG3) / 3, rel=1e-6)
    full = CEU(ignore_first_n_answer_tokens=0)(policy, logits=logits, labels=labels)
    torch.testing.assert_close(full.per_token, torch.tensor([[math.log(4), 4 / 3 * LOG2, LOG3]]))


def test_undial_answer_tokens_by_hand() -> None:
    policy, logits, labels = _one_sample([[0, 0, 0], [LOG2, 0, 0], [0, 0, 0], [0, 0, 0]], [-100, -100, 0, 0])
    out = UNDIAL(beta=LOG2)(policy, logits=logits, labels=labels, reference_logits=torch.zeros(1, 4, 3))
    # only positions 1 and 2 predict answer tokens: the loss of position 1 (student (1/2, 1/4, 1/4)) and of a
    # uniform student; position 0 (prompt) is not scored
    torch.testing.assert_close(out.per_token, torch.tensor([[0.0, 9 / 5 * LOG2, LOG3]]))
    torch.testing.assert_close(out.per_sample, torch.tensor([(9 / 5 * LOG2 + LOG3) / 2]))


# ---------------------------------------------------------------- literal transcriptions of the published code
def _ref_graddiff(model, forget, retain, gamma=1.0, alpha=1.0):
    forget_outputs = model(**forget)
    forget_loss = -forget_outputs.loss
    retain_loss = model(**retain).loss
    return gamma * forget_loss + alpha * retain_loss


def _ref_cross_entropy_unlearning_loss(logits, labels, ignore_index=-100):
    valid_mask = labels != ignore_index
    valid_logits = logits[valid_mask]
    valid_labels = labels[valid_mask]
    valid_target_logits = valid_logits.detach().clone()
    valid_target_logits.scatter_(dim=-1, index=valid_labels.unsqueeze(-1), value=float("-inf"))
    valid_target_probabilities = F.softmax(valid_target_logits, dim=-1)
    return F.cross_entropy(input=valid_logits, target=valid_target_probabilities)


def _ref_compute_batch_ceu(model, inputs, ignore_first_n_answer_tokens=1):
    outputs = model(**inputs)
    logits = outputs.logits
    labels = inputs["labels"]
    valid_mask = labels != -100
    update_mask = (valid_mask.cumsum(dim=-1) <= ignore_first_n_answer_tokens) & valid_mask
    labels_without_first_n_answer_tokens = labels.masked_fill(update_mask, -100)
    shifted_labels = labels_without_first_n_answer_tokens[..., 1:].contiguous()
    shifted_logits = logits[..., :-1, :].contiguous()
    return _ref_cross_entropy_unlearning_loss(shifted_logits, shifted_labels, ignore_index=-100)


def _ref_compute_undial_loss(model, ref_model, inputs, beta):
    outputs = model(**inputs)
    logits = outputs.logits
    labels = inputs["labels"]
    shift_labels = labels[..., 1:].contiguous()
    shift_logits = logits[..., :-1, :].contiguous()
    with torch.no_grad():
        teacher_logits = ref_model(**inputs).logits
    shift_teacher_logits = teacher_logits[..., :-1, :].contiguous()
    mask = torch.zeros_like(shift_teacher_logits)
    batch_idx = torch.arange(mask.shape[0]).view(-1, 1, 1)
    seq_idx = torch.arange(mask.shape[1]).view(1, -1, 1)
    mask[batch_idx, seq_idx, shift_labels.unsqueeze(-1)] = 1.0
    pre_softmax = shift_teacher_logits - mask * beta
    soft_label = F.softmax(pre_softmax, dim=-1)
    loss_fct = nn.CrossEntropyLoss(reduction="none")
    loss = loss_fct(shift_logits.view(-1, shift_logits.size(-1)), soft_label.view(-1, soft_label.size(-1)))
    return loss.mean()


def _paper_undial_answer_tokens(model, ref_model, inputs, beta):
    """UNDIAL's loss over the answer tokens, one token at a time: CE(p_theta, softmax(z_ref - beta * onehot(y)))."""
    logits = model(**inputs).logits
    with torch.no_grad():
        teacher = ref_model(**inputs).logits
    labels = inputs["labels"]
    terms = []
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            y = int(labels[b, t])
            if y == -100:
                continue
            onehot = torch.zeros(logits.shape[-1], dtype=teacher.dtype)
            onehot[y] = 1.0
            q = torch.softmax(teacher[b, t - 1] - beta * onehot, dim=-1)
            terms.append(-(q * torch.log_softmax(logits[b, t - 1], dim=-1)).sum())
    return torch.stack(terms).mean()


def _ref_group(model, forget, ratio):
    """BalDRO-G's selection (nxZhai/BalDRO ``_forget_group``): the ``k`` samples of lowest average NLL."""
    with torch.no_grad():
        logits = model(**forget).logits[..., :-1, :]
        shifted = forget["labels"][..., 1:]
        nll = nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(logits.transpose(-1, -2), shifted).sum(-1)
    hardness = -nll / (shifted != -100).sum(-1).clamp(min=1)
    k = max(1, int(hardness.size(0) * ratio))
    top = torch.topk(hardness, k=k, largest=True, sorted=False).indices
    return {key: forget[key].index_select(0, top) for key in STRIP}


def _ref_loss(method: str, model, ref_model, forget, retain):
    if method == "graddiff":
        return _ref_graddiff(model, forget, retain)
    if method == "ceu":
        return _ref_compute_batch_ceu(model, forget, ignore_first_n_answer_tokens=1)
    if method == "ceu_group":
        return _ref_compute_batch_ceu(model, _ref_group(model, forget, 0.5), ignore_first_n_answer_tokens=1)
    if method == "undial":  # UNDIAL(GradDiff): gamma * forget + alpha * retain NLL, alpha 1 to exercise both sides
        return _ref_compute_undial_loss(model, ref_model, forget, BETA) + model(**retain).loss
    if method == "undial_answer":
        return _paper_undial_answer_tokens(model, ref_model, forget, BETA)
    raise AssertionError(method)


def _ours(method: str):
    """(forget loss, aggregator, retain loss, alpha) of the composition that reproduces ``method``."""
    return {
        "graddiff": (GradAscent(), Mean(), NLL(), 1.0),
        "ceu": (CEU(ignore_first_n_answer_tokens=1), Mean(), NLL(), 0.0),
        "ceu_group": (CEU(ignore_first_n_answer_tokens=1), BalDROG(ratio=0.5), NLL(), 0.0),
        "undial": (UNDIAL(beta=BETA, positions="reference"), Mean(), NLL(), 1.0),
        "undial_answer": (UNDIAL(beta=BETA), Mean(), NLL(), 0.0),
    }[method]


@pytest.fixture(scope="module")
def batches(toy_tokenizer):
    fmt = PromptFormat.llama2_chat()
    forget = pad_samples([encode_qa(toy_tokenizer, q, a, fmt, index=i) for i, (q, a) in enumerate(FORGET)], 0)
    retain = pad_samples([encode_qa(toy_tokenizer, q, a, fmt, index=i) for i, (q, a) in enumerate(RETAIN)], 0)
    return forget, retain


@pytest.fixture(scope="module")
def models(toy_tokenizer, batches):
    """(reference, policy) in fp64: a tiny Llama fitted to both batches, and a copy moved away from it."""
    from baldro_pl.toy import tiny_llama

    torch.manual_seed(0)
    model = tiny_llama(len(toy_tokenizer)).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        loss = model(**{k: batches[step % 2][k] for k in STRIP}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy = copy.deepcopy(model)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval(), policy


@pytest.mark.parametrize("method", ["graddiff", "ceu", "ceu_group", "undial", "undial_answer"])
def test_loss_and_gradients_match_the_published_formula(method: str, models, batches) -> None:
    forget, retain = batches
    reference_model, policy = models
    assert policy.config.vocab_size > 100  # UNDIAL's reference code indexes token V - 100 at unscored positions
    ref_policy = copy.deepcopy(policy)
    ref_loss = _ref_loss(
        method, ref_policy, reference_model, {k: forget[k] for k in STRIP}, {k: retain[k] for k in STRIP}
    )
    ref_loss.backward()

    forget_loss, aggregator, retain_loss, alpha = _ours(method)
    module = UnlearningModule(copy.deepcopy(policy), forget_loss, aggregator, retain_loss, alpha=alpha)
    module.configure_model()
    assert (module.reference_model is not None) == method.startswith("undial")
    if module.reference_model is not None:  # the teacher: the model before unlearning, not the moved policy
        module.reference_model = copy.deepcopy(reference_model)
    out, _ = module.compute_step({"forget": forget, "retain": retain})
    out.loss.backward()

    assert out.per_sample_loss.std() > 0.01 * out.per_sample_loss.abs().mean()
    assert out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-5, abs=1e-9)
    for (name, ours), (_, theirs) in zip(module.model.named_parameters(), ref_policy.named_parameters()):
        # Hugging Face's own ``loss`` (GradDiff, UNDIAL's retain term) is computed in fp32 even for an fp64 model
        scale = float(theirs.grad.abs().max())
        torch.testing.assert_close(
            ours.grad, theirs.grad, rtol=1e-5, atol=1e-5 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_ceu_and_undial_give_per_sample_values_that_baldro_dv_weighs(models, batches) -> None:
    forget, _ = batches
    reference_model, policy = models
    with torch.no_grad():
        logits = policy(**{k: forget[k] for k in STRIP}).logits
        teacher = reference_model(**{k: forget[k] for k in STRIP}).logits
    lp = token_logprobs(logits, forget["labels"])
    for loss in (CEU(), UNDIAL(beta=BETA)):
        objective = UnlearningObjective(loss, BalDRODV(temperature=0.05), alpha=0.0)
        out = objective(lp, forget_logits=logits, forget_labels=forget["labels"], reference_forget_logits=teacher)
        assert out.weights.sum().item() == pytest.approx(1.0)
        # the hardest sample (highest loss) gets the most weight
        assert int(out.weights.argmax()) == int(out.per_sample_loss.argmax())
        assert out.loss.item() > out.per_sample_loss.mean().item()


# ---------------------------------------------------------------- bad configuration
@pytest.mark.parametrize(
    ("build", "setting"),
    [
        (lambda: UNDIAL(beta=0.0), "beta"),
        (lambda: UNDIAL(beta=-1.0), "beta"),
        (lambda: UNDIAL(beta=True), "beta"),
        (lambda: UNDIAL(positions="prompt"), "positions"),
        (lambda: CEU(ignore_first_n_answer_tokens=-1), "ignore_first_n_answer_tokens"),
        (lambda: CEU(ignore_first_n_answer_tokens=1.5), "ignore_first_n_answer_tokens"),
        (lambda: UnlearningObjective(UNDIAL(positions="reference"), BalDROG()), "aggregator"),
        (lambda: UnlearningObjective(UNDIAL(positions="reference"), BalDRODV()), "aggregator"),
    ],
)
def test_bad_configuration_names_the_setting(build, setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        build()


def test_undial_reference_positions_refuse_dro_but_answer_tokens_accept_it() -> None:
    assert isinstance(UnlearningObjective(UNDIAL(positions="reference"), Mean()).aggregator, Mean)
    assert not UNDIAL(positions="reference").supports_dro and UNDIAL().supports_dro and CEU().supports_dro
    assert isinstance(UnlearningObjective(UNDIAL(), BalDROG()).aggregator, BalDROG)
    assert isinstance(UnlearningObjective(CEU(), BalDRODV()).aggregator, BalDRODV)


def test_missing_logits_are_refused_with_a_clear_error() -> None:
    policy, logits, labels = _one_sample([[0, 0, 0], [0, 0, 0], [0, 0, 0]], [-100, 1, 2])
    with pytest.raises(ValueError, match="logits and labels"):
        UnlearningObjective(CEU(), alpha=0.0)(policy)
    with pytest.raises(ValueError, match="reference_logits"):
        UNDIAL()(policy, logits=logits, labels=labels)
    with pytest.raises(ValueError, match="every position"):
        UNDIAL(positions="reference")(policy, logits=logits[:, 1:], labels=labels, reference_logits=logits[:, 1:])
