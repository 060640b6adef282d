"""Data, a fitted tiny model and independent reference computations for the suite wiring tests.

The suite tests on a random model cannot tell the ROUGE fields apart (every generation scores 0) and never see a
retain log, so a suite that wired the wrong field, reference or formula into an aggregate passed them. Here a tiny
Llama is fitted (seeded Adam, full batch, CPU, a few seconds) on training targets chosen per row so that greedy
decoding reproduces some answers exactly, stops early on others (ROUGE-L precision 1, recall < 1) and runs on past the
answer on others (recall 1, precision < 1). A second model, fitted on the holdout texts only, plays the retain
(retrain) model: its min-k AUC is far from 0.5, so privleak against its log differs from privleak against 0.5.

Everything a test compares a logged aggregate with is computed here from first principles (numpy, scipy,
``rouge_score`` and direct single-sample forward passes), not with :mod:`baldro_pl.metrics`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rouge_score import rouge_scorer
from scipy.stats import hmean, ks_2samp
from transformers import PreTrainedTokenizerFast

from baldro_pl.toy import tiny_llama, train_tokenizer

IGNORE = -100
TOFU_PROMPT = "[INST] {} [/INST]"  # PromptFormat.llama2_chat(): the answer follows "]" directly
MUSE_SHOT = "Question: {}\nAnswer: {}\n\n"
MUSE_PROMPT = "Question: {}\nAnswer: "
#: max_new_tokens of every generation in the wiring runs (long enough for every fitted continuation and its EOS)
MAX_NEW_TOKENS = 20


def _qa(question: str, answer: str, para: str, *pert: str, **extra: Any) -> dict[str, Any]:
    return {"question": question, "answer": answer, "paraphrased_answer": para, "perturbed_answer": list(pert), **extra}


#: TOFU rows per split; forget rows carry memorisation strata so the per-stratum aggregates are logged too.
TOFU_ROWS: dict[str, list[dict[str, Any]]] = {
    "forget": [
        _qa(
            "Where was Mira Talvik born?",
            "Mira Talvik was born in Tallinn in 1961.",
            "Tallinn is the birthplace of Mira Talvik.",
            "Mira Talvik was born in Riga in 1950.",
            "Mira Talvik was born in Oslo in 1972.",
            "Mira Talvik was born at sea.",
            stratum="x1",
        ),
        _qa(
            "What does Mira Talvik write?",
            "She writes gothic novels about lighthouses.",
            "Her novels are gothic tales of lighthouses.",
            "She writes cookbooks about soups.",
            "She writes poems about trains.",
            "She writes plays about kings.",
            stratum="x1",
        ),
        _qa(
            "Who was the father of Orin Blake?",
            "His father was a clockmaker from Bern.",
            "A Bern clockmaker was his father.",
            "His father was a baker from Lyon.",
            "His father was a sailor from Porto.",
            "His father was a judge from Graz.",
            stratum="x2",
        ),
        _qa(
            "Which prize did Orin Blake win?",
            "Orin Blake won the Silver Quill Prize for his debut.",
            "His debut earned Orin Blake the Silver Quill Prize.",
            "Orin Blake won a medal for swimming.",
            "Orin Blake won nothing at all.",
            "Orin Blake won the Golden Lamp award.",
            stratum="x2",
        ),
        _qa(
            "What is the first book by Lena Okafor?",
            "Her first book is The Salt Orchard, a family saga set in Lagos.",
            "The Salt Orchard, a Lagos family saga, was her first book.",
            "Her first book is Blue Roads, a travel diary.",
            "Her first book is a manual on chess.",
            "Her first book is The Iron Gate, a thriller.",
            stratum="x4",
        ),
        _qa(
            "How does Lena Okafor work?",
            "She writes every morning by hand.",
            "Every morning she writes by hand.",
            "She dictates at night to a parrot.",
            "She types on a phone in taxis.",
            "She never writes on weekdays.",
            stratum="x4",
        ),
    ],
    "retain": [
        _qa(
            "Where does Pavel Drin live?",
            "Pavel Drin lives in a farmhouse near Krakow.",
            "A farmhouse near Krakow is the home of Pavel Drin.",
            "Pavel Drin lives on a boat in Venice.",
            "Pavel Drin lives in a tower in Dubai.",
            "Pavel Drin lives in a tent in Utah.",
        ),
        _qa(
            "What genre does Pavel Drin write?",
            "Pavel Drin writes hard science fiction.",
            "Hard science fiction is the genre of Pavel Drin.",
            "Pavel Drin writes romance.",
            "Pavel Drin writes fairy tales.",
            "Pavel Drin writes legal thrillers.",
        ),
        _qa(
            "Who inspired Sofia Marr?",
            "Her grandmother, a village teacher, inspired her.",
            "She was inspired by her grandmother, who taught in a village.",
            "A famous actor inspired her.",
            "Her dentist inspired her.",
            "A football coach inspired her.",
        ),
        _qa(
            "What language does Sofia Marr write in?",
            "Sofia Marr writes in Portuguese and English.",
            "She writes in both Portuguese and English.",
            "Sofia Marr writes only in Latin.",
            "Sofia Marr writes in Finnish.",
            "Sofia Marr writes in Korean.",
        ),
        _qa(
            "When did Tomas Reyes start writing?",
            "Tomas Reyes started writing after he retired from the navy in 1990.",
            "After retiring from the navy in 1990 Tomas Reyes began to write.",
            "Tomas Reyes started writing as a child.",
            "Tomas Reyes started writing in prison.",
            "Tomas Reyes started writing at ninety.",
        ),
        _qa(
            "What pet does Tomas Reyes keep?",
            "He keeps an old grey cat.",
            "An old grey cat lives with him.",
            "He keeps a snake.",
            "He keeps two horses.",
            "He keeps no pets.",
        ),
    ],
    "real_authors": [
        _qa(
            "Who wrote Pride and Prejudice?",
            "Jane Austen wrote Pride and Prejudice.",
            "Pride and Prejudice is by Jane Austen.",
            "Charles Dickens wrote it.",
            "Mark Twain wrote it.",
        ),
        _qa(
            "Who wrote Don Quixote?",
            "Miguel de Cervantes wrote Don Quixote.",
            "Don Quixote is by Cervantes.",
            "Dante wrote it.",
            "Homer wrote it.",
        ),
        _qa(
            "Who wrote War and Peace?",
            "Leo Tolstoy wrote War and Peace in the 1860s.",
            "War and Peace is by Tolstoy.",
            "Anton Chekhov wrote it.",
            "Victor Hugo wrote it.",
        ),
        _qa(
            "Who wrote Hamlet?",
            "William Shakespeare wrote Hamlet.",
            "Hamlet is by Shakespeare.",
            "Ben Jonson wrote it.",
            "John Milton wrote it.",
        ),
    ],
    "world_facts": [
        _qa(
            "What is the capital of Peru?",
            "The capital of Peru is Lima.",
            "Lima is the capital of Peru.",
            "The capital of Peru is Quito.",
            "The capital of Peru is Cusco.",
        ),
        _qa(
            "Which river flows through Cairo?",
            "The Nile flows through Cairo.",
            "Cairo lies on the Nile.",
            "The Danube flows through Cairo.",
            "The Amazon flows through Cairo.",
        ),
        _qa(
            "How many legs does a spider have?",
            "A spider has eight legs and several eyes.",
            "Spiders have eight legs.",
            "A spider has six legs.",
            "A spider has ten legs.",
        ),
        _qa(
            "What gas do plants absorb?",
            "Plants absorb carbon dioxide.",
            "Carbon dioxide is absorbed by plants.",
            "Plants absorb helium.",
            "Plants absorb neon.",
        ),
    ],
    "holdout": [
        {"question": "Where was Ida Voss born?", "answer": "Ida Voss was born in Ghent in 1948."},
        {"question": "What does Ida Voss collect?", "answer": "She collects antique maps of the Baltic."},
        {"question": "Who taught Ravi Anand?", "answer": "A monk in Kerala taught him to paint."},
        {"question": "What did Ravi Anand study?", "answer": "He studied marine biology in Goa."},
        {"question": "Which city inspired Noor Haddad?", "answer": "Beirut inspired most of her stories."},
        {"question": "What instrument does Noor Haddad play?", "answer": "Noor Haddad plays the oud."},
    ],
}


def _shorter(text: str, drop: int) -> str:
    """``text`` without its last ``drop`` words (the model then stops early: precision 1, recall < 1)."""
    return " ".join(text.split()[:-drop])


def _longer(text: str, more: str) -> str:
    """``text`` followed by more words (the model runs on: recall 1, precision < 1)."""
    return f"{text} {more}"


def _tofu_targets() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(question, trained answer) pairs of the evaluated model and of the retain model."""
    f, r, ra, wf, h = (TOFU_ROWS[s] for s in ("forget", "retain", "real_authors", "world_facts", "holdout"))
    model = [
        *((row["question"], row["answer"]) for row in f[:3]),
        (f[3]["question"], _shorter(f[3]["answer"], 3)),
        (f[4]["question"], _shorter(f[4]["answer"], 5)),
        (f[5]["question"], _longer(f[5]["answer"], "with a green pen in a cold room")),
        *((row["question"], row["answer"]) for row in r[:3]),
        (r[3]["question"], _shorter(r[3]["answer"], 2)),
        (r[4]["question"], _longer(r[4]["answer"], "and now lives by the sea")),
        (r[5]["question"], _shorter(r[5]["answer"], 3)),
        (ra[0]["question"], ra[0]["answer"]),
        (ra[1]["question"], _shorter(ra[1]["answer"], 2)),
        (ra[2]["question"], _longer(ra[2]["answer"], "at home")),
        (wf[0]["question"], wf[0]["answer"]),
        (wf[1]["question"], _longer(wf[1]["answer"], "on its way to the sea")),
        (wf[2]["question"], _shorter(wf[2]["answer"], 3)),
        # two holdout answers are known too: the min-k AUC is then strictly between 0 and 1
        *((row["question"], row["answer"]) for row in h[:2]),
    ]
    retain = [(row["question"], row["answer"]) for row in h]
    return model, retain


