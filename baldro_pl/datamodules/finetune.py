"""``FinetuneDataModule``: plain answer-only batches over one set, to make the target and retain models.

TOFU's target model is fine-tuned on ``full``, its retain model on ``retainXX`` (metrics-spec §2.1); the modules'
``FinetuneModule`` takes plain batches (``input_ids``, ``attention_mask``, ``labels``, ``index``) rather than
forget/retain pairs. The order is the seeded, sharded shuffle of :class:`~baldro_pl.datamodules.pairing.ForgetSampler`.
"""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset

from baldro_pl.datamodules.formatting import EncodedSample
from baldro_pl.datamodules.json_data import JsonDataModule


class EpochKeyedDataset(Dataset):
    """View of a dataset that accepts the ``(index, epoch)`` keys of ``ForgetSampler`` (the epoch is not needed)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> EncodedSample:
        return self.dataset[key if isinstance(key, int) else key[0]]


class FinetuneDataModule(JsonDataModule):
    """One training set, plain batches: e.g. ``train="<tofu dir>/full.jsonl"`` for TOFU's target model.

    A :class:`~baldro_pl.datamodules.JsonDataModule` whose forget set is the training set and which has no retain
    side, so ``reference_dataloader`` and the ``[train]`` evaluation loader work as for the other datamodules; only
    the training batches differ (plain padded batches instead of forget/retain pairs).

    Args:
        train: source of the training rows (local file, ``save_to_disk`` folder or hub dataset name).
        train_config: hub configuration (e.g. ``"full"`` for ``locuslab/TOFU``).
        train_split: hub split (or ``DatasetDict`` split).
        **kwargs: the :class:`~baldro_pl.datamodules.JsonDataModule` arguments (``row_format``, ...) and the
            :class:`UnlearningDataModule` arguments (``tokenizer``, ``prompt_format``, ``batch_size``, ...).
    """

    def __init__(
        self,
        *,
        train: str,
        train_config: str | None = None,
        train_split: str = "train",
        **kwargs,
    ) -> None:
        super().__init__(forget=train, forget_config=train_config, forget_split=train_split, **kwargs)
        if self.alternate_answers is not None:
            raise ValueError("FinetuneDataModule does not take alternate_answers (an unlearning setting)")
        self.train = train
        self.train_config = train_config
        self.train_split = train_split

    def train_dataloader(self) -> DataLoader:
        """Plain right-padded batches of the training set; each epoch a new seeded order, this process's shard."""
        self._ensure_train_sets()
        return self._training_loader(EpochKeyedDataset(self.forget_dataset), self.collator)
