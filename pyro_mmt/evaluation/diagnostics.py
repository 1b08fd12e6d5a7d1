r"""Posterior diagnostics of a fitted model and guide, as ArviZ ``InferenceData``.

ArviZ's ``from_pyro`` reads MCMC runs only. Here the draws come from the guide,
:math:`(y_s, z_s) \sim q(y, z \mid x)`, drawn with :class:`pyro.infer.Predictive`, and everything a
statistician checks a fit with is built from them (``docs/diagnostics.md``):

- :func:`to_inference_data`: an ``InferenceData`` with named dims and coords: ``posterior``
  (the global quantity worth summarising: the class shares of the unlabelled data, per draw),
  ``latent`` (z and y per datum and draw, the classifier's q(y | x)), ``posterior_predictive``
  (each modality), ``sample_stats`` (log p(x, y, z), log q(y, z | x), the log importance weight
  and log p(x | y, z), joint and per modality, per draw and datum), ``observed_data``,
  ``constant_data`` (labels, which labels were conditioned on, the modality mask, the log
  Jacobian of the data's units) and the run's hyperparameters as attributes
  (:func:`run_attrs`); :func:`save_netcdf` / :func:`load_netcdf`. Given the fitted estimator,
  the observed data and the posterior predictive are in the units of its X.
- :func:`importance_diagnostics`: per datum, Pareto k̂ (PSIS), the importance-sampling effective
  sample size and the importance-weighted (IWAE) estimate of log p(x).
- :func:`elpd`: the IWAE log p(x_i) with their k̂ as ArviZ's LOO object, for ``az.compare``
  (``az.loo`` does not apply to draws of per-datum latents from q, and refuses: no
  ``log_likelihood`` group).
- :func:`classifier_checks`: expected calibration error, a reliability table, and the entropy of
  q(y | x) on unlabelled data by predicted class.
- :func:`diagnose`: all of the above plus the plots of :mod:`pyro_mmt.evaluation.diagnostic_plots`,
  written to a folder.

This is the only module of pyro-mmt that imports ArviZ, through a small adapter with one backend
per ArviZ line: :class:`_InferenceDataBackend` (ArviZ 0.x, ``az.InferenceData``) and
:class:`_DataTreeBackend` (ArviZ 1.x, ``xarray.DataTree``), which build the same groups,
variables, dims and coordinates. Callers ask this module for the groups (:func:`get_group`, an
``xarray.Dataset`` on either line), never the container's own API.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import numbers
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import Predictive
from pyro.poutine.util import site_is_subsample
from scipy.special import logsumexp
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.utils.validation import check_is_fitted

from pyro_mmt.data import MultimodalDataset
from pyro_mmt.evaluation.metrics import expected_calibration_error

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

__all__ = [
    "KHAT_MIN_DRAWS",
    "LATENT_GROUP",
    "KHAT_THRESHOLD",
    "ClassifierChecks",
    "classifier_checks",
    "diagnostics_summary",
    "elpd",
    "arviz_line",
    "get_group",
    "group_names",
    "importance_diagnostics",
    "importance_sampling_ess",
    "iwae_log_evidence",
    "load_netcdf",
    "pareto_khat",
    "run_attrs",
    "save_netcdf",
    "to_inference_data",
]

#: Pareto k̂ above which a datum's importance weights are flagged (Vehtari et al. 2024).
KHAT_THRESHOLD = 0.7

#: Draws per datum PSIS needs to fit the tail (0.2 S tail draws; ArviZ 1.x's fit needs 6, its
#: first quartile above its minimum, 0.x's 5): below, k̂ is NaN, on either ArviZ line.
KHAT_MIN_DRAWS = 30

#: Log weights whose range is at most this are treated as constant (see :func:`pareto_khat`).
CONSTANT_LOG_WEIGHT_TOL = 1e-6


# ----------------------------------------------------------------------------------------------
# The ArviZ adapter: the only place that touches the arviz package
# ----------------------------------------------------------------------------------------------

#: The group of the per-datum (local) draws; not one of ArviZ's own groups, so that
#: ``az.summary`` and friends, which read ``posterior``, see the global quantities only.
LATENT_GROUP = "latent"


class _InferenceDataBackend:
    """ArviZ 0.x: ``az.from_dict`` -> ``az.InferenceData`` of xarray Datasets, netCDF through
    h5netcdf, PSIS through ``az.psislw``, ``az.ELPDData`` for :func:`elpd`.

    :class:`_DataTreeBackend` (ArviZ 1.x) implements the same methods: build from groups of
    numpy arrays, list and get groups as ``xarray.Dataset``, read the run's attributes, write
    and read netCDF, PSIS k̂ for log weights ``[N, S]`` and an ELPD object ``az.compare`` takes.
    """

    line = 0

    def __init__(self, az):
        self.az = az

    @contextlib.contextmanager
    def _own_groups(self):
        # ArviZ 0.x warns about any group outside its scheme: the latent group is ours on purpose
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=rf".*\b{LATENT_GROUP} group is not defined in the "
                "InferenceData scheme", category=UserWarning)
            yield

    def from_groups(self, groups: dict[str, dict[str, np.ndarray]], *, coords, dims, attrs):
        groups = dict(groups)
        latent = groups.pop(LATENT_GROUP)
        # the run's attributes on the whole object and on every group (as from_pyro does)
        group_attrs = {f"{name}_attrs": dict(attrs) for name in groups}
        data = self.az.from_dict(**groups, coords=coords, dims=dims, attrs=dict(attrs),
                                 **group_attrs)
        latent = self.az.dict_to_dataset(latent, coords=coords, dims=dims, attrs=dict(attrs))
        with self._own_groups():
            data.add_groups({LATENT_GROUP: latent})
        return data

    def attrs(self, data) -> dict:
        return dict(data.attrs)

    def group_names(self, data) -> tuple[str, ...]:
        return tuple(data.groups())

    def group(self, data, name: str) -> xr.Dataset:
        if name not in data.groups():
            raise ValueError(f"name: the InferenceData has groups {data.groups()}, not {name!r}")
        return data[name]

    def to_netcdf(self, data, path: Path) -> None:
        data.to_netcdf(str(path), engine="h5netcdf")

    def from_netcdf(self, path: Path):
        # eager: read into memory and close the file (it can then be overwritten or removed)
        with self.az.rc_context({"data.load": "eager"}), self._own_groups():
            return self.az.from_netcdf(str(path), engine="h5netcdf")

    def pareto_khat(self, log_weights: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            _, khat = self.az.psislw(log_weights, reff=1.0)
        return np.asarray(khat, dtype=np.float64)

    def elpd_data(self, *, elpd_i: xr.DataArray, pareto_k: xr.DataArray, n_samples: int,
                  good_k: float):
        from arviz.stats.stats_utils import ELPDData  # ArviZ 0.x only

        n = elpd_i.size
        return ELPDData(
            data=[float(elpd_i.sum()), float(np.sqrt(n * np.var(elpd_i.values))), 0.0,
                  int(n_samples), int(n), bool((pareto_k > good_k).any()),
                  elpd_i.rename("loo_i"), pareto_k, "log", float(good_k)],
            index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i",
                   "pareto_k", "scale", "good_k"],
        )


class _DataTreeBackend:
    """ArviZ 1.x: ``az.from_dict`` -> ``xarray.DataTree`` (arviz-base), netCDF through
    h5netcdf, PSIS through arviz-stats, ``ELPDDataLOO`` for :func:`elpd`; the same groups,
    variables, dims and coordinates as :class:`_InferenceDataBackend` builds."""

    line = 1

    def __init__(self, az):
        self.az = az

    def from_groups(self, groups: dict[str, dict[str, np.ndarray]], *, coords, dims, attrs):
        # arviz-base's attrs are per group; the run's attributes go on the root and every group
        data = self.az.from_dict(groups, coords=coords, dims=dims)
        data.attrs.update(attrs)
        for name in groups:
            data[name].attrs.update(attrs)
        return data

    def attrs(self, data) -> dict:
        return {k: v for k, v in data.attrs.items()}

    def group_names(self, data) -> tuple[str, ...]:
        return tuple(data.children)

    def group(self, data, name: str) -> xr.Dataset:
        if name not in data.children:
            raise ValueError(
                f"name: the DataTree has groups {tuple(data.children)}, not {name!r}")
        return data[name].to_dataset()

    def to_netcdf(self, data, path: Path) -> None:
        data.to_netcdf(str(path), engine="h5netcdf")

    def from_netcdf(self, path: Path):
        # read into memory and close the file (it can then be overwritten or removed)
        with self.az.from_netcdf(str(path), engine="h5netcdf") as tree:
            return tree.load().copy()

    def pareto_khat(self, log_weights: np.ndarray) -> np.ndarray:
        from arviz_stats.base import array_stats  # ArviZ 1.x only

        # arviz-stats' psislw takes log-likelihood draws, whose LOO log weights are their
        # negatives (arviz 0.x's takes the log weights): hence the sign
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            _, khat = array_stats.psislw(-log_weights, r_eff=1.0, axis=-1)
        return np.asarray(khat, dtype=np.float64)

    def elpd_data(self, *, elpd_i: xr.DataArray, pareto_k: xr.DataArray, n_samples: int,
                  good_k: float):
        n = elpd_i.size
        return self.az.ELPDDataLOO(
            elpd=float(elpd_i.sum()), se=float(np.sqrt(n * np.var(elpd_i.values))), p=0.0,
            n_samples=int(n_samples), n_data_points=int(n), scale="log",
            warning=bool((pareto_k > good_k).any()), good_k=float(good_k), elpd_i=elpd_i,
            pareto_k=pareto_k)


@functools.cache
def _arviz() -> _InferenceDataBackend | _DataTreeBackend:
    """The backend for the installed ArviZ, imported on first use."""
    with warnings.catch_warnings():
        # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning at import time
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor",
                                category=FutureWarning)
        import arviz as az
    major = int(az.__version__.split(".")[0])
    return _DataTreeBackend(az) if major >= 1 else _InferenceDataBackend(az)


def arviz_line() -> int:
    """The major version of the installed ArviZ (0: InferenceData, 1: DataTree)."""
    return _arviz().line


def get_group(data, name: str) -> xr.Dataset:
    """The group ``name`` (``"posterior"``, ``"sample_stats"``, ...) of ``data`` as an
    ``xarray.Dataset``, whichever ArviZ container holds it."""
    return _arviz().group(data, name)


def group_names(data) -> tuple[str, ...]:
    """The names of the groups in ``data``."""
    return _arviz().group_names(data)


def run_attrs(data) -> dict:
    """The attributes of the run stored by :func:`to_inference_data` (model class, ν, d, σ_m,
    number of draws, seed, ...), as a dict."""
    return _arviz().attrs(data)


def save_netcdf(data, path: str | Path) -> Path:
    """Write ``data`` (from :func:`to_inference_data`) to a netCDF file (h5netcdf, compressed);
    returns the path. Read it back with :func:`load_netcdf`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _arviz().to_netcdf(data, path)
    return path


