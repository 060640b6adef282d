"""The evaluation template that the TOFU and MUSE suites share: :class:`Suite` and its result.

``Suite.evaluate(model, rows)`` is the one evaluation path: check the rows, read the reference values from the retain
(retrain) model's log, take this process's shard of every split, run the model in eval mode (its train/eval modes are
restored afterwards), turn the outputs into gathered torchmetrics states and the log, and return an
:class:`EvaluationResult`. A suite says what is particular to it through four hooks (:meth:`Suite.check_rows`,
:meth:`Suite.scored_splits`, :meth:`Suite.run_model` and :meth:`Suite.compute_logs`).

A suite encodes rows with the datamodule's :class:`~baldro_pl.datamodules.encoder.RowEncoder`, handed over once with
:meth:`Suite.connect` (the :class:`~baldro_pl.metrics.callbacks.Evaluation` callback does it at setup).
"""

from __future__ import annotations

import contextlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from baldro_pl.datamodules.encoder import RowEncoder
from baldro_pl.datamodules.formatting import PromptFormat
from baldro_pl.distributed import rank_world, shard_indices
from baldro_pl.metrics.functional.balance import BALANCE_KEYS
from baldro_pl.metrics.likelihood import CallContext, model_device
from baldro_pl.metrics.logs import ReferenceLog, mia_entry, summarize_logs, value_entry
from baldro_pl.metrics.mia import MIA_ATTACKS, MIA_SCORE_KEYS, MIAAUC

Rows = Mapping[str, Sequence[Any]]


@dataclass
class EvaluationResult:
    """The outcome of a suite run.

    Attributes:
        logs: open-unlearning layout ``{metric: {"agg_value", "value_by_index", ...}}`` with string indices, exactly
            what ``*_EVAL.json`` holds.
        summary: ``{metric: agg_value}`` for the metrics with a value (``*_SUMMARY.json``).
        warnings: why some requested values are None (e.g. no reference log for forget quality).
    """

    logs: dict[str, Any]
    summary: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_logs(cls, logs: dict[str, Any], warnings: Iterable[str] = ()) -> EvaluationResult:
        """Build the summary from the logs."""
        return cls(logs=logs, summary=summarize_logs(logs), warnings=list(warnings))


@dataclass
class References:
    """What the retain (retrain) model's log contributes: its forget truth ratios and its min-k AUC (or None)."""

    truth_ratios: np.ndarray | None = None
    mia_auc: float | None = None


@dataclass(frozen=True)
class ModelRun:
    """How the model is called: the context around every call, ``generate``'s ``synced_gpus``, whether gradnorm runs."""

    call_context: CallContext
    synced_gpus: bool
    gradnorm: bool


def resolve_metrics(
    requested: Sequence[str] | None,
    exclude: Sequence[str],
    available: Sequence[str],
    depends: Mapping[str, Sequence[str]],
    aliases: Mapping[str, Sequence[str]] | None = None,
    *,
    suite: str,
) -> list[str]:
    """The metrics to compute: the request (None = all) minus ``exclude``, closed under dependencies, in suite order.

    Raises:
        ValueError: naming unknown metric names and listing the valid ones.
    """
    aliases = aliases or {}

    def expand(names: Iterable[str]) -> list[str]:
        out = []
        for name in names:
            out.extend(aliases.get(name, [name]))
        unknown = [n for n in out if n not in available]
        if unknown:
            raise ValueError(f"unknown {suite} metric(s) {unknown}; choose from {list(available) + list(aliases)}")
        return out

    chosen = set(expand(available if requested is None else requested)) - set(expand(exclude))
    stack = list(chosen)
    while stack:
        for dep in depends.get(stack.pop(), ()):
            if dep not in chosen:
                chosen.add(dep)
                stack.append(dep)
    return [name for name in available if name in chosen]


def require_at_least_one(**settings: int | None) -> None:
    """Refuse a count below 1 when a suite is built, not at its first evaluation (possibly after training).

    Raises:
        ValueError: ``<setting> must be >= 1, got <value>``.
    """
    for name, value in settings.items():
        if value is not None and not value >= 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")


