"""The accuracy benchmark of PROTOCOL.md: splits, methods, metrics, mean ± std over seeds.

A *method* is a function ``fit_predict(split, seed) -> predicted labels of split.test``. The
registry :data:`METHODS` holds the proposed model, its ablations and the classical baselines of
BASELINES.md (all on the concatenated views, standardised on the training rows).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier

from pyro_mmt.data import SplitSkippedError, load_dataset, long_tailed_split
from pyro_mmt.data.split import LongTailedSplit
from pyro_mmt.distributions import prior_expert_scale
from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier
from pyro_mmt.evaluation.metrics import classification_metrics, summarise

__all__ = [
    "Method",
    "METHODS",
    "DEFAULT_GRID",
    "TRAINING_EPOCHS",
    "LABELSPREADING_NEIGHBOURS",
    "entropy_weight_w0",
    "run_benchmark",
    "results_table",
    "headline_table",
]

#: Training epochs of the deep models per data set (an epoch is one pass over the unlabelled
#: rows): small data sets get more passes so that every method sees a few hundred SVI steps.
TRAINING_EPOCHS = {"digits": 40, "breast": 150, "mfeat": 30, "pdspeech": 150, "fmnist": 8}

#: LabelSpreading's n_neighbors per data set, as tuned in BASELINES.md.
LABELSPREADING_NEIGHBOURS = {"digits": 10, "breast": 5, "mfeat": 5, "pdspeech": 5, "fmnist": 7}

#: PROTOCOL.md's grid: ρ, β and seeds per data set.
DEFAULT_GRID = {
    "digits": {"rho": [10, 50, 100], "beta": [0.05, 0.2], "seeds": [0, 1, 2, 3, 4]},
    "breast": {"rho": [10, 50, 100], "beta": [0.05, 0.2], "seeds": [0, 1, 2, 3, 4]},
    "mfeat": {"rho": [10, 50, 100], "beta": [0.05, 0.2], "seeds": [0, 1, 2, 3, 4]},
    "pdspeech": {"rho": [10, 50, 100], "beta": [0.05, 0.2], "seeds": [0, 1, 2, 3, 4]},
    "fmnist": {"rho": [100], "beta": [0.05, 0.2], "seeds": [0, 1, 2]},
}

#: The class-imbalance devices of the model (docs/imbalance.md): class-balanced
#: classification term, logit-adjusted classification term, prior shift in the enumeration.
IMBALANCE_OPTIONS = {"class_weight": "balanced", "logit_adjustment": 1.0,
                     "unlabelled_prior_shift": 1.0}


def entropy_weight_w0(nu: float, obs_dim: int, latent_dim: int, sigma: float = 1.0) -> float:
    """w0 = ν τ_0/(ν + n − 2): the entropy weight that the γ-objective's regulariser amounts to
    (MATH.md §6); the Gaussian M2 with β = w0 is its fair KL counterpart."""
    tau0 = float(prior_expert_scale(nu, float(obs_dim), latent_dim, obs_dim * math.log(sigma**2)))
    return nu * tau0 / (nu + obs_dim - 2)


@dataclass
class Method:
    """A benchmark method: a name, a description and ``fit_predict(split, seed, dataset,
    epochs) -> predicted test labels`` (None when the method cannot run on that split, e.g.
    SMOTE with a single labelled row in a class). ``epochs`` only matters to deep methods."""

    name: str
    description: str
    fit_predict: Callable[..., np.ndarray | None]
    deep: bool = False


def _deep(options: dict) -> Callable:
    def fit_predict(split: LongTailedSplit, seed: int, dataset: str,
                    epochs: int | None = None) -> np.ndarray:
        opts = dict(options)
        n = sum(split.train.dims.values())
        if opts.get("latent_weight") == "w0":
            opts["latent_weight"] = entropy_weight_w0(5.0, n, opts.get("latent_dim", 16))
        if isinstance(opts.get("gamma"), str) and opts["gamma"].endswith("x auto"):
            # an explicit γ as a multiple of −2/(ν + n + d) (valid above −ν/(ν + n + d))
            factor = float(opts["gamma"].split("x")[0])
            opts["gamma"] = factor * -2.0 / (opts["nu"] + n + opts.get("latent_dim", 16))
        opts["epochs"] = epochs or TRAINING_EPOCHS.get(dataset, 40)
        clf = MultimodalSemiSupervisedClassifier(seed=seed, **opts).fit(split.train)
        return clf.predict(split.test)

    return fit_predict


def _views(split: LongTailedSplit) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated views standardised on the training rows; missing entries (NaN) become the
    training mean (0 after standardising)."""
    scaler = StandardScaler().fit(split.train.concatenated())
    train = np.nan_to_num(scaler.transform(split.train.concatenated()))
    test = np.nan_to_num(scaler.transform(split.test.concatenated()))
    return train, test


