"""Fitting: Pyro's SVI over interleaved labelled and unlabelled batches, checkpoints, the fused
optimiser, independent fits in parallel processes and data-parallel training."""

from pyro_mmt.training.optim import MultiTensorAdam
from pyro_mmt.training.parallel import FittedMember, MemberHooks, fit_members
from pyro_mmt.training.svi import (
    AUTO_STEPS,
    Checkpoint,
    TrainingDivergedError,
    batch_to,
    calibrate_decision_shift,
    classifier_logits,
    default_optimizer,
    ensemble_log_proba,
    load_checkpoint,
    load_weights,
    needs_calibration,
    number_of_epochs,
    predict_proba,
    save_checkpoint,
    train,
    warmup_weight,
)

__all__ = [
    "train",
    "AUTO_STEPS",
    "calibrate_decision_shift",
    "needs_calibration",
    "classifier_logits",
    "ensemble_log_proba",
    "predict_proba",
    "number_of_epochs",
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
