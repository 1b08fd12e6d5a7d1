"""Training: Pyro's SVI over interleaved labelled and unlabelled mini-batches (the M2 pattern).

:func:`train` runs :class:`pyro.infer.SVI` with any model, guide, objective and Pyro optimiser.
Each mini-batch is all labelled or all unlabelled (see :class:`~pyro_mmt.data.InterleavedLoader`)
and its loss is scaled by ``num_data / batch_size`` with ``poutine.scale``, so a step's loss
estimates the whole group's and the objective is Σ_unlabelled L(x) + Σ_labelled L(x, y).
"""

from __future__ import annotations

import contextlib
import math
import pickle
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.util import torch_item, zero_grads
from pyro.optim import PyroOptim
from pyro.poutine.runtime import _MODULE_NAMESPACE_DIVIDER
from pyro.poutine.trace_messenger import TraceMessenger
from tqdm.auto import tqdm

from pyro_mmt.config import TrainingConfig
from pyro_mmt.data import Batch, InterleavedLoader, MultimodalDataset
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.infer.module_registration import fast_pyro_module

__all__ = [
    "TrainingDivergedError",
    "TrainingInterrupted",
    "Checkpoint",
    "train",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "calibrate_decision_shift",
    "needs_calibration",
    "classifier_logits",
    "ensemble_log_proba",
    "predict_proba",
    "batch_to",
    "default_optimizer",
    "warmup_weight",
]


#: An epoch with more steps than this gets a second progress bar over its steps.
STEP_BAR_MIN_STEPS = 50

#: With ``epochs="auto"``: the number of unlabelled mini-batches to aim for (between 10 and
#: 500 epochs).
AUTO_STEPS = 300


def number_of_epochs(epochs: int | str, dataset: MultimodalDataset, batch_size: int) -> int:
    """``epochs``, or for ``"auto"`` enough passes for about :data:`AUTO_STEPS` unlabelled
    mini-batches of ``batch_size`` rows, at least 10 and at most 500 (small data sets get
    more passes, large ones fewer)."""
    if epochs != "auto":
        return int(epochs)
    rows = int((~dataset.is_labelled).sum()) or len(dataset)
    per_epoch = math.ceil(rows / batch_size)
    return int(min(max(math.ceil(AUTO_STEPS / per_epoch), 10), 500))


class TrainingDivergedError(FloatingPointError):
    """The loss, or a value the model computes from the parameters, became NaN or infinite.

    Carries ``epoch`` and ``step`` (both counted from 1, as in the history), the ``loss`` (NaN
    when the step failed before a loss was computed) and ``checkpoint``, the path of the last
    good checkpoint (None when checkpoints were not requested or none was written yet); the
    checkpoint is never overwritten by a diverged epoch.
    """

    def __init__(self, epoch: int, step: int, loss: float, checkpoint: Path | None,
                 cause: str | None = None):
        self.epoch, self.step, self.loss, self.checkpoint = epoch, step, loss, checkpoint
        where = (
            f"the last good checkpoint is {checkpoint}"
            if checkpoint is not None
            else "no checkpoint was kept (pass checkpoint_dir to keep one)"
        )
        what = f"the loss was {loss}" if cause is None else cause
        self.cause = cause
        advice = (
            "Lower the learning rate (resume from the checkpoint with a smaller lr: "
            "train(..., resume=True) with a new optimiser, the estimator's resume=True with a "
            "smaller lr=, or `pyro-mmt train ... --resume --lr <smaller>`), standardise the data, "
            "or check sigma and nu."
            if checkpoint is not None
            else "Lower the learning rate, standardise the data, or check sigma and nu."
        )
        super().__init__(
            f"training diverged at epoch {epoch}, step {step}: {what}; {where}. {advice}"
        )

    def __reduce__(self):  # picklable, e.g. back from a worker process (with any attribute
        # set later, such as the ``member`` of pyro_mmt.training.parallel.fit_members)
        return (type(self), (self.epoch, self.step, self.loss, self.checkpoint, self.cause),
                self.__dict__)


