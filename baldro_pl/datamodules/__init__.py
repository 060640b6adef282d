"""LightningDataModules and tokenisation for forget/retain unlearning data (TOFU, MUSE, custom files)."""

from baldro_pl.datamodules.alternate import alternate_answer_choice, read_alternate_answers
from baldro_pl.datamodules.base import UnlearningDataModule
from baldro_pl.datamodules.collate import PadCollator, pad_samples
from baldro_pl.datamodules.encoding import (
    EncodedDataset,
    chunk_corpus,
    encode_completion_rows,
    encode_qa_rows,
    encode_rows,
)
from baldro_pl.datamodules.finetune import FinetuneDataModule
from baldro_pl.datamodules.formatting import (
    EncodedSample,
    PromptFormat,
    encode_completion,
    encode_prompt,
    encode_qa,
)
from baldro_pl.datamodules.json_data import JsonDataModule
from baldro_pl.datamodules.muse import MUSEDataModule
from baldro_pl.datamodules.pairing import ForgetRetainCollator, ForgetRetainDataset, ForgetSampler
from baldro_pl.datamodules.records import DataError, load_rows, read_records
from baldro_pl.datamodules.row_format import RowFormat
from baldro_pl.datamodules.synthetic import generate_synthetic_tofu, synthetic_texts, write_synthetic_tofu
from baldro_pl.datamodules.tofu import TOFUDataModule, load_tofu_split

__all__ = [
    "DataError",
    "EncodedDataset",
    "EncodedSample",
    "FinetuneDataModule",
    "ForgetRetainCollator",
    "ForgetRetainDataset",
    "ForgetSampler",
    "JsonDataModule",
    "MUSEDataModule",
    "PadCollator",
    "PromptFormat",
    "RowFormat",
    "TOFUDataModule",
    "UnlearningDataModule",
    "alternate_answer_choice",
    "chunk_corpus",
    "encode_completion",
    "encode_completion_rows",
    "encode_prompt",
    "encode_qa",
    "encode_qa_rows",
    "encode_rows",
    "generate_synthetic_tofu",
    "load_rows",
    "load_tofu_split",
    "pad_samples",
    "read_alternate_answers",
    "read_records",
    "synthetic_texts",
    "write_synthetic_tofu",
]