def _lr(split, seed, dataset, epochs=None):
    train, test = _views(split)
    y = split.train.y.numpy()
    lab = y >= 0
    clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
    return clf.fit(train[lab], y[lab]).predict(test)


def _labelspread(split, seed, dataset, epochs=None):
    train, test = _views(split)
    k = LABELSPREADING_NEIGHBOURS.get(dataset, 7)
    clf = LabelSpreading(kernel="knn", n_neighbors=k, max_iter=100)
    return clf.fit(train, split.train.y.numpy()).predict(test)


def _selftrain(split, seed, dataset, epochs=None):
    train, test = _views(split)
    base = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
    clf = SelfTrainingClassifier(base, threshold=0.75)
    return clf.fit(train, split.train.y.numpy()).predict(test)


def _smote_lr(split, seed, dataset, epochs=None):
    try:
        from imblearn.over_sampling import SMOTE
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the smote_lr baseline needs imbalanced-learn: pip install 'pyro-mmt[baselines]'"
        ) from error
    train, test = _views(split)
    y = split.train.y.numpy()
    lab = y >= 0
    counts = np.bincount(y[lab], minlength=split.train.num_classes)
    if counts.min() < 2:  # SMOTE interpolates between neighbours: a single row has none
        return None
    smote = SMOTE(k_neighbors=min(5, int(counts.min()) - 1), random_state=seed)
    xs, ys = smote.fit_resample(train[lab], y[lab])
    clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
    return clf.fit(xs, ys).predict(test)


METHODS: dict[str, Method] = {
    "t_gamma": Method(
        "t_gamma", "Student-t model, γ-power objective (auto γ), with the imbalance options",
        _deep({"objective": "gamma_power", "nu": 5.0, "alpha": 1000.0, **IMBALANCE_OPTIONS}),
        deep=True),
    "t_gamma_plain": Method(
        "t_gamma_plain", "Student-t model, γ-power objective, no imbalance options",
        _deep({"objective": "gamma_power", "nu": 5.0, "alpha": 1000.0}), deep=True),
    "gauss_kl": Method(
        "gauss_kl", "Gaussian model (ν = ∞), KL objective (M2 ELBO, β = 1), imbalance options",
        _deep({"objective": "kl", "nu": math.inf, "alpha": 1000.0, **IMBALANCE_OPTIONS}),
        deep=True),
    "gauss_kl_w0": Method(
        "gauss_kl_w0", "Gaussian model, KL objective tempered to β = w0, imbalance options",
        _deep({"objective": "kl", "nu": math.inf, "alpha": 1000.0, "latent_weight": "w0",
               **IMBALANCE_OPTIONS}), deep=True),
    "gauss_kl_plain": Method(
        "gauss_kl_plain", "Gaussian model, KL objective (β = 1), no imbalance options",
        _deep({"objective": "kl", "nu": math.inf, "alpha": 1000.0}), deep=True),
    "gauss_kl_w0_plain": Method(
        "gauss_kl_w0_plain", "Gaussian model, KL objective tempered to β = w0, no imbalance options",
        _deep({"objective": "kl", "nu": math.inf, "alpha": 1000.0, "latent_weight": "w0"}),
        deep=True),
    "t_gamma_2x": Method(
        "t_gamma_2x", "Student-t model, explicit γ = 2 × (−2/(ν+n+d)) (Monte Carlo cross "
        "term), imbalance options",
        _deep({"objective": "gamma_power", "nu": 5.0, "alpha": 1000.0, "gamma": "2x auto",
               **IMBALANCE_OPTIONS}), deep=True),
    "t_gamma_ens3": Method(
        "t_gamma_ens3", "t_gamma with n_init = 3: q(y | x) averaged over three initialisations",
        _deep({"objective": "gamma_power", "nu": 5.0, "alpha": 1000.0, "n_init": 3,
               **IMBALANCE_OPTIONS}), deep=True),
    "gauss_kl_ens3": Method(
        "gauss_kl_ens3", "gauss_kl with n_init = 3: q(y | x) averaged over three initialisations",
        _deep({"objective": "kl", "nu": math.inf, "alpha": 1000.0, "n_init": 3,
               **IMBALANCE_OPTIONS}), deep=True),
    "lr": Method("lr", "logistic regression on labelled rows (class_weight balanced)", _lr),
    "labelspread": Method("labelspread", "LabelSpreading (knn)", _labelspread),
    "selftrain": Method("selftrain", "SelfTraining(LogisticRegression balanced), threshold 0.75",
                        _selftrain),
    "smote_lr": Method("smote_lr", "SMOTE on labelled rows + logistic regression", _smote_lr),
}


