"""Model selection on validation folds of the training data: no leakage, deterministic scores,
the same results in parallel, ranking with a tie-break, refitting the winner.

The estimators here are tiny scikit-learn models wrapped to accept a MultimodalDataset; no Pyro
model is trained."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from pyro_mmt.data import MultimodalDataset, long_tailed_split
from pyro_mmt.model_selection import SCORES, select_best, tune, validation_scores

# the small data sets here give some classes one or two labelled rows on purpose
pytestmark = pytest.mark.filterwarnings("ignore:classes with fewer than 3 labelled rows")


class DatasetLogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression on the labelled rows of a MultimodalDataset (modalities side by
    side, missing ones as 0; a modality "id" holding row ids is left out)."""

    def __init__(self, C=1.0):
        self.C = C

    def _features(self, X):
        assert isinstance(X, MultimodalDataset)
        x, _ = X.to_numpy()
        return np.nan_to_num(np.concatenate([v for m, v in x.items() if m != "id"], axis=1))

    def fit(self, X, y):
        y = np.asarray(y)
        assert np.array_equal(y, X.y.numpy())
        labelled = y >= 0
        self.model_ = LogisticRegression(C=self.C, max_iter=200)
        self.model_.fit(self._features(X)[labelled], y[labelled])
        self.n_rows_fitted_ = len(X)
        return self

    def predict(self, X):
        return self.model_.predict(self._features(X))


class Spy(DatasetLogisticRegression):
    """Records the row ids (x = id) it is fitted on and asked to predict, and their labels."""

    calls = []

    def fit(self, X, y):
        Spy.calls.append(("fit", X.x["id"][:, 0].numpy().astype(int), X.y.numpy()))
        return super().fit(X, y)

    def predict(self, X):
        Spy.calls.append(("predict", X.x["id"][:, 0].numpy().astype(int), X.y.numpy()))
        return super().predict(X)


def _blobs(labelled=(12, 8, 5, 1), n_unlabelled=30, seed=0):
    """Gaussian blobs in two modalities (plus the row id); labelled rows per class as given."""
    rng = np.random.default_rng(seed)
    k = len(labelled)
    y_true = np.concatenate([np.repeat(np.arange(k), labelled),
                             rng.integers(0, k, n_unlabelled)])
    y = np.concatenate([np.repeat(np.arange(k), labelled), np.full(n_unlabelled, -1)])
    centres = rng.normal(0, 2.0, (k, 3))
    a = centres[y_true] + rng.normal(0, 1.0, (y.size, 3))
    b = centres[y_true][:, :2] + rng.normal(0, 1.0, (y.size, 2))
    ids = np.arange(y.size, dtype=float)[:, None]
    return MultimodalDataset({"id": ids, "a": a, "b": b}, y, num_classes=k)


CANDIDATES = {"weak": {"C": 0.01}, "mid": {"C": 1.0}, "strong": {"C": 100.0}}


# ----------------------------------------------------------------------------------------------
# validation_scores
# ----------------------------------------------------------------------------------------------


def test_scores_layout():
    data = _blobs()
    scores = validation_scores(DatasetLogisticRegression(), CANDIDATES, data, n_splits=4,
                               scoring=SCORES)
    # K = min(4, 5): the smallest class with >= 2 labels has 5; the singleton is never validated
    assert len(scores) == 3 * 4
    assert list(scores.columns) == ["candidate", "params", "fold", "n_train", "n_train_labelled",
                                    "n_validation", *SCORES, "fit_seconds"]
    assert scores["candidate"].tolist() == ["weak"] * 4 + ["mid"] * 4 + ["strong"] * 4
    assert scores["params"].iloc[0] == {"C": 0.01}
    assert scores["fold"].tolist() == [0, 1, 2, 3] * 3
    # every unlabelled row (30) is in every training part; validation rows are labelled ones
    assert (scores["n_train"] + scores["n_validation"] == len(data)).all()
    assert (scores["n_train_labelled"] + scores["n_validation"] == 26).all()
    for name in SCORES:
        assert scores[name].between(0, 1).all()


def test_no_leakage_labels_hidden_at_predict_time():
    data = _blobs()
    Spy.calls = []
    validation_scores(Spy(), [{"C": 1.0}], data, n_splits=3, n_repeats=2)
    assert len(Spy.calls) == 2 * 3 * 2
    y = data.y.numpy()
    validated = []
    for (kind_fit, fitted, fit_y), (kind_pred, predicted, pred_y) in zip(
            Spy.calls[0::2], Spy.calls[1::2], strict=True):
        assert kind_fit == "fit" and kind_pred == "predict"
        assert np.intersect1d(fitted, predicted).size == 0  # never trained on a validated row
        assert (pred_y == -1).all()  # the validation labels are hidden
        assert (y[predicted] >= 0).all()
        assert np.array_equal(fit_y, y[fitted])
        assert np.isin(np.flatnonzero(y < 0), fitted).all()  # unlabelled rows always trained on
        assert np.isin(np.flatnonzero(y == 3), fitted).all()  # the singleton class too
        validated.append(predicted)
    for repeat in range(2):  # each labelled row of a validated class once per repeat
        seen = np.sort(np.concatenate(validated[3 * repeat:3 * repeat + 3]))
        assert np.array_equal(seen, np.flatnonzero((y >= 0) & (y != 3)))


