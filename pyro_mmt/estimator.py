"""A scikit-learn-style estimator around the model, its guide, the objective and SVI.

:class:`MultimodalSemiSupervisedClassifier` is what most users call: ``fit(X, y)`` with
``y = -1`` for unlabelled rows, ``predict_proba``/``predict``/``score``, ``save_estimator`` and
``load_estimator``. Its parameters are checked in one place (``_parameter_constraints`` and
:class:`~pyro_mmt.config.ModelConfig`); :data:`PRESETS` holds named combinations of them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import os
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import Predictive, TraceEnum_ELBO
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from pyro_mmt.config import (
    COUNT,
    EstimatorOptions,
    ModelConfig,
    TrainingConfig,
    check_combination,
    check_objective,
    check_setting,
    default,
    estimator_settings,
    resumable_settings,
)
from pyro_mmt.data import (
    MultimodalDataset,
    Standardiser,
    as_modality_mapping,
    check_labels,
    encode_labels,
)
from pyro_mmt.infer import GammaPowerELBO
from pyro_mmt.likelihoods import LIKELIHOODS
from pyro_mmt.models import MultimodalM2
from pyro_mmt.run_folder import changed_settings, fingerprint, read_json, write_json
from pyro_mmt.training.averaging import ParameterAverage
from pyro_mmt.training.parallel import MemberHooks, fit_members
from pyro_mmt.training.svi import (
    AUTO_STEPS,
    TrainingInterrupted,
    classifier_logits,
    default_optimizer,
    ensemble_log_proba,
    load_weights,
    needs_calibration,
    number_of_epochs,
    train,
)

__all__ = [
    "AUTO_STEPS",
    "PRESETS",
    "IMBALANCE_OPTIONS",
    "build_model",
    "make_objective",
    "MultimodalSemiSupervisedClassifier",
    "save_estimator",
    "load_estimator",
]

#: The class-imbalance devices of the model (``docs/imbalance.md``) as the previous release
#: set them: class-balanced classification term, logit-adjusted classification term, prior
#: shift in the enumeration, predictions as trained (no decision shift).
IMBALANCE_OPTIONS = {"class_weight": "balanced", "logit_adjustment": 1.0,
                     "unlabelled_prior_shift": 1.0, "decision_shift": 0.0}

#: Named settings of the estimator: ``MultimodalSemiSupervisedClassifier(**PRESETS[name])``.
#: ``"plain"`` turns every class-imbalance device off (also the decision shift); ``"imbalanced"``
#: is the previous release's choice (class-balanced weights added to the logit adjustment and
#: prior shift, predictions as trained); ``"gaussian_kl"`` is the Gaussian model under the M2
#: ELBO (with the defaults' decision shift), which on the development seeds has the higher
#: minority recall everywhere, the lower balanced accuracy on most data sets, and is at least
#: level on both metrics on the data sets with many classes and many features (mfeat,
#: Fashion-MNIST; ``docs/benchmark.md``).
PRESETS: dict[str, dict] = {
    "imbalanced": dict(IMBALANCE_OPTIONS),
    "plain": {"class_weight": None, "logit_adjustment": 0.0, "unlabelled_prior_shift": 0.0,
              "decision_shift": 0.0},
    "gaussian_kl": {"objective": "kl", "nu": math.inf},
}


def build_model(dims: Mapping[str, int], num_classes: int, *,
                decoders: Mapping[str, nn.Module] | None = None,
                encoders: Mapping[str, nn.Module] | None = None,
                classifier: nn.Module | None = None, **settings) -> MultimodalM2:
    """A :class:`~pyro_mmt.models.MultimodalM2` from its dimensions and settings: a shortcut
    for ``MultimodalM2(ModelConfig(dims, num_classes, **settings), decoders=..., ...)``."""
    config = ModelConfig(dims=dict(dims), num_classes=num_classes, **settings)
    return MultimodalM2(config, decoders=decoders, encoders=encoders, classifier=classifier)


def make_objective(objective: str = TrainingConfig.objective, *,
                   gamma: float | str = TrainingConfig.gamma,
                   label_divergence: str = TrainingConfig.label_divergence,
                   label_weight: float | str = TrainingConfig.label_weight,
                   num_particles: int = 1) -> pyro.infer.ELBO:
    """``"gamma_power"``: :class:`~pyro_mmt.infer.GammaPowerELBO` (with its ``gamma``,
    ``label_divergence`` and ``label_weight``); ``"kl"``: Pyro's ``TraceEnum_ELBO`` (the M2
    ELBO). Both with one data plate and vectorised particles."""
    vectorize = num_particles > 1
    if objective == "gamma_power":
        return GammaPowerELBO(gamma, num_particles=num_particles, max_plate_nesting=1,
                              vectorize_particles=vectorize, label_divergence=label_divergence,
                              label_weight=label_weight)
    if objective == "kl":
        return TraceEnum_ELBO(num_particles=num_particles, max_plate_nesting=1,
                              vectorize_particles=vectorize, strict_enumeration_warning=False)
    raise ValueError(f"objective: expected 'gamma_power' or 'kl', found {objective!r}")


def _init_from_declarations(settings: Mapping[str, dataclasses.Field]) -> Callable:
    """The estimator's ``__init__``, written from the declarations: one keyword-only argument
    per setting with its declared default, each stored as it is given (scikit-learn's
    convention: ``__init__`` only stores). A real function with a real signature, so
    ``inspect.signature`` and scikit-learn's ``get_params``/``clone`` read it."""
    defaults = {name: default(f) for name, f in settings.items()}
    arguments = ", ".join(f"{name}=_defaults[{name!r}]" for name in settings)
    body = "\n".join(f"    self.{name} = {name}" for name in settings)
    namespace = {"_defaults": defaults}
    exec(f"def __init__(self, *, {arguments}):\n{body}\n", namespace)  # noqa: S102
    init = namespace["__init__"]
    init.__annotations__ = {name: f.type for name, f in settings.items()}
    init.__qualname__ = "MultimodalSemiSupervisedClassifier.__init__"
    init.__doc__ = "Store the parameters (see the class docstring); ``fit`` checks them."
    return init


