"""LightningModules: UnlearningModule (forget + retain) and FinetuneModule (makes target and retain models)."""

from baldro_pl.modules.base import CausalLMModule
from baldro_pl.modules.finetune import FinetuneModule
from baldro_pl.modules.optim import AdamWFp32State
from baldro_pl.modules.reference import ReferenceCache, compute_reference_nll
from baldro_pl.modules.unlearning import UnlearningModule

__all__ = [
    "AdamWFp32State",
    "CausalLMModule",
    "FinetuneModule",
    "ReferenceCache",
    "UnlearningModule",
    "compute_reference_nll",
]