class Suite(ABC):
    """A benchmark's evaluation: which metrics, how the model is run on the rows, how the log is laid out.

    Args:
        metrics: metric names to report (None = the whole suite); dependencies are added.
        exclude: names to leave out of the request (e.g. ``["mia_gradnorm"]``, the expensive one).
        retain_logs_path: the retain (retrain) model's ``*_EVAL.json``, or the loaded log: the reference of forget
            quality, forgetting balance and privleak. Without it those say why they are None or differ.
        mia_k: the min-k / min-k++ fraction (0.4).
        gradnorm_p: the norm of ``mia_gradnorm`` (1, 2 or inf).
        sort_by_length: batch rows of similar length together (less padding; P13 numerics aside, same results).
    """

    #: The suite's name, in file names (``<name>_EVAL.json``) and messages.
    name: ClassVar[str] = ""
    #: Metrics also logged as ``hp/<metric>`` (TensorBoard's HParams table).
    headline: ClassVar[tuple[str, ...]] = ()
    #: What the reference model is called in notes, and the note when privleak has no reference AUC.
    reference_model: ClassVar[str] = "retain"
    privleak_note: ClassVar[str] = "privleak uses the reference AUC 0.5: no retain_logs_path was given"
    #: Every metric of the suite, in log order; their dependencies; names that stand for several.
    available: ClassVar[tuple[str, ...]] = ()
    depends: ClassVar[Mapping[str, Sequence[str]]] = {}
    aliases: ClassVar[Mapping[str, Sequence[str]]] = {}

    def __init__(
        self,
        *,
        metrics: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        retain_logs_path: str | os.PathLike | Mapping[str, Any] | None = None,
        mia_k: float = 0.4,
        gradnorm_p: float = 2.0,
        sort_by_length: bool = True,
    ) -> None:
        #: the settings as given (``metrics``: the resolved list, dependencies included)
        self.requested_metrics = None if metrics is None else list(metrics)
        self.retain_logs_path = retain_logs_path
        self.metrics = resolve_metrics(metrics, exclude, self.available, self.depends, self.aliases, suite=self.name)
        self.reference = None if retain_logs_path is None else ReferenceLog(retain_logs_path)
        self.mia_k = mia_k
        self.gradnorm_p = gradnorm_p
        self.sort_by_length = sort_by_length
        self._encoder: RowEncoder | None = None
        self.forget_split: str | None = None

    @classmethod
    @abstractmethod
    def default_prompt_format(cls) -> PromptFormat:
        """The prompt format of the suite's published setup (for an encoder made without a datamodule)."""

    # ------------------------------------------------------------------ connection to the data
    def connect(self, encoder: RowEncoder, forget_split: str | None = None) -> Suite:
        """Hand the suite the datamodule's row encoder (and, for messages, the forget split's name); returns self."""
        self._encoder = encoder
        self.forget_split = forget_split
        return self

    @property
    def connected(self) -> bool:
        """Whether :meth:`connect` has given the suite an encoder."""
        return self._encoder is not None

    @property
    def encoder(self) -> RowEncoder:
        """The row encoder given to :meth:`connect`.

        Raises:
            RuntimeError: the suite is not connected yet.
        """
        if self._encoder is None:
            raise RuntimeError(
                f"{type(self).__name__} has no row encoder: call suite.connect(encoder=datamodule.encoder) or "
                "suite.connect(encoder=RowEncoder(tokenizer, prompt_format, max_length)) before evaluate"
            )
        return self._encoder

    # ------------------------------------------------------------------ the evaluation
    def evaluate(
        self,
        model: torch.nn.Module,
        rows: Rows,
        *,
        call_context: CallContext | None = None,
        synced_gpus: bool = False,
        allow_gradnorm: bool = True,
    ) -> EvaluationResult:
        """Evaluate ``model`` on ``rows`` and return the logs (collective in a process group: call on every rank).

        Args:
            model: a Hugging Face causal LM. Its train/eval modes and gradients are restored afterwards.
            rows: raw rows per split (see the suite's module docstring).
            call_context: factory of a context manager entered around every forward / generate call.
            synced_gpus: passed to ``generate`` (needed under FSDP).
            allow_gradnorm: False skips ``mia_gradnorm`` (value None, with a warning), e.g. under FSDP.
        """
        self.encoder  # noqa: B018 (fail before any work when the suite is not connected)
        self.check_rows(rows)
        notes: list[str] = []
        references = self.references(rows, notes)
        gradnorm = "mia_gradnorm" in self.metrics and allow_gradnorm
        if "mia_gradnorm" in self.metrics and not allow_gradnorm:
            notes.append("mia_gradnorm is None: gradnorm was not allowed in this run (FSDP)")
        rank, world = rank_world()
        shards = {split: shard_indices(len(rows[split]), rank, world) for split in self.scored_splits()}
        run = ModelRun(call_context or contextlib.nullcontext, synced_gpus, gradnorm)
        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()
            outputs = self.run_model(model, rows, shards, run)
        finally:
            for m, mode in modes.items():
                m.training = mode
        logs = self.compute_logs(outputs, rows, shards, references, model_device(model), gradnorm)
        ordered = {name: logs[name] for name in self.metrics if name in logs}  # the suite's order, then the rest
        logs = ordered | {name: entry for name, entry in logs.items() if name not in ordered}
        suite_log = logging.getLogger(type(self).__module__)
        for note in notes:
            suite_log.warning(note)
        return EvaluationResult.from_logs(logs, notes)

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def check_rows(self, rows: Rows) -> None:
        """Raise a clear error if a split or field the chosen metrics need is missing."""

    @abstractmethod
    def scored_splits(self) -> list[str]:
        """The splits this process evaluates a shard of."""

    @abstractmethod
    def run_model(self, model: torch.nn.Module, rows: Rows, shards: Mapping[str, list[int]], run: ModelRun) -> Any:
        """Every model call of the evaluation (scoring, generation, gradnorm) on this process's shards."""

    @abstractmethod
    def compute_logs(
        self,
        outputs: Any,
        rows: Rows,
        shards: Mapping[str, list[int]],
        references: References,
        device: torch.device,
        gradnorm: bool,
    ) -> dict[str, Any]:
        """The log entries of the chosen metrics (collective: the same sequence of syncs on every rank)."""

    # ------------------------------------------------------------------ shared pieces
    def references(self, rows: Rows, notes: list[str]) -> References:
        """The reference values the chosen metrics need (forget truth ratios, min-k AUC); a note per missing one."""
        needs_tr = any(m in self.metrics for m in ("forget_quality", *BALANCE_KEYS))
        truth_ratios, auc = None, None
        if self.reference is None:
            if needs_tr:
                notes.append(
                    f"forget_quality and forget_balance_* are None: no retain_logs_path (the retain model's "
                    f"{self.name}_EVAL.json on the same forget split) was given"
                )
            if "privleak" in self.metrics:
                notes.append(self.privleak_note)
            return References()
        if needs_tr:
            n_forget = len(rows["forget"]) if "forget" in rows else None
            split = self.forget_split or "forget"
            truth_ratios = self.reference.forget_truth_ratios(expected_rows=n_forget, split=split)
        if "privleak" in self.metrics:
            auc = self.reference.mia_min_k_auc()
        return References(truth_ratios, auc)

    def mia_logs(
        self,
        member: tuple[Sequence[int], Mapping[str, Any]],
        holdout: tuple[Sequence[int], Mapping[str, Any]],
        device: torch.device,
        gradnorm: bool,
    ) -> dict[str, Any]:
        """The chosen MIA attacks' entries from (index, scores) of the members and the holdout rows.

        The scores are keyed as :data:`~baldro_pl.metrics.mia.MIA_SCORE_KEYS` names them.
        """
        logs: dict[str, Any] = {}
        for attack in MIA_ATTACKS:
            if attack not in self.metrics:
                continue
            if attack == "mia_gradnorm" and not gradnorm:
                logs[attack] = value_entry(None)
                continue
            metric = MIAAUC().to(device)
            for (index, scores), is_member in ((member, True), (holdout, False)):
                metric.update(
                    torch.as_tensor(index, dtype=torch.long), scores[MIA_SCORE_KEYS[attack]], member=is_member
                )
            logs[attack] = mia_entry(metric)
        return logs

    # ------------------------------------------------------------------ notes in plain words
    def plain_note(self, note: str) -> str:
        """A note about a missing or changed value, said in plain words (unknown notes unchanged)."""
        reference = self.reference_model
        log_name = f"{self.name}_EVAL.json"
        if note.startswith("forget_quality and forget_balance_* are None"):
            return (
                "forget quality and the forgetting balance are not computed: both compare the model with the retain "
                f"model, and retain_logs_path (the retain model's {log_name} on the same forget split) is not set"
            )
        if note.startswith("privleak uses the reference AUC 0.5"):
            return (
                f"privleak is measured against an AUC of 0.5, not against the {reference} model's: retain_logs_path "
                f"(the {reference} model's {log_name}) is not set"
            )
        if note.startswith("mia_gradnorm is None"):
            return "mia_gradnorm is not computed under FSDP (gradient norms of sharded parameters)"
        return note

    def unexplained_missing(self, result: EvaluationResult) -> list[str]:
        """Reported metrics without a value that none of the result's notes accounts for."""
        explained: set[str] = set()
        for note in result.warnings:
            if note.startswith("forget_quality and forget_balance_*"):
                explained.add("forget_quality")
                explained.update(m for m in result.logs if m.startswith("forget_balance_"))
            elif note.startswith("mia_gradnorm"):
                explained.add("mia_gradnorm")
        return [m for m in result.logs if m not in result.summary and m not in explained]