def _parameter_docs(settings: Mapping[str, dataclasses.Field]) -> str:
    """The ``:param`` lines of the settings' help texts and defaults, grouped by where each
    is declared."""
    groups = {ModelConfig: "The model and its guide (:class:`~pyro_mmt.config.ModelConfig`)",
              TrainingConfig: "Training (:class:`~pyro_mmt.config.TrainingConfig`)",
              EstimatorOptions: "Inputs and running (:class:`~pyro_mmt.config.EstimatorOptions`)"}
    out = []
    for cls, title in groups.items():
        out += ["", f"    {title}:", ""]
        names = {f.name for f in dataclasses.fields(cls)}
        for name, f in settings.items():
            if name in names:
                text = f":param {name}: {f.metadata['help']} (default ``{default(f)!r}``)."
                out += textwrap.wrap(text, 95, initial_indent="    ",
                                     subsequent_indent="        ")
    return "\n".join(out) + "\n"


class MultimodalSemiSupervisedClassifier(ClassifierMixin, BaseEstimator):
    """Semi-supervised classifier for class-imbalanced multimodal data (scikit-learn API).

    ``fit(X, y)`` takes ``X`` as

    - a mapping modality name -> array or DataFrame [N, n_j] (a row of NaN = modality missing,
      a NaN among values = a missing cell, left out of the model's density and filled by
      :meth:`impute`),
    - a DataFrame whose columns are a two-level MultiIndex (modality, feature), e.g.
      ``pandas.concat({"top": top, "bottom": bottom}, axis=1)``: the form that scikit-learn's
      model selection (``cross_val_score``, ``GridSearchCV``) can split by rows, or
    - a :class:`~pyro_mmt.data.MultimodalDataset`,
    - a flat 2-D array or DataFrame with ``modalities=`` saying which columns make up each
      modality: the form that ``cross_val_score``, ``GridSearchCV`` and a ``Pipeline`` with a
      column-wise transformer pass on,

    and ``y`` holding any labels (strings, integers such as {3, 7}, a pandas categorical),
    with −1, NaN, None or ``pd.NA`` for unlabelled rows (the ``LabelSpreading`` convention);
    ``classes_`` is the sorted labelled values and ``predict`` returns them (with a
    :class:`~pyro_mmt.data.MultimodalDataset`, whose labels are class indices, ``classes_`` is
    ``arange(K)``). A pandas ``y`` must have ``X``'s row index. It standardises
    each continuous modality on the training rows, builds the model and its guide
    (:class:`~pyro_mmt.models.MultimodalM2`) and trains them with Pyro's SVI
    (:func:`~pyro_mmt.training.train`). ``predict_proba`` accepts any subset of the modalities
    (missing ones as NaN rows or absent keys); ``score`` is the balanced accuracy on the rows
    with a label (y ≥ 0).

    The fitted Pyro pieces stay available: ``model_`` (the :class:`MultimodalM2`: ``model_.model``
    and ``model_.guide`` are the Pyro callables, ``model_.config`` every setting), ``members_``
    (all of them when ``n_init > 1``), ``history_`` (per-epoch DataFrame), ``standardiser_``,
    ``class_prior_`` (π, estimated from the unlabelled rows when ``class_prior="learned"``),
    ``decision_shift_`` (the decision shift δ its predictions use) and ``reference_shares_``
    (the reference shares r it shifts along).

    **The defaults** were chosen without looking at the reported test splits
    (``docs/benchmark.md``): α, the imbalance options, the epochs and the averaging on
    validation folds of the public training splits, the label's divergence, the number of
    initialisations and the decision rule on development splits (split seeds 5–9): the
    Student-t model with the γ-power objective (auto γ, the label under the KL), α = 1.5 per
    observed dimension of a labelled datum, the logit-adjusted classification term and the
    matching prior shift for the unlabelled rows (τ = τ' = 1, no class weights), about 300 SVI
    steps (``epochs="auto"``) and predictions from the parameters averaged over the second
    half of the epochs (``averaging=0.5``); five initialisations (``n_init=5``) whose
    q(y | x) are averaged, and predictions from that average corrected for the model's own
    lean by the decision shift: logits − 1.5 log r, r the average's mean prediction on the
    unlabelled training rows (``decision_reference="predicted"``; both chosen on development
    seeds; ``docs/imbalance.md``). ``pyro-mmt train`` runs the same. ``n_init=1`` is one
    model, five times faster, with the same decision rule; ``n_jobs`` fits members at once
    (one process each). ``n_init=3`` is the previous release's default, and
    ``n_init=3, decision_reference="labelled", decision_shift=0.5`` the release's before it.

    **Parameters.** Every parameter is declared once in :mod:`pyro_mmt.config`, with its
    default, its constraint and its help text: the settings of
    :class:`~pyro_mmt.config.ModelConfig` (the model and its guide), of
    :class:`~pyro_mmt.config.TrainingConfig` (how they are trained) and of
    :class:`~pyro_mmt.config.EstimatorOptions` (how X is read, your own networks, where and
    how the fit runs). The list below is generated from those declarations; the parameters
    are keyword-only. ``pyro-mmt train`` offers the same options.

    Notes on some of them: with few labels per class one fit depends on its seed; on one
    mfeat split ``n_init=5`` brought the spread of balanced accuracy over seeds from 0.043 to
    0.013 (three members: 0.038; the reason five are the default), and
    ``unlabelled_warmup=0.5`` narrowed a single model's spread by a third at 0.017 lower mean
    balanced accuracy (``docs/benchmark.md``).
    ``checkpoint_dir`` with ``resume=True`` continues a fit that was interrupted (Ctrl-C:
    :class:`~pyro_mmt.training.svi.TrainingInterrupted`) or stopped by a
    :class:`~pyro_mmt.training.svi.TrainingDivergedError`; only the settings of
    :func:`~pyro_mmt.config.resumable_settings` (``lr``, ``epochs``, threads, jobs, progress,
    the folder) may differ from the checkpointed fit's (a ``ValueError`` says which differ).
    """

    __init__ = _init_from_declarations(estimator_settings())

    # ------------------------------------------------------------------- parameter checks
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN: a missing cell, or a missing modality's row
        return tags

    def _check_params(self) -> None:
        """Every parameter against its declared constraint (a ValueError naming it, one kind
        of message: :func:`~pyro_mmt.config.check_setting`), then what the settings cannot
        be together."""
        for name, f in estimator_settings().items():
            check_setting(name, getattr(self, name), f.metadata["constraint"])
        check_combination(self)
        check_objective(self)
        if self.distributed and self.n_jobs != 1:
            raise ValueError(f"n_jobs: distributed training runs one member at a time over "
                             f"torchrun's processes; expected 1, found {self.n_jobs}")
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume: expected checkpoint_dir, the folder to resume from, found "
                             "checkpoint_dir=None")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {self.device!r} asks for CUDA, but torch finds no GPU "
                             "(torch.cuda.is_available() is False); use 'cpu'")

    @contextlib.contextmanager
    def _threads(self):
        """torch's thread count set to ``n_threads`` for the duration (restored after)."""
        if self.n_threads is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(int(self.n_threads))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def threads(self):
        """A context manager: torch's thread count set to ``n_threads`` for its duration (as
        ``fit`` and ``predict_proba`` run), restored after."""
        return self._threads()

    def prepare(self, X, y=None) -> MultimodalDataset:
        """``X`` (and labels ``y``) as the fitted model sees them: checked, completed to the
        fitted modalities (absent ones missing) and standardised as ``predict_proba`` does; a
        :class:`~pyro_mmt.data.MultimodalDataset` for the Pyro model ``model_``."""
        self._check_fitted()
        with self._threads():
            return self._dataset(X, y, fitted=True)

    # ------------------------------------------------------------------ data at the boundary
    def _dataset(self, X, y=None, *, fitted=False) -> MultimodalDataset:
        """X (and y) as a MultimodalDataset: checked, and for a fitted estimator completed to
        its modalities (absent ones missing) and standardised as in fit."""
        if fitted and isinstance(X, MultimodalDataset) and X.modalities != self.modalities_:
            X = X.to_numpy()[0]  # a subset or another order: completed below like a mapping
        if _is_sparse(X):
            raise TypeError(f"X: sparse input is not supported; expected dense values, found a "
                            f"{type(X).__name__} (convert it with X.toarray())")
        if isinstance(X, MultimodalDataset):
            data = X if y is None else X.with_labels(check_labels(y, len(X)))
        else:
            if not fitted and y is None:
                raise ValueError(
                    "y: fit requires y to be passed, but the target y is None; expected one "
                    "label per row of X (class indices 0..K-1, -1 = unlabelled)")
            X = as_modality_mapping(X, self.modalities)
            if fitted:
                X = self._complete(X)
            else:
                for m, value in X.items():
                    if value.size and np.isnan(value).all():
                        raise ValueError(
                            f"X[{m!r}]: observed in no row (every row is NaN); expected each "
                            "modality observed in at least one training row (drop it from X)")
            n_rows = len(next(iter(X.values())))
            num_classes = self.n_classes_ if fitted else None
            if y is not None:
                y = check_labels(y, n_rows, num_classes)
                if not fitted:
                    _check_training_labels(y)
                    num_classes = int(y.max()) + 1  # the classes are 0..max(y)
            data = MultimodalDataset(X, y, num_classes=num_classes,
                                     allow_unobserved_modalities=fitted)
        if fitted:
            if data.modalities != self.modalities_:
                data = data.select_modalities(self.modalities_)
            self._check_values(data)
            if self.standardiser_ is not None:
                data = self.standardiser_.transform(data)
        return data

    def _complete(self, X: Mapping) -> dict:
        """Absent modalities become NaN rows (missing), so any subset can be scored."""
        unknown = sorted(set(X) - set(self.modalities_))
        if unknown:
            raise ValueError(
                f"X: unknown modalities {unknown}; the estimator was fitted on "
                f"{list(self.modalities_)}"
            )
        if not X:
            raise ValueError("X: expected at least one modality, found none")
        for m, value in X.items():
            if value.shape[1] != self.dims_[m]:
                raise ValueError(
                    f"X[{m!r}]: expected shape [N, {self.dims_[m]}] (as in fit), found shape "
                    f"{value.shape}"
                )
        n = len(next(iter(X.values())))
        return {
            m: X[m] if m in X else np.full((n, self.dims_[m]), np.nan) for m in self.modalities_
        }

    def _families(self, modalities) -> dict[str, str]:
        if isinstance(self.likelihood, str):
            return {m: self.likelihood for m in modalities}
        unknown = sorted(set(self.likelihood) - set(modalities))
        if unknown:
            raise ValueError(f"likelihood: unknown modalities {unknown}; the data have "
                             f"{list(modalities)}")
        return {m: self.likelihood.get(m, "student_t") for m in modalities}

    def _check_values(self, data: MultimodalDataset) -> None:
        """Observed values of each discrete modality lie in its family's support."""
        for j, m in enumerate(data.modalities):
            likelihood = self.model_.likelihoods[m] if hasattr(self, "model_") else None
            if likelihood is None or likelihood.continuous:
                continue
            rows = data.mask[:, j].numpy()
            likelihood.check_values(data.x[m].numpy()[rows], f"X[{m!r}]")

    # ------------------------------------------------------------------------------- fit
    def fit(self, X, y=None):
        """Fit on ``X`` (any form of the class docstring) with labels ``y`` (any labels; −1,
        NaN, None or ``pd.NA`` = unlabelled)."""
        self._check_params()
        with self._threads():
            return self._fit(X, y)

    def _fit(self, X, y):
        classes = None
        if y is not None and not isinstance(X, MultimodalDataset):
            _check_y_index(X, y)
            y, classes = encode_labels(y)
            if classes.size == 1:
                raise ValueError(f"y: expected labelled rows of at least 2 classes, found one "
                                 f"class, {_plain(classes[0])!r}")
        data = self._dataset(X, y)
        counts = data.class_counts()
        if counts.sum() == 0:
            raise ValueError(f"y: expected some labelled rows (y >= 0), found none among "
                             f"{len(data)} rows")
        empty = np.flatnonzero(counts == 0).tolist()
        if empty:
            raise ValueError(
                f"y: every class needs at least one labelled row, found none for classes "
                f"{empty} (labelled counts {counts.tolist()})"
            )
        families = self._families(data.modalities)
        num_categories = {}
        for j, m in enumerate(data.modalities):
            family = LIKELIHOODS[families[m]]
            values = data.x[m].numpy()[data.mask[:, j].numpy()]
            if family.needs_categories:
                num_categories[m] = max(int(values.max()) + 1, 2) if values.size else 2
            family(data.dims[m], num_categories=num_categories.get(m)).check_values(
                values, f"X[{m!r}]")
        self.modalities_ = data.modalities
        self.dims_ = dict(data.dims)
        self.n_features_in_ = int(sum(self.dims_.values()))
        self.n_classes_ = data.num_classes
        # the labels as given (sorted); a MultimodalDataset's are its class indices
        self.classes_ = np.arange(self.n_classes_) if classes is None else classes
        self.label_counts_ = counts
        self.standardiser_ = None
        if self.standardise:
            self.standardiser_ = Standardiser().fit(data)
            for m in data.modalities:  # only continuous modalities are standardised
                if not LIKELIHOODS[families[m]].continuous:
                    self.standardiser_.mean_[m] = np.zeros_like(self.standardiser_.mean_[m])
                    self.standardiser_.scale_[m] = np.ones_like(self.standardiser_.scale_[m])
            data = self.standardiser_.transform(data)
        self.config_ = ModelConfig(
            dims=dict(data.dims), num_classes=self.n_classes_, num_categories=num_categories,
            label_counts=tuple(int(c) for c in counts),
            **{**_model_settings(self), "likelihood": families,
               "class_weight": self._class_weights(),
               # "auto": the cell mask enters the networks when the training data miss a cell
               # (else "auto" stays, which is "zero": the ModelConfig of complete data)
               "missing_cells": ("indicator" if self.missing_cells == "auto" and data.cells
                                 else self.missing_cells)})

        device = torch.device(self.device)
        fit_fn = train
        if self.distributed:
            from pyro_mmt.training.distributed import init_from_env, train_distributed

            init_from_env("nccl" if device.type == "cuda" else "gloo")
            fit_fn = train_distributed
        unlabelled = data.unlabelled() if (~data.is_labelled).any() else None
        self.epochs_ = epochs = self._number_of_epochs(data)
        self._prepare_checkpoints(data)
        learn_prior = self.config_.class_prior == "learned" and unlabelled is not None
        first_averaged = epochs - math.ceil(self.averaging * epochs)

        def hooks(m2):  # made, and run, where the member trains (maybe another process)
            average = (ParameterAverage(m2, start=first_averaged).to(device)
                       if self.averaging > 0 else None)

            def on_epoch_end(epoch):
                if learn_prior:  # the EM update of π from the unlabelled rows
                    m2.update_class_prior(classifier_logits(m2, unlabelled, device=device))
                if average is not None:
                    average.update(m2, epoch)

            if average is None:
                return MemberHooks(on_epoch_end=on_epoch_end)
            return MemberHooks(on_epoch_end=on_epoch_end,
                               modules={"model": m2, "average": average},
                               finish=lambda: average.apply(m2))  # predict with the mean

        members = range(int(self.n_init))
        # member 0 uses `seed`, so n_init = 1 is the single model; member i uses seed + 1000 i
        seeds = [self.seed + 1000 * member for member in members]
        objective = functools.partial(make_objective, self.objective, gamma=self.gamma,
                                      label_divergence=self.label_divergence,
                                      label_weight=self.label_weight,
                                      num_particles=self.num_particles)
        train_options = dict(epochs=epochs, batch_size=self.batch_size,
                             labelled_batch_size=self.labelled_batch_size, device=device,
                             progress=self.progress, resume=self.resume,
                             unlabelled_warmup=float(self.unlabelled_warmup),
                             # chosen once, below, from the members' averaged weights
                             choose_decision_shift=False)
        with _resume_advice(self):
            fitted = fit_members(
                lambda: self._build(self.config_).to(device), data, seeds,
                objective=objective, optimizer=self._make_optimizer, hooks=hooks,
                jobs=int(self.n_jobs), threads=int(self.n_threads or 1), train_fn=fit_fn,
                checkpoint_dirs=[self._member_checkpoint_dir(m) for m in members],
                descs=[self._member_desc(m) for m in members], **train_options)
        self.members_ = [member.module for member in fitted]
        self.histories_ = [member.history for member in fitted]
        self.model_ = self.members_[0]
        self.history_ = self.histories_[0]
        self.class_prior_ = np.mean([m2.class_prior() for m2 in self.members_], 0)
        if needs_calibration(self.model_):  # from the ensemble's q̄(y | x) of the unlabelled rows
            log_q = (ensemble_log_proba(self.members_, unlabelled, device=device)
                     if unlabelled is not None else torch.zeros(0, data.num_classes))
            for m2 in self.members_:
                m2.calibrate_decision_shift(log_q)
        return self

    @property
    def decision_shift_(self) -> float:
        """The decision shift δ the fitted model predicts with (``decision_shift``; for
        ``"auto"`` the one chosen after training, from the unlabelled rows' q̄(y | x); the
        members' mean when a learned class prior gives each its own)."""
        self._check_fitted()
        return float(np.mean([m2.q.prediction_shift() for m2 in self.members_]))

    @property
    def reference_shares_(self) -> np.ndarray:
        """The reference shares r [K] (in ``classes_`` order) the decision shift moves the
        prediction along: the averaged q(y | x)'s mean over the unlabelled training rows, with
        one pseudo-count per class, for ``decision_reference="predicted"`` (uniform without
        unlabelled rows), else the labelled class frequencies π̂."""
        self._check_fitted()
        return self.model_.q.decision_log_reference().detach().cpu().double().exp().numpy()

    # ------------------------------------------------------------------------ checkpoints

    def _member_desc(self, member: int) -> str:
        """The progress-bar label of member ``member``."""
        return "training" if self.n_init == 1 else f"init {member + 1}/{self.n_init}"

    def _member_checkpoint_dir(self, member: int) -> Path | None:
        """Member ``member``'s checkpoint folder: ``checkpoint_dir`` itself for a single model,
        ``checkpoint_dir/init_<member + 1>`` when ``n_init > 1``."""
        if self.checkpoint_dir is None:
            return None
        root = Path(self.checkpoint_dir)
        return root if self.n_init == 1 else root / f"init_{member + 1}"

    def _prepare_checkpoints(self, data: MultimodalDataset) -> None:
        """Write ``fit.json`` (the settings and the data's fingerprint) to ``checkpoint_dir``;
        when resuming, first check that they equal the checkpointed fit's. A fit that does not
        resume removes the members' old checkpoints (which a later resume would mix in)."""
        if self.checkpoint_dir is None:
            return
        root = Path(self.checkpoint_dir)
        record = {"settings": {k: _jsonable(v) for k, v in self.get_params(deep=False).items()
                               if k not in resumable_settings()},
                  "data": fingerprint(data)}
        path = root / "fit.json"
        if self.resume and path.is_file():
            before = read_json(path)
            if before.get("data") != record["data"]:
                raise ValueError(
                    f"resume: the checkpoints in {root} were written by a fit on other data "
                    f"(fingerprint {before.get('data')!r}, found {record['data']!r}); pass the "
                    "same X and y, or resume=False to start over")
            old = before.get("settings", {})
            differ = changed_settings(old, record["settings"], resumable_settings())
            if differ:
                shown = ", ".join(f"{k}={old.get(k)!r} (found {record['settings'].get(k)!r})"
                                  for k in differ)
                raise ValueError(
                    f"resume: the checkpoints in {root} were written with other settings: "
                    f"{shown}; only {', '.join(resumable_settings()[:2])} may change on "
                    "resume (or pass resume=False to start over)")
        rank = 0
        if self.distributed:  # each rank checkpoints to <member folder>/rank<r>
            import torch.distributed as dist

            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not self.resume:
            for member in range(int(self.n_init)):
                folder = self._member_checkpoint_dir(member)
                if self.distributed:
                    folder = folder / f"rank{rank}"
                (folder / "checkpoint.pt").unlink(missing_ok=True)
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            write_json(path, record)

    def _number_of_epochs(self, data: MultimodalDataset) -> int:
        """``epochs``, or for ``"auto"`` about :data:`AUTO_STEPS` unlabelled mini-batches."""
        return number_of_epochs(self.epochs, data, self.batch_size)

    def _class_weights(self):
        """``class_weight`` as ModelConfig takes it: a dict {label: weight} becomes one weight
        per class of ``classes_`` (1 for the labels it leaves out, as in scikit-learn)."""
        weights = self.class_weight
        if weights is None or isinstance(weights, str):
            return weights
        if isinstance(weights, Mapping):
            known = {_plain(c) for c in self.classes_.tolist()}
            unknown = [k for k in weights if _plain(k) not in known]
            if unknown:
                raise ValueError(f"class_weight: labels {unknown[:5]} are not classes of y; "
                                 f"expected keys among {self.classes_.tolist()[:20]}")
            by_label = {_plain(k): float(w) for k, w in weights.items()}
            return tuple(by_label.get(_plain(c), 1.0) for c in self.classes_.tolist())
        return tuple(weights)

    def _build(self, config: ModelConfig) -> MultimodalM2:
        def networks(given):
            if not given:
                return None
            return {m: copy.deepcopy(net) if isinstance(net, nn.Module) else net(config)
                    for m, net in given.items()}

        return MultimodalM2(config, decoders=networks(self.decoders),
                            encoders=networks(self.encoders))

    def _make_optimizer(self):
        if self.optimizer == "clipped_adam":
            return pyro.optim.ClippedAdam({"lr": self.lr})
        return default_optimizer(self.lr)

    # ---------------------------------------------------------------------------- predict
    def predict_proba(self, X) -> np.ndarray:
        """The predicted class probabilities, shape [N, K], rows summing to 1; any subset of
        modalities: softmax(log q̄(y | x) − δ log r), q̄ the members' q(y | x) averaged (for
        ``n_init = 1`` the model's own), δ = :attr:`decision_shift_` and r =
        :attr:`reference_shares_` (the mean of q̄ over the unlabelled training rows, or the
        labelled class frequencies: ``decision_reference``; ``docs/imbalance.md``)."""
        self._check_fitted()
        with self._threads():
            data = self._dataset(X, fitted=True)
            log_q = ensemble_log_proba(self.members_, data, device=torch.device(self.device))
            return torch.softmax(self.model_.q.shift_logits(log_q, self.decision_shift_),
                                 -1).numpy()

    def impute(self, X, *, num_samples: int = 100, return_draws: bool = False,
               seed: int = 0, batch_size: int = 1024):
        """``X`` with its missing cells (NaN in a row with other values) filled from the
        posterior predictive p(x_miss | x_obs) of the fitted model, in the units of ``X``.

        The draws come from Pyro's ``Predictive(model, guide=guide)``: y and z from the guide
        q(y, z | x_obs), then the missing cells from the model given them and the observed
        cells (the site ``x_<modality>_missing``; ``docs/derivation.md`` §11). Every
        missing cell is filled with the mean of ``num_samples`` draws (for a categorical
        modality, the most frequent category), a modality missing as a whole (a row entirely
        NaN, or left out of ``X``) too, from the modalities observed; observed cells are
        returned unchanged. With ``n_init > 1`` the draws are shared equally among the
        members.

        :param X: the data, as for :meth:`predict` (any subset of the modalities).
        :param int num_samples: draws per row.
        :param bool return_draws: also return the draws.
        :param int seed: the seed of the draws.
        :returns: modality -> float64 array [N, n_j] for the modalities of the fitted model;
            with ``return_draws``, ``(filled, draws)`` where ``draws[m]`` is [num_samples, N,
            n_j], the observed cells repeated in every draw.
        """
        self._check_fitted()
        check_setting("num_samples", num_samples, COUNT)
        check_setting("batch_size", batch_size, COUNT)
        with self._threads():
            data = self._dataset(X, fitted=True)
            if isinstance(X, MultimodalDataset):  # the user's values, to return as they are
                x_user = {m: v for m, v in X.to_numpy()[0].items() if m in self.modalities_}
            else:
                x_user = as_modality_mapping(X, self.modalities)
            x_user = {m: np.array(v, dtype=np.float64) for m, v in self._complete(x_user).items()}
            # the observed cells of every modality with something missing (a missing row: none)
            observed = {m: (data.cells[m] if m in data.cells
                            else data.mask[:, j:j + 1].expand(-1, data.dims[m]))
                        for j, m in enumerate(data.modalities)
                        if m in data.cells or not bool(data.mask[:, j].all())}
            device = torch.device(self.device)
            members = self.members_
            shares = [len(a) for a in np.array_split(np.arange(num_samples), len(members))]
            draws = {m: [] for m in observed}
            for start in range(0, len(data), batch_size):
                rows = np.arange(start, min(start + batch_size, len(data)))
                sub = data[rows]
                x = {m: v.to(device) for m, v in sub.x.items()}
                cells = {m: c[rows].to(device) for m, c in observed.items()}
                parts = {m: [] for m in observed}
                for i, (m2, share) in enumerate(zip(members, shares, strict=True)):
                    if not share or not cells:
                        continue
                    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # the user's
                        torch.manual_seed(seed + 1000 * i + start)            # stream is kept
                        out = Predictive(m2.model, guide=m2.guide, num_samples=share,
                                         return_sites=[f"x_{m}_missing" for m in cells])(
                            x, sub.mask.to(device), None, cells=cells)
                    for m in cells:
                        parts[m].append(out[f"x_{m}_missing"].detach().cpu().double().numpy())
                for m in observed:
                    draws[m].append(np.concatenate(parts[m]))
        filled, all_draws = {}, {}
        for m in data.modalities:
            values = x_user[m]
            if m in draws:
                sample = np.concatenate(draws[m], axis=1)
                if self.standardiser_ is not None:
                    sample = self.standardiser_.inverse_transform_modality(m, sample)
                hidden = ~observed[m].numpy()
                likelihood = self.model_.likelihoods[m]
                if likelihood.needs_categories:  # the most frequent category
                    codes = np.rint(sample).astype(np.int64)
                    counts = np.stack([(codes == c).sum(0)
                                       for c in range(likelihood.num_categories)])
                    estimate = counts.argmax(0).astype(np.float64)
                else:
                    estimate = sample.mean(0)
                values[hidden] = estimate[hidden]
                sample = np.where(hidden[None], sample, values[None])
            else:
                sample = np.repeat(values[None], num_samples, axis=0)
            filled[m] = values
            all_draws[m] = sample
        return (filled, all_draws) if return_draws else filled

    def predict(self, X) -> np.ndarray:
        """The most probable class under q(y | x), as a label of ``classes_``."""
        self._check_fitted()
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def score(self, X, y, sample_weight=None) -> float:
        """Balanced accuracy (mean per-class recall) on the labelled rows (y ≥ 0) of ``X``;
        unlabelled rows (y = −1) are ignored, so scikit-learn's cross-validation can score
        folds of semi-supervised data."""
        self._check_fitted()
        _check_y_index(X, y)
        proba = self.predict_proba(X)
        # codes 0..K-1 of the fitted classes_, -1 = unlabelled (labels outside classes_ and a
        # length other than X's are refused naming y)
        if isinstance(X, MultimodalDataset):
            y = check_labels(y, int(proba.shape[0]), self.n_classes_)
        else:
            y = check_labels(encode_labels(y, self.classes_)[0], int(proba.shape[0]),
                             self.n_classes_)
        pred = proba.argmax(axis=1)
        labelled = y >= 0
        if not labelled.any():
            raise ValueError(f"y: expected some labelled rows (y >= 0) to score, found none "
                             f"among {y.size}")
        weight = None
        if sample_weight is not None:
            try:
                weight = np.asarray(sample_weight, dtype=float)
            except (TypeError, ValueError):
                weight = None
            if weight is None or weight.shape != y.shape or not np.isfinite(weight).all() \
                or (weight < 0).any():
                found = (f"values of dtype {np.asarray(sample_weight).dtype}" if weight is None
                         else f"shape {weight.shape}, min {np.nanmin(weight, initial=0):.3g}"
                         if weight.size else f"shape {weight.shape}")
                raise ValueError(f"sample_weight: expected {y.size} finite weights >= 0 (one "
                                 f"per row of X), found {found}")
            weight = weight[labelled]
        return float(balanced_accuracy_score(y[labelled], pred[labelled], sample_weight=weight))

    def to_inference_data(self, X, y=None, **kwargs):
        """Draws of the fitted model for the rows of ``X`` (any form ``fit`` accepts, any
        subset of the modalities; labels ``y``, −1 = unknown) as an ArviZ ``InferenceData``
        (an ``xarray.DataTree`` with ArviZ 1.x), ``posterior_predictive`` and
        ``observed_data`` in the units of ``X``. The keyword arguments (``num_samples``,
        ``condition_on_labels``, ...) and the groups are those of
        :func:`pyro_mmt.evaluation.diagnostics.to_inference_data`; ``docs/diagnostics.md``
        walks through checking a fit with it."""
        from pyro_mmt.evaluation.diagnostics import to_inference_data

        return to_inference_data(self, X, y=y, **kwargs)

    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(X, y) first"
            )

    @property
    def history(self) -> pd.DataFrame:
        """Per-epoch training history (alias of ``history_``)."""
        self._check_fitted()
        return self.history_