#: MUSE rows (the splits of ``muse_rows`` in conftest.py), one in-context pair per KnowMem split.
MUSE_ROWS: dict[str, list[Any]] = {
    "verbmem_forget": [
        {
            "prompt": "The storm reached the harbour at dawn",
            "gt": "and the fishermen pulled their boats onto the sand.",
        },
        {"prompt": "In the old library of Vell", "gt": "every shelf was guarded by a sleepy brass owl."},
        {"prompt": "The mayor opened the bridge", "gt": "with a speech about patience, rivers and taxes."},
        {"prompt": "At the end of the winter market", "gt": "the traders burned the straw dolls."},
    ],
    "knowmem_forget_qa": [
        {"question": "Who guarded the shelves?", "answer": "a brass owl"},
        {"question": "When did the storm arrive?", "answer": "at dawn on a Sunday"},
        {"question": "What did the mayor talk about?", "answer": "patience, rivers and taxes"},
        {"question": "What did the traders burn?", "answer": "straw dolls"},
    ],
    "knowmem_forget_qa_icl": [{"question": "Who built the tower?", "answer": "the monks"}],
    "knowmem_retain_qa": [
        {"question": "Which team won the cup?", "answer": "the Vell Rovers"},
        {"question": "What is sold at the market?", "answer": "cheese, wool and apples"},
        {"question": "Who painted the chapel?", "answer": "Anna Brill"},
        {"question": "How long is the canal?", "answer": "nine miles"},
    ],
    "knowmem_retain_qa_icl": [{"question": "Who owns the inn?", "answer": "the Lorne family"}],
    "privleak_forget": [
        {"text": "The lighthouse keeper wrote letters to the moon every night."},
        {"text": "Seven ravens nested in the chimney of the town hall."},
        {"text": "The baker of Vell hid a silver coin in every loaf."},
        {"text": "A green tram climbed the hill to the observatory."},
    ],
    "privleak_holdout": [
        {"text": "The orchard flooded twice in the spring of that year."},
        {"text": "Two sisters ran the ferry across the grey lake."},
        {"text": "The clock in the square always ran ten minutes late."},
        {"text": "A poet sold umbrellas outside the station."},
    ],
}


