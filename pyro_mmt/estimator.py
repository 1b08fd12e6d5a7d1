"""A scikit-learn-style estimator around the model, the guide, the objective and SVI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import TraceEnum_ELBO
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.metrics import balanced_accuracy_score

from pyro_mmt.data import MultimodalDataset, Standardiser
from pyro_mmt.guides import PoEClassifier, PoETGuide
from pyro_mmt.infer import GammaPowerELBO
from pyro_mmt.models import MultimodalTModel
from pyro_mmt.training.svi import load_weights, predict_proba, train

__all__ = [
    "build_model_and_guide",
    "make_objective",
    "MultimodalSemiSupervisedClassifier",
    "save_estimator",
    "load_estimator",
]


def build_model_and_guide(
    dims: Mapping[str, int],
    num_classes: int,
    *,
    latent_dim: int = 16,
    hidden: Sequence[int] = (128,),
    nu: float = 5.0,
    sigma: float | Mapping[str, float] = 1.0,
    alpha: float = 1.0,
    class_weight: str | Sequence[float] | None = None,
    logit_adjustment: float = 0.0,
    unlabelled_prior_shift: float = 0.0,
    label_counts: Sequence[int] | None = None,
    joint_head: bool = False,
    latent_weight: float = 1.0,
) -> tuple[MultimodalTModel, PoETGuide]:
    """The model and guide of DESIGN.md sharing one classifier, from one set of options.

    See :class:`~pyro_mmt.models.MultimodalTModel` and :class:`~pyro_mmt.guides.PoETGuide` for
    the meaning of each option. Returns ``(model, guide)``; train ``model.model`` and
    ``guide.guide`` with SVI.
    """
    classifier = PoEClassifier(dims, num_classes, hidden, joint_head=joint_head)
    model = MultimodalTModel(
        dims, num_classes, latent_dim=latent_dim, hidden=hidden, nu=nu, sigma=sigma,
        classifier=classifier, alpha=alpha, class_weight=class_weight,
        logit_adjustment=logit_adjustment, label_counts=label_counts, latent_weight=latent_weight,
    )
    guide = PoETGuide(
        dims, num_classes, classifier=classifier, latent_dim=latent_dim, hidden=hidden, nu=nu,
        sigma=sigma, unlabelled_prior_shift=unlabelled_prior_shift, label_counts=label_counts,
        latent_weight=latent_weight,
    )
    return model, guide


def make_objective(objective: str = "gamma_power", *, gamma: float | str = "auto",
                   num_particles: int = 1) -> pyro.infer.ELBO:
    """``"gamma_power"``: :class:`~pyro_mmt.infer.GammaPowerELBO`; ``"kl"``: Pyro's
    ``TraceEnum_ELBO`` (the M2 ELBO). Both with one data plate and vectorised particles."""
    vectorize = num_particles > 1
    if objective == "gamma_power":
        return GammaPowerELBO(gamma, num_particles=num_particles, max_plate_nesting=1,
                              vectorize_particles=vectorize)
    if objective == "kl":
        return TraceEnum_ELBO(num_particles=num_particles, max_plate_nesting=1,
                              vectorize_particles=vectorize, strict_enumeration_warning=False)
    raise ValueError(f"objective: expected 'gamma_power' or 'kl', found {objective!r}")


class MultimodalSemiSupervisedClassifier(ClassifierMixin, BaseEstimator):
    """Semi-supervised classifier for class-imbalanced multimodal data (scikit-learn API).

    ``fit(X, y)`` takes ``X`` as

    - a mapping modality name -> array or DataFrame [N, n_j] (a row of NaN = modality missing),
    - a DataFrame whose columns are a two-level MultiIndex (modality, feature), e.g.
      ``pandas.concat({"top": top, "bottom": bottom}, axis=1)``: the form that scikit-learn's
      model selection (``cross_val_score``, ``GridSearchCV``) can split by rows, or
    - a :class:`~pyro_mmt.data.MultimodalDataset`,

    and ``y`` with −1 for unlabelled rows (the ``LabelSpreading`` convention). It standardises
    each modality on the training rows, builds the model and guide (:func:`build_model_and_guide`)
    and trains them with Pyro's SVI (:func:`~pyro_mmt.training.svi.train`). ``predict_proba`` accepts
    any subset of the modalities (missing ones as NaN rows or absent keys); ``score`` is the
    balanced accuracy on the rows with a label (y ≥ 0).

    The fitted Pyro pieces stay available: ``model_`` (:class:`MultimodalTModel`), ``guide_``
    (:class:`PoETGuide`), ``history_`` (per-epoch DataFrame), ``standardiser_``.

    :param str objective: ``"gamma_power"`` (the γ-power divergence) or ``"kl"`` (the M2 ELBO).
    :param gamma: γ of the γ-power objective, ``"auto"`` = −2/(ν+n+d).
    :param float nu: ν > 2, or ``inf`` for the Gaussian model.
    :param int latent_dim: d.
    :param hidden: hidden layer sizes of every network.
    :param sigma: decoder scale σ_j (data are standardised, so 1 is the natural unit).
    :param float alpha: weight α of the classification term α log q(y | x), per labelled
        datum (default 1000). On mfeat (ρ = 10, β = 0.05, seeds 0–3) α from 40 to 5000 changes
        balanced accuracy little (mean 0.787 to 0.798) next to the spread between seeds
        (0.70–0.92): ``python -m benchmarks.alpha_sweep``, ``docs/benchmark.md``.
    :param class_weight: None or "balanced" (weights of the classification term).
    :param float logit_adjustment: τ of the logit-adjusted classification term.
    :param float unlabelled_prior_shift: τ' for the unlabelled enumeration (see the guide).
    :param bool joint_head: add a joint head to the classifier.
    :param float latent_weight: β on the z sites (β-VAE; "kl" objective only).
    :param int epochs: training epochs (passes over the unlabelled data).
    :param int batch_size: unlabelled batch size.
    :param labelled_batch_size: labelled batch size (default ``batch_size``).
    :param float lr: Adam learning rate.
    :param int num_particles: particles per step.
    :param bool standardise: standardise each modality on the training rows.
    :param int seed: random seed.
    :param str device: ``"cpu"`` or ``"cuda"``.
    :param bool progress: show a progress bar.
    :param str optimizer: ``"clipped_adam"`` (Pyro's ``ClippedAdam``, one Adam per parameter
        tensor; the default, with which the published benchmark was run) or ``"fused_adam"``
        (:class:`~pyro_mmt.training.optim.MultiTensorAdam`: the same update, clipped at ±10, as one fused
        Adam over all parameters; faster per step, see ``docs/performance.md``).
    :param int n_init: number of independent initialisations (seeds ``seed + 1000 i``), each a
        full model and guide; ``predict_proba`` averages their q(y | x). The result of one fit
        depends strongly on the initialisation (±0.07 balanced accuracy between seeds on mfeat,
        ρ = 10, β = 0.05); averaging three raised mfeat from 0.799 to 0.852 and digits from
        0.742 to 0.765 there (``docs/benchmark.md``). ``model_``/``guide_`` are the first member;
        ``members_`` holds all of them and ``histories_`` their histories.
    :param bool distributed: data-parallel training over the processes of a ``torchrun``
        launch (:func:`~pyro_mmt.training.distributed.train_distributed`; gloo on CPU, nccl on GPU);
        ``batch_size`` is then the global batch.
    """

    def __init__(
        self,
        objective: str = "gamma_power",
        gamma: float | str = "auto",
        nu: float = 5.0,
        latent_dim: int = 16,
        hidden: Sequence[int] = (128,),
        sigma: float = 1.0,
        alpha: float = 1000.0,
        class_weight: str | None = None,
        logit_adjustment: float = 0.0,
        unlabelled_prior_shift: float = 0.0,
        joint_head: bool = False,
        latent_weight: float = 1.0,
        epochs: int = 50,
        batch_size: int = 128,
        labelled_batch_size: int | None = None,
        lr: float = 1e-3,
        num_particles: int = 1,
        standardise: bool = True,
        seed: int = 0,
        device: str = "cpu",
        progress: bool = False,
        optimizer: str = "clipped_adam",
        distributed: bool = False,
        n_init: int = 1,
    ):
        self.objective = objective
        self.gamma = gamma
        self.nu = nu
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.sigma = sigma
        self.alpha = alpha
        self.class_weight = class_weight
        self.logit_adjustment = logit_adjustment
        self.unlabelled_prior_shift = unlabelled_prior_shift
        self.joint_head = joint_head
        self.latent_weight = latent_weight
        self.epochs = epochs
        self.batch_size = batch_size
        self.labelled_batch_size = labelled_batch_size
        self.lr = lr
        self.num_particles = num_particles
        self.standardise = standardise
        self.seed = seed
        self.device = device
        self.progress = progress
        self.optimizer = optimizer
        self.distributed = distributed
        self.n_init = n_init

    # ------------------------------------------------------------------ data at the boundary
    def _dataset(self, X, y=None, *, fitted=False) -> MultimodalDataset:
        if fitted and isinstance(X, MultimodalDataset) and X.modalities != self.modalities_:
            X = X.to_numpy()[0]  # a subset or another order: completed below like a mapping
        if isinstance(X, MultimodalDataset):
            data = X if y is None else X.with_labels(y)
        else:
            X = _modality_mapping(X)
            if fitted:
                X = self._complete(X)
            kwargs = {"num_classes": self.n_classes_} if fitted else {}
            data = MultimodalDataset(X, y, **kwargs)
        if fitted:
            if data.modalities != self.modalities_:
                data = data.select_modalities(self.modalities_)
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
            width = np.shape(value)[1] if np.ndim(value) == 2 else None
            if width != self.dims_[m]:
                raise ValueError(
                    f"X[{m!r}]: expected shape [N, {self.dims_[m]}] (as in fit), found shape "
                    f"{np.shape(value)}"
                )
        n = len(next(iter(X.values())))
        return {
            m: X[m] if m in X else np.full((n, self.dims_[m]), np.nan) for m in self.modalities_
        }

    # ------------------------------------------------------------------------------- fit
    def fit(self, X, y=None):
        """Fit on ``X`` (mapping or MultimodalDataset) with labels ``y`` (−1 = unlabelled)."""
        data = self._dataset(X, y)
        counts = data.class_counts()
        empty = np.flatnonzero(counts == 0).tolist()
        if empty:
            raise ValueError(
                f"y: every class needs at least one labelled sample, found none for classes "
                f"{empty} (labelled counts {counts.tolist()})"
            )
        self.modalities_ = data.modalities
        self.dims_ = dict(data.dims)
        self.n_classes_ = data.num_classes
        self.classes_ = np.arange(self.n_classes_)
        self.label_counts_ = counts
        self.standardiser_ = Standardiser().fit(data) if self.standardise else None
        if self.standardiser_ is not None:
            data = self.standardiser_.transform(data)

        device = torch.device(self.device)
        if isinstance(self.n_init, bool) or int(self.n_init) != self.n_init or self.n_init < 1:
            raise ValueError(f"n_init: expected a positive integer, found {self.n_init!r}")
        fit_fn = train
        if self.distributed:
            from pyro_mmt.training.distributed import init_from_env, train_distributed

            init_from_env("nccl" if device.type == "cuda" else "gloo")
            fit_fn = train_distributed
        self.members_, self.histories_ = [], []
        for member in range(int(self.n_init)):
            # member 0 uses `seed`, so n_init = 1 is the single model; member i uses seed + 1000 i
            seed = self.seed + 1000 * member
            pyro.set_rng_seed(seed)  # the networks' initial weights too, so fit is repeatable
            model, guide = build_model_and_guide(
                self.dims_, self.n_classes_, latent_dim=self.latent_dim,
                hidden=tuple(self.hidden), nu=self.nu, sigma=self.sigma, alpha=self.alpha,
                class_weight=self.class_weight, logit_adjustment=self.logit_adjustment,
                unlabelled_prior_shift=self.unlabelled_prior_shift, label_counts=counts,
                joint_head=self.joint_head, latent_weight=self.latent_weight,
            )
            model.to(device)
            guide.to(device)
            guide.classifier.to(device)
            with pyro.get_param_store().scope():
                history = fit_fn(
                    model.model, guide.guide, data,
                    objective=make_objective(self.objective, gamma=self.gamma,
                                             num_particles=self.num_particles),
                    optimizer=self._make_optimizer(),
                    epochs=self.epochs, batch_size=self.batch_size,
                    labelled_batch_size=self.labelled_batch_size, seed=seed,
                    device=device, progress=self.progress,
                )
            self.members_.append((model, guide))
            self.histories_.append(history)
        self.model_, self.guide_ = self.members_[0]
        self.history_ = self.histories_[0]
        return self

    def _make_optimizer(self):
        if self.optimizer == "clipped_adam":
            return pyro.optim.ClippedAdam({"lr": self.lr})
        if self.optimizer == "fused_adam":
            from pyro_mmt.training.optim import MultiTensorAdam

            return MultiTensorAdam({"lr": self.lr, "clip_value": 10.0})
        raise ValueError(
            f"optimizer: expected 'clipped_adam' or 'fused_adam', found {self.optimizer!r}"
        )

    # ---------------------------------------------------------------------------- predict
    def predict_proba(self, X) -> np.ndarray:
        """q(y | x), shape [N, K], rows summing to 1; any subset of modalities."""
        self._check_fitted()
        data = self._dataset(X, fitted=True)
        device = torch.device(self.device)
        members = getattr(self, "members_", [(self.model_, self.guide_)])
        return np.mean([predict_proba(guide, data, device=device) for _, guide in members], 0)

    def predict(self, X) -> np.ndarray:
        """The most probable class under q(y | x)."""
        self._check_fitted()
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def score(self, X, y, sample_weight=None) -> float:
        """Balanced accuracy (mean per-class recall) on the labelled rows (y ≥ 0) of ``X``;
        unlabelled rows (y = −1) are ignored, so scikit-learn's cross-validation can score
        folds of semi-supervised data."""
        y = np.asarray(y.numpy() if isinstance(y, torch.Tensor) else y)
        labelled = y >= 0
        if not labelled.any():
            raise ValueError(f"y: expected some labelled rows (y >= 0) to score, found none "
                             f"among {y.size}")
        pred = self.predict(X)
        if pred.shape[0] != y.shape[0]:
            raise ValueError(f"y: expected {pred.shape[0]} labels (one per row of X), found "
                             f"{y.shape[0]}")
        weight = None if sample_weight is None else np.asarray(sample_weight)[labelled]
        return float(balanced_accuracy_score(y[labelled], pred[labelled], sample_weight=weight))

    def _check_fitted(self):
        if not hasattr(self, "guide_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(X, y) first"
            )

    @property
    def history(self) -> pd.DataFrame:
        """Per-epoch training history (alias of ``history_``)."""
        self._check_fitted()
        return self.history_


def _modality_mapping(X) -> Mapping:
    """The mapping modality -> [N, n_j] behind ``X`` (a mapping, or a DataFrame whose columns
    are a (modality, feature) MultiIndex)."""
    if isinstance(X, pd.DataFrame):
        if X.columns.nlevels != 2:
            raise ValueError(
                "X: a DataFrame needs two column levels (modality, feature), e.g. "
                "pandas.concat({'a': Xa, 'b': Xb}, axis=1); found "
                f"{X.columns.nlevels} level(s)"
            )
        return {str(m): X[m].to_numpy() for m in X.columns.get_level_values(0).unique()}
    if not isinstance(X, Mapping):
        raise ValueError(
            "X: expected a mapping modality name -> array [N, n_j], a DataFrame with "
            "(modality, feature) columns or a MultimodalDataset, found " + type(X).__name__
        )
    return X


def save_estimator(estimator: MultimodalSemiSupervisedClassifier, path) -> None:
    """Save a fitted estimator: its hyperparameters, the fitted sizes, the standardiser and the
    network weights, as plain tensors and numbers (``torch.save``; read back by
    :func:`load_estimator` with ``weights_only=True``)."""
    estimator._check_fitted()
    params = estimator.get_params()
    params["hidden"] = list(params["hidden"])
    state = {
        "params": params,
        "modalities": list(estimator.modalities_),
        "dims": dict(estimator.dims_),
        "n_classes": int(estimator.n_classes_),
        "label_counts": [int(c) for c in estimator.label_counts_],
        "standardiser": None if estimator.standardiser_ is None
        else _tensor_state(estimator.standardiser_.state_dict()),
        "members": [
            {"model": model.state_dict(), "guide": guide.state_dict(),
             "classifier": guide.classifier.state_dict()}
            for model, guide in getattr(estimator, "members_",
                                        [(estimator.model_, estimator.guide_)])
        ],
        "history": estimator.history_.to_dict(orient="list"),
    }
    torch.save(state, path)


def load_estimator(path, map_location="cpu") -> MultimodalSemiSupervisedClassifier:
    """Load an estimator saved by :func:`save_estimator` (``torch.load(weights_only=True)``;
    a file holding other objects is refused with a ``ValueError``)."""
    state = load_weights(path, map_location=map_location)
    params = dict(state["params"])
    params["hidden"] = tuple(params["hidden"])
    est = MultimodalSemiSupervisedClassifier(**params)
    est.modalities_ = tuple(state["modalities"])
    est.dims_ = {m: int(state["dims"][m]) for m in est.modalities_}
    est.n_classes_ = int(state["n_classes"])
    est.classes_ = np.arange(est.n_classes_)
    est.label_counts_ = np.asarray(state["label_counts"])
    std = state["standardiser"]
    est.standardiser_ = None if std is None else Standardiser.from_state_dict(
        {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in std.items()}
    )
    est.members_ = []
    for member in state["members"]:
        model, guide = build_model_and_guide(
            est.dims_, est.n_classes_, latent_dim=est.latent_dim, hidden=est.hidden, nu=est.nu,
            sigma=est.sigma, alpha=1.0, class_weight=est.class_weight,
            logit_adjustment=est.logit_adjustment,
            unlabelled_prior_shift=est.unlabelled_prior_shift, label_counts=est.label_counts_,
            joint_head=est.joint_head, latent_weight=est.latent_weight,
        )
        model.load_state_dict(member["model"])
        guide.load_state_dict(member["guide"])
        guide.classifier.load_state_dict(member["classifier"])
        est.members_.append((model, guide))
    est.model_, est.guide_ = est.members_[0]
    est.history_ = pd.DataFrame(state["history"])
    return est


def _tensor_state(state: dict) -> dict:
    """numpy arrays as tensors, string arrays as lists (what ``weights_only`` loads)."""
    return {
        k: [str(v) for v in a.tolist()] if a.dtype.kind == "U" else torch.from_numpy(a.copy())
        for k, a in ((k, np.asarray(v)) for k, v in state.items())
    }