def load_netcdf(path: str | Path):
    """Read a file written by :func:`save_netcdf`, fully into memory (the file is closed)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no netCDF file at {path}")
    return _arviz().from_netcdf(path)


# ----------------------------------------------------------------------------------------------
# Draws from the guide and the InferenceData
# ----------------------------------------------------------------------------------------------


def _method(obj, name: str) -> Callable:
    """``obj.<name>`` when it is callable (an object such as
    :class:`~pyro_mmt.models.MultimodalM2`), else ``obj`` itself when it is callable."""
    fn = getattr(obj, name, None)
    if callable(fn):
        return fn
    if callable(obj):
        return obj
    raise ValueError(f"{name}: expected an object with a .{name}(x, mask, y) method or a callable")


def _owner(obj):
    """The object behind a bound method (``m2`` for ``m2.model``), else ``obj``."""
    return getattr(obj, "__self__", obj)


def _model_and_guide(model, guide) -> tuple[Callable, Callable, Any]:
    """The model and guide callables, and the guide object (``guide=None``: the model's
    object, which must then have a ``.guide`` method, as a MultimodalM2 has)."""
    if isinstance(guide, MultimodalDataset):
        raise ValueError(
            "guide: found a MultimodalDataset; pass the data as `dataset=` (or as the third "
            "argument, with guide=None when the model object holds its guide, e.g. a "
            "MultimodalM2)"
        )
    if guide is None:
        guide = _owner(model)
        if not callable(getattr(guide, "guide", None)):
            raise ValueError(
                f"guide: expected a guide, or a model object with a .guide(x, mask, y) method "
                f"(e.g. a MultimodalM2), found None and a {type(guide).__name__} without one"
            )
    return _method(model, "model"), _method(guide, "guide"), guide


def _predict_proba(model, guide) -> Callable:
    """``predict_proba(x, mask)`` of the guide (or its object), else of the model's object."""
    for obj in (guide, _owner(guide), model, _owner(model)):
        fn = getattr(obj, "predict_proba", None)
        if callable(fn):
            return fn
    raise ValueError("guide: expected a .predict_proba(x, mask) method for q(y | x) on the "
                     "guide or the model object")


def _site_log_prob(site, shape) -> torch.Tensor:
    """log density of a trace site's value, per draw and datum ``shape`` = [S, B]."""
    log_p = site["fn"].log_prob(site["value"])
    return torch.broadcast_to(log_p, shape)


def _is_density_site(site) -> bool:
    """Sample sites that belong to the density: not factors (``pyro.factor`` and the power-norm
    declaration are auxiliary: the classification term is not part of p(x, y, z))."""
    return (
        site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary", False)
    )


def _trace_given(fn, draws, args):
    """A trace of ``fn(*args)`` with its latent sites fixed to ``draws`` ([S, ...] each)."""
    return Predictive(fn, posterior_samples=draws, parallel=True).get_vectorized_trace(*args)


