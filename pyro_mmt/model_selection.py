"""Choosing among candidate settings on validation folds of the training data.

A setting (e.g. α, the class weighting or the number of epochs) must be chosen without looking
at the test set, or the test score stops measuring what a user would get. The functions here
only ever see the training data: :func:`validation_scores` splits its labelled rows into
validation folds (:func:`~pyro_mmt.data.validation_folds`), fits one copy of the estimator per
(candidate, fold) on the fold's training part (its remaining labelled rows and every unlabelled
row) and scores the predictions on the fold's validation rows, whose labels the estimator never
sees; :func:`select_best` ranks the candidates by their mean score; :func:`tune` does both and
refits the best candidate on all the training data.

Typical use with a long-tailed split::

    split = long_tailed_split(dataset, rho=10, beta=0.05, seed=0)
    model = tune(MultimodalSemiSupervisedClassifier(),
                 {"alpha=0.5": {"alpha": 0.5}, "alpha=1.5": {"alpha": 1.5}},
                 split.train, n_splits=5, n_jobs=4)
    model.best_params_, model.tuning_summary_        # chosen on split.train only
    model.score(split.test, split.test.y)            # the test set is used once, at the end

Any scikit-learn-style estimator works (``get_params``/``set_params``, ``fit(X, y)``,
``predict(X)``), provided its ``fit`` and ``predict`` accept a
:class:`~pyro_mmt.data.MultimodalDataset`: the folds are passed on as data sets.
"""

from __future__ import annotations

import numbers
import time
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.base import clone
from sklearn.metrics import f1_score
from sklearn.model_selection import ParameterGrid
from tqdm.auto import tqdm

from pyro_mmt.data import (
    MultimodalDataset,
    as_modality_mapping,
    encode_labels,
    validation_folds,
)
from pyro_mmt.evaluation.metrics import METRICS, minority_classes
from pyro_mmt.training.svi import shows_progress

__all__ = ["SCORES", "select_best", "tune", "validation_scores"]

#: The scores :func:`validation_scores` can compute (all: higher is better).
SCORES = METRICS

#: Columns of :func:`validation_scores`'s result besides the scores.
_INFO = ("candidate", "params", "fold", "n_train", "n_train_labelled", "n_validation",
         "fit_seconds")


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------


def _check_estimator(estimator):
    if isinstance(estimator, type):
        raise ValueError(
            f"estimator: expected an estimator instance; found the class {estimator.__name__} "
            f"(pass {estimator.__name__}(...))"
        )
    missing = [m for m in ("get_params", "set_params", "fit", "predict")
               if not callable(getattr(estimator, m, None))]
    if missing:
        raise ValueError(
            "estimator: expected a scikit-learn-style estimator (with get_params, set_params, "
            f"fit and predict); found a {type(estimator).__name__} without {missing}"
        )


def _is_grid(params) -> bool:
    """A dict in GridSearchCV's ``param_grid`` format: every value a list of candidates."""
    return isinstance(params, Mapping) and len(params) > 0 and all(
        isinstance(v, list | np.ndarray) for v in params.values())


def _check_candidates(estimator, candidates):
    """A list of (name, params) pairs, every params dict accepted by ``estimator``."""
    if _is_grid(candidates) or (isinstance(candidates, Sequence) and not isinstance(
            candidates, str | bytes) and candidates and all(_is_grid(c) for c in candidates)):
        # GridSearchCV's param_grid: a dict of lists, or a list of such dicts
        grid = ParameterGrid(candidates if isinstance(candidates, Mapping) else list(candidates))
        candidates = {",".join(f"{k}={v}" for k, v in params.items()): params
                      for params in grid}
    if isinstance(candidates, Mapping):
        if candidates and not all(isinstance(v, Mapping) for v in candidates.values()):
            raise ValueError(
                "candidates: expected a list of parameter dicts, a mapping name -> parameter "
                "dict or GridSearchCV's grid (a dict name -> list of values, or a list of such "
                f"dicts); found a mapping whose values are neither all dicts nor all lists "
                f"({candidates!r}"[:300] + "); for a single candidate write [params]"
            )
        pairs = list(candidates.items())
    elif isinstance(candidates, Sequence) and not isinstance(candidates, str | bytes):
        bad = [i for i, c in enumerate(candidates) if not isinstance(c, Mapping)]
        if bad:
            raise ValueError(
                "candidates: expected a list of parameter dicts; entries "
                f"{bad[:5]} are not dicts (e.g. {candidates[bad[0]]!r})"
            )
        pairs = list(enumerate(candidates))
    else:
        raise ValueError(
            "candidates: expected a list of parameter dicts or a mapping name -> parameter "
            f"dict; found {type(candidates).__name__}"
        )
    if not pairs:
        raise ValueError("candidates: expected at least one candidate; found none")
    checked = []
    for name, params in pairs:
        params = dict(params)
        try:
            clone(estimator).set_params(**params)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"candidates[{name!r}]: the estimator refuses the parameters {params}: {error}"
            ) from error
        checked.append((name, params))
    return checked


