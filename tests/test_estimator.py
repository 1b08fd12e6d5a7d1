"""The scikit-learn-style estimator: clone, cross_val_score, parameters, any modality subset,
clear errors, save/load. Tiny networks on 60 rows of three Gaussian blobs in two modalities."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_score

from pyro_mmt.data import MultimodalDataset
from pyro_mmt.estimator import (
    MultimodalSemiSupervisedClassifier,
    load_estimator,
    save_estimator,
)
from pyro_mmt.training.svi import TrainingDivergedError

SMALL = {"hidden": (8,), "latent_dim": 2, "epochs": 1, "batch_size": 16}


@pytest.fixture(scope="module")
def blobs():
    """X = {"a": [60, 4], "b": [60, 2]}, 3 classes of 20; y with 10 labelled rows per class
    and -1 elsewhere; y_true the full labels."""
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(3), 20)
    centres = 3.0 * rng.normal(size=(3, 6))
    x = centres[y_true] + rng.normal(size=(60, 6))
    X = {"a": x[:, :4], "b": x[:, 4:]}
    y = np.full(60, -1)
    for k in range(3):
        y[np.flatnonzero(y_true == k)[:10]] = k
    return X, y, y_true


@pytest.fixture(scope="module")
def fitted(blobs):
    X, y, _ = blobs
    return MultimodalSemiSupervisedClassifier(**SMALL).fit(X, y)


def test_fit_returns_self_with_the_fitted_pyro_pieces(blobs):
    X, y, _ = blobs
    est = MultimodalSemiSupervisedClassifier(**SMALL)
    assert est.fit(X, y) is est
    assert est.modalities_ == ("a", "b") and est.dims_ == {"a": 4, "b": 2}
    assert est.n_classes_ == 3 and est.classes_.tolist() == [0, 1, 2]
    assert est.label_counts_.tolist() == [10, 10, 10]
    assert len(est.history_) == 1 and np.isfinite(est.history_["loss"]).all()
    assert callable(est.model_.model) and callable(est.guide_.guide)
    assert est.history is est.history_


def test_fit_is_repeatable_and_leaves_the_param_store_alone(blobs):
    import pyro

    X, y, _ = blobs
    pyro.param("mine", torch.ones(2))
    first = MultimodalSemiSupervisedClassifier(**SMALL).fit(X, y).predict_proba(X)
    second = MultimodalSemiSupervisedClassifier(**SMALL).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, second)
    assert list(pyro.get_param_store().keys()) == ["mine"]


def test_get_params_set_params_round_trip_and_clone(fitted):
    params = fitted.get_params()
    assert params["hidden"] == (8,) and params["objective"] == "gamma_power"
    other = MultimodalSemiSupervisedClassifier().set_params(**params)
    assert other.get_params() == params
    copy = clone(fitted)
    assert copy.get_params() == params
    assert not hasattr(copy, "guide_")  # clone copies hyperparameters, not the fit
    copy.set_params(lr=0.5, nu=float("inf"), objective="kl")
    assert (copy.lr, copy.nu, copy.objective) == (0.5, float("inf"), "kl")
    assert fitted.lr == 1e-3


def test_cross_val_score_on_a_modality_frame(blobs):
    X, y, _ = blobs
    # a (modality, feature) column MultiIndex lets scikit-learn split the rows
    frame = pd.concat({m: pd.DataFrame(v) for m, v in X.items()}, axis=1)
    # test folds mix labelled and unlabelled rows; score uses the labelled ones
    scores = cross_val_score(MultimodalSemiSupervisedClassifier(**SMALL), frame, y,
                             cv=StratifiedKFold(3, shuffle=True, random_state=0),
                             error_score="raise")
    assert scores.shape == (3,) and ((0 <= scores) & (scores <= 1)).all()


def test_score_is_balanced_accuracy_on_labelled_rows(blobs, fitted):
    X, y, y_true = blobs
    labelled = y >= 0
    expected = balanced_accuracy_score(y[labelled], fitted.predict(X)[labelled])
    assert fitted.score(X, y) == pytest.approx(expected)
    assert fitted.score(X, y_true) == pytest.approx(
        balanced_accuracy_score(y_true, fitted.predict(X)))
    with pytest.raises(ValueError, match="labelled rows"):
        fitted.score(X, np.full(60, -1))


def test_predict_proba_rows_sum_to_one_with_every_modality_subset(blobs, fitted):
    X, _, _ = blobs
    names = list(X)
    for r in range(1, len(names) + 1):
        for subset in itertools.combinations(names, r):
            proba = fitted.predict_proba({m: X[m] for m in subset})  # absent keys
            assert proba.shape == (60, 3)
            np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
            assert fitted.predict({m: X[m] for m in subset}).shape == (60,)
    # NaN rows: each row misses a different modality (never both)
    a, b = X["a"].copy(), X["b"].copy()
    a[::3] = np.nan
    b[1::3] = np.nan
    proba = fitted.predict_proba({"a": a, "b": b})
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    # a missing row is the same as an absent modality
    np.testing.assert_allclose(proba[::3], fitted.predict_proba({"b": X["b"]})[::3], rtol=1e-6)
    # DataFrames and a MultimodalDataset with a subset of the modalities
    proba_frame = fitted.predict_proba({"b": pd.DataFrame(X["b"])})
    proba_data = fitted.predict_proba(MultimodalDataset({"b": X["b"]}, num_classes=3))
    np.testing.assert_allclose(proba_frame, proba_data, rtol=1e-6)


def test_clear_errors(blobs, fitted):
    X, y, _ = blobs
    est = MultimodalSemiSupervisedClassifier(**SMALL)
    with pytest.raises(NotFittedError, match="not fitted"):
        est.predict(X)
    assert issubclass(NotFittedError, ValueError)
    no_class_1 = np.where(y == 1, -1, y)
    y_extra = np.where(np.arange(60) == 0, 3, no_class_1)  # labels 0, 2, 3: class 1 empty
    with pytest.raises(ValueError, match=r"no(ne)? .*classes \[1\]"):
        est.fit(X, y_extra)
    with pytest.raises(ValueError, match=r"unknown modalities \['c'\]"):
        fitted.predict_proba({"a": X["a"], "c": X["b"]})
    with pytest.raises(ValueError, match=r"X\['a'\]: expected shape \[N, 4\]"):
        fitted.predict_proba({"a": X["a"][:, :3]})
    with pytest.raises(ValueError, match="two column levels"):
        est.fit(pd.DataFrame(X["a"]), y)
    with pytest.raises(ValueError, match="mapping"):
        est.fit(X["a"], y)
    with pytest.raises(ValueError, match="objective"):
        MultimodalSemiSupervisedClassifier(**{**SMALL, "objective": "renyi"}).fit(X, y)


def test_huge_values_without_standardising_stop_with_the_divergence_error(blobs):
    X, y, _ = blobs
    huge = {m: v * 1e20 for m, v in X.items()}
    est = MultimodalSemiSupervisedClassifier(**SMALL, standardise=False)
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 1\b"):
        est.fit(huge, y)


def test_save_and_load_give_identical_predictions(blobs, fitted, tmp_path):
    X, _, _ = blobs
    save_estimator(fitted, tmp_path / "est.pt")
    state = torch.load(tmp_path / "est.pt", weights_only=True)
    assert state["modalities"] == ["a", "b"]
    loaded = load_estimator(tmp_path / "est.pt")
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict_proba({"b": X["b"]}),
                                  fitted.predict_proba({"b": X["b"]}))
    pd.testing.assert_frame_equal(loaded.history_, fitted.history_)
    with pytest.raises(NotFittedError):
        save_estimator(MultimodalSemiSupervisedClassifier(), tmp_path / "unfitted.pt")


@pytest.mark.parametrize("options", [
    {"objective": "kl", "nu": float("inf"), "latent_weight": 0.5},
    {"objective": "gamma_power", "gamma": -0.1, "class_weight": "balanced",
     "logit_adjustment": 1.0, "unlabelled_prior_shift": 1.0, "joint_head": True},
], ids=["gaussian-kl", "t-explicit-gamma-imbalance"])
def test_other_objectives_and_options_fit(blobs, options):
    X, y, y_true = blobs
    est = MultimodalSemiSupervisedClassifier(**SMALL, **options).fit(X, y)
    assert np.isfinite(est.history_["loss"]).all()
    assert 0 <= est.score(X, y_true) <= 1


def test_n_init_averages_the_members_and_round_trips(tmp_path):
    """n_init = 2 trains two initialisations; predict_proba is the mean of their q(y | x), the
    first member is the n_init = 1 fit, and save/load keeps every member."""
    from pyro_mmt.data import load_digits
    from pyro_mmt.estimator import load_estimator, save_estimator
    from pyro_mmt.training.svi import predict_proba

    data = load_digits()[:80]
    x, y = data.to_numpy()
    y[40:] = -1
    options = {"hidden": (8,), "latent_dim": 2, "epochs": 1, "batch_size": 32, "seed": 3}
    pair = MultimodalSemiSupervisedClassifier(n_init=2, **options).fit(x, y)
    single = MultimodalSemiSupervisedClassifier(**options).fit(x, y)
    assert len(pair.members_) == 2 and len(pair.histories_) == 2
    test = {m: v[:10] for m, v in x.items()}
    members = [predict_proba(g, pair._dataset(test, fitted=True)) for _, g in pair.members_]
    np.testing.assert_allclose(pair.predict_proba(test), np.mean(members, 0), rtol=1e-6)
    np.testing.assert_allclose(members[0], single.predict_proba(test), rtol=1e-5)
    assert not np.allclose(members[0], members[1])
    save_estimator(pair, tmp_path / "pair.pt")
    loaded = load_estimator(tmp_path / "pair.pt")
    np.testing.assert_allclose(loaded.predict_proba(test), pair.predict_proba(test), rtol=1e-6)
    with pytest.raises(ValueError, match="n_init"):
        MultimodalSemiSupervisedClassifier(n_init=0, **options).fit(x, y)