def run_benchmark(
    datasets: Iterable[str],
    methods: Iterable[str],
    *,
    rhos: Iterable[float] | None = None,
    betas: Iterable[float] | None = None,
    seeds: Iterable[int] | None = None,
    epochs: int | None = None,
    progress: Callable[[str], None] | None = print,
) -> pd.DataFrame:
    """Run every (data set, ρ, β, seed, method) of the grid; one row of metrics per run.

    Settings that PROTOCOL.md skips (a class with fewer than 5 training rows) are left out and
    reported through ``progress``. ``epochs`` overrides :data:`TRAINING_EPOCHS` (smoke runs).
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected some of {sorted(METHODS)}")
    rows = []
    for name in datasets:
        data = load_dataset(name)
        grid = DEFAULT_GRID.get(name, DEFAULT_GRID["digits"])
        for rho in rhos or grid["rho"]:
            for beta in betas or grid["beta"]:
                for seed in seeds if seeds is not None else grid["seeds"]:
                    try:
                        split = long_tailed_split(data, rho, beta, seed)
                    except SplitSkippedError as error:
                        if progress:
                            progress(f"skip {name} rho={rho}: {error}")
                        break
                    for method in methods:
                        rows.append(_run_one(name, split, rho, beta, seed, METHODS[method],
                                             epochs, progress))
    return pd.DataFrame(rows)


def _run_one(name, split, rho, beta, seed, method, epochs, progress):
    tic = time.perf_counter()
    pred = method.fit_predict(split, seed, name, epochs)
    row = {"dataset": name, "rho": rho, "beta": beta, "seed": seed, "method": method.name,
           "n_labelled": int(split.labelled_class_counts.sum())}
    if pred is None:
        row.update({m: np.nan for m in ("accuracy", "balanced_accuracy", "macro_f1", "g_mean",
                                         "minority_recall")})
    else:
        row.update(classification_metrics(split.test.y.numpy(), pred, split.train_class_counts))
    row["seconds"] = time.perf_counter() - tic
    if progress:
        progress(f"{name} rho={rho} beta={beta} seed={seed} {method.name}: "
                 f"bacc={row['balanced_accuracy']:.3f} minority={row['minority_recall']:.3f} "
                 f"({row['seconds']:.0f}s)")
    return row


def results_table(results: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Mean ± std over seeds per (data set, ρ, β, method), as in BASELINES.md."""
    metrics = ["balanced_accuracy", "macro_f1", "g_mean", "minority_recall"]
    table = summarise(results, by=["dataset", "rho", "beta", "method"], metrics=metrics,
                      digits=digits)
    keep = ["dataset", "rho", "beta", "method", "n_runs", *metrics]
    return table.reset_index()[[c for c in keep if c in table.reset_index().columns]]


def headline_table(results: pd.DataFrame, ours: str = "t_gamma",
                   classical: Iterable[str] = ("lr", "labelspread", "selftrain", "smote_lr"),
                   others: Iterable[str] = ("gauss_kl",)) -> pd.DataFrame:
    """One row per (data set, ρ, β): our method, the other deep methods and the best classical
    baseline (the one with the highest mean balanced accuracy in that setting), each as
    "balanced accuracy / minority recall" (mean ± std over seeds), and whether ours is at least
    as good as every classical baseline on each metric (naming the one that beats it if not)."""
    rows = []
    keys = ["dataset", "rho", "beta"]
    for key, group in results.groupby(keys, sort=False):
        means = group.groupby("method")[["balanced_accuracy", "minority_recall"]].mean()
        stds = group.groupby("method")[["balanced_accuracy", "minority_recall"]].std(ddof=0)
        if ours not in means.index:
            continue
        row = dict(zip(keys, key, strict=True))
        row["seeds"] = int(group.loc[group["method"] == ours, "seed"].nunique())

        def cell(method, means=means, stds=stds):
            m, s = means.loc[method], stds.loc[method]
            return (f"{m['balanced_accuracy']:.3f} ± {s['balanced_accuracy']:.3f} / "
                    f"{m['minority_recall']:.3f} ± {s['minority_recall']:.3f}")

        row[ours] = cell(ours)
        for method in others:
            if method in means.index:
                row[method] = cell(method)
        present = [m for m in classical if m in means.index and means.loc[m].notna().all()]
        if present:
            best = max(present, key=lambda m: means.loc[m, "balanced_accuracy"])
            row["best classical"] = f"{best}: {cell(best)}"
            for metric, label in (("balanced_accuracy", "ours ≥ classical (bacc)"),
                                  ("minority_recall", "ours ≥ classical (minority)")):
                top = max(present, key=lambda m, metric=metric: means.loc[m, metric])
                row[label] = ("yes" if means.loc[ours, metric] >= means.loc[top, metric]
                              else f"no ({top})")
        rows.append(row)
    return pd.DataFrame(rows)