def _modalities(estimator, X, modalities):
    """``modalities``, else for a flat ``X`` the estimator's own ``modalities`` parameter (as
    GridSearchCV would split ``X`` for it)."""
    if modalities is not None or isinstance(X, MultimodalDataset | Mapping):
        return modalities
    if isinstance(X, pd.DataFrame) and X.columns.nlevels > 1:
        return None
    return estimator.get_params(deep=False).get("modalities")


def _as_dataset(X, y, modalities):
    """``X`` (and ``y``) as a MultimodalDataset."""
    if isinstance(X, MultimodalDataset):
        if modalities is not None:
            raise ValueError(
                "modalities: only used when X is a flat 2-D array or DataFrame; found a "
                "MultimodalDataset (pass modalities=None)"
            )
        return X if y is None else X.with_labels(y)
    if y is None:
        raise ValueError(
            "y: expected labels for X (one per row, -1 = unlabelled); found None (only a "
            "MultimodalDataset carries its own labels)"
        )
    codes, classes = encode_labels(y)
    return MultimodalDataset(as_modality_mapping(X, modalities), codes,
                             num_classes=max(len(classes), 1),
                             class_names=[str(c) for c in classes] or None)


#: Below this many labelled rows a class's validation scores rest on one or two rows.
FEW_LABELS = 3


def _warn_few_labels(dataset):
    counts = dataset.class_counts()
    few = np.flatnonzero(counts < FEW_LABELS)
    if few.size:
        shown = ", ".join(f"{dataset.class_names[k]!r}: {counts[k]}" for k in few[:5])
        warnings.warn(
            f"classes with fewer than {FEW_LABELS} labelled rows ({shown}): a class with one "
            "labelled row is never validated and one with two has one validation row per fold, "
            "so its scores are noisy; label more rows of these classes (with a data set name, "
            "a larger --beta or a smaller --rho gives more)", UserWarning, stacklevel=3)


def _check_folds(folds, n_rows, labels):
    if isinstance(folds, str | bytes) or not isinstance(folds, Sequence) or not folds:
        raise ValueError(
            "folds: expected a non-empty list of (train_rows, validation_rows) pairs; found "
            f"{folds!r}"[:200]
        )
    checked = []
    for i, fold in enumerate(folds):
        if not isinstance(fold, Sequence) or len(fold) != 2:
            raise ValueError(
                f"folds[{i}]: expected a pair (train_rows, validation_rows); found {fold!r}"[:200]
            )
        parts = []
        for part, what in zip(fold, ("train_rows", "validation_rows"), strict=True):
            rows = np.asarray(part)
            if rows.ndim != 1 or rows.size == 0 or rows.dtype.kind not in "iu":
                raise ValueError(
                    f"folds[{i}]: expected {what} as a non-empty 1-D array of row positions; "
                    f"found dtype {rows.dtype} with shape {rows.shape}"
                )
            outside = rows[(rows < 0) | (rows >= n_rows)]
            if outside.size:
                raise ValueError(
                    f"folds[{i}]: {what} {outside[:5].tolist()} are outside the {n_rows} rows "
                    "of X; expected positions in [0, N)"
                )
            parts.append(rows.astype(np.int64))
        train, validation = parts
        shared = np.intersect1d(train, validation)
        if shared.size:
            raise ValueError(
                f"folds[{i}]: rows {shared[:5].tolist()} are in both train_rows and "
                "validation_rows; expected disjoint parts (a validated row must not be trained "
                "on)"
            )
        unlabelled = validation[labels[validation] < 0]
        if unlabelled.size:
            raise ValueError(
                f"folds[{i}]: validation_rows {unlabelled[:5].tolist()} are unlabelled; "
                "expected labelled rows only (unlabelled rows cannot be scored)"
            )
        checked.append((train, validation))
    return checked