def _draw_batch(model_fn, guide_fn, x, mask, y, modalities, num_samples):
    """Draws of the guide for one batch and everything computed from them (torch tensors)."""
    shape = (num_samples, mask.shape[0])
    draws = Predictive(guide_fn, num_samples=num_samples, parallel=True)(x, mask, y)
    guide_trace = _trace_given(guide_fn, draws, (x, mask, y))
    model_trace = _trace_given(model_fn, draws, (x, mask, y))

    for name, site in model_trace.nodes.items():
        if _is_density_site(site) and not site["is_observed"]:
            raise ValueError(
                f"guide: the model's latent site {name!r} is not drawn by the guide; "
                "importance weights need q to cover every latent site of p"
            )
    data_sites = [f"x_{m}" for m in modalities]
    log_q = sum(
        _site_log_prob(site, shape)
        for site in guide_trace.nodes.values()
        if _is_density_site(site)
    )
    log_joint = sum(
        _site_log_prob(site, shape)
        for site in model_trace.nodes.values()
        if _is_density_site(site)
    )
    log_lik = sum(_site_log_prob(model_trace.nodes[name], shape) for name in data_sites)

    # p(x_j | y, z): by the data contract, masking every other modality marginalises it out
    marginal, replicated = {}, {}
    for j, m in enumerate(modalities):
        only_j = torch.zeros_like(mask)
        only_j[:, j] = True
        site = _trace_given(model_fn, draws, (x, only_j, y)).nodes[f"x_{m}"]
        marginal[m] = _site_log_prob({"fn": site["fn"], "value": x[m]}, shape)
        replicated[m] = site["fn"].sample()
    return {
        "draws": draws,
        "log_q": log_q,
        "log_joint": log_joint,
        "log_lik": log_lik,
        "marginal": marginal,
        "replicated": replicated,
    }


def _netcdf_attr(value):
    """An attribute value netCDF can store: numbers and strings as they are, the rest as JSON."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, numbers.Number | str):
        return value
    try:
        return json.dumps(value, default=str)
    except TypeError:
        return str(value)


def _config_attrs(owner) -> dict | None:
    """The settings of a model object with a ``config`` (a
    :class:`~pyro_mmt.config.ModelConfig`): one attribute per setting, a per-modality mapping
    as ``<name>_<modality>`` attributes (``sigma_a``, ``dims_a``, ...), ``nu`` the current ν
    (the learned value when ν is learned, its starting value then in ``nu_initial``) and a
    learned class prior π in ``class_prior_learned``. None without a config."""
    to_dict = getattr(getattr(owner, "config", None), "to_dict", None)
    if not callable(to_dict):
        return None
    attrs = {}
    for name, value in to_dict().items():
        if isinstance(value, Mapping):
            attrs.update({f"{name}_{m}": v for m, v in value.items()})
        else:
            attrs[name] = value
    nu = getattr(owner, "nu", None)
    if nu is not None:
        nu = float(torch.as_tensor(nu).detach())
        if attrs.get("learn_nu"):
            attrs["nu_initial"] = attrs.get("nu")
        attrs["nu"] = nu
    if attrs.get("class_prior") == "learned" and callable(getattr(owner, "class_prior", None)):
        attrs["class_prior_learned"] = [float(p) for p in owner.class_prior()]
    return attrs


def _run_attrs(model, guide, extra) -> dict:
    attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "model": type(_owner(model)).__name__,
        "guide": type(_owner(guide)).__name__,
    }
    settings = _config_attrs(_owner(model))
    if settings is None:
        settings = _config_attrs(_owner(guide))
    if settings is not None:
        attrs.update(settings)
    else:  # an object without a config: the settings it exposes as attributes
        owner = _owner(model)
        for name in ("nu", "latent_dim", "num_classes", "alpha", "logit_adjustment",
                     "latent_weight"):
            if isinstance(getattr(owner, name, None), numbers.Number):
                attrs[name] = getattr(owner, name)
        sigma = getattr(owner, "sigma", None)
        if isinstance(sigma, Mapping):
            attrs.update({f"sigma_{m}": float(s) for m, s in sigma.items()})
    attrs.update(extra or {})
    return {str(k): _netcdf_attr(v) for k, v in attrs.items()}


def _module_device_dtype(*objs, default_dtype):
    for obj in objs:
        owner = _owner(obj)
        if isinstance(owner, torch.nn.Module):
            for p in owner.parameters():
                return p.device, p.dtype
    return torch.device("cpu"), default_dtype


def _is_estimator(obj) -> bool:
    """A :class:`~pyro_mmt.estimator.MultimodalSemiSupervisedClassifier` (fitted or not)."""
    from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier

    return isinstance(obj, MultimodalSemiSupervisedClassifier)


def resolve_inputs(model, guide, dataset, y):
    """``(model, guide, dataset, threads)``: for a fitted estimator its ``model_`` (which
    holds its guide), ``dataset`` (X in any form ``fit`` accepts, with labels ``y``) checked,
    completed and standardised as ``predict`` does, and its thread setting; anything else as
    given (``y`` is then refused: the dataset holds the labels), the model and guide checked.
    Raises ``ValueError`` on bad arguments before anything is drawn; public (not in
    ``__all__``) for :func:`pyro_mmt.evaluation.diagnose.diagnose`, which checks its arguments
    with it before writing anything."""
    if _is_estimator(model):
        est = model
        check_is_fitted(est, "model_")
        if dataset is None and guide is not None:  # to_inference_data(est, X)
            guide, dataset = None, guide
        if guide is not None:
            raise ValueError(
                f"guide: the estimator's model_ holds its guide; expected None with an "
                f"estimator, found {type(guide).__name__}")
        if dataset is None:
            raise ValueError("dataset: expected X (any form fit accepts), found None")
        if isinstance(dataset, MultimodalDataset) and dataset.num_classes != est.n_classes_:
            raise ValueError(
                f"dataset: expected {est.n_classes_} classes (as the estimator), found a "
                f"MultimodalDataset with {dataset.num_classes}")
        names = None
        if isinstance(dataset, MultimodalDataset):
            names = list(dataset.class_names)
            y = dataset.y.numpy() if y is None else y
        # X checked and completed as predict does, in its own units: a shallow copy without
        # the standardiser gives them; the draws then see them standardised, as in predict
        raw_view = copy.copy(est)
        raw_view.standardiser_ = None
        raw = raw_view.prepare(dataset, y)
        if names is not None and list(raw.class_names) != names:  # a subset of modalities
            x, labels = raw.to_numpy()
            raw = MultimodalDataset(x, labels, num_classes=est.n_classes_, class_names=names,
                                    allow_unobserved_modalities=True)
        scaler = est.standardiser_
        data = raw if scaler is None else scaler.transform(raw)
        return est.model_, None, data, est.threads, _Units(raw, scaler)
    if y is not None:
        raise ValueError("y: labels are given with an estimator and X; with a model, pass a "
                         f"MultimodalDataset holding them, found y and a "
                         f"{type(_owner(model)).__name__}")
    _model_and_guide(model, guide)  # e.g. the data passed as the guide
    if dataset is not None and not isinstance(dataset, MultimodalDataset):
        raise ValueError(
            f"dataset: expected a MultimodalDataset in the model's units, found "
            f"{type(dataset).__name__} (pass the fitted estimator instead of its model_ to give "
            "X in any form fit accepts, standardised as predict does)")
    if isinstance(dataset, MultimodalDataset):
        _warn_if_not_in_model_units(_owner(model), dataset)
    return model, guide, dataset, contextlib.nullcontext, _Units(dataset, None)


@dataclass
class _Units:
    """The data in the units they were given in (``raw``) and the standardiser between those
    and the model's units (None: the same units)."""

    raw: MultimodalDataset
    scaler: Any

    def to_user(self, m: str, values: np.ndarray) -> np.ndarray:
        """Values [..., n_m] of modality m in the model's units, in the data's own units."""
        if self.scaler is None:
            return values
        return self.scaler.inverse_transform_modality(m, values).astype(values.dtype)

    def log_jacobian(self) -> np.ndarray:
        r"""Per datum :math:`\log |\partial x_\text{model} / \partial x| = -\sum \log
        \text{scale}_j` over the observed features: added to a log density of the model's
        units, it gives the density of the data's own units."""
        out = np.zeros(len(self.raw))
        if self.scaler is None:
            return out
        mask = self.raw.mask.numpy()
        for j, m in enumerate(self.raw.modalities):
            out -= mask[:, j] * float(np.log(self.scaler.scale_[m]).sum())
        return out