class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C, i.e. ``KeyboardInterrupt``, or any ``KeyboardInterrupt``
    raised by a callback).

    A ``KeyboardInterrupt`` (so ``except KeyboardInterrupt`` still catches it) that carries
    ``epochs_done`` (the epochs completed and saved), ``checkpoint``, the path of the
    checkpoint written after the last complete epoch (None when checkpoints were not requested
    or no epoch completed), and ``advice``, how to continue (a caller such as the estimator
    replaces train's). Calling :func:`train` again with the same arguments and
    ``resume=True`` continues from it: the interrupted epoch is run again from its start, and
    the result equals an uninterrupted run.
    """

    def __init__(self, epochs_done: int, checkpoint: Path | None, advice: str | None = None):
        self.epochs_done, self.checkpoint, self.advice = epochs_done, checkpoint, advice
        if checkpoint is not None:
            how = (f"the checkpoint {checkpoint} holds the {epochs_done} complete epoch(s); "
                   f"{advice or 'call train again with resume=True to continue'}")
        else:
            how = ("no checkpoint was kept (pass checkpoint_dir to keep one), so a new run "
                   "starts from the beginning")
        super().__init__(f"training interrupted after {epochs_done} complete epoch(s): {how}")

    def __reduce__(self):
        return type(self), (self.epochs_done, self.checkpoint, self.advice), self.__dict__


@dataclass
class Checkpoint:
    """What :func:`save_checkpoint` stores: module weights, optimiser state, the next epoch, the
    history so far, and the torch RNG state, all plain tensors and numbers (safe to load with
    ``weights_only=True``)."""

    modules: dict[str, dict[str, torch.Tensor]]
    optimizer: dict
    epoch: int
    history: list[dict] = field(default_factory=list)
    rng_state: torch.Tensor | None = None
    best: dict | None = None
    lr: float | None = None


def save_checkpoint(path: str | Path, modules: dict[str, torch.nn.Module], optimizer: PyroOptim,
                    epoch: int, history: list[dict], best: dict | None = None) -> Path:
    """Write a checkpoint (atomically: a temporary file renamed into place). ``lr`` records the
    learning rate the optimiser was made with (its ``optim_args``), which :func:`train` compares
    on resume."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "modules": {name: m.state_dict() for name, m in modules.items()},
        "optimizer": optimizer.get_state(),
        "epoch": int(epoch),
        "history": history,
        "rng_state": torch.get_rng_state(),
        "best": best,
        "lr": optimizer_lr(optimizer),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, modules: dict[str, torch.nn.Module] | None = None,
                    optimizer: PyroOptim | None = None, map_location=None) -> Checkpoint:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (no pickle of arbitrary
    objects) and, when given, load it into ``modules`` and ``optimizer``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    state = load_weights(path, map_location=map_location)
    ckpt = Checkpoint(
        modules=state["modules"],
        optimizer=state["optimizer"],
        epoch=int(state["epoch"]),
        history=list(state["history"]),
        rng_state=state.get("rng_state"),
        best=state.get("best"),
        lr=state.get("lr"),
    )
    if modules is not None:
        unknown = sorted(set(modules) - set(ckpt.modules))
        if unknown:
            raise ValueError(
                f"modules: the checkpoint holds {sorted(ckpt.modules)}, found also {unknown}"
            )
        for name, module in modules.items():
            module.load_state_dict(ckpt.modules[name])
    if optimizer is not None:
        optimizer.set_state(ckpt.optimizer)
    return ckpt


def optimizer_lr(optimizer) -> float | None:
    """The learning rate a Pyro optimiser was made with (``optim_args["lr"]``, Adam's default
    1e-3 when absent), looking through wrappers such as
    :class:`~pyro_mmt.training.distributed.DistributedOptim`; None when its arguments are a
    callable (per-parameter arguments)."""
    inner = getattr(optimizer, "optim", None)
    if isinstance(inner, PyroOptim):
        return optimizer_lr(inner)
    args = getattr(optimizer, "pt_optim_args", None)
    if not isinstance(args, dict):
        return None
    return float(args.get("lr", 1e-3))


def _with_lr(state: dict, lr: float) -> dict:
    """An optimiser state (Pyro's per-parameter ``torch.optim`` state dicts, or
    :class:`~pyro_mmt.training.optim.MultiTensorAdam`'s) with its learning rate set to ``lr``;
    the moment estimates and step counts are kept."""
    if "format" in state and "params" in state:  # MultiTensorAdam
        return dict(state, lr=float(lr))
    out = {}
    for name, value in state.items():
        if isinstance(value, dict) and "param_groups" in value:
            value = dict(value, param_groups=[dict(g, lr=float(lr))
                                              for g in value["param_groups"]])
        out[name] = value
    return out


def _state_lr(state: dict) -> float | None:
    """The learning rate held in an optimiser state (the first parameter's), if any."""
    if "format" in state and "params" in state:
        return state.get("lr")
    for value in state.values():
        if isinstance(value, dict) and value.get("param_groups"):
            return float(value["param_groups"][0]["lr"])
    return None