def _check_scoring(scoring):
    names = (scoring,) if isinstance(scoring, str) else tuple(scoring)
    unknown = [name for name in names if name not in SCORES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"scoring: expected distinct names among {list(SCORES)}; found {list(names)}"
        )
    return names


def _check_counts(counts, num_classes):
    if counts is None:
        return None
    array = np.asarray(counts)
    if array.shape != (num_classes,) or array.dtype.kind not in "iuf" or (array < 0).any() \
            or not np.isfinite(array).all():
        raise ValueError(
            f"train_class_counts: expected {num_classes} non-negative counts (one per class); "
            f"found {counts!r}"[:300]
        )
    return array


def _check_n_jobs(n_jobs):
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or n_jobs == 0:
        raise ValueError(
            f"n_jobs: expected a positive number of processes, or -1 for one per core; found "
            f"{n_jobs!r}"
        )
    return int(n_jobs)


# ----------------------------------------------------------------------------------------------
# one fit
# ----------------------------------------------------------------------------------------------


def _scores(y_true, y_pred, names, counts):
    """The scores of one validation part; recalls over the classes present in ``y_true``."""
    present, support = np.unique(y_true, return_counts=True)
    correct = (y_pred == y_true).astype(np.float64)
    hits = np.bincount(y_true, weights=correct, minlength=present.max() + 1)[present]
    recall = hits / support
    out = {}
    for name in names:
        if name == "accuracy":
            out[name] = float(correct.mean())
        elif name == "balanced_accuracy":
            out[name] = float(recall.mean())
        elif name == "macro_f1":
            out[name] = float(f1_score(y_true, y_pred, average="macro", zero_division=0.0))
        elif name == "g_mean":
            out[name] = 0.0 if (recall == 0).any() else float(np.exp(np.log(recall).mean()))
        else:  # minority recall, over the classes present in the validation rows
            chosen = [0] if present.size < 2 else minority_classes(counts[present])
            out[name] = float(recall[chosen].mean())
    return out


def _check_predictions(pred, n_rows, num_classes):
    pred = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    if pred.shape != (n_rows,):
        raise ValueError(
            f"estimator: predict returned shape {pred.shape}; expected ({n_rows},), one class "
            "index per row"
        )
    if pred.dtype.kind == "f" and np.isfinite(pred).all() and (pred == np.round(pred)).all():
        pred = pred.astype(np.int64)
    if pred.dtype.kind not in "iu" or (pred < 0).any() or (pred >= num_classes).any():
        raise ValueError(
            f"estimator: predict returned values outside the class indices 0..{num_classes - 1} "
            f"(dtype {pred.dtype}, e.g. {pred[:5].tolist()}); expected class indices"
        )
    return pred.astype(np.int64)