def test_scores_are_deterministic_and_follow_the_seed():
    data = _blobs()
    first = validation_scores(DatasetLogisticRegression(), CANDIDATES, data, seed=3)
    again = validation_scores(DatasetLogisticRegression(), CANDIDATES, data, seed=3)
    other = validation_scores(DatasetLogisticRegression(), CANDIDATES, data, seed=4)
    metrics = ["balanced_accuracy", "minority_recall"]
    pd.testing.assert_frame_equal(first[metrics], again[metrics])
    assert not first[metrics].equals(other[metrics])


def test_parallel_results_equal_sequential():
    data = _blobs()
    kwargs = {"n_splits": 3, "scoring": SCORES}
    sequential = validation_scores(DatasetLogisticRegression(), CANDIDATES, data, n_jobs=1,
                                   **kwargs)
    parallel = validation_scores(DatasetLogisticRegression(), CANDIDATES, data, n_jobs=2,
                                 **kwargs)
    pd.testing.assert_frame_equal(sequential.drop(columns="fit_seconds"),
                                  parallel.drop(columns="fit_seconds"))


def test_mapping_and_flat_inputs_give_the_dataset_scores():
    data = _blobs()
    x, y = data.to_numpy()
    from_dataset = validation_scores(DatasetLogisticRegression(), CANDIDATES, data)
    from_mapping = validation_scores(DatasetLogisticRegression(), CANDIDATES, x, y)
    flat = np.concatenate(list(x.values()), axis=1)
    from_flat = validation_scores(DatasetLogisticRegression(), CANDIDATES, flat, y,
                                  modalities={"id": [0], "a": slice(1, 4), "b": [4, 5]})
    metrics = ["balanced_accuracy", "minority_recall"]
    pd.testing.assert_frame_equal(from_dataset[metrics], from_mapping[metrics])
    pd.testing.assert_frame_equal(from_dataset[metrics], from_flat[metrics])


def test_balanced_accuracy_and_minority_recall_by_hand():
    # one fold, validation rows of classes 0 and 1 only; a predictor that always says 0
    class Zero(DatasetLogisticRegression):
        def predict(self, X):
            return np.zeros(len(X), dtype=int)

    data = _blobs(labelled=(6, 4, 2), n_unlabelled=5)
    y = data.y.numpy()
    validation = np.r_[np.flatnonzero(y == 0)[:3], np.flatnonzero(y == 1)[:1]]
    train = np.setdiff1d(np.arange(len(data)), validation)
    scores = validation_scores(Zero(), [{}], data, folds=[(train, validation)], scoring=SCORES)
    row = scores.iloc[0]
    assert row["accuracy"] == pytest.approx(3 / 4)
    assert row["balanced_accuracy"] == pytest.approx(0.5)  # (1 + 0) / 2: class 2 absent
    # fold's labelled training counts [3, 3, 2]; present classes 0, 1 -> one minority class,
    # the one with fewer training rows; tie 3 = 3 -> the lower index, class 0 (recall 1)
    assert row["minority_recall"] == pytest.approx(1.0)
    # with the training counts given, class 1 is the minority one (recall 0)
    counted = validation_scores(Zero(), [{}], data, folds=[(train, validation)],
                                train_class_counts=[50, 10, 5])
    assert counted["minority_recall"].iloc[0] == pytest.approx(0.0)


def test_on_a_long_tailed_split_the_test_set_is_never_used():
    from pyro_mmt.data import load_dataset

    split = long_tailed_split(load_dataset("breast"), 10, 0.2, seed=0)
    Spy.calls = []
    train = split.train
    data = MultimodalDataset({"id": np.arange(len(train), dtype=float)[:, None],
                              **train.to_numpy()[0]}, train.y.numpy())
    validation_scores(Spy(), [{"C": 0.1}], data, n_splits=3,
                      train_class_counts=split.train_class_counts)
    seen = np.unique(np.concatenate([ids for _, ids, _ in Spy.calls]))
    assert seen.max() < len(train)  # positions in split.train only