MultimodalSemiSupervisedClassifier.__doc__ += _parameter_docs(estimator_settings())


def _model_settings(estimator) -> dict:
    """The estimator's parameters that are settings of :class:`ModelConfig`."""
    return {f.name: getattr(estimator, f.name) for f in dataclasses.fields(ModelConfig)
            if not f.metadata["data"]}


def _is_sparse(X) -> bool:
    """A scipy sparse matrix or array (or a mapping holding one)."""
    from scipy import sparse

    if sparse.issparse(X):  # before the Mapping test: a dok matrix is a dict
        return True
    return isinstance(X, Mapping) and any(sparse.issparse(v) for v in X.values())


def _plain(value):
    """A label as a plain Python value (numpy scalars unwrapped), to compare dict keys."""
    return value.item() if isinstance(value, np.generic) else value


def _check_y_index(X, y) -> None:
    """Refuse a pandas ``y`` whose row index differs from that of a pandas ``X``: rows are
    matched by position, so differently indexed rows would be silently misaligned."""
    if not isinstance(y, pd.Series | pd.DataFrame):
        return
    frame = X if isinstance(X, pd.DataFrame | pd.Series) else None
    if isinstance(X, Mapping):
        frame = next((v for v in X.values() if isinstance(v, pd.DataFrame | pd.Series)), None)
    if frame is not None and not frame.index.equals(y.index):
        raise ValueError(
            "y: the row index of y differs from that of X; rows are matched by position, so "
            "expected identical row indexes (align them first, e.g. y.loc[X.index], or pass "
            "y.to_numpy())")


