"""Fitting: Pyro's SVI over interleaved labelled and unlabelled batches, checkpoints, the fused
optimiser and data-parallel training."""

from pyro_mmt.training.optim import MultiTensorAdam
from pyro_mmt.training.svi import (
    Checkpoint,
    TrainingDivergedError,
    batch_to,
    load_checkpoint,
    load_weights,
    predict_proba,
    save_checkpoint,
    train,
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
]