def test_progress_bar(capsys, monkeypatch):
    import pyro_mmt.model_selection

    monkeypatch.setattr(pyro_mmt.model_selection, "shows_progress", lambda progress: progress)
    validation_scores(DatasetLogisticRegression(), [{"C": 1.0}], _blobs(), n_splits=2,
                      progress=True)
    assert "validation fits" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "estimator, candidates, kwargs, match",
    [
        (DatasetLogisticRegression(), [{"C": 1.0, "penalty_x": 2}], {},
         r"candidates\[0\]: the estimator refuses the parameters"),
        (DatasetLogisticRegression(), {"a": {"bogus": 1}}, {}, r"candidates\['a'\]"),
        (DatasetLogisticRegression(), {"C": 1.0}, {},
         r"candidates: .*a mapping whose values are neither all dicts nor all lists.*write \[params\]"),
        (DatasetLogisticRegression(), [], {}, r"candidates: expected at least one candidate"),
        (DatasetLogisticRegression(), "C", {}, r"candidates: expected a list of parameter dicts"),
        (DatasetLogisticRegression(), [1.0], {}, r"candidates: .*entries \[0\] are not dicts"),
        (DatasetLogisticRegression, [{}], {}, r"estimator: expected an estimator instance"),
        (object(), [{}], {}, r"estimator: expected a scikit-learn-style estimator .*without"),
        (DatasetLogisticRegression(), [{}], {"scoring": ["balanced_accuracy", "auc"]},
         r"scoring: expected distinct names among"),
        (DatasetLogisticRegression(), [{}], {"n_jobs": 0}, r"n_jobs: expected a positive"),
        (DatasetLogisticRegression(), [{}], {"train_class_counts": [1, 2]},
         r"train_class_counts: expected 4 non-negative counts"),
        (DatasetLogisticRegression(), [{}], {"n_splits": 1}, r"n_splits: expected an integer"),
        (DatasetLogisticRegression(), [{}], {"folds": [(np.arange(5), np.arange(4, 8))]},
         r"folds\[0\]: rows \[4\] are in both train_rows and validation_rows"),
        (DatasetLogisticRegression(), [{}], {"folds": [(np.arange(5), np.array([40]))]},
         r"folds\[0\]: validation_rows \[40\] are unlabelled"),
        (DatasetLogisticRegression(), [{}], {"folds": [(np.arange(5), np.array([99]))]},
         r"folds\[0\]: validation_rows \[99\] are outside the 56 rows"),
        (DatasetLogisticRegression(), [{}], {"folds": [(np.arange(5),)]},
         r"folds\[0\]: expected a pair"),
        (DatasetLogisticRegression(), [{}], {"modalities": {"a": [0]}},
         r"modalities: only used when X is a flat"),
    ],
)
def test_refusals(estimator, candidates, kwargs, match):
    with pytest.raises(ValueError, match=match):
        validation_scores(estimator, candidates, _blobs(), **kwargs)


def test_bad_predictions_and_missing_labels_are_refused():
    class Bad(DatasetLogisticRegression):
        def predict(self, X):
            return np.full(len(X), 7)

    with pytest.raises(ValueError, match=r"estimator: predict returned values outside the class "
                                         r"indices 0..3"):
        validation_scores(Bad(), [{}], _blobs(), n_splits=2)
    x, _ = _blobs().to_numpy()
    with pytest.raises(ValueError, match=r"y: expected labels for X"):
        validation_scores(DatasetLogisticRegression(), [{}], x)


# ----------------------------------------------------------------------------------------------
# select_best and tune
# ----------------------------------------------------------------------------------------------


def test_select_best_ranks_with_tie_break():
    scores = pd.DataFrame({
        "candidate": ["a", "a", "b", "b", "c", "c", "d", "d"],
        "params": [{"C": 1}] * 2 + [{"C": 2}] * 2 + [{"C": 3}] * 2 + [{"C": 4}] * 2,
        "fold": [0, 1] * 4,
        "balanced_accuracy": [0.8, 0.6, 0.7, 0.7, 0.5, 0.9, np.nan, np.nan],
        "minority_recall": [0.2, 0.4, 0.5, 0.5, 0.1, 0.1, 1.0, 1.0],
    })
    best, summary = select_best(scores)
    # a, b and c all have mean 0.7; minority recall 0.3, 0.5, 0.1 breaks the tie; d is NaN
    assert best == {"C": 2}
    assert summary.index.tolist() == ["b", "a", "c", "d"]
    assert summary["rank"].tolist() == [1, 2, 3, 4]
    assert summary.loc["a", "balanced_accuracy_std"] == pytest.approx(0.1)
    assert summary.loc["a", "balanced_accuracy"] == "0.700 ± 0.100"
    assert summary.loc["b", "n_folds"] == 2
    best, summary = select_best(scores, tie_break=None)  # the candidates' order
    assert best == {"C": 1}
    best, _ = select_best(scores, by="minority_recall", tie_break=None)
    assert best == {"C": 4}
    with pytest.raises(ValueError, match=r"scores: expected the rows of validation_scores .*"
                                         r"missing \['g_mean'\]"):
        select_best(scores, by="g_mean")
    with pytest.raises(ValueError, match=r"every candidate's mean 'balanced_accuracy' is NaN"):
        select_best(scores.assign(balanced_accuracy=np.nan))
    with pytest.raises(ValueError, match=r"scores: expected a DataFrame"):
        select_best([1, 2])


