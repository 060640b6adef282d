"""The TOFU evaluation suite (metrics-spec §2, §4, §5) with open-unlearning's metric names and log layout.

Where the public evaluator runs separate data passes per metric, this suite plans the work once:

* one teacher-forced pass per (split, answer variant, row), pooled over splits in length-sorted batches, gives
  Prob, truth ratio, normalised Prob, every likelihood MIA score, EM and ES (the forget answers feed eight metrics);
* one greedy generation per split row serves ROUGE, PARA_ROUGE and PERT_ROUGE (open-unlearning re-generates the same
  prompts for each of them, and once per perturbed answer);
* gradnorm (batch size 1, a backward pass per row) runs only for the forget and holdout answers.

Rows come as raw dicts (``question``, ``answer``, ``paraphrased_answer``, ``perturbed_answer`` [list]), keyed by split:
``forget`` (forgetXX_perturbed), ``retain`` (retain_perturbed), ``real_authors``, ``world_facts`` (their
``*_perturbed`` configs) and ``holdout`` (holdoutXX). Forget rows with a ``stratum`` field (the synthetic set's
memorisation strata) also get their forget metrics per stratum (``stratum/<s>/...``, :mod:`baldro_pl.metrics.strata`).
In a process group every process evaluates its shard of each split (:mod:`baldro_pl.distributed`) and the
metric states are gathered and de-duplicated by row index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from baldro_pl.datamodules.formatting import EncodedSample, PromptFormat
from baldro_pl.distributed import all_gather_objects
from baldro_pl.metrics.functional.balance import BALANCE_KEYS
from baldro_pl.metrics.functional.mia import privleak, zlib_scores
from baldro_pl.metrics.functional.utility import MODEL_UTILITY_COMPONENTS, model_utility
from baldro_pl.metrics.generation import decode, greedy_generate, reference_text, target_text
from baldro_pl.metrics.indexed import IndexedMetric
from baldro_pl.metrics.likelihood import SCORE_KEYS, gradnorm_scores, score_samples
from baldro_pl.metrics.logs import probability_entry, rouge_entry, score_entry, value_entry
from baldro_pl.metrics.memorization import ExactMemorization, ExtractionStrength
from baldro_pl.metrics.passes import score_and_generate
from baldro_pl.metrics.probability import NormalisedProbability, Probability
from baldro_pl.metrics.rouge import ROUGE
from baldro_pl.metrics.strata import strata_of_rows, stratum_logs
from baldro_pl.metrics.suite import ModelRun, References, Rows, Suite, require_at_least_one
from baldro_pl.metrics.tofu_plan import (
    ALIASES,
    DEPENDS,
    PREFIX,
    TOFU_METRICS,
    check_rows,
    plan_splits,
    question_field,
)
from baldro_pl.metrics.truth_ratio import ForgetQuality, ForgettingBalance, TruthRatio


@dataclass
class SplitScores:
    """This process's shard of one split, after the model ran on it.

    Attributes:
        index: the shard's row indices.
        answer: per-row statistics of the answer (:data:`~baldro_pl.metrics.likelihood.SCORE_KEYS`; NaN if unscored).
        para: ``[n]`` average NLL of the paraphrased answer (NaN if unscored).
        pert: ``[n, K]`` average NLLs of the perturbed answers (NaN if unscored).
        zlib: ``[n]`` zlib MIA scores of the answers (forget and holdout).
        gradnorm: ``[n]`` gradient norms of the answers (forget and holdout, when gradnorm runs).
        texts: shard position -> input, generation and ground truths of the generated rows.
    """

    index: list[int]
    answer: dict[str, Tensor]
    para: Tensor
    pert: Tensor
    zlib: Tensor | None = None
    gradnorm: Tensor | None = None
    texts: dict[int, dict[str, Any]] = field(default_factory=dict)

    def mia_scores(self) -> tuple[list[int], dict[str, Any]]:
        """(index, scores) as :meth:`Suite.mia_logs` reads them."""
        return self.index, {**self.answer, "zlib": self.zlib, "gradnorm": self.gradnorm}


def _updated(metric: IndexedMetric, device: torch.device, *args: Any) -> Any:
    """``metric`` on ``device`` with one update."""
    metric = metric.to(device)
    metric.update(*args)
    return metric


class TOFUSuite(Suite):
    """The TOFU suite; keeps tokenisations across calls through its encoder (use one instance per run).

    Args:
        metrics: metric names to report (None = the full suite, :data:`TOFU_METRICS`); dependencies are added
            (e.g. ``model_utility`` brings its nine components). ``"forget_balance"`` selects the three balance keys.
        retain_logs_path: the retain model's ``TOFU_EVAL.json`` on the same forget split (or the loaded log), for
            forget quality, forgetting balance and privleak. Without it forget quality and balance are None (with a
            warning) and privleak uses open-unlearning's reference AUC 0.5.
        batch_size: rows per forward / generate call (32 as in open-unlearning; gradnorm always uses 1).
        generation_batch_size: prompts encoded and decoded together (None: as many as a KV-cache budget holds,
            :func:`~baldro_pl.metrics.prefix.generation_rows`); each prompt is run once for its generation and every
            answer scored after it (:mod:`baldro_pl.metrics.passes`).
        max_new_tokens: generation budget for ROUGE (200 in the published metric).
        max_length: token cap of prompts and QA pairs (None: the encoder's, i.e. the datamodule's ``max_length``).
        question_key: question field of the forget and retain rows (``"paraphrased_question"`` is also used).
        balance_percentiles: the reference range of the forgetting balance.
        **kwargs: ``exclude``, ``mia_k``, ``gradnorm_p``, ``sort_by_length`` (see :class:`Suite`).
    """

    name = "TOFU"
    headline = (
        "forget_quality",
        "model_utility",
        "forget_truth_ratio",
        "privleak",
        "forget_Q_A_Prob",
        "forget_Q_A_ROUGE",
    )
    available = TOFU_METRICS
    depends = DEPENDS
    aliases = ALIASES

    def __init__(
        self,
        *,
        metrics: Sequence[str] | None = None,
        retain_logs_path: str | Mapping[str, Any] | None = None,
        batch_size: int = 32,
        generation_batch_size: int | None = None,
        max_new_tokens: int = 200,
        max_length: int | None = None,
        question_key: str = "question",
        balance_percentiles: tuple[float, float] = (5.0, 95.0),
        **kwargs: Any,
    ) -> None:
        require_at_least_one(
            batch_size=batch_size, generation_batch_size=generation_batch_size, max_new_tokens=max_new_tokens
        )
        super().__init__(metrics=metrics, retain_logs_path=retain_logs_path, **kwargs)
        self.batch_size = batch_size
        self.generation_batch_size = generation_batch_size
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.question_key = question_key
        self.balance_percentiles = balance_percentiles
        self.plans = plan_splits(self.metrics)

    @classmethod
    def default_prompt_format(cls) -> PromptFormat:
        """Llama-2 chat, the BalDRO setup's format."""
        return PromptFormat.llama2_chat()

    def check_rows(self, rows: Rows) -> None:
        """Every split the chosen metrics read, with the fields they need (messages name split, row and field)."""
        check_rows(rows, self.plans, self.metrics, question_key=self.question_key, forget_split=self.forget_split)

    def scored_splits(self) -> list[str]:
        """The splits some chosen metric reads."""
        return [split for split, plan in self.plans.items() if plan.needed]

    # ------------------------------------------------------------------ the model
    def run_model(
        self, model: torch.nn.Module, rows: Rows, shards: Mapping[str, list[int]], run: ModelRun
    ) -> dict[str, SplitScores]:
        """One pooled scoring pass, one generation per generated row, gradnorm for forget and holdout."""
        enc = self.encoder
        samples: list[EncodedSample] = []
        vocab: list[bool] = []
        slots: list[tuple[str, str, int, int]] = []  # (split, variant, position in shard, option)
        prompts: list[list[int]] = []
        prompt_slots: list[tuple[str, int, int]] = []  # (split, position in shard, row)
        scores: dict[str, SplitScores] = {}
        for split, shard in shards.items():
            plan, data, qkey = self.plans[split], rows[split], question_field(split, self.question_key)
            for pos, r in enumerate(shard):
                q = data[r][qkey]
                variants = [("answer", 0, data[r]["answer"])] if plan.answer or plan.gradnorm else []
                variants += [("para", 0, data[r]["paraphrased_answer"])] if plan.para else []
                variants += [("pert", k, a) for k, a in enumerate(data[r]["perturbed_answer"])] if plan.pert else []
                for variant, k, answer in variants:
                    samples.append(enc.qa(q, answer, r, max_length=self.max_length))
                    vocab.append(plan.vocab and variant == "answer")
                    slots.append((split, variant, pos, k))
                if plan.generate:
                    prompts.append(enc.prompt(q, max_length=self.max_length))
                    prompt_slots.append((split, pos, r))
            size, n_options = len(shard), len(data[0]["perturbed_answer"]) if plan.pert else 0
            nan = torch.full((size,), float("nan"), dtype=torch.float64)
            scores[split] = SplitScores(
                index=shard,
                answer={key: nan.clone() for key in SCORE_KEYS},
                para=nan.clone(),
                pert=torch.full((size, max(n_options, 1)), float("nan"), dtype=torch.float64),
            )
        common = {
            "batch_size": self.batch_size,
            "sort_by_length": self.sort_by_length,
            "call_context": run.call_context,
        }
        tok, budget = enc.tokenizer, self.max_new_tokens
        if run.synced_gpus:  # FSDP: every process makes the same calls, which the whole-sequence passes guarantee
            values = score_samples(model, samples, pad_token_id=enc.pad_token_id, vocab=vocab, k=self.mia_k, **common)
            generations = greedy_generate(model, tok, prompts, max_new_tokens=budget, synced_gpus=True, **common)
        else:
            values, generations = score_and_generate(
                model,
                tok,
                samples,
                prompts,
                pad_token_id=enc.pad_token_id,
                max_new_tokens=budget,
                vocab=vocab,
                k=self.mia_k,
                generation_batch_size=self.generation_batch_size,
                **common,
            )
        answer_samples: dict[str, list[EncodedSample]] = {s: [None] * len(shards[s]) for s in shards}  # type: ignore[list-item]
        for j, (split, variant, pos, k) in enumerate(slots):
            out = scores[split]
            if variant == "pert":
                out.pert[pos, k] = values["avg_loss"][j]
            elif variant == "para":
                out.para[pos] = values["avg_loss"][j]
            else:
                for key in SCORE_KEYS:
                    out.answer[key][pos] = values[key][j]
                answer_samples[split][pos] = samples[j]
        for split, out in scores.items():
            if self.plans[split].answer:
                texts = [target_text(enc.tokenizer, s) for s in answer_samples[split]]
                out.zlib = zlib_scores(out.answer["avg_loss"], texts)
        for (split, pos, r), prompt, text in zip(prompt_slots, prompts, generations):
            scores[split].texts[pos] = self._texts(split, rows[split][r], r, prompt, text)
        for split in ("forget", "holdout") if run.gradnorm else ():
            if split in shards and self.plans[split].gradnorm:
                scores[split].gradnorm = gradnorm_scores(
                    model, answer_samples[split], p=self.gradnorm_p, call_context=run.call_context
                )
        return scores

    def _texts(self, split: str, row: Mapping[str, Any], r: int, prompt: list[int], generation: str) -> dict[str, Any]:
        """Input / generation / ground truths (answer, paraphrase, perturbed) of generated row ``r``."""
        enc, q, prefix = self.encoder, row[question_field(split, self.question_key)], PREFIX[split]

        def gt(answer: str) -> str:
            return reference_text(enc.tokenizer, prompt, enc.qa(q, answer, r, max_length=self.max_length).input_ids)

        texts: dict[str, Any] = {"input": decode(enc.tokenizer, prompt), "generation": generation}
        texts["answer"] = gt(row["answer"])
        if f"{prefix}_Q_A_PARA_ROUGE" in self.metrics:
            texts["para"] = gt(row["paraphrased_answer"])
        if f"{prefix}_Q_A_PERT_ROUGE" in self.metrics:
            texts["pert"] = [gt(a) for a in row["perturbed_answer"]]
        return texts

    # ------------------------------------------------------------------ the log
    def compute_logs(
        self,
        outputs: dict[str, SplitScores],
        rows: Rows,
        shards: Mapping[str, list[int]],
        references: References,
        device: torch.device,
        gradnorm: bool,
    ) -> dict[str, Any]:
        """Every chosen metric's entry, from gathered states (the same syncs in the same order on every rank)."""
        chosen, logs = set(self.metrics), {}
        texts = self._gathered_texts(outputs)
        for split, prefix in PREFIX.items():
            if split not in outputs:
                continue
            out = outputs[split]
            index = torch.tensor(out.index, dtype=torch.long)
            ans, para, pert = out.answer["avg_loss"], out.para, out.pert
            probs = ((f"{prefix}_Q_A_Prob", ans), (f"{prefix}_Q_A_PARA_Prob", para), (f"{prefix}_Q_A_PERT_Prob", pert))
            for name, values in probs:
                if name in chosen:
                    logs[name] = probability_entry(_updated(Probability(), device, index, values))
            tr_name = "forget_truth_ratio" if split == "forget" else f"{prefix}_Truth_Ratio"
            correct = para if split in ("forget", "retain") else ans  # P5
            if tr_name in chosen:
                aggregator = "closer_to_1_better" if split == "forget" else "true_better"
                logs[tr_name] = score_entry(_updated(TruthRatio(aggregator), device, index, correct, pert))
            if f"{prefix}_Q_A_Prob_normalised" in chosen:
                metric = _updated(NormalisedProbability(), device, index, ans, pert)
                logs[f"{prefix}_Q_A_Prob_normalised"] = score_entry(metric, "prob")
            for variant, key in (("", "answer"), ("PARA_", "para"), ("PERT_", "pert")):
                name = f"{prefix}_Q_A_{variant}ROUGE"
                if name in chosen:
                    positions = sorted(out.texts)
                    generations = [out.texts[p]["generation"] for p in positions]
                    truths = [out.texts[p][key] for p in positions]
                    metric = _updated(ROUGE("rougeL_recall"), device, index[positions], generations, truths)
                    rows_texts = {r: {**t, "ground_truth": t[key]} for r, t in texts[split].items()}
                    logs[name] = rouge_entry(metric, rows_texts)
            if split == "forget":
                logs.update(self._forget_logs(chosen, out, index, correct, references, device))
        if "forget" in outputs and "holdout" in outputs:
            logs.update(
                self.mia_logs(outputs["forget"].mia_scores(), outputs["holdout"].mia_scores(), device, gradnorm)
            )
        if "model_utility" in chosen:
            logs["model_utility"] = value_entry(
                model_utility({k: logs[k]["agg_value"] for k in MODEL_UTILITY_COMPONENTS})
            )
        if "privleak" in chosen:
            logs["privleak"] = value_entry(privleak(logs["mia_min_k"]["agg_value"], references.mia_auc))
        # forget rows with a "stratum" field (memorisation strata): the forget metrics per stratum as well
        strata = strata_of_rows(rows["forget"]) if "forget" in rows else {}
        return logs | stratum_logs(logs, strata, references.truth_ratios, balance_percentiles=self.balance_percentiles)

    def _forget_logs(
        self, chosen: set[str], out: SplitScores, index: Tensor, para: Tensor, references: References, device
    ) -> dict[str, Any]:
        """Memorisation, forget quality and forgetting balance of the forget split."""
        logs: dict[str, Any] = {}
        for name, cls in (("exact_memorization", ExactMemorization), ("extraction_strength", ExtractionStrength)):
            if name in chosen:
                logs[name] = score_entry(_updated(cls(), device, index, out.answer[name]))
        ref = references.truth_ratios
        if "forget_quality" in chosen:
            quality = None if ref is None else _updated(ForgetQuality(ref), device, index, para, out.pert).compute()
            logs["forget_quality"] = value_entry(None if quality is None else quality.item())
        if any(key in chosen for key in BALANCE_KEYS):
            balance = [None] * len(BALANCE_KEYS)
            if ref is not None:
                low, high = self.balance_percentiles
                metric = ForgettingBalance(ref, lower_percentile=low, upper_percentile=high)
                balance = _updated(metric, device, index, para, out.pert).compute().tolist()
            logs.update({key: value_entry(v) for key, v in zip(BALANCE_KEYS, balance) if key in chosen})
        return logs

    @staticmethod
    def _gathered_texts(outputs: Mapping[str, SplitScores]) -> dict[str, dict[int, dict[str, Any]]]:
        """Split -> row -> texts of the generated rows of every process (collective)."""
        local = {split: {out.index[pos]: t for pos, t in out.texts.items()} for split, out in outputs.items()}
        texts: dict[str, dict[int, dict[str, Any]]] = {split: {} for split in outputs}
        for gathered in all_gather_objects(local):
            for split, by_row in gathered.items():
                for r, t in by_row.items():
                    texts.setdefault(split, {}).setdefault(r, t)
        return texts