def _fit_and_score(estimator, params, train, validation, scoring, counts, single_thread,
                   error_score="raise"):
    """Fit a copy of ``estimator`` with ``params`` on ``train`` and score it on ``validation``,
    whose labels are hidden from the estimator. With a numeric ``error_score``, a fit that
    raises gets that score for every metric and the error's message (``error``)."""
    if single_thread:  # a worker process: the fits already run in parallel
        torch.set_num_threads(1)
    model = clone(estimator).set_params(**params)
    start = time.perf_counter()
    try:
        model.fit(train, train.y.numpy())
    except Exception as error:
        if isinstance(error_score, str):
            raise
        return {"n_train": len(train), "n_train_labelled": int(train.is_labelled.sum()),
                "n_validation": len(validation), **dict.fromkeys(scoring, float(error_score)),
                "fit_seconds": time.perf_counter() - start,
                "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    seconds = time.perf_counter() - start
    y_true = validation.y.numpy()
    hidden = validation.with_labels(np.full(len(validation), -1))
    pred = _check_predictions(model.predict(hidden), len(validation), validation.num_classes)
    counts = train.class_counts() if counts is None else counts
    return {
        "n_train": len(train),
        "n_train_labelled": int(train.is_labelled.sum()),
        "n_validation": len(validation),
        **_scores(y_true, pred, scoring, counts),
        "fit_seconds": seconds,
    }


# ----------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------


def validation_scores(estimator, candidates, X, y=None, *, modalities=None, folds=None,
                      n_splits=5, n_repeats=1, seed=0, n_jobs=1,
                      scoring=("balanced_accuracy", "minority_recall"), train_class_counts=None,
                      progress=False, error_score="raise") -> pd.DataFrame:
    """Score every candidate setting on validation folds of the training data ``X``.

    For each candidate and each fold, a fresh copy of ``estimator`` (``sklearn.base.clone``)
    gets the candidate's parameters (``set_params``), is fitted on the fold's training part
    (``fit(X[train_rows], y[train_rows])``, unlabelled rows with y = -1) and predicts the
    fold's validation rows (``predict(X[validation_rows])``, their labels replaced by -1, so
    the estimator never sees them). The scores compare the predictions with the hidden labels.

    The folds are :func:`~pyro_mmt.data.validation_folds` of ``X`` unless given: stratified
    K-fold over the labelled rows, every unlabelled row (and the single labelled row of a
    class that has only one) in every training part. ``X`` must be training data only; the
    test set is never passed here.

    Scores (all higher-is-better; see :mod:`pyro_mmt.evaluation.metrics`), computed on the
    validation rows:

    - ``balanced_accuracy``: the mean recall over the classes present in the validation rows
      (computed directly, without scikit-learn's warning about classes absent from y_true);
    - ``minority_recall``: the mean recall of the minority classes, the max(1, floor(K'/3))
      of the K' classes present in the validation rows with the fewest training rows (ties
      to the lower class index). The training rows are counted by ``train_class_counts``
      when given (e.g. ``split.train_class_counts``, the long-tailed class sizes), else by
      the labelled rows of the fold's training part (the classes with the fewest labels).
      Only present classes count because a class with a single labelled row is never
      validated, and the test-set definition over all K classes would then be undefined;
    - ``accuracy``, ``macro_f1``, ``g_mean`` as in :func:`~pyro_mmt.evaluation.metrics.
      classification_metrics`.

    :param estimator: a scikit-learn-style estimator whose ``fit``/``predict`` accept a
        :class:`~pyro_mmt.data.MultimodalDataset`; it is cloned, never fitted itself.
    :param candidates: a list of parameter dicts (named 0, 1, ...), a mapping name ->
        parameter dict, or a grid in ``GridSearchCV``'s ``param_grid`` format (a dict name ->
        list of values, e.g. ``{"alpha": [0.5, 1.5]}``, or a list of such dicts; every
        combination is a candidate, named ``alpha=0.5`` and so on).
    :param X: the training data: a MultimodalDataset (labels inside, ``y=None``), or anything
        :func:`~pyro_mmt.data.as_modality_mapping` accepts, with ``y``.
    :param y: labels [N], -1 = unlabelled; with a MultimodalDataset they replace its labels.
    :param modalities: for a flat 2-D ``X``: mapping modality -> columns (see
        :func:`~pyro_mmt.data.as_modality_mapping`).
    :param folds: optional list of ``(train_rows, validation_rows)`` position arrays into
        ``X``, used instead of ``validation_folds(X, n_splits, n_repeats, seed)``; the
        validation rows must be labelled and disjoint from the training rows.
    :param int n_splits: folds per repeat wanted (fewer when a class has few labels).
    :param int n_repeats: repetitions of the K-fold split.
    :param int seed: the seed of the folds (the estimator's own seed is its parameter).
    :param int n_jobs: fits run at once, each in its own process (joblib's ``loky``
        backend) with ``torch.set_num_threads(1)``; -1 = one per core. The parent's settings
        are left alone. The results do not depend on ``n_jobs`` (for an estimator whose fit
        is deterministic given its parameters).
    :param scoring: score names among :data:`SCORES`.
    :param train_class_counts: optional per-class training counts [K] defining the minority
        classes (see above).
    :param bool progress: show a progress bar over the fits.
    :param error_score: ``"raise"`` (default) re-raises a fit's error; a number (e.g.
        ``numpy.nan`` or 0.0) is recorded as every score of that (candidate, fold) instead, with
        the error's first line in an ``error`` column, so that one diverging candidate does not
        stop the comparison (as scikit-learn's ``error_score``).
    :returns: a DataFrame with one row per (candidate, fold), in candidate then fold order:
        ``candidate`` (its name), ``params`` (its dict), ``fold``, ``n_train``,
        ``n_train_labelled``, ``n_validation``, one column per score, and ``fit_seconds``.
    :raises ValueError: for a bad argument (message naming it), e.g. a candidate whose
        parameters the estimator refuses, folds that overlap or validate unlabelled rows, or
        predictions that are not class indices.
    """
    _check_estimator(estimator)
    dataset = _as_dataset(X, y, _modalities(estimator, X, modalities))
    pairs = _check_candidates(estimator, candidates)
    scoring = _check_scoring(scoring)
    counts = _check_counts(train_class_counts, dataset.num_classes)
    n_jobs = _check_n_jobs(n_jobs)
    _warn_few_labels(dataset)
    if folds is None:
        folds = validation_folds(dataset, n_splits=n_splits, n_repeats=n_repeats, seed=seed)
    else:
        folds = _check_folds(folds, len(dataset), dataset.y.numpy())

    tasks = [(name, params, f, train, validation)
             for name, params in pairs for f, (train, validation) in enumerate(folds)]
    bar = tqdm(total=len(tasks), desc="validation fits", disable=not shows_progress(progress))
    results = []
    try:
        if n_jobs == 1:
            for _, params, _, train, validation in tasks:
                results.append(_fit_and_score(estimator, params, dataset[train],
                                              dataset[validation], scoring, counts, False,
                                              error_score))
                bar.update()
        else:
            from joblib import Parallel, delayed

            parallel = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")
            jobs = (delayed(_fit_and_score)(estimator, params, dataset[train],
                                            dataset[validation], scoring, counts, True,
                                            error_score)
                    for _, params, _, train, validation in tasks)
            for result in parallel(jobs):
                results.append(result)
                bar.update()
    finally:
        bar.close()
    rows = [{"candidate": name, "params": dict(params), "fold": f, **result}
            for (name, params, f, _, _), result in zip(tasks, results, strict=True)]
    columns = list(_INFO[:-1]) + list(scoring) + ["fit_seconds"]
    if any("error" in r for r in rows):
        columns.append("error")
    return pd.DataFrame(rows, columns=columns)


def select_best(scores: pd.DataFrame, by: str = "balanced_accuracy",
                tie_break: str | None = "minority_recall") -> tuple[dict, pd.DataFrame]:
    """The best candidate of :func:`validation_scores`'s result, and a summary of all.

    Candidates are ranked by their mean ``by`` score over the folds (higher is better); equal
    means are ordered by the mean ``tie_break`` score, then by the candidates' order. A
    candidate whose mean is NaN (every fold NaN) ranks last; NaN folds are otherwise left out
    of the mean.

    :param scores: the DataFrame returned by :func:`validation_scores`.
    :param str by: the score to maximise.
    :param tie_break: the score that orders candidates with equal ``by`` means, or None.
    :returns: ``(params, summary)``: the best candidate's parameter dict, and a DataFrame
        indexed by candidate, best first, with ``rank`` (1 = best), ``params``, ``n_folds``,
        and for each score s the columns ``s_mean``, ``s_std`` (standard deviation over the
        folds, ddof = 0) and ``s`` ("0.812 ± 0.034").
    :raises ValueError: when ``scores`` lacks the columns, or no candidate has a ``by`` mean.
    """
    if not isinstance(scores, pd.DataFrame):
        raise ValueError(f"scores: expected a DataFrame from validation_scores; found "
                         f"{type(scores).__name__}")
    wanted = [by] + ([] if tie_break is None else [tie_break])
    missing = [c for c in ["candidate", "params", *wanted] if c not in scores.columns]
    if missing or scores.empty:
        raise ValueError(
            f"scores: expected the rows of validation_scores with columns 'candidate', "
            f"'params' and {wanted}; missing {missing}" + (" (no rows)" if scores.empty else "")
        )
    metrics = [c for c in SCORES if c in scores.columns]
    grouped = scores.groupby("candidate", sort=False)
    mean, std = grouped[metrics].mean(), grouped[metrics].std(ddof=0)
    summary = pd.DataFrame(index=mean.index)
    summary["params"] = grouped["params"].first()
    summary["n_folds"] = grouped.size()
    for m in metrics:
        summary[f"{m}_mean"] = mean[m]
        summary[f"{m}_std"] = std[m]
        summary[m] = [f"{a:.3f} ± {s:.3f}" for a, s in zip(mean[m], std[m], strict=True)]
    if summary[f"{by}_mean"].isna().all():
        raise ValueError(f"scores: every candidate's mean {by!r} is NaN; nothing to rank by")
    keys = [f"{m}_mean" for m in wanted]
    summary["_order"] = np.arange(len(summary))
    summary = summary.sort_values(keys + ["_order"], ascending=[False] * len(keys) + [True],
                                  na_position="last", kind="mergesort")
    summary = summary.drop(columns="_order")
    summary.insert(0, "rank", np.arange(1, len(summary) + 1))
    return dict(summary["params"].iloc[0]), summary


def tune(estimator, candidates, X, y=None, *, by="balanced_accuracy",
         tie_break="minority_recall", **kwargs):
    """Choose a candidate on validation folds of ``X`` and refit it on all of ``X``.

    Runs :func:`validation_scores` (``kwargs`` go there: ``modalities``, ``folds``,
    ``n_splits``, ``n_repeats``, ``seed``, ``n_jobs``, ``scoring``, ``train_class_counts``,
    ``progress``), picks the best candidate with :func:`select_best` (``by``, ``tie_break``;
    both must be among the scores computed), then fits a fresh copy of ``estimator`` with
    its parameters on every row of ``X`` (labelled and unlabelled). The test set plays no
    part: evaluate the returned estimator on it afterwards.

    :param estimator: as for :func:`validation_scores`; it is cloned, not modified.
    :param candidates: as for :func:`validation_scores`.
    :param X: the training data, as for :func:`validation_scores`.
    :param y: labels, as for :func:`validation_scores`.
    :returns: the refitted estimator (fitted on the whole of ``X`` as a
        :class:`~pyro_mmt.data.MultimodalDataset`), with three more attributes:
        ``best_params_`` (the chosen parameter dict), ``tuning_scores_`` (the per-fold
        DataFrame) and ``tuning_summary_`` (:func:`select_best`'s summary, best first).
    """
    scoring = kwargs.get("scoring", ("balanced_accuracy", "minority_recall"))
    names = (scoring,) if isinstance(scoring, str) else tuple(scoring)
    for argument, name in (("by", by), ("tie_break", tie_break)):
        if name is not None and name not in names:
            raise ValueError(
                f"{argument}: expected one of the scores computed, {list(names)}; found {name!r} "
                "(add it to scoring=)"
            )
    scores = validation_scores(estimator, candidates, X, y, **kwargs)
    best, summary = select_best(scores, by=by, tie_break=tie_break)
    dataset = _as_dataset(X, y, _modalities(estimator, X, kwargs.get("modalities")))
    model = clone(estimator).set_params(**best)
    model.fit(dataset, dataset.y.numpy())
    if not isinstance(X, MultimodalDataset) and hasattr(model, "classes_"):
        model.classes_ = encode_labels(y)[1]  # the labels as given, not their class indices
    model.best_params_ = best
    model.tuning_scores_ = scores
    model.tuning_summary_ = summary
    return model