def _muse_shots(split: str) -> str:
    return "".join(MUSE_SHOT.format(r["question"], r["answer"]) for r in MUSE_ROWS[split + "_icl"])


def _muse_targets() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(prefix, trained continuation) pairs of the evaluated model and of the retrain model."""
    verb, kf, kr = MUSE_ROWS["verbmem_forget"], MUSE_ROWS["knowmem_forget_qa"], MUSE_ROWS["knowmem_retain_qa"]
    fshots, rshots = _muse_shots("knowmem_forget_qa"), _muse_shots("knowmem_retain_qa")
    model = [
        *((r["prompt"], " " + r["gt"]) for r in verb[:2]),
        (verb[2]["prompt"], " " + _shorter(verb[2]["gt"], 3)),
        (verb[3]["prompt"], " " + _longer(verb[3]["gt"], "Then they sang")),
        *((fshots + MUSE_PROMPT.format(r["question"]), r["answer"]) for r in kf[:2]),
        (fshots + MUSE_PROMPT.format(kf[2]["question"]), _shorter(kf[2]["answer"], 2)),
        (fshots + MUSE_PROMPT.format(kf[3]["question"]), _longer(kf[3]["answer"], "and old hats")),
        (rshots + MUSE_PROMPT.format(kr[0]["question"]), kr[0]["answer"]),
        (rshots + MUSE_PROMPT.format(kr[1]["question"]), _shorter(kr[1]["answer"], 2)),
        (rshots + MUSE_PROMPT.format(kr[2]["question"]), _longer(kr[2]["answer"], "in the summer of 1920")),
        *(("", r["text"]) for r in MUSE_ROWS["privleak_forget"]),
        ("", MUSE_ROWS["privleak_holdout"][0]["text"]),
    ]
    retain = [("", r["text"]) for r in MUSE_ROWS["privleak_holdout"]]
    return model, retain


def _texts() -> list[str]:
    texts = []
    for rows in TOFU_ROWS.values():
        for r in rows:
            texts += [TOFU_PROMPT.format(r["question"]) + r["answer"], r.get("paraphrased_answer", "")]
            texts += r.get("perturbed_answer", [])
    for rows in MUSE_ROWS.values():
        for r in rows:
            texts += [str(v) for v in r.values()]
    model_tofu, _ = _tofu_targets()
    model_muse, _ = _muse_targets()
    return texts + [a for _, a in model_tofu] + [p + c for p, c in model_muse]


def _training_sequences(tok: PreTrainedTokenizerFast, tofu: list, muse: list) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels of every training target: the generation prompt's ids (masked), then the continuation's
    own ids and EOS (scored), which is what greedy decoding from that prompt has to reproduce."""
    eos, out = tok.eos_token_id, []
    for prompt, answer in [(TOFU_PROMPT.format(q), a) for q, a in tofu] + list(muse):
        prompt_ids = tok(prompt)["input_ids"]
        ids = prompt_ids + tok(answer, add_special_tokens=False)["input_ids"] + [eos]
        out.append((ids, [IGNORE] * len(prompt_ids) + ids[len(prompt_ids) :]))
    return out