def load_weights(path: str | Path, map_location=None):
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and plain containers
    only. A file holding any other object is refused with a ``ValueError`` (unpickling it could
    run arbitrary code), and so is a file torch cannot read (empty, truncated, another format);
    a missing file raises ``FileNotFoundError``, all naming ``path``."""
    if isinstance(path, str | Path) and not Path(path).exists():
        raise FileNotFoundError(f"path: no file at {path}")
    if isinstance(path, str | Path) and Path(path).is_dir():
        raise ValueError(f"path: {path} is a folder; expected a file written by torch.save")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"path: {path} holds objects other than tensors, numbers, strings and plain "
            "containers; refusing to load it (torch.load(weights_only=True)). Only load files "
            f"you trust. Details: {(str(error).splitlines() or [''])[0]}"
        ) from error
    except (RuntimeError, EOFError, UnicodeDecodeError, KeyError, OSError) as error:
        detail = (str(error).splitlines() or [""])[0][:200]
        raise ValueError(
            f"path: {path} is not a readable torch file (empty, truncated or another format); "
            f"expected a file written by torch.save. Details: {type(error).__name__}: {detail}"
        ) from error


def batch_to(batch: Batch, device: torch.device | str) -> Batch:
    """The batch on ``device`` (a no-op when it is there already)."""
    if batch.mask.device == torch.device(device):
        return batch
    return Batch(
        x={m: v.to(device, non_blocking=True) for m, v in batch.x.items()},
        mask=batch.mask.to(device, non_blocking=True),
        y=None if batch.y is None else batch.y.to(device, non_blocking=True),
        index=batch.index,
        cells={m: c.to(device, non_blocking=True) for m, c in batch.cells.items()},
    )


def predict_proba(module, dataset: MultimodalDataset, *, batch_size: int = 1024,
                  device: str | torch.device = "cpu", **kwargs) -> np.ndarray:
    """q(y | x) for every row of ``dataset`` from ``module.predict_proba(x, mask, **kwargs)``
    (e.g. a :class:`~pyro_mmt.models.MultimodalM2`), in batches, as a numpy array [N, K]."""
    out = []
    for start in range(0, len(dataset), batch_size):
        rows = np.arange(start, min(start + batch_size, len(dataset)))
        sub = dataset[rows]
        x = {m: v.to(device) for m, v in sub.x.items()}
        if sub.cells:  # missing cells (the argument only then: any module predicts complete rows)
            kwargs = {**kwargs, "cells": {m: c.to(device) for m, c in sub.cells.items()}}
        out.append(module.predict_proba(x, sub.mask.to(device), **kwargs).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def classifier_logits(module, dataset: MultimodalDataset, *, batch_size: int = 1024,
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """The classifier's logits f(x) for every row of ``dataset`` from
    ``module.classifier_logits(x, mask, cells)`` (e.g. a :class:`~pyro_mmt.models.
    MultimodalM2`), in batches: a tensor [N, K] on ``device``."""
    out = []
    for start in range(0, len(dataset), batch_size):
        sub = dataset[np.arange(start, min(start + batch_size, len(dataset)))]
        x = {m: v.to(device) for m, v in sub.x.items()}
        cells = {m: c.to(device) for m, c in sub.cells.items()}
        out.append(module.classifier_logits(x, sub.mask.to(device), cells))
    if not out:
        return torch.zeros(0, dataset.num_classes, device=device)
    return torch.cat(out)


def ensemble_log_proba(modules, dataset: MultimodalDataset, *, batch_size: int = 1024,
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """log q̄(y | x) [N, K] (float64, on the CPU) of an ensemble: the log of the modules' q(y |
    x) = softmax(f(x)) averaged (their classifiers' logits, :func:`classifier_logits`; no
    decision shift). For one module, its log-softmax."""
    logs = torch.stack([
        torch.log_softmax(classifier_logits(m, dataset, batch_size=batch_size,
                                            device=device).cpu().double(), -1)
        for m in modules])
    return torch.logsumexp(logs, 0) - math.log(len(modules))


def calibrate_decision_shift(module, dataset: MultimodalDataset, *, batch_size: int = 1024,
                             device: str | torch.device = "cpu") -> float | None:
    """For a module whose decision rule is learned after training (e.g. a
    :class:`~pyro_mmt.models.MultimodalM2` with ``decision_reference="predicted"``, the
    default, or ``decision_shift="auto"``), learn it from its classifier on the unlabelled
    rows of ``dataset`` (:meth:`~pyro_mmt.guides.PoETGuide.calibrate_decision_shift`; without
    unlabelled rows the predicted reference is uniform and an "auto" δ is 0) and return δ;
    None for a module without one."""
    if not hasattr(module, "calibrate_decision_shift") or not needs_calibration(module):
        return None
    unlabelled = ~dataset.is_labelled
    logits = (classifier_logits(module, dataset.unlabelled(), batch_size=batch_size,
                                device=device) if bool(unlabelled.any())
              else torch.zeros(0, dataset.num_classes))
    return module.calibrate_decision_shift(logits)


def needs_calibration(module) -> bool:
    """Whether ``module``'s config has a decision rule learned after training
    (:attr:`~pyro_mmt.config.ModelConfig.learned_decision`: the predicted reference shares, or
    ``decision_shift="auto"``); False for a module without such a config."""
    return bool(getattr(getattr(module, "config", None), "learned_decision", False))


#: Gradient clamp of the default optimiser (``pyro.optim.ClippedAdam``'s default ``clip_norm``).
DEFAULT_CLIP_VALUE = 10.0


def warmup_weight(progress: float) -> float:
    """The ramp-up exp(−5 (1 − p)²) at ``progress`` p (clipped to [0, 1]): exp(−5) ≈ 0.0067
    at the start, 1 from p = 1 on (Laine & Aila, ICLR 2017)."""
    p = min(max(float(progress), 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - p) ** 2)


def default_optimizer(lr: float = TrainingConfig.lr) -> PyroOptim:
    """The optimiser :func:`train` uses when given none: one fused Adam over every parameter
    (:class:`~pyro_mmt.training.optim.MultiTensorAdam`) with each gradient element clamped to
    ±10, the update of ``pyro.optim.ClippedAdam({"lr": lr})`` (up to where ε enters; see
    :class:`~pyro_mmt.training.optim.MultiTensorAdam`) in one kernel instead of a Python loop
    over the tensors.

    :param float lr: the learning rate.
    """
    from pyro_mmt.training.optim import MultiTensorAdam

    return MultiTensorAdam({"lr": float(lr), "clip_value": DEFAULT_CLIP_VALUE})



def shows_progress(progress: bool) -> bool:
    """Whether to draw progress bars: asked for, and on a terminal or in a notebook (a log
    file or a pipe gets no bars, which would fill it with carriage returns)."""
    if not progress:
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty()) or "ipykernel" in sys.modules


def train(
    model: Callable,
    guide: Callable,
    dataset: MultimodalDataset,
    *,
    objective: pyro.infer.ELBO,
    optimizer: PyroOptim | None = None,
    epochs: int | str = TrainingConfig.epochs,
    batch_size: int = TrainingConfig.batch_size,
    labelled_batch_size: int | None = TrainingConfig.labelled_batch_size,
    seed: int = TrainingConfig.seed,
    validation: MultimodalDataset | None = None,
    predictor: Callable | None = None,
    patience: int | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    modules: dict[str, torch.nn.Module] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    validate: bool | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    unlabelled_warmup: float = TrainingConfig.unlabelled_warmup,
    desc: str = "training",
    choose_decision_shift: bool = True,
) -> pd.DataFrame:
    """Train ``model``/``guide`` with SVI and return the per-epoch history.

    :param model: the model callable ``model(x, mask, y)`` (e.g. ``m2.model`` of a :class:`~pyro_mmt.models.MultimodalM2`).
    :param guide: the guide callable with the same arguments.
    :param dataset: training data (y = −1 for unlabelled rows).
    :param objective: a Pyro ELBO (``GammaPowerELBO``, ``TraceEnum_ELBO``, ...).
    :param optimizer: a Pyro optimiser; :func:`default_optimizer` (one fused Adam, learning
        rate 1e-3, gradients clamped to ±10: ``ClippedAdam``'s update) when None.
    :param epochs: passes over the unlabelled data (see ``InterleavedLoader``), or ``"auto"``
        (:func:`number_of_epochs`). The defaults of ``epochs``, ``batch_size``,
        ``labelled_batch_size``, ``seed`` and ``unlabelled_warmup`` are the estimator's
        (:class:`~pyro_mmt.config.TrainingConfig`).
    :param int batch_size: rows per unlabelled batch.
    :param labelled_batch_size: rows per labelled batch (default ``batch_size``).
    :param int seed: seeds Pyro/torch (``pyro.set_rng_seed``) and the batch order.
    :param validation: labelled data scored after every epoch (balanced accuracy, macro-F1, ...).
    :param predictor: ``predictor(dataset) -> proba [N, K]``; default
        ``predict_proba(guide.__self__, dataset)`` for a bound ``guide`` method (e.g.
        ``m2.guide``), with δ = 0 while its decision rule is still to be learned.

    At the end, a bound guide's owner whose decision rule is learned after training (e.g. a
    :class:`~pyro_mmt.models.MultimodalM2` with the default ``decision_reference=
    "predicted"``, or ``decision_shift="auto"``) learns it from the unlabelled rows of
    ``dataset`` (:func:`calibrate_decision_shift`; :func:`~pyro_mmt.training.distributed.
    train_distributed` does it from the whole data set), unless
    ``choose_decision_shift=False``. Validation during training scores such a model as trained
    (δ = 0): early stopping and the ``val_*`` columns see the classifier without the shift.
    :param patience: stop when validation balanced accuracy has not improved for this many
        epochs, and restore the best epoch's weights (needs ``validation`` and ``modules``).
    :param checkpoint_dir: write ``checkpoint.pt`` there after every epoch.
    :param bool resume: continue from ``checkpoint_dir/checkpoint.pt`` when it exists (else
        start from the beginning); with the same arguments the result equals an uninterrupted
        run with the same seed. The modules' weights, the optimiser's state (Adam's moments and
        step counts), the history and the RNG state come from the checkpoint; call
        ``pyro.clear_param_store()`` first when the modules are new. The learning rate is the
        one the checkpoint was trained with, unless ``optimizer`` was made with another
        ``lr`` (its ``optim_args``): then the new learning rate is used from the first resumed
        step (e.g. after a :class:`TrainingDivergedError`, resume from its last good
        checkpoint with a smaller ``lr``; a ``ClippedAdam`` decay ``lrd`` restarts from it).
        The checkpoint then records the new ``lr``.
    :param modules: name -> ``nn.Module`` whose weights make up the state; needed for
        checkpoints and early stopping. Default: the module(s) behind bound ``model``/``guide``
        methods (one for ``m2.model``/``m2.guide``). With checkpoints,
        every parameter in the param store must belong to one of them (a ``pyro.param``
        outside a module raises a ``ValueError`` after the first step rather than being lost
        on resume).
    :param device: ``"cpu"`` or ``"cuda"``; modules must already be there.
    :param bool progress: show (on a terminal or in a notebook only: :func:`shows_progress`)
        a tqdm progress bar over the epochs and, when an epoch has more
        than :data:`STEP_BAR_MIN_STEPS` steps, a second one over the steps of the epoch.
    :param validate: Pyro's argument and shape checks during the steps: None leaves the global
        setting (``pyro.enable_validation``), False turns them off for this run. With
        :class:`~pyro_mmt.infer.GammaPowerELBO` they run on the first step of each trace
        signature only (the first labelled and the first unlabelled batch; its
        ``cache_checks``), so turning them off saves little on the CPU; other objectives
        (``TraceEnum_ELBO``) check every step (``docs/performance.md``).
    :param on_epoch_end: called as ``on_epoch_end(epoch)`` (counted from 1) after every epoch's
        steps and before its validation and checkpoint, e.g. to update an estimate that is not
        a gradient parameter (the learned class prior of
        :meth:`~pyro_mmt.models.MultimodalM2.update_class_prior`).
    :param float unlabelled_warmup: the fraction w in [0, 1] of the ``epochs`` over which the
        unlabelled term is ramped up (the estimator's parameter, in the same unit): an
        unlabelled batch at training time t (in epochs, the step's position within its epoch
        counted as a fraction) is scaled by :func:`warmup_weight` (t / (w ``epochs``)), which
        rises from exp(−5) to 1, the ramp-up of Laine & Aila (*Temporal ensembling for
        semi-supervised learning*, ICLR 2017). Labelled batches are never scaled. 0 (default):
        no ramp. The weight depends on the epoch and step only, so a resumed run ramps as an
        uninterrupted one. The history's losses are those of the data, without the ramp.
    :param str desc: the progress bar's label.
    :param bool choose_decision_shift: learn the decision rule at the end (False: the caller
        does it later, as the estimator does once the parameters are averaged).
    :return: a DataFrame with one row per epoch: ``epoch``, ``loss`` (per datum),
        ``loss_labelled``, ``loss_unlabelled``, ``seconds`` and validation metrics.
    :raises TrainingDivergedError: when a step's loss is not finite.
    :raises TrainingInterrupted: on a ``KeyboardInterrupt`` (Ctrl-C) during training; it says
        which checkpoint holds the complete epochs, from which ``resume=True`` continues.
    """
    if not isinstance(dataset, MultimodalDataset):
        raise ValueError(f"dataset: expected a MultimodalDataset, found {type(dataset).__name__}")
    if epochs != "auto" and (isinstance(epochs, bool) or int(epochs) < 0):
        raise ValueError(f"epochs: expected 'auto' or an integer >= 0, found {epochs!r}")
    epochs = number_of_epochs(epochs, dataset, batch_size)
    if patience is not None and validation is None:
        raise ValueError("patience: early stopping needs a validation data set, found None")
    if isinstance(unlabelled_warmup, bool) or not (
            isinstance(unlabelled_warmup, int | float) and 0 <= unlabelled_warmup <= 1):
        raise ValueError(f"unlabelled_warmup: expected a fraction of the epochs in [0, 1] (a "
                         f"number of epochs before this release: pass epochs_of_ramp / epochs), "
                         f"found {unlabelled_warmup!r}")
    if modules is None:
        modules = default_modules(model, guide)
    if (checkpoint_dir is not None or patience is not None) and not modules:
        raise ValueError("modules: checkpoints and early stopping need the nn.Modules, found none")
    if predictor is None and validation is not None:
        owner = getattr(guide, "__self__", None)
        if owner is None or not hasattr(owner, "predict_proba"):
            raise ValueError("predictor: pass one, the guide has no predict_proba to score with")

        # a decision rule still to be learned (after training) scores as trained
        shift = {"logit_adjustment": 0.0} if needs_calibration(owner) else {}

        def predictor(data, _owner=owner):
            return predict_proba(_owner, data, device=device, **shift)

    _check_param_store(modules)
    optimizer = optimizer or default_optimizer()
    svi = _SVI(model, guide, optimizer, loss=objective)
    loader = InterleavedLoader(
        dataset, batch_size, labelled_batch_size=labelled_batch_size, seed=seed
    )
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / "checkpoint.pt"
    history: list[dict] = []
    best: dict | None = None
    start_epoch = 0
    pyro.set_rng_seed(seed)
    if resume and ckpt_path is not None and ckpt_path.is_file():
        # parameters must exist in the param store before the optimiser state can attach
        ckpt = load_checkpoint(ckpt_path, modules)
        optimizer.set_state(_resumed_optimizer_state(ckpt, optimizer))
        history, best, start_epoch = ckpt.history, ckpt.best, ckpt.epoch
        if ckpt.rng_state is not None:
            torch.set_rng_state(ckpt.rng_state)

    n_steps = len(loader)
    progress = shows_progress(progress)
    bar = tqdm(range(start_epoch, int(epochs)), disable=not progress, desc=desc,
               unit="epoch", initial=start_epoch, total=int(epochs))
    steps_bar = tqdm(total=n_steps, disable=not progress or n_steps <= STEP_BAR_MIN_STEPS,
                     desc=desc, unit="step", leave=False)
    try:
        # pyro.module itself takes the fast path of register_module (pyro_mmt.infer's switch)
        with fast_pyro_module():
            for epoch in bar:
                best, stop = _train_epoch(
                    svi, loader, epoch, start_epoch, desc, steps_bar, bar, modules, ckpt_path,
                    validate, device, on_epoch_end, validation, predictor, history, optimizer,
                    best, patience, float(unlabelled_warmup) * int(epochs))
                if stop:
                    break
    except KeyboardInterrupt as error:
        if isinstance(error, TrainingInterrupted):
            raise
        saved = ckpt_path if ckpt_path is not None and ckpt_path.is_file() else None
        done = 0
        if saved is not None:
            try:
                done = int(load_weights(saved)["epoch"])
            except Exception:  # pragma: no cover - the history is the next best count
                done = len(history)
        raise TrainingInterrupted(done, saved) from error
    finally:
        steps_bar.close()
        bar.close()
    if patience is not None and best is not None:
        for name, module in modules.items():
            module.load_state_dict(best["modules"][name])
    # the decision rule of a model that learns it after training ("predicted", "auto")
    owner = getattr(guide, "__self__", None)
    if owner is not None and choose_decision_shift:
        calibrate_decision_shift(owner, dataset, device=device)
    return pd.DataFrame(history)


def _train_epoch(svi, loader, epoch, start_epoch, desc, steps_bar, bar, modules, ckpt_path,
                 validate, device, on_epoch_end, validation, predictor, history, optimizer, best,
                 patience, unlabelled_warmup=0.0) -> tuple[dict | None, bool]:
    """One epoch of :func:`train`: its steps, callback, validation, history row and
    checkpoint. Returns the best epoch so far (early stopping) and whether to stop."""
    loader.set_epoch(epoch)
    tic = time.perf_counter()
    totals = {"labelled": [0.0, 0], "unlabelled": [0.0, 0]}
    n_steps = len(loader)
    steps_bar.reset(total=n_steps)
    steps_bar.set_description(f"{desc}: epoch {epoch + 1}", refresh=False)
    for step, (batch, num_data) in enumerate(loader):
        batch = batch_to(batch, device)
        weight = 1.0
        if unlabelled_warmup > 0 and batch.y is None:
            weight = warmup_weight((epoch + step / n_steps) / unlabelled_warmup)
        loss = _checked_step(svi, batch, weight * num_data / batch.size, modules, epoch, step,
                             ckpt_path, validate)
        if ckpt_path is not None and epoch == start_epoch and step == 0:
            _check_state_is_in_modules(modules)  # now that the step registered them
        group = "labelled" if batch.y is not None else "unlabelled"
        # per-datum estimate of the group's loss, without the ramp (the history stays the
        # objective of the data, comparable across epochs)
        totals[group][0] += loss / (num_data * weight)
        totals[group][1] += 1
        steps_bar.update()
    if on_epoch_end is not None:
        on_epoch_end(epoch + 1)
    row = {"epoch": epoch + 1}
    per_group = {g: (s / n if n else float("nan")) for g, (s, n) in totals.items()}
    row["loss_labelled"] = per_group["labelled"]
    row["loss_unlabelled"] = per_group["unlabelled"]
    n_lab, n_unl = loader.num_labelled, loader.num_unlabelled
    row["loss"] = float(
        np.nansum([per_group["labelled"] * n_lab, per_group["unlabelled"] * n_unl])
        / max(n_lab + n_unl, 1)
    )
    if validation is not None:
        proba = predictor(validation)
        y_val = validation.y.numpy()
        metrics = classification_metrics(y_val, proba.argmax(1))
        row.update({f"val_{k}": float(v) for k, v in metrics.items() if k != "minority_recall"})
    row["seconds"] = time.perf_counter() - tic
    postfix = {"loss": f"{row['loss']:.4g}"}
    if validation is not None:
        postfix["val_bacc"] = f"{row['val_balanced_accuracy']:.3f}"
        score = row["val_balanced_accuracy"]
        if best is None or score > best["score"]:
            best = {"score": score, "epoch": epoch + 1,
                    "modules": {n: _clone_state(m) for n, m in modules.items()}}
    bar.set_postfix(postfix)
    if ckpt_path is not None:
        save_checkpoint(ckpt_path, modules, optimizer, epoch + 1, history + [row], best)
    history.append(row)  # after the checkpoint: an interrupted save leaves both at epoch - 1
    stop = patience is not None and best is not None and epoch + 1 - best["epoch"] >= patience
    return best, stop


def _resumed_optimizer_state(ckpt: Checkpoint, optimizer) -> dict:
    """The checkpoint's optimiser state, with the learning rate of ``optimizer`` when it was
    made with another one than the checkpoint's run (see ``resume`` in :func:`train`)."""
    state = ckpt.optimizer
    new = optimizer_lr(optimizer)
    old = ckpt.lr if ckpt.lr is not None else _state_lr(state)
    if new is not None and old is not None and not math.isclose(new, old, rel_tol=1e-9,
                                                                abs_tol=0.0):
        state = _with_lr(state, new)
    return state


class _ParamTrace(TraceMessenger):
    """SVI's trace of the parameters a step registers, with one addition: a module that
    registers through :func:`~pyro_mmt.infer.module_registration.register_module` (or
    ``pyro.module`` within :func:`train`) may *claim* the sites its
    registration recorded in an earlier step of the run (``templates``, shared by the steps)
    instead of sending its parameters through Pyro's handlers again. A claim is granted only
    when those sites still hold the module's trainable parameters, by name and identity, in
    order, and the param store still knows them; the trace then holds exactly what the
    registration would have put there."""

    records_params = True

    def __init__(self, templates: dict):
        super().__init__(param_only=True)
        self.templates = templates
        self._learn: list[str] = []

    def claim_module(self, name: str, module: torch.nn.Module) -> bool:
        """Add the sites of ``pyro.module(name, module)`` from the template; False (and learn
        the template at the end of this step) when there is none or it is out of date."""
        template = self.templates.get(name)
        if template is not None:
            nodes, params = template
            current = _trainable_parameters(module)
            if (nodes and len(current) == len(params)
                    and all(a is b for a, b in zip(current, params, strict=True))
                    and next(iter(nodes)) in pyro.get_param_store()):
                self.trace.nodes.update(nodes)  # the recorded sites (nothing mutates them)
                return True
        self._learn.append(name)
        return False

    def __exit__(self, *args, **kwargs):
        for name in self._learn:  # registered for real in this step: keep its sites
            prefix = f"{name}{_MODULE_NAMESPACE_DIVIDER}"
            nodes = {full: node for full, node in self.trace.nodes.items()
                     if full.startswith(prefix) and node["type"] == "param"}
            self.templates[name] = (nodes, [node["value"] for node in nodes.values()])
        return super().__exit__(*args, **kwargs)


def _trainable_parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    """``[p for p in module.parameters() if p.requires_grad]``, in the same order (each
    module's own parameters, then its children's, depth first; shared ones once), by a plain
    walk of the modules' dictionaries: a third of the time of ``named_parameters``."""
    out, seen, stack = [], set(), [module]
    while stack:
        mod = stack.pop()
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        for p in mod._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                if p.requires_grad:
                    out.append(p)
        stack.extend(child for child in reversed(mod._modules.values()) if child is not None)
    return out


class _SVI(SVI):
    """Pyro's SVI with the step of :func:`train`: the parameters are traced by
    :class:`_ParamTrace`, so a module registered in an earlier step is claimed rather than
    registered again; the rest is ``SVI.step``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._templates: dict = {}

    def step(self, *args, **kwargs):
        with _ParamTrace(self._templates) as param_capture:
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        params = set(site["value"].unconstrained()
                     for site in param_capture.trace.nodes.values())
        self.optim(params)
        zero_grads(params)
        if isinstance(loss, tuple):  # as SVI.step: e.g. ReweightedWakeSleep's pair
            return type(loss)(map(torch_item, loss))
        return torch_item(loss)


def _checked_step(svi, batch, scale, modules, epoch, step, ckpt_path, validate=None) -> float:
    """One SVI step; a non-finite loss, or a step that fails because the parameters (or
    values computed from them) are no longer finite, raises :class:`TrainingDivergedError`."""
    checkpoint = ckpt_path if ckpt_path is not None and ckpt_path.is_file() else None
    try:
        with warnings.catch_warnings():
            # Pyro warns on a NaN loss; the check below reports it with the epoch and step
            warnings.filterwarnings("ignore", message=r"Encountered (NaN|\+/-Inf)",
                                    category=UserWarning)
            with poutine.scale(scale=scale), (
                contextlib.nullcontext() if validate is None else pyro.validation_enabled(validate)
            ):
                loss = svi.step(batch.x, batch.mask, batch.y, **_cells(batch))
    except (ValueError, RuntimeError) as error:
        # e.g. a distribution's argument check meeting NaN: a divergence when the loss itself is
        # no longer finite; any other error (wrong shapes, bad input) is raised as it is
        if not _diverged(svi, batch, scale, modules):
            raise
        cause = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        raise TrainingDivergedError(epoch + 1, step + 1, float("nan"), checkpoint,
                                    cause=f"non-finite values ({cause})") from error
    if not math.isfinite(loss):
        raise TrainingDivergedError(epoch + 1, step + 1, loss, checkpoint)
    return loss


def _cells(batch: Batch) -> dict:
    """The model's ``cells`` argument for a batch with missing cells (none otherwise)."""
    return {"cells": batch.cells} if batch.cells else {}


def _diverged(svi, batch, scale, modules) -> bool:
    """Whether some parameter, or the loss evaluated without argument checks, is not finite."""
    for module in modules.values():
        if not all(torch.isfinite(p).all() for p in module.parameters()):
            return True
    try:
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with poutine.scale(scale=scale):
                loss = svi.evaluate_loss(batch.x, batch.mask, batch.y, **_cells(batch))
    except Exception:  # the failure was not numerical
        return False
    return not math.isfinite(loss)


def _check_state_is_in_modules(modules: dict[str, torch.nn.Module]) -> None:
    """Checkpoints hold the modules' weights: refuse parameters that live outside them."""
    owned = {id(p) for module in modules.values() for p in module.parameters()}
    store = pyro.get_param_store()
    outside = [name for name in store.keys()
               if id(store.get_param(name).unconstrained()) not in owned]
    if outside:
        raise ValueError(
            f"modules: checkpoints save the weights of {sorted(modules)}, but the param store "
            f"also holds {outside[:5]}{' ...' if len(outside) > 5 else ''}, which a resumed run "
            "would lose; make them nn.Parameters of a module passed in `modules` (or clear the "
            "param store of other runs' parameters)"
        )


def _check_param_store(modules: dict[str, torch.nn.Module]) -> None:
    """Refuse to train when the param store holds other tensors under the modules' names.

    ``pyro.module`` keeps the value already in the param store, so new modules trained after an
    earlier run (without ``pyro.clear_param_store()``) would silently update the old tensors.
    """
    store = pyro.get_param_store()
    params = {name: param for module in modules.values()
              for name, param in module.named_parameters()}
    for full in store.keys():
        _, sep, param_name = full.rpartition("$$$")  # pyro.module(prefix, m) names prefix$$$name
        if sep and param_name in params \
                and store.get_param(full).unconstrained() is not params[param_name]:
            raise ValueError(
                f"modules: the Pyro param store already holds {full!r} from other modules; "
                "call pyro.clear_param_store() before training new modules (or train inside "
                "`with pyro.get_param_store().scope():`)"
            )


def _clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def default_modules(model, guide) -> dict[str, torch.nn.Module]:
    """The modules behind bound ``model``/``guide`` methods, each once."""
    modules = {}
    for name, fn in (("model", model), ("guide", guide)):
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module) and all(owner is not m for m in modules.values()):
            modules[name] = owner
    return modules