#: Continuous data whose pooled mean or standard deviation lies outside these bounds are not in
#: the standardised units a model fitted by the estimator (standardise=True) was trained in.
_STANDARDISED_MEAN, _STANDARDISED_SD = 3.0, (0.1, 10.0)


def _warn_if_not_in_model_units(owner, dataset: MultimodalDataset) -> None:
    """Warn when a continuous modality's observed values are far from standardised units: the
    usual mistake is raw data given to an estimator's ``model_``."""
    config = getattr(owner, "config", None)
    families = getattr(config, "likelihood", None)
    if not isinstance(families, Mapping):
        return
    from pyro_mmt.likelihoods import LIKELIHOODS

    found = []
    for j, m in enumerate(dataset.modalities):
        family = LIKELIHOODS.get(families.get(m))
        if family is None or not family.continuous:
            continue
        values = dataset.x[m].numpy()[dataset.mask[:, j].numpy()]
        values = values[np.isfinite(values)]
        if values.size < 2:
            continue
        mean, sd = float(values.mean()), float(values.std())
        if abs(mean) > _STANDARDISED_MEAN or not _STANDARDISED_SD[0] <= sd <= _STANDARDISED_SD[1]:
            found.append(f"{m!r} (mean {mean:.3g}, standard deviation {sd:.3g})")
    if found:
        warnings.warn(
            f"dataset: the observed values of modalities {', '.join(found)} are far from the "
            "standardised units a model fitted with standardise=True was trained in; k̂ and "
            "log p(x) would then describe other data. Pass the fitted estimator and raw X "
            "(to_inference_data(est, X)), which standardises as predict does, or "
            "est.standardiser_.transform(data). (For a model trained in these units, ignore "
            "this warning.)", UserWarning, stacklevel=4)