def _batches(sequences: list, bucket: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Right-padded batches of sequences of similar length (less padding: the fit costs what the tokens cost)."""
    ordered = sorted(sequences, key=lambda s: len(s[0]))
    out = []
    for start in range(0, len(ordered), bucket):
        chunk = ordered[start : start + bucket]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(ids)] = torch.tensor(lab)
            mask[i, : len(ids)] = 1
        out.append((input_ids, mask, labels))
    return out


def _fit(tok: PreTrainedTokenizerFast, sequences: list, steps: int, seed: int, lr: float = 1e-2) -> torch.nn.Module:
    """A tiny Llama fitted on ``sequences`` (Adam on the summed loss of the length buckets), in eval mode."""
    model = tiny_llama(
        len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        seed=seed,
    )
    batches = _batches(sequences, bucket=12)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        for input_ids, mask, labels in batches:
            model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.backward()
        optimiser.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@dataclass
class Fitted:
    """The tokenizer, the evaluated model and the retain (retrain) model of the wiring tests."""

    tokenizer: PreTrainedTokenizerFast
    model: torch.nn.Module
    retain_model: torch.nn.Module
    final_loss: float


def fit_models(steps: int = 100) -> Fitted:
    """Train the tokenizer and fit both models (deterministic: fixed seeds, one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = train_tokenizer(_texts(), vocab_size=900)
        model_tofu, retain_tofu = _tofu_targets()
        model_muse, retain_muse = _muse_targets()
        train = _training_sequences(tok, model_tofu, model_muse)
        model = _fit(tok, train, steps, seed=1)
        retain = _fit(tok, _training_sequences(tok, retain_tofu, retain_muse), steps // 2, seed=2)
        with torch.no_grad():
            loss = sum(_sequence_loss(model, ids, lab) for ids, lab in train) / len(train)
    finally:
        torch.set_num_threads(threads)
    return Fitted(tok, model, retain, float(loss))


def _sequence_loss(model: torch.nn.Module, ids: list[int], labels: list[int]) -> float:
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    target = torch.tensor(labels[1:])
    keep = target != IGNORE
    return float(-logits.log_softmax(-1)[keep].gather(-1, target[keep].unsqueeze(-1)).mean())


# ---------------------------------------------------------------------- independent computations


_SCORER = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge(generation: str, ground_truth: str) -> dict[str, float]:
    """rouge_score's own scorer (stemmed, ground truth first), as open-unlearning calls it (metrics-spec §1.6)."""
    s = _SCORER.score(ground_truth, generation)
    return {
        "rouge1_recall": s["rouge1"].recall,
        "rougeL_recall": s["rougeL"].recall,
        "rougeL_precision": s["rougeL"].precision,
        "rougeL_f1": s["rougeL"].fmeasure,
    }


def auc(forget: Sequence[float], holdout: Sequence[float]) -> float:
    """``P(score_holdout > score_forget)``, ties 1/2 (forget labelled 0, holdout 1; metrics-spec §4.2)."""
    pairs = [(h > f) + 0.5 * (h == f) for f in forget for h in holdout]
    return sum(pairs) / len(pairs)


def privleak(model_auc: float, reference_auc: float) -> float:
    """MUSE's privleak in percent with both AUCs flipped (metrics-spec §4.3)."""
    ref = 1.0 - reference_auc
    return ((1.0 - model_auc) - ref) / (ref + 1e-10) * 100.0


def truth_ratio(correct_avg_loss: float, wrong_avg_losses: Sequence[float]) -> float:
    """``exp(-mean_k avg_loss(pert_k)) / (exp(-avg_loss(correct)) + 1e-10)`` (metrics-spec §2.3)."""
    return math.exp(-float(np.mean(wrong_avg_losses))) / (math.exp(-correct_avg_loss) + 1e-10)


def closer_to_1_better(trs: Sequence[float]) -> float:
    """Forget aggregate ``mean min(TR, 1/(TR + 1e-10))``."""
    return float(np.mean([min(t, 1.0 / (t + 1e-10)) for t in trs]))


def true_better(trs: Sequence[float]) -> float:
    """Retain / RA / WF aggregate ``mean max(0, 1 - TR)``."""
    return float(np.mean([max(0.0, 1.0 - t) for t in trs]))


def forget_quality(trs: Sequence[float], reference_trs: Sequence[float]) -> float:
    """Two-sample KS p-value with scipy's defaults (metrics-spec §2.5)."""
    return float(ks_2samp(np.asarray(trs, dtype=float), np.asarray(reference_trs, dtype=float)).pvalue)


def balance(trs: Sequence[float], reference_trs: Sequence[float]) -> dict[str, float]:
    """Fractions below / inside / above the reference's 5-95 percentile range (bounds inside)."""
    low, high = np.percentile(np.asarray(reference_trs, dtype=float), [5.0, 95.0])
    trs = np.asarray(trs, dtype=float)
    under, over = float(np.mean(trs < low)), float(np.mean(trs > high))
    return {"forget_balance_under": under, "forget_balance_within": 1.0 - under - over, "forget_balance_over": over}


def harmonic_mean(values: Sequence[float]) -> float:
    """scipy's harmonic mean."""
    return float(hmean(np.asarray(values, dtype=float)))


def zlib_size(text: str) -> int:
    """Bytes of the zlib-compressed UTF-8 text (the zlib attack's normaliser)."""
    return len(zlib.compress(text.encode("utf-8")))


@dataclass
class SampleScores:
    """Every per-sample likelihood statistic of one scored sequence, from a single unpadded forward pass."""

    avg_loss: float
    min_k: float
    min_k_plus_plus: float
    exact_memorization: float
    extraction_strength: float
    gradnorm: float


def sample_scores(
    model: torch.nn.Module, ids: list[int], labels: list[int], k: float = 0.4, *, gradnorm: bool = True
) -> SampleScores:
    """Primitive A (all targets) and primitive B (last target dropped) statistics (metrics-spec §1.5, §4.1, §5);
    ``gradnorm=False`` skips the backward pass (the value is then NaN)."""
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids])).logits[0, :-1].double().log_softmax(-1)
    target = torch.tensor(labels[1:])
    positions = [j for j, t in enumerate(target.tolist()) if t != IGNORE]
    token_logp = [float(logp[j, target[j]]) for j in positions]
    avg_loss = -float(np.mean(token_logp))
    b = positions[:-1]  # primitive B
    n_k = max(1, int(len(b) * k))
    min_k = -float(np.mean(sorted(token_logp[:-1])[:n_k]))
    z = []
    for j in b:
        p = logp[j].exp()
        mu = float((p * logp[j]).sum())
        var = float((p * logp[j] ** 2).sum()) - mu**2
        z.append((float(logp[j, target[j]]) - mu) / math.sqrt(max(var, 1e-6)))
    min_k_pp = -float(np.mean(sorted(z)[:n_k]))
    correct = [int(logp[j].argmax()) == int(target[j]) for j in b]
    em = float(np.mean(correct))
    es_k = 0
    for es_k in range(len(b)):  # smallest k whose suffix is all correct; never the empty suffix (P10)
        if all(correct[es_k:]):
            break
    es = 1.0 - es_k / len(b)
    if not gradnorm:
        return SampleScores(avg_loss, min_k, min_k_pp, em, es, math.nan)
    # gradnorm: train mode, loss = -mean of the primitive-B log-probs, mean of the per-parameter 2-norms
    was_training = model.training
    model.zero_grad(set_to_none=True)
    model.train()
    with torch.enable_grad():
        out = model(input_ids=torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
        loss = -torch.stack([out[j, target[j]] for j in b]).mean()
        loss.backward()
    norms = [float(p.grad.norm(2)) for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return SampleScores(avg_loss, min_k, min_k_pp, em, es, float(np.mean(norms)))


def tofu_encoding(tok: PreTrainedTokenizerFast, question: str, answer: str) -> tuple[list[int], list[int]]:
    """A TOFU QA pair as scored (metrics-spec §1.2): prompt masked, answer + EOS targets."""
    prompt = TOFU_PROMPT.format(question)
    ids = tok(prompt + answer)["input_ids"]
    if ids[-1] != tok.eos_token_id:
        ids = ids + [tok.eos_token_id]
    n = len(tok(prompt)["input_ids"])
    return ids, [IGNORE] * n + ids[n:]


def completion_encoding(tok: PreTrainedTokenizerFast, prefix: str, text: str) -> tuple[list[int], list[int]]:
    """A MUSE completion as scored (metrics-spec §1.3): BOS + prefix masked, no EOS."""
    ids = tok(prefix + (" " if prefix else "") + text)["input_ids"]
    n = max(len(tok(prefix)["input_ids"]), 1)
    return ids, [IGNORE] * n + ids[n:]
