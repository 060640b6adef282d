"""``UnlearningDataModule``: the contract every forget/retain datamodule follows.

What the training module and the metric callbacks rely on (keep these names):

* after ``setup("fit")``: ``tokenizer``, ``prompt_format``, ``max_length``, ``forget_dataset`` and
  ``retain_dataset`` (datasets of :class:`EncodedSample` whose ``index`` is the row number; ``retain_dataset`` is
  None only for a custom set without retain data), ``collator`` (a right-padding :class:`PadCollator`);
* :meth:`train_dataloader`: batches ``{"forget": {...}, "retain": {...}}``, each side as returned by
  :func:`pad_samples` (``input_ids``, ``attention_mask``, ``labels``, ``index``); pairing in :mod:`.pairing`;
* :meth:`reference_dataloader`: every forget sample once (this process's strided shard under data parallelism),
  in row order, right padded, to cache the reference log-likelihoods before the first step (design.md §3.2);
  ``reference_dataloader(alternate=True)``: the same rows with their alternative answers;
* with alternative answers (``alternate_answers``, TOFU and JSON datamodules; :mod:`.alternate`): ``alternate_dataset``
  (the forget rows' questions with one seeded "I don't know" answer each, ``index`` = forget row) and a second
  encoded side in every training batch, ``batch["forget"]["alternate"]`` (same keys, same rows, same order);
  without them the batches are exactly as before;
* :meth:`val_dataloader` / :meth:`test_dataloader`: ``[forget, retain]`` evaluation loaders of plain padded batches
  (dataloader 0 = forget, 1 = retain), as the modules' ``validation_step`` expects;
* :meth:`evaluation_rows`: raw rows of the benchmark's evaluation splits for the metric callbacks;
  ``benchmark``: ``"tofu"``, ``"muse"`` or ``"custom"``.

Subclasses implement :meth:`_build_forget`, :meth:`_build_retain`, :meth:`_load_evaluation_rows` and optionally
:meth:`_check_sources`, :meth:`_build_validation` and (for alternative answers) :meth:`_forget_qa_rows`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import PreTrainedTokenizerBase

from baldro_pl.datamodules.alternate import (
    alternate_answer_choice,
    alternate_fingerprint,
    encode_alternate_rows,
    read_alternate_answers,
)
from baldro_pl.datamodules.collate import PadCollator
from baldro_pl.datamodules.encoder import RowEncoder
from baldro_pl.datamodules.formatting import PromptFormat
from baldro_pl.datamodules.pairing import ForgetRetainCollator, ForgetRetainDataset, ForgetSampler, Pairing
from baldro_pl.datamodules.records import DataError
from baldro_pl.distributed import rank_world
from baldro_pl.hf import load_tokenizer


class ResumableDataLoader(DataLoader):
    """The training DataLoader: resumable mid-epoch through its datamodule, not through a state of its own.

    The position in the epoch is saved and restored by :meth:`UnlearningDataModule.state_dict` and
    :meth:`UnlearningDataModule.load_state_dict`, which Lightning restores in every path. The loader still speaks
    Lightning's stateful-dataloader protocol, with an empty state, so that Lightning knows a mid-epoch checkpoint
    resumes exactly (it warns about loaders that do not), and so that checkpoints written before issue 11, whose
    loop state holds a loader position as well, load as they are (that position is also in the datamodule's keys).
    """

    def state_dict(self) -> dict:
        """Nothing: the position is in the datamodule's state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Accept a saved loader state without using it: the datamodule's state positions the sampler."""


def _non_empty(dataset: Dataset, what: str) -> Dataset:
    """``dataset`` itself, or a :class:`DataError` naming its source when it has no sample."""
    if len(dataset) == 0:
        raise DataError(f"{getattr(dataset, 'source', what)}: the {what} is empty (0 rows); expected at least one row")
    return dataset


class UnlearningDataModule(pl.LightningDataModule):
    """Base LightningDataModule for forget/retain unlearning data.

    Args:
        tokenizer: a hub name or local directory (loaded with ``AutoTokenizer.from_pretrained``; works offline from
            a local directory) or a tokenizer object.
        prompt_format: how questions become prompts (None: :meth:`default_prompt_format`, ``[INST] q [/INST]``
            for QA sets, metrics-spec §1.1).
        max_length: token limit of a QA sample (prompt + answer, metrics-spec §1.2) or of a text window.
        batch_size: forget samples per batch and per process (the DRO micro-batch, ecosystem-notes §2.7).
        retain_batch_size: retain samples per batch and per process (None: ``batch_size``).
        eval_batch_size: batch size of the reference and evaluation loaders.
        num_workers: DataLoader worker processes.
        seed: seed of the forget order and of the retain draws (independent of the global RNG).
        pairing: ``"random"`` retain draws with replacement (open-unlearning) or ``"cycle"`` through seeded
            permutations of the retain set.
        shuffle: shuffle the forget order each epoch (seeded); False keeps row order.
        pad_token: pad token to set when the tokenizer has none (the CLI links it to the model's ``pad_token``).
        pad_token_fallback_eos: without ``pad_token``, pad with EOS when the tokenizer has no pad token (logged), as
            open-unlearning does; False raises instead.
    """

    benchmark: str = "custom"

    def __init__(
        self,
        *,
        tokenizer: str | PreTrainedTokenizerBase,
        prompt_format: PromptFormat | None = None,
        max_length: int = 512,
        batch_size: int = 8,
        retain_batch_size: int | None = None,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        pairing: Literal["random", "cycle"] = "random",
        shuffle: bool = True,
        pad_token: str | None = None,
        pad_token_fallback_eos: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("max_length", max_length),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if retain_batch_size is not None and (not isinstance(retain_batch_size, int) or retain_batch_size < 1):
            raise ValueError(f"retain_batch_size must be a positive integer or None, got {retain_batch_size!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if pairing not in ("random", "cycle"):
            raise ValueError(f"pairing must be 'random' or 'cycle', got {pairing!r}")
        if prompt_format is not None and not isinstance(prompt_format, PromptFormat):
            raise ValueError(f"prompt_format must be a PromptFormat or None, got {type(prompt_format).__name__}")
        self.tokenizer_source = tokenizer
        self.pad_token = pad_token
        self.pad_token_fallback_eos = pad_token_fallback_eos
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.prompt_format = prompt_format if prompt_format is not None else self.default_prompt_format()
        self.max_length = max_length
        self.batch_size = batch_size
        self.retain_batch_size = batch_size if retain_batch_size is None else retain_batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pairing: Pairing = pairing
        self.shuffle = shuffle
        self.collator: PadCollator | None = None
        self.forget_dataset: Dataset | None = None
        self.retain_dataset: Dataset | None = None
        self._retain_built = False
        self._validation: list[Dataset] | None = None
        self._evaluation_rows: dict[str, list[dict]] | None = None
        self._train_sampler: ForgetSampler | None = None
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) restored for the current fit
        # alternative answers: the subclasses that support them set ``alternate_answers`` (a file) in __init__
        self.alternate_answers: str | None = None
        self.alternate_answer_key: str = "answer"
        self.alternate_dataset: Dataset | None = None
        self.alternate_choice: list[int] | None = None  # row i's answer is alternate_texts[alternate_choice[i]]
        self.alternate_texts: list[str] | None = None
        self._alternate_fingerprint: int | None = None
        self._checkpoint_alternate_fingerprint: int | None = None

    # ------------------------------------------------------------------ hooks for subclasses
    @classmethod
    def default_prompt_format(cls) -> PromptFormat:
        """Prompt format used when ``prompt_format`` is None (the Llama-2 chat form, metrics-spec §1.1)."""
        return PromptFormat.llama2_chat()

    def _check_sources(self) -> None:
        """Cheap checks that the training data exist, run before any tokenisation (default: none)."""

    def _build_forget(self) -> Dataset:
        """Tokenised forget set (items: :class:`EncodedSample` with ``index`` = row)."""
        raise NotImplementedError

    def _build_retain(self) -> Dataset | None:
        """Tokenised retain set, or None when there is none."""
        raise NotImplementedError

    def _load_evaluation_rows(self) -> dict[str, list[dict]]:
        """Raw rows of the evaluation splits (empty for sets without any)."""
        raise NotImplementedError

    def _forget_qa_rows(self) -> tuple[list[dict], str, str]:
        """``(rows, label, question_key)`` of the forget set's QA rows, for alternative answers.

        Raises:
            ValueError: this datamodule has no QA forget rows (the default).
        """
        raise ValueError(f"{type(self).__name__} does not support alternate_answers (it needs QA forget rows)")

    def _build_validation(self) -> list[Dataset]:
        """Datasets of the ``[forget, retain]`` evaluation loaders (default: the training sets)."""
        self._ensure_train_sets()
        return [d for d in (self.forget_dataset, self.retain_dataset) if d is not None]

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Load the tokenizer and tokenise what the stage needs; data problems surface here, before any step.

        ``fit``: the forget and retain training sets (the evaluation rows load on first use: the metric callbacks
        ask for them in their own ``setup``, still before training; so does :meth:`val_dataloader`).
        ``validate`` / ``test``: the evaluation rows and the evaluation sets; no retain training set.
        Errors in the data are ``DataError`` (a ``ValueError``) naming the file, row and field.
        """
        self._ensure_tokenizer()
        if stage in (None, "fit"):
            self._resume_at = None  # a new fit; a checkpoint restored after this hook sets the position again
            self._ensure_train_sets()
        if stage in (None, "validate", "test"):
            self.evaluation_rows()
            if self._validation is None:
                self._validation = self._build_validation()

    def _ensure_tokenizer(self) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(
                self.tokenizer_source,
                pad_token=self.pad_token,
                pad_token_fallback_eos=self.pad_token_fallback_eos,
                setting="data.tokenizer",
            )
            self.collator = PadCollator(self.tokenizer.pad_token_id, side="right")

    def _ensure_train_sets(self) -> None:
        self._ensure_tokenizer()
        if self.forget_dataset is None:
            self._check_sources()
            if self.alternate_answers is not None:  # read (and checked) before any tokenisation
                self.alternate_texts = read_alternate_answers(
                    self.alternate_answers, answer_key=self.alternate_answer_key
                )
            self.forget_dataset = _non_empty(self._build_forget(), "forget set")
            if self.alternate_answers is not None:
                self.alternate_dataset = self._build_alternate()
        if not self._retain_built:
            retain = self._build_retain()
            self.retain_dataset = None if retain is None else _non_empty(retain, "retain set")
            self._retain_built = True

    def _build_alternate(self) -> Dataset:
        """The forget rows' questions, each with its seeded alternative answer (:mod:`.alternate`)."""
        rows, label, question_key = self._forget_qa_rows()
        if len(rows) != len(self.forget_dataset):
            raise DataError(
                f"{label}: {len(rows)} forget rows but {len(self.forget_dataset)} forget samples; alternate_answers "
                "needs one sample per forget row"
            )
        self.alternate_choice = alternate_answer_choice(len(rows), len(self.alternate_texts), self.seed)
        chosen = [self.alternate_texts[k] for k in self.alternate_choice]
        self._alternate_fingerprint = alternate_fingerprint(chosen)
        self._check_alternate_fingerprint()
        return encode_alternate_rows(
            rows,
            self.alternate_texts,
            self.alternate_choice,
            self.tokenizer,
            self.prompt_format,
            source=f"{label} (alternate answers from {self.alternate_answers})",
            question_key=question_key,
            max_length=self.max_length,
        )

    def _check_alternate_fingerprint(self) -> None:
        """Raise if the resumed checkpoint was trained with other alternative answers than this run draws."""
        saved, current = self._checkpoint_alternate_fingerprint, self._alternate_fingerprint
        if saved is not None and current is not None and saved != current:
            raise DataError(
                f"{self.alternate_answers}: the alternative answers drawn for the forget rows differ from those of the "
                "checkpoint being resumed (another alternate_answers file, seed or forget set); its cached reference "
                "log-likelihoods of the alternate answers would not match. Resume with the same data and seed."
            )

    # ------------------------------------------------------------------ distribution
    def data_parallel_rank(self) -> tuple[int, int]:
        """``(rank, world_size)`` over data-parallel processes (the order of :func:`baldro_pl.distributed.rank_world`).

        From the attached Trainer's strategy, else from ``torch.distributed`` when initialised, else ``(0, 1)``.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            kwargs = trainer.distributed_sampler_kwargs
            if kwargs:
                return int(kwargs["rank"]), int(kwargs["num_replicas"])
            return 0, 1
        return rank_world()

    # ------------------------------------------------------------------ loaders
    def train_dataset(self) -> ForgetRetainDataset:
        """The forget/retain pairing dataset (keys ``(forget_index, epoch)``, see :mod:`.pairing`)."""
        self._ensure_train_sets()
        per_forget = math.ceil(self.retain_batch_size / self.batch_size)
        return ForgetRetainDataset(
            self.forget_dataset,
            self.retain_dataset,
            seed=self.seed,
            pairing=self.pairing,
            retain_per_forget=per_forget,
            alternate=self.alternate_dataset,
        )

    def train_sampler(self) -> ForgetSampler:
        """The seeded, sharded forget sampler for this process."""
        self._ensure_train_sets()
        rank, world = self.data_parallel_rank()
        sampler = ForgetSampler(
            len(self.forget_dataset),
            batch_size=self.batch_size,
            seed=self.seed,
            shuffle=self.shuffle,
            num_replicas=world,
            rank=rank,
        )
        self._train_sampler = sampler
        self._position_sampler()
        return sampler

    # ------------------------------------------------------------------ mid-epoch resume
    def state_dict(self) -> dict[str, int]:
        """Where training stands within its epoch (saved in every checkpoint by Lightning).

        With alternative answers, also ``alternate_answers_fingerprint``, a digest of the answer each forget row got,
        so that a resume with another file or seed fails instead of pairing the checkpoint's cached reference
        log-likelihoods with other answers.

        This is the one mid-epoch resume mechanism: resuming from a checkpoint taken mid-epoch (for example the one
        written when SIGTERM stops a run) continues with the next batch of the same seeded order instead of replaying
        the epoch. Lightning's stateful-dataloader path cannot carry the position: it hands a loader its state only
        when it builds the loader after restoring the loop, while ``estimated_stepping_batches`` (the modules'
        learning-rate schedules) and ``schedule="hf_trainer"`` build it before. A checkpoint's datamodule state is
        restored in every path, before the loader is built or after it, and again when Lightning rebuilds the loader
        (``reload_dataloaders_every_n_epochs``); see :meth:`load_state_dict`.
        """
        state = {}
        if self._train_sampler is not None:
            state = {"train_epoch": int(self._train_sampler.epoch), "train_batches_done": self._batches_done()}
        if self._alternate_fingerprint is not None:
            state["alternate_answers_fingerprint"] = self._alternate_fingerprint
        return state

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip, in the resumed epoch, the batches the checkpointed run had already trained on.

        The position holds for the rest of this fit: the sampler built already (when the loader was built before
        the checkpoint was restored) and every sampler built later skip those batches on their first pass if it is
        the resumed epoch (:meth:`ForgetSampler.resume_from`).

        Raises:
            DataError: the checkpoint's alternative answers differ from this run's (see :meth:`state_dict`).
        """
        if "alternate_answers_fingerprint" in state:
            self._checkpoint_alternate_fingerprint = int(state["alternate_answers_fingerprint"])
            self._check_alternate_fingerprint()
        if "train_epoch" not in state:
            return
        self._resume_at = (int(state["train_epoch"]), int(state["train_batches_done"]))
        self._position_sampler()

    def _position_sampler(self) -> None:
        """Hand the restored position, if any, to the current training sampler."""
        if self._resume_at is not None and self._train_sampler is not None:
            epoch, done = self._resume_at
            self._train_sampler.resume_from(epoch, done * self.batch_size)

    def train_dataloader(self) -> DataLoader:
        """Batches ``{"forget": {...}, "retain": {...}}``; one epoch walks this process's forget shard once.

        The loader is resumable: a checkpoint taken mid-epoch (e.g. when SIGTERM stops the run) records how many
        batches of the epoch were trained on, and the resumed run continues with the next one.
        """
        self._ensure_train_sets()
        collate = ForgetRetainCollator(self.tokenizer.pad_token_id, self.batch_size, self.retain_batch_size)
        return self._training_loader(self.train_dataset(), collate)

    def _training_loader(self, dataset: Dataset, collate_fn: Callable) -> DataLoader:
        """A training loader over ``dataset`` in the order of :meth:`train_sampler` (which resumes mid-epoch)."""
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.train_sampler(),
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def _batches_done(self) -> int:
        """Training batches completed in the current epoch (from the attached Trainer's progress counters)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    def reference_dataloader(self, *, alternate: bool = False) -> DataLoader:
        """Forget samples in row order, each exactly once overall, right padded, ``eval_batch_size`` per batch.

        Under data parallelism each process gets the rows ``rank::world_size`` (disjoint shards whose union is the
        forget set; the last shards may be one row shorter).

        Args:
            alternate: the same rows with their alternative answers (``alternate_dataset``; ``index`` = forget row),
                to cache the reference log-likelihood of the alternate answers too (IdkDPO).

        Raises:
            ValueError: ``alternate`` without ``alternate_answers``.
        """
        self._ensure_train_sets()
        dataset = self.forget_dataset
        if alternate:
            if self.alternate_dataset is None:
                raise ValueError(
                    f"{type(self).__name__}: reference_dataloader(alternate=True) needs alternative answers; set "
                    "data.alternate_answers (e.g. the idontknow.jsonl of TOFU)"
                )
            dataset = self.alternate_dataset
        rank, world = self.data_parallel_rank()
        rows = list(range(len(dataset)))[rank::world]
        return self._plain_loader(Subset(dataset, rows))

    def val_dataloader(self) -> list[DataLoader]:
        """``[forget, retain]`` loaders of plain right-padded batches (no retain loader when there is no retain)."""
        self._ensure_tokenizer()
        if self._validation is None:
            self._validation = self._build_validation()
        return [self._plain_loader(d) for d in self._validation]

    def test_dataloader(self) -> list[DataLoader]:
        """Same loaders as :meth:`val_dataloader`."""
        return self.val_dataloader()

    def _plain_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collator,
            num_workers=self.num_workers,
        )

    # ------------------------------------------------------------------ evaluation rows
    def evaluation_rows(self) -> dict[str, list[dict]]:
        """Raw rows of the evaluation splits (plain dicts, original field names), loaded once and cached.

        TOFU: ``forget``, ``retain``, ``real_authors``, ``world_facts``, ``holdout`` (metrics-spec §2.1);
        MUSE: ``verbmem_forget``, ``knowmem_{forget,retain}_qa[_icl]``, ``privleak_{forget,holdout}`` (§3.1).
        """
        if self._evaluation_rows is None:
            self._evaluation_rows = self._load_evaluation_rows()
        return self._evaluation_rows

    @property
    def encoder(self) -> RowEncoder:
        """The encoder of the evaluation rows (tokenizer, prompt format, ``max_length``) that the suites connect to.

        One per tokenizer, so its tokenisations are kept across the evaluations of a run.
        """
        self._ensure_tokenizer()
        encoder = getattr(self, "_row_encoder", None)
        if encoder is None or encoder.tokenizer is not self.tokenizer:
            encoder = self._row_encoder = RowEncoder(self.tokenizer, self.prompt_format, self.max_length)
        return encoder
