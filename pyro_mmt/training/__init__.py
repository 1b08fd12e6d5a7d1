"""Fitting: Pyro's SVI over interleaved labelled and unlabelled batches, checkpoints, the fused
optimiser, independent fits in parallel processes and data-parallel training."""

from pyro_mmt.training.optim import MultiTensorAdam
from pyro_mmt.training.parallel import FittedMember, MemberHooks, fit_members
from pyro_mmt.training.svi import (
    Checkpoint,
    TrainingDivergedError,
    batch_to,
    default_optimizer,
    load_checkpoint,
    load_weights,
    predict_proba,
    save_checkpoint,
    train,
    warmup_weight,
)

__all__ = [
    "train",
    "predict_proba",
    "TrainingDivergedError",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "batch_to",
    "MultiTensorAdam",
    "default_optimizer",
    "fit_members",
    "MemberHooks",
    "FittedMember",
    "warmup_weight",
]