def to_inference_data(
    model,
    guide=None,
    dataset=None,
    *,
    y=None,
    num_samples: int = 100,
    num_predictive: int | None = None,
    condition_on_labels: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    attrs: Mapping[str, Any] | None = None,
):
    r"""Draws from the guide for every datum, as an ArviZ ``InferenceData``.

    For each datum :math:`x_i` (its observed modalities), S draws
    :math:`(y_s, z_s) \sim q(y, z \mid x_i)` come from ``guide`` with
    :class:`pyro.infer.Predictive` (one vectorised pass per batch; the label site is *sampled*
    from q(y | x), not enumerated). For a labelled datum with ``condition_on_labels`` the label
    is observed instead: y_s = y_i and only z is drawn. The model is then replayed on the draws.

    Groups (dims in brackets; ``chain`` has length 1, the draws are independent), the same on
    both ArviZ lines:

    - ``posterior``: ``class_share`` [chain, draw, class], the share of the data whose label
      was drawn (not conditioned on) that draw s puts in each class: the class composition of
      the unlabelled data, the one global quantity the draws say something about (the
      networks, ν and σ are point estimates: they are attributes). ``az.summary(idata)``
      summarises it, one row per class.
    - ``latent``: the per-datum draws, ``z`` [chain, draw, datum, latent]; ``y`` [chain, draw,
      datum]; ``class_prob`` [chain, draw, datum, class], the classifier's q(y | x) from
      ``guide.predict_proba(x, mask)``, with the model's decision shift as its predictions
      use it (the same for every draw). A group of its own, so that
      ArviZ's functions that read ``posterior`` are not handed N × d rows.
    - ``posterior_predictive``: ``x_<m>`` [chain, draw, datum, <m>_feature], a draw of
      :math:`p(x_m \mid y_s, z_s)` for the first ``num_predictive`` draws, also for data whose
      modality m is missing (an imputation); in the units of the data given (de-standardised
      with the estimator's ``standardiser_`` when given the estimator and X).
    - ``sample_stats``: ``log_joint`` = :math:`\log p(x, y_s, z_s)`, ``log_q`` =
      :math:`\log q(y_s, z_s \mid x)` (only z's density when y is observed), ``log_weight``,
      their difference (see :func:`importance_diagnostics`); ``log_lik_<m>``,
      :math:`\log p(x_m \mid y_s, z_s)`, the *marginal* density of modality m (NaN where it is
      missing), and ``log_lik``, the joint :math:`\log p(x \mid y_s, z_s)` over the observed
      modalities (not the sum of the marginals: the modalities are dependent given z in the
      Student-t model); each [chain, draw, datum], in the model's units. There is no
      ``log_likelihood`` group: these are not draws from the posterior of shared parameters,
      and ``az.loo`` on them would be meaningless (use :func:`elpd`).
    - ``observed_data``: ``x_<m>`` [datum, <m>_feature], NaN rows where missing, in the units
      of the data given (X itself, as stored in float32).
    - ``constant_data``: ``label`` [datum] (−1 = unknown), ``labelled`` [datum] (whether the
      label was conditioned on), ``modality_mask`` [datum, modality], ``log_jacobian`` [datum]
      (:math:`-\sum_j \log \text{scale}_j` over the observed standardised features: added to
      a log density of the model's units it gives one of the data's units; 0 without a
      standardiser).
    - attributes (every group): model and guide class; for a model with a ``config`` (a
      :class:`~pyro_mmt.models.MultimodalM2`) every setting of its
      :class:`~pyro_mmt.config.ModelConfig` (α, d, the imbalance options, ...; a per-modality
      setting as ``<name>_<m>``, e.g. ``sigma_a``), with ``nu`` the model's current ν (the
      learned one when ``learn_nu``); the number of draws, the seed, ``condition_on_labels``,
      ``units`` and ``attrs``.

    The marginal :math:`p(x_m \mid y, z)` is what the model's site ``x_<m>`` is when every other
    modality is masked: the models' data contract makes a masked modality marginalised out
    (``docs/diagnostics.md``), so any model honouring it works. For the Student-t modalities of
    :class:`~pyro_mmt.models.MultimodalM2` it is
    :math:`t_{n_m}(\mu_m(y, z), s(z)^2\sigma_m^2 I, \nu + d)`.

    ArviZ's ``loo``/``waic`` assume posterior draws of shared parameters; these are draws of
    per-datum latents from q. Compare models with :func:`elpd` and ``az.compare``.

    From the estimator, in one call: ``est.to_inference_data(X)``, or ``to_inference_data(est,
    X)`` (X as the second argument or as ``dataset=``; labels as ``y=``), takes
    ``X`` in any form ``fit`` accepts and standardises it as ``predict`` does; the draws are
    those of ``est.model_`` (the first member when ``n_init > 1``).

    :param model: the fitted :class:`~pyro_mmt.estimator.MultimodalSemiSupervisedClassifier`
        (then ``dataset`` is raw X, standardised here), an object with a ``.model(x, mask, y)``
        method (e.g. a :class:`~pyro_mmt.models.MultimodalM2`, the estimator's ``model_``) or
        the model callable itself (e.g. ``m2.model``).
    :param guide: an object with ``.guide(x, mask, y)`` or the guide callable; default (None)
        the model's object, which holds its guide (``to_inference_data(m2, dataset=data)``).
        q(y | x) comes from ``.predict_proba(x, mask)`` of the guide's object, else of the
        model's. None with an estimator.
    :param dataset: with an estimator, X in any form ``fit`` accepts (a mapping, a
        (modality, feature) DataFrame, a flat array with the estimator's ``modalities=``, a
        :class:`~pyro_mmt.data.MultimodalDataset`), any subset of its modalities, in the data's
        own units. With a model, a :class:`~pyro_mmt.data.MultimodalDataset` **in the units
        the model was trained on** (for an estimator's ``model_``:
        ``est.standardiser_.transform(data)``; a ``UserWarning`` is raised when a continuous
        modality looks far from standardised); y = −1 for unknown labels. Required.
    :param y: with an estimator, labels for X (−1 = unknown; default: all unknown, or the
        labels of a MultimodalDataset).
    :param int num_samples: S, draws per datum.
    :param num_predictive: draws kept in ``posterior_predictive`` (default min(S, 20)); it holds
        P·N·Σ n_m numbers.
    :param bool condition_on_labels: observe the labels of labelled data (their log weights then
        estimate log p(x, y)); False draws y from q(y | x) for every datum (log p(x) for all), while
        the labels stay in ``constant_data`` for the calibration checks.
    :param int seed: seed of the draws (the global torch RNG state is left as it was).
    :param int batch_size: data per vectorised pass (memory grows as S × batch_size × Σ n_m).
    :param attrs: extra attributes (e.g. the estimator's ``get_params()``).
    :return: ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ 1.x).
    """
    model, guide, dataset, threads, units = resolve_inputs(model, guide, dataset, y)
    model_fn, guide_fn, guide = _model_and_guide(model, guide)
    if not isinstance(dataset, MultimodalDataset):
        raise ValueError(f"dataset: expected a MultimodalDataset, found {type(dataset).__name__}")
    if dataset.cells:
        raise ValueError(
            f"dataset: the diagnostics take rows without missing cells; found missing cells in "
            f"modalities {list(dataset.cells)}; expected each modality's row complete or "
            "entirely NaN (fill the cells first, e.g. with the estimator's impute)")
    with threads():
        return _to_inference_data(model, guide, model_fn, guide_fn, dataset, units, num_samples,
                                  num_predictive, condition_on_labels, seed, batch_size, attrs)


def _to_inference_data(model, guide, model_fn, guide_fn, dataset, units, num_samples,
                       num_predictive, condition_on_labels, seed, batch_size, attrs):
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or \
            num_samples < 1:
        raise ValueError(f"num_samples: expected a positive integer, found {num_samples!r}")
    num_predictive = min(int(num_samples), 20) if num_predictive is None else int(num_predictive)
    if not 0 < num_predictive <= num_samples:
        raise ValueError(
            f"num_predictive: expected 1..num_samples={num_samples}, found {num_predictive}"
        )
    if len(dataset) == 0:
        raise ValueError("dataset: expected at least one row, found none")
    predict_proba = _predict_proba(model, guide)
    modalities, n, S, P = dataset.modalities, len(dataset), int(num_samples), num_predictive
    device, dtype = _module_device_dtype(guide, model, default_dtype=dataset.dtype)

    conditioned = dataset.is_labelled.numpy() & bool(condition_on_labels)
    out = {
        "z": None,
        "y": np.zeros((S, n), dtype=np.int64),
        "class_prob": np.zeros((n, dataset.num_classes)),
        "log_q": np.zeros((S, n)),
        "log_joint": np.zeros((S, n)),
        "log_lik": np.zeros((S, n)),
        "marginal": {m: np.zeros((S, n)) for m in modalities},
        "replicated": {
            m: np.zeros((P, n, k), dtype=torch.empty(0, dtype=dtype).numpy().dtype)
            for m, k in dataset.dims.items()
        },
    }
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), pyro.get_param_store().scope(), torch.no_grad():
        # a fresh param store: pyro.module must not load stale parameters into the modules
        torch.manual_seed(seed)
        for labelled in (True, False):
            rows = np.flatnonzero(conditioned == labelled)
            for start in range(0, rows.size, batch_size):
                idx = rows[start : start + batch_size]
                x = {m: dataset.x[m][idx].to(device=device, dtype=dtype) for m in modalities}
                mask = dataset.mask[idx].to(device)
                y = dataset.y[idx].to(device) if labelled else None
                got = _draw_batch(model_fn, guide_fn, x, mask, y, modalities, S)
                z = got["draws"]["z"].cpu().numpy()
                if out["z"] is None:
                    out["z"] = np.zeros((S, n) + z.shape[2:], dtype=z.dtype)
                out["z"][:, idx] = z
                out["y"][:, idx] = (
                    dataset.y[idx].numpy()[None] if labelled else got["draws"]["y"].cpu().numpy()
                )
                for key in ("log_q", "log_joint", "log_lik"):
                    out[key][:, idx] = got[key].double().cpu().numpy()
                for j, m in enumerate(modalities):
                    present = mask[:, j].cpu().numpy()
                    values = got["marginal"][m].double().cpu().numpy()
                    out["marginal"][m][:, idx] = np.where(present, values, np.nan)
                    out["replicated"][m][:, idx] = got["replicated"][m][:P].cpu().numpy()
                proba = predict_proba(x, mask)
                out["class_prob"][idx] = torch.as_tensor(proba).double().cpu().numpy()

    observed_x, _ = units.raw.to_numpy()
    coords = {
        "datum": np.arange(n),
        "latent": np.arange(out["z"].shape[-1]),
        "class": list(dataset.class_names),
        "modality": list(modalities),
        **{f"{m}_feature": np.arange(k) for m, k in dataset.dims.items()},
    }
    dims = {
        "class_share": ["class"],
        "z": ["datum", "latent"],
        "y": ["datum"],
        "class_prob": ["datum", "class"],
        "log_joint": ["datum"],
        "log_q": ["datum"],
        "log_weight": ["datum"],
        "log_lik": ["datum"],
        **{f"log_lik_{m}": ["datum"] for m in modalities},
        "label": ["datum"],
        "labelled": ["datum"],
        "modality_mask": ["datum", "modality"],
        "log_jacobian": ["datum"],
        **{f"x_{m}": ["datum", f"{m}_feature"] for m in modalities},
    }
    # the class composition of the data whose label was drawn, per draw: a global quantity
    free = ~conditioned
    share = np.stack([(out["y"][:, free] == k).mean(axis=1) if free.any()
                      else np.full(S, np.nan) for k in range(dataset.num_classes)], axis=-1)
    groups = {
        "posterior": {"class_share": share[None]},
        LATENT_GROUP: {
            "z": out["z"][None],
            "y": out["y"][None],
            "class_prob": np.broadcast_to(out["class_prob"], (1, S) + out["class_prob"].shape),
        },
        "posterior_predictive": {
            f"x_{m}": units.to_user(m, out["replicated"][m])[None] for m in modalities
        },
        "sample_stats": {
            "log_joint": out["log_joint"][None],
            "log_q": out["log_q"][None],
            "log_weight": (out["log_joint"] - out["log_q"])[None],
            "log_lik": out["log_lik"][None],
            **{f"log_lik_{m}": out["marginal"][m][None] for m in modalities},
        },
        "observed_data": {f"x_{m}": observed_x[m] for m in modalities},
        "constant_data": {
            "label": dataset.y.numpy().copy(),
            "labelled": conditioned,
            "modality_mask": dataset.mask.numpy().copy(),
            "log_jacobian": units.log_jacobian(),
        },
    }
    run = {
        "num_samples": S,
        "num_predictive": P,
        "seed": int(seed),
        "condition_on_labels": bool(condition_on_labels),
        "units": "model" if units.scaler is None else "data (de-standardised)",
        **(attrs or {}),
    }
    return _arviz().from_groups(groups, coords=coords, dims=dims,
                                attrs=_run_attrs(model, guide, run))