def test_tune_refits_the_best_candidate_on_all_rows():
    data = _blobs()
    model = tune(DatasetLogisticRegression(), CANDIDATES, data, n_splits=3)
    scores = validation_scores(DatasetLogisticRegression(), CANDIDATES, data, n_splits=3)
    best, summary = select_best(scores)
    assert model.best_params_ == best and model.C == best["C"]
    assert model.n_rows_fitted_ == len(data)
    pd.testing.assert_frame_equal(model.tuning_scores_.drop(columns="fit_seconds"),
                                  scores.drop(columns="fit_seconds"))
    assert model.tuning_summary_.index.tolist() == summary.index.tolist()
    assert model.predict(data).shape == (len(data),)
    with pytest.raises(ValueError, match=r"by: expected one of the scores computed"):
        tune(DatasetLogisticRegression(), CANDIDATES, data, by="g_mean")


class FailsForLargeC(DatasetLogisticRegression):
    """Fits like DatasetLogisticRegression, but raises for C > 10 (a diverging candidate)."""

    def fit(self, X, y):
        if self.C > 10:
            raise FloatingPointError("the loss became NaN\nsecond line")
        return super().fit(X, y)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_error_score_records_a_failed_fit_instead_of_stopping(n_jobs):
    data = _blobs()
    with pytest.raises(FloatingPointError):
        validation_scores(FailsForLargeC(), CANDIDATES, data, n_splits=3)
    scores = validation_scores(FailsForLargeC(), CANDIDATES, data, n_splits=3,
                               error_score=np.nan, n_jobs=n_jobs)
    failed = scores[scores["candidate"] == "strong"]
    assert failed["balanced_accuracy"].isna().all()
    assert (failed["error"] == "FloatingPointError: the loss became NaN").all()
    assert scores.loc[scores["candidate"] != "strong", "error"].isna().all()
    assert scores.loc[scores["candidate"] != "strong", "balanced_accuracy"].notna().all()


def test_tune_takes_gridsearchcv_grids_and_labels_as_given():
    """tune(C(), {"alpha": [0.5, 1.5]}, X, y) with string labels: GridSearchCV's format."""
    from pyro_mmt import MultimodalSemiSupervisedClassifier
    from pyro_mmt.model_selection import tune

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    X = rng.normal(size=(60, 4)) + y[:, None]
    labels = np.array(["no", "yes"], dtype=object)[y]
    labels[::3] = None
    est = MultimodalSemiSupervisedClassifier(epochs=1, hidden=(4,), latent_dim=2,
                                             modalities={"a": [0, 1], "b": [2, 3]})
    for grid in ({"alpha": [0.5, 1.5]}, [{"alpha": [0.5]}, {"alpha": [1.5]}]):
        model = tune(est, grid, X, labels, n_splits=2)
        assert sorted(model.tuning_summary_.index) == ["alpha=0.5", "alpha=1.5"]
        np.testing.assert_array_equal(model.classes_, ["no", "yes"])
        assert set(model.predict(X)) <= {"no", "yes"}


def test_a_class_with_few_labels_warns_and_says_the_way_out():
    from pyro_mmt import MultimodalSemiSupervisedClassifier
    from pyro_mmt.model_selection import validation_scores

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    X = rng.normal(size=(60, 4)) + y[:, None]
    labels = np.where(np.arange(60) % 10 == 0, y, -1)  # 3 labelled rows per class
    labels[np.flatnonzero(labels == 1)[0]] = -1  # class 1: 2 labelled rows
    est = MultimodalSemiSupervisedClassifier(epochs=1, hidden=(4,), latent_dim=2,
                                             modalities={"a": [0, 1], "b": [2, 3]})
    with pytest.warns(UserWarning, match=r"fewer than 3 labelled rows \('1': 2\).*label more"):
        validation_scores(est, [{}], X, labels, n_splits=2)
    labels[np.flatnonzero(labels == 1)[0]] = -1  # class 1: 1 labelled row
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"label more rows"):
        validation_scores(est, [{}], X, labels, n_splits=2)