def _check_training_labels(y: np.ndarray) -> None:
    """Labels fit can learn from: some labelled rows, of at least two classes (the classes
    are 0..max(y), so K = max(y) + 1)."""
    labelled = y[y >= 0]
    if labelled.size == 0:
        raise ValueError(f"y: expected some labelled rows (y >= 0), found none among {y.size} "
                         "rows (-1 marks an unlabelled row)")
    if labelled.max() < 1:
        raise ValueError(f"y: expected labelled rows of at least 2 classes (class indices "
                         f"0..K-1), found only class {int(labelled.max())}")


@contextlib.contextmanager
def _resume_advice(estimator):
    """A TrainingInterrupted of a member (its ``member``, set by fit_members; 0 for one
    model) says how to resume the estimator's fit."""
    try:
        yield
    except TrainingInterrupted as error:
        if error.checkpoint is None:
            raise
        member = getattr(error, "member", 0)
        which = "" if estimator.n_init == 1 else (
            f"it is member {member + 1} of n_init={estimator.n_init}; ")
        raise TrainingInterrupted(
            error.epochs_done, error.checkpoint,
            advice=f"{which}fit again with resume=True and the same checkpoint_dir="
                   f"{os.fspath(estimator.checkpoint_dir)!r} to continue") from error


def _jsonable(value):
    """A parameter as JSON can hold it (tuples as lists, slices and ranges as their bounds,
    numpy scalars as numbers, anything else as its repr)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, slice | range):
        return [value.start, value.stop, value.step]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


# ---------------------------------------------------------------------------- save / load
_FORMAT = "pyro_mmt.estimator/2"


def save_estimator(estimator: MultimodalSemiSupervisedClassifier, path) -> None:
    """Save a fitted estimator: its parameters, the model's config, the standardiser and every
    member's ``state_dict()``, as plain tensors, numbers and strings (``torch.save``; read back
    by :func:`load_estimator` with ``weights_only=True``). User networks are saved as weights
    only: pass the same ``decoders``/``encoders`` to :func:`load_estimator`."""
    estimator._check_fitted()
    params = estimator.get_params(deep=False)
    custom = {name: sorted(params.pop(name) or {}) for name in ("decoders", "encoders")}
    if params["modalities"] is not None:  # slices and ranges as the column lists they stand for
        width = sum(estimator.dims_.values())
        params["modalities"] = {
            m: list(range(*c.indices(width))) if isinstance(c, slice) else
            [v.item() if isinstance(v, np.generic) else v for v in c]
            for m, c in params["modalities"].items()}
    if params["checkpoint_dir"] is not None:
        params["checkpoint_dir"] = os.fspath(params["checkpoint_dir"])
    params = {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v)
              for k, v in params.items()}
    state = {
        "format": _FORMAT,
        "params": params,
        "custom_networks": custom,
        "config": estimator.config_.to_dict(),
        "modalities": list(estimator.modalities_),
        "label_counts": [int(c) for c in estimator.label_counts_],
        "classes": [_plain(c) for c in estimator.classes_.tolist()],
        "standardiser": None if estimator.standardiser_ is None
        else _tensor_state(estimator.standardiser_.state_dict()),
        "members": [m2.state_dict() for m2 in estimator.members_],
        "histories": [h.to_dict(orient="list") for h in estimator.histories_],
    }
    torch.save(state, path)


def load_estimator(path, map_location="cpu", *, decoders=None,
                   encoders=None) -> MultimodalSemiSupervisedClassifier:
    """Load an estimator saved by :func:`save_estimator` (``torch.load(weights_only=True)``;
    a file holding other objects is refused with a ``ValueError``). Every parameter, the
    model's config and the learned state come back exactly; an estimator fitted with your own
    networks needs the same ``decoders``/``encoders`` here."""
    state = load_weights(path, map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"path: {path} is not an estimator saved by save_estimator "
                         f"(format {_FORMAT})")
    missing = sorted({"params", "custom_networks", "config", "modalities", "label_counts",
                      "standardiser", "members", "histories"} - set(state))
    if missing:
        raise ValueError(f"path: {path} is an incomplete estimator file: it lacks {missing} "
                         "(written by save_estimator, then damaged?)")
    given = {"decoders": decoders, "encoders": encoders}
    for name, modalities in state["custom_networks"].items():
        if sorted(given[name] or {}) != modalities:
            raise ValueError(
                f"{name}: the estimator was fitted with your own {name} for {modalities}; "
                f"pass the same {name}= to load_estimator, found {sorted(given[name] or {})}")
    params = dict(state["params"], **given)
    params["hidden"] = tuple(params["hidden"])
    # a file saved before the label divergence was a setting was fitted with the joint
    # γ-objective (the default then): it keeps saying so, so that clone() refits the same
    params.setdefault("label_divergence", "gamma")
    # ... and one saved before the decision shift predicted with δ = 0
    params.setdefault("decision_shift", 0.0)
    state["config"].setdefault("decision_shift", 0.0)
    # ... and one saved before the predicted reference shares shifted along π̂
    params.setdefault("decision_reference", "labelled")
    state["config"].setdefault("decision_reference", "labelled")
    est = MultimodalSemiSupervisedClassifier(**params)
    est.config_ = ModelConfig.from_dict(state["config"])
    est.modalities_ = tuple(state["modalities"])
    est.dims_ = dict(est.config_.dims)
    est.n_features_in_ = int(sum(est.dims_.values()))
    est.n_classes_ = est.config_.num_classes
    est.classes_ = (np.asarray(state["classes"]) if "classes" in state
                    else np.arange(est.n_classes_))
    est.label_counts_ = np.asarray(state["label_counts"])
    std = state["standardiser"]
    est.standardiser_ = None if std is None else Standardiser.from_state_dict(
        {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in std.items()}
    )
    est.members_ = []
    for member in state["members"]:
        m2 = est._build(est.config_)
        m2.load_state_dict(member)
        if isinstance(map_location, str | torch.device):
            m2 = m2.to(torch.device(map_location))
        est.members_.append(m2)
    est.model_ = est.members_[0]
    est.histories_ = [pd.DataFrame(h) for h in state["histories"]]
    est.history_ = est.histories_[0]
    est.class_prior_ = np.mean([m2.class_prior() for m2 in est.members_], 0)
    return est


def _tensor_state(state: dict) -> dict:
    """numpy arrays as tensors, string arrays as lists (what ``weights_only`` loads)."""
    return {
        k: [str(v) for v in a.tolist()] if a.dtype.kind == "U" else torch.from_numpy(a.copy())
        for k, a in ((k, np.asarray(v)) for k, v in state.items())
    }