# ----------------------------------------------------------------------------------------------
# Importance sampling
# ----------------------------------------------------------------------------------------------


def _log_weight_matrix(data) -> tuple[np.ndarray, pd.DataFrame | None]:
    """Log weights [N, S] and, from an InferenceData, the per-datum constant data."""
    if isinstance(data, np.ndarray | torch.Tensor | list):
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu()
        lw = np.asarray(data, dtype=np.float64)
        if lw.ndim == 1:
            lw = lw[None]
        if lw.ndim != 2:
            raise ValueError(f"log_weights: expected an array [N, S], found shape {lw.shape}")
        return lw, None
    stats = get_group(data, "sample_stats")
    lw = stats["log_weight"].stack(sample=("chain", "draw")).transpose("datum", "sample")
    const = get_group(data, "constant_data")
    info = pd.DataFrame(
        {"label": const["label"].values, "labelled": const["labelled"].values.astype(bool)},
        index=pd.Index(const["datum"].values, name="datum"),
    )
    return np.asarray(lw.values, dtype=np.float64), info


def pareto_khat(log_weights) -> np.ndarray:
    """Pareto k̂ of each row of log importance weights ``[N, S]`` (PSIS, ArviZ's ``psislw``).

    Two cases ArviZ's estimator does not cover are settled here: when a row's log weights are
    equal to within ``CONSTANT_LOG_WEIGHT_TOL`` (q is the posterior for that datum, e.g. a
    conjugate model with its exact posterior) the weights are bounded, the best possible case,
    and k̂ = −inf; when S is too small for the tail fit (S < :data:`KHAT_MIN_DRAWS` = 30: the
    tail of 0.2 S draws would hold fewer than 5) or a
    row is not finite, k̂ = NaN. See :func:`importance_diagnostics` for how to read k̂.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim != 2 or lw.shape[1] < 1:
        raise ValueError(f"log_weights: expected an array [N, S], found shape {lw.shape}")
    khat = np.full(lw.shape[0], np.nan)
    largest = lw.max(axis=1)  # NaN when the row holds a NaN
    usable = np.isfinite(largest)
    with np.errstate(invalid="ignore"):
        spread = largest - lw.min(axis=1)
    constant = usable & (spread <= CONSTANT_LOG_WEIGHT_TOL)
    khat[constant] = -np.inf
    fit = usable & ~constant
    if fit.any() and lw.shape[1] >= KHAT_MIN_DRAWS:  # the same threshold on both ArviZ lines
        k = _arviz().pareto_khat(lw[fit])
        khat[fit] = np.where(np.isfinite(k), k, np.nan)
    return khat


def importance_sampling_ess(log_weights) -> np.ndarray:
    """Effective sample size (Σ w)² / Σ w² of each row of log weights ``[N, S]`` (Kong 1992):
    S for constant weights, 1 when one draw carries all the weight."""
    lw = np.asarray(log_weights, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.exp(2 * logsumexp(lw, axis=-1) - logsumexp(2 * lw, axis=-1))


def iwae_log_evidence(log_weights) -> np.ndarray:
    r"""The importance-weighted estimate :math:`\log \frac1S \sum_s w_s` of each row ``[N, S]``
    (Burda et al. 2016): a lower bound in expectation that increases with S to log p(x)."""
    lw = np.asarray(log_weights, dtype=np.float64)
    return logsumexp(lw, axis=-1) - math.log(lw.shape[-1])


def importance_diagnostics(data, *, threshold: float = KHAT_THRESHOLD) -> pd.DataFrame:
    r"""Per-datum importance-sampling diagnostics of q(y, z | x) as a proposal for p(y, z | x).

    With draws :math:`(y_s, z_s) \sim q(y, z \mid x)`, the log weights are
    :math:`\log w_s = \log p(x, y_s, z_s) - \log q(y_s, z_s \mid x)` (``sample_stats.log_weight``;
    for a datum whose label was conditioned on, y is fixed and they target p(z | x, y)).

    Columns:

    - ``khat``: Pareto k̂, the shape of a generalised Pareto distribution fitted to the largest
      weights (PSIS, Vehtari et al. 2024), via ArviZ's ``psislw``. It says how heavy the tail of
      the weights is, i.e. how well q covers the posterior:

      * k̂ < 0.5: the weights have finite variance; importance-sampling estimates (the IWAE
        log p(x) below, posterior expectations) are reliable and converge at the usual rate.
      * 0.5 ≤ k̂ ≤ 0.7: finite mean, infinite variance; PSIS-smoothed estimates are still usable
        but converge slowly (for S draws the paper's threshold is min(1 − 1/log10 S, 0.7):
        0.5 at S = 100).
      * **k̂ > 0.7 (``flagged``)**: q misses parts of the posterior where p has mass — it is too
        narrow, sits on the wrong mode, or (unlabelled data) puts little probability on a class
        the model finds plausible. For that datum the estimate of log p(x) is biased low and
        noisy, the ESS means little, and more draws barely help; q is not a good approximation
        of p(y, z | x) there. With many observed dimensions (n ≫ d) the posterior of z is
        concentrated, so small errors in q's location or scale already make the weights
        heavy-tailed; the γ-power objective also tempers the encoder's scale by design
        (``docs/derivation.md`` §7). On mfeat most data are flagged with either objective
        (``docs/diagnostics.md``).
      * k̂ = −inf: constant weights (q equals the posterior); NaN: too few draws (S < 30).

    - ``ess``: effective sample size of the raw weights, (Σ w)²/Σ w²; ``ess_fraction`` = ess/S.
    - ``log_evidence``: the importance-weighted estimate log (1/S) Σ w_s of log p(x) (or
      log p(x, y) where the label was conditioned on), the number to compare models by (e.g. the
      Student-t model against the Gaussian one, on the same data). In expectation it is below
      the truth and rises to it as S grows.
    - ``elbo``: the mean of log w_s, the Monte Carlo ELBO (IWAE with S = 1), ≤ log_evidence.
    - ``flagged``: khat > ``threshold``.
    - ``label``, ``labelled`` (from an InferenceData): the datum's label and whether it was
      conditioned on.

    :param data: an InferenceData from :func:`to_inference_data`, or log weights ``[N, S]``.
    :param float threshold: k̂ above which a datum is flagged.
    :return: DataFrame indexed by datum.
    """
    lw, info = _log_weight_matrix(data)
    khat = pareto_khat(lw)
    ess = importance_sampling_ess(lw)
    table = pd.DataFrame(
        {
            "khat": khat,
            "ess": ess,
            "ess_fraction": ess / lw.shape[1],
            "log_evidence": iwae_log_evidence(lw),
            "elbo": lw.mean(axis=1),
            "flagged": khat > threshold,
        },
        index=pd.RangeIndex(lw.shape[0], name="datum") if info is None else info.index,
    )
    if info is not None:
        table = table.join(info)
    return table


def elpd(data):
    r"""The held-out log score of a fitted model, per datum, as ArviZ's LOO object, for
    ``az.compare``: :math:`\widehat{\mathrm{elpd}}_i = \log \frac1S \sum_s w_{is}` (the
    IWAE estimate of :func:`importance_diagnostics`, plus ``constant_data.log_jacobian`` so
    that it is a density of the data's own units) with the Pareto k̂ of the same weights.

    Why not ``az.loo(idata)``: PSIS-LOO needs draws of parameters shared by all data from their
    posterior. Here the shared parameters are point estimates and the draws are of each
    datum's own (y, z), from q rather than the posterior; given the fitted parameters the data
    are independent, so the leave-one-out predictive density of x_i is p(x_i) itself, and the
    importance-weighted estimate above is how to estimate it from q. ``to_inference_data``
    writes no ``log_likelihood`` group, so ``az.loo`` refuses; the derivation is in
    ``docs/diagnostics.md`` ("Comparing two fits").

    Use it on held-out data (``to_inference_data(est, X_test, condition_on_labels=False)``):
    on the training data the score is optimistic, and no LOO correction exists for the
    point-estimated parameters (``p_loo`` is 0 by construction). Compare fits on the same
    rows, drawn with the same S and the same ``condition_on_labels``::

        az.compare({"student-t": elpd(idata_t), "gaussian": elpd(idata_g)})

    :param data: an InferenceData from :func:`to_inference_data`, with at least
        :data:`KHAT_MIN_DRAWS` draws per datum.
    :return: ``ELPDData`` (ArviZ 0.x) or ``ELPDDataLOO`` (ArviZ 1.x): ``elpd_loo``/``elpd``
        the sum over data, ``se`` its standard error, ``pareto_k`` per datum, ``good_k`` =
        min(1 − 1/log10 S, 0.7) and ``warning`` when a k̂ exceeds it (the estimate of that
        datum is then biased low: see :func:`importance_diagnostics`).
    """
    lw, info = _log_weight_matrix(data)
    if info is None:
        raise ValueError("data: expected an InferenceData from to_inference_data, found log "
                         "weights (the data's log_jacobian is in the InferenceData)")
    num_draws = lw.shape[1]
    if num_draws < KHAT_MIN_DRAWS:
        raise ValueError(
            f"data: expected at least {KHAT_MIN_DRAWS} draws per datum (KHAT_MIN_DRAWS) to "
            f"estimate k̂ and check the estimates, found {num_draws}: draw more with "
            "to_inference_data(..., num_samples=100)")
    import xarray as xr

    jacobian = get_group(data, "constant_data")["log_jacobian"].values
    coords = {"datum": info.index.to_numpy()}
    elpd_i = xr.DataArray(iwae_log_evidence(lw) + jacobian, dims=["datum"], coords=coords)
    khat = xr.DataArray(pareto_khat(lw), dims=["datum"], coords=coords)
    good_k = min(1 - 1 / math.log10(num_draws), KHAT_THRESHOLD)
    return _arviz().elpd_data(elpd_i=elpd_i, pareto_k=khat, n_samples=num_draws, good_k=good_k)


# ----------------------------------------------------------------------------------------------
# Classifier checks
# ----------------------------------------------------------------------------------------------


@dataclass
class ClassifierChecks:
    """What :func:`classifier_checks` returns.

    :ivar float ece: expected calibration error on the data with a known label (NaN if none).
    :ivar reliability: per confidence bin: ``lower``, ``upper``, ``count``, ``confidence`` (mean
        max q(y|x)), ``accuracy``; the ECE is Σ count/N · |accuracy − confidence|.
    :ivar entropy_by_class: per predicted class, on the data whose label was not conditioned on:
        ``count``, ``share``, mean and median entropy of q(y | x) (nats), mean normalised entropy
        (H / log K, 0 = certain, 1 = uniform) and mean confidence.
    :ivar per_datum: ``predicted``, ``confidence``, ``entropy``, ``label``, ``labelled``.
    """

    ece: float
    reliability: pd.DataFrame
    entropy_by_class: pd.DataFrame
    per_datum: pd.DataFrame


def classifier_checks(data, *, n_bins: int = 15) -> ClassifierChecks:
    """Calibration and confidence of the classifier q(y | x) stored in ``data``.

    - Expected calibration error (:func:`pyro_mmt.evaluation.metrics.expected_calibration_error`, B
      equal-width bins of the confidence) and its reliability table, on every datum with a known
      label. Labels the model was trained on give an optimistic ECE: check held-out data.
    - Entropy of q(y | x) on the data whose label was not conditioned on, by predicted class:
      under class imbalance, does the classifier make confident predictions for the minority
      classes, or are they predicted rarely and with high entropy?

    :param data: an InferenceData from :func:`to_inference_data`.
    :param int n_bins: B.
    """
    proba = get_group(data, LATENT_GROUP)["class_prob"].isel(chain=0, draw=0).values
    proba = proba / proba.sum(axis=1, keepdims=True)
    const = get_group(data, "constant_data")
    label = const["label"].values.astype(np.int64)
    labelled = const["labelled"].values.astype(bool)
    class_names = [str(c) for c in get_group(data, LATENT_GROUP)["class"].values]
    num_classes = proba.shape[1]

    predicted = proba.argmax(axis=1)
    confidence = proba.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(proba > 0, proba * np.log(proba), 0.0).sum(axis=1)
    per_datum = pd.DataFrame(
        {"predicted": predicted, "confidence": confidence, "entropy": entropy, "label": label,
         "labelled": labelled},
        index=pd.Index(const["datum"].values, name="datum"),
    )

    known = label >= 0
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    correct = predicted == label
    rows = []
    for b in range(n_bins):
        in_bin = known & (bins == b)
        count = int(in_bin.sum())
        rows.append({
            "lower": b / n_bins,
            "upper": (b + 1) / n_bins,
            "count": count,
            "confidence": float(confidence[in_bin].mean()) if count else np.nan,
            "accuracy": float(correct[in_bin].mean()) if count else np.nan,
        })
    reliability = pd.DataFrame(rows, index=pd.RangeIndex(n_bins, name="bin"))
    ece = (
        expected_calibration_error(label[known], proba[known], n_bins=n_bins)
        if known.any() else float("nan")
    )

    free = ~labelled
    norm = math.log(num_classes) if num_classes > 1 else 1.0
    by_class = []
    for k in range(num_classes):
        sel = free & (predicted == k)
        count = int(sel.sum())
        by_class.append({
            "class": class_names[k],
            "count": count,
            "share": count / max(int(free.sum()), 1),
            "entropy_mean": float(entropy[sel].mean()) if count else np.nan,
            "entropy_median": float(np.median(entropy[sel])) if count else np.nan,
            "entropy_normalised_mean": float(entropy[sel].mean() / norm) if count else np.nan,
            "confidence_mean": float(confidence[sel].mean()) if count else np.nan,
        })
    entropy_by_class = pd.DataFrame(by_class, index=pd.RangeIndex(num_classes, name="predicted"))
    return ClassifierChecks(float(ece), reliability, entropy_by_class, per_datum)


# ----------------------------------------------------------------------------------------------
# Summary and the one-call report
# ----------------------------------------------------------------------------------------------


def diagnostics_summary(data, table: pd.DataFrame | None = None,
                        checks: ClassifierChecks | None = None) -> pd.DataFrame:
    """One table of the headline numbers, indexed by ``metric`` with a ``value`` column.

    Importance sampling (from :func:`importance_diagnostics`): ``num_data_with_khat``,
    ``khat_mean`` (over finite k̂), ``khat_median``, ``share_khat_above_0.7``,
    ``khat_threshold_for_S`` = min(1 − 1/log10 S, 0.7) and the share above it, each over the
    data whose k̂ was estimated, and NaN when none was: k̂ needs at least
    :data:`KHAT_MIN_DRAWS` = 30 draws per datum (with fewer, the summary does not claim that no
    datum is flagged); ``ess_fraction_mean``, and the per-datum mean of the IWAE estimate
    and of the ELBO, separately for data whose label was not conditioned on (``log_px``) and was
    (``log_pxy``), also per observed dimension. Classifier (:func:`classifier_checks`): ``ece``,
    ``accuracy`` and ``balanced_accuracy`` on data with a known label, mean normalised entropy
    of q(y | x) on the data whose label was not conditioned on.
    """
    table = importance_diagnostics(data) if table is None else table
    checks = classifier_checks(data) if checks is None else checks
    num_draws = int(get_group(data, "sample_stats").sizes["draw"]) * int(
        get_group(data, "sample_stats").sizes["chain"])
    const = get_group(data, "constant_data")
    obs = get_group(data, "observed_data")
    dim_of = np.zeros(len(table))
    mask = const["modality_mask"].values.astype(bool)
    for j, m in enumerate(const["modality"].values):
        dim_of += mask[:, j] * obs[f"x_{m}"].shape[-1]
    khat = table["khat"].to_numpy()
    finite = khat[np.isfinite(khat)]
    known = khat[~np.isnan(khat)]  # NaN: not estimated (fewer than KHAT_MIN_DRAWS draws)
    k_s = min(1 - 1 / math.log10(num_draws), KHAT_THRESHOLD) if num_draws > 10 else np.nan
    values = {
        "num_data": len(table),
        "num_draws": num_draws,
        "num_data_with_khat": int(known.size),
        "khat_mean": float(finite.mean()) if finite.size else np.nan,
        "khat_median": float(np.median(known)) if known.size else np.nan,
        f"share_khat_above_{KHAT_THRESHOLD}": float(np.mean(known > KHAT_THRESHOLD))
        if known.size else np.nan,
        "khat_threshold_for_S": k_s,
        "share_khat_above_threshold_for_S": float(np.mean(known > k_s))
        if known.size and not np.isnan(k_s) else np.nan,
        "ess_fraction_mean": float(table["ess_fraction"].mean()),
    }
    labelled = table["labelled"].to_numpy().astype(bool)
    for name, sel in (("log_px", ~labelled), ("log_pxy", labelled)):
        n_sel = int(sel.sum())
        values[f"iwae_{name}_mean"] = float(table["log_evidence"][sel].mean()) if n_sel else np.nan
        values[f"elbo_{name}_mean"] = float(table["elbo"][sel].mean()) if n_sel else np.nan
        values[f"iwae_{name}_per_dim"] = (
            float((table["log_evidence"][sel] / dim_of[sel]).mean()) if n_sel else np.nan
        )
    per = checks.per_datum
    known = per["label"].to_numpy() >= 0
    values["ece"] = checks.ece
    values["num_labelled_for_calibration"] = int(known.sum())
    values["accuracy"] = (
        float(accuracy_score(per["label"][known], per["predicted"][known])) if known.any()
        else np.nan
    )
    values["balanced_accuracy"] = (
        float(balanced_accuracy_score(per["label"][known], per["predicted"][known]))
        if known.any() else np.nan
    )
    free = ~per["labelled"].to_numpy().astype(bool)
    k = len(checks.entropy_by_class)
    values["entropy_normalised_mean_unlabelled"] = (
        float(per["entropy"][free].mean() / math.log(k)) if free.any() and k > 1 else np.nan
    )
    return pd.DataFrame({"value": pd.Series(values, dtype=float)}).rename_axis("metric")
