"""Pure tensor code of the unlearning objectives: base forget losses, retain losses and aggregators.

Every method is a composition ``UnlearningObjective(forget_loss, aggregator, retain_loss, gamma=, alpha=)``; the
reference code's nine trainer classes (NPO/SimNPO/SatImp x none/G/DV) are nine combinations of these names.
"""

import torch

from baldro_pl.objectives.aggregators import BalDRODV, BalDROG, Mean, dv_aggregate
from baldro_pl.objectives.base import (
    Aggregated,
    Aggregator,
    ForgetLoss,
    ForgetLosses,
    LogitForgetLoss,
    RetainLoss,
    Selection,
)
from baldro_pl.objectives.forget import (
    NPO,
    WGA,
    GradAscent,
    SatImp,
    SimNPO,
    npo_loss,
    satimp_token_loss,
    simnpo_loss,
    wga_token_loss,
)
from baldro_pl.objectives.logit_losses import CEU, UNDIAL, ceu_token_loss, undial_token_loss
from baldro_pl.objectives.logprobs import TokenLogProbs, token_logprobs
from baldro_pl.objectives.objective import ObjectiveOutput, UnlearningObjective
from baldro_pl.objectives.preference import AlternateForgetLoss, IdkDPO, IdkNLL, dpo_loss
from baldro_pl.objectives.representation import RMU, EmbedDiff, activation_mse, rmu_direction
from baldro_pl.objectives.retain import KL, NLL, kl_retain_loss, nll_from_logprobs, nll_retain_loss

# Modules save these objects in their hyperparameters; let torch.load(weights_only=True) restore them from checkpoints.
torch.serialization.add_safe_globals(
    [
        GradAscent,
        NPO,
        SimNPO,
        SatImp,
        WGA,
        CEU,
        UNDIAL,
        IdkNLL,
        IdkDPO,
        RMU,
        EmbedDiff,
        NLL,
        KL,
        Mean,
        BalDRODV,
        BalDROG,
    ]
)

__all__ = [
    "CEU",
    "KL",
    "NLL",
    "NPO",
    "RMU",
    "UNDIAL",
    "WGA",
    "AlternateForgetLoss",
    "Aggregated",
    "Aggregator",
    "BalDRODV",
    "BalDROG",
    "EmbedDiff",
    "ForgetLoss",
    "ForgetLosses",
    "GradAscent",
    "IdkDPO",
    "IdkNLL",
    "LogitForgetLoss",
    "Mean",
    "ObjectiveOutput",
    "RetainLoss",
    "SatImp",
    "Selection",
    "SimNPO",
    "TokenLogProbs",
    "UnlearningObjective",
    "activation_mse",
    "ceu_token_loss",
    "dpo_loss",
    "dv_aggregate",
    "kl_retain_loss",
    "nll_from_logprobs",
    "nll_retain_loss",
    "npo_loss",
    "rmu_direction",
    "satimp_token_loss",
    "simnpo_loss",
    "token_logprobs",
    "undial_token_loss",
    "wga_token_loss",
]
