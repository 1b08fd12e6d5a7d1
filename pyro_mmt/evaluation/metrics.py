"""The benchmark's test-set metrics (docs/protocol.md, "Metrics"), computed with scikit-learn.

For a classifier's predictions on a test set with K classes and per-class recalls
R_k = TP_k / (number of test rows of class k):

- accuracy:           fraction of correct predictions;
- balanced accuracy:  (1/K') Σ_k R_k over the K' classes present in ``y_true``;
- macro-F1:           unweighted mean of the per-class F1 scores (classes in ``y_true`` or
                      ``y_pred``; a class never predicted has F1 = 0);
- G-mean:             (Π_k R_k)^(1/K'), 0 as soon as one class has recall 0;
- minority recall:    mean of R_k over the max(1, floor(K/3)) classes with the fewest
                      *training* rows (ties broken by the lower class index); for K = 2 that
                      is the smaller class.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score

__all__ = [
    "METRICS",
    "classification_metrics",
    "expected_calibration_error",
    "minority_classes",
    "per_class_recall",
    "summarise",
]

#: The metric names, in the order of :func:`classification_metrics`'s result.
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "g_mean", "minority_recall")


def _as_array(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _check_class_vector(value, argument, length=None):
    array = _as_array(value)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{argument}: expected a non-empty 1-D array; found shape {array.shape}")
    if length is not None and array.size != length:
        raise ValueError(f"{argument}: expected {length} entries (as y_true); found {array.size}")
    if array.dtype.kind == "f":
        if not (np.isfinite(array) & (array == np.round(array))).all():
            raise ValueError(f"{argument}: expected integer class indices; found non-integers")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{argument}: expected integer class indices; found dtype {array.dtype}")
    array = array.astype(np.int64)
    if (array < 0).any():
        raise ValueError(
            f"{argument}: expected class indices >= 0 (no unlabelled rows); found "
            f"{np.unique(array[array < 0]).tolist()}"
        )
    return array


def minority_classes(train_class_counts) -> np.ndarray:
    """The max(1, K // 3) classes with the fewest training rows, ties broken by class index.

    Parameters
    ----------
    train_class_counts : array-like of int, [K]
        Training rows per class (labelled + unlabelled), e.g.
        ``LongTailedSplit.train_class_counts``.

    Returns
    -------
    numpy.ndarray
        Class indices, smallest count first.
    """
    counts = _as_array(train_class_counts)
    if counts.ndim != 1 or counts.size < 2 or counts.dtype.kind not in "iuf" or (counts < 0).any():
        raise ValueError(
            "train_class_counts: expected a 1-D array of K >= 2 non-negative counts; found "
            f"{counts!r}"
        )
    num_classes = counts.size
    order = np.lexsort((np.arange(num_classes), counts))  # by count, then by class index
    return order[: max(1, num_classes // 3)].astype(np.int64)


def per_class_recall(y_true, y_pred, num_classes: int) -> pd.Series:
    """Recall R_k = TP_k / (rows of class k in ``y_true``) for k = 0..K-1.

    Returns a Series indexed by class 0..K-1, named ``"recall"``; NaN for a class with no rows in
    ``y_true``.
    """
    y_true = _check_class_vector(y_true, "y_true")
    y_pred = _check_class_vector(y_pred, "y_pred", y_true.size)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or \
            num_classes < 1:
        raise ValueError(f"num_classes: expected a positive integer; found {num_classes!r}")
    largest = max(y_true.max(), y_pred.max())
    if largest >= num_classes:
        raise ValueError(
            f"y_true/y_pred: expected class indices < num_classes={num_classes}; found {largest}"
        )
    recall = recall_score(
        y_true, y_pred, labels=np.arange(num_classes), average=None, zero_division=np.nan
    )
    return pd.Series(recall, index=pd.RangeIndex(num_classes, name="class"), name="recall")


def classification_metrics(y_true, y_pred, train_class_counts=None) -> pd.Series:
    """The protocol's five test-set metrics.

    Parameters
    ----------
    y_true, y_pred : array-like of int, [N]
        True and predicted class indices (no -1).
    train_class_counts : array-like of int, [K], optional
        Training rows per class; needed for minority recall (NaN without it).

    Returns
    -------
    pandas.Series
        Index ``METRICS`` = ("accuracy", "balanced_accuracy", "macro_f1", "g_mean",
        "minority_recall"); see the module docstring for the definitions. Per-class recalls
        (balanced accuracy, G-mean) are over the classes present in ``y_true``; minority recall
        is NaN when a minority class has no row in ``y_true``.
    """
    y_true = _check_class_vector(y_true, "y_true")
    y_pred = _check_class_vector(y_pred, "y_pred", y_true.size)
    present = np.unique(y_true)
    recall = recall_score(y_true, y_pred, labels=present, average=None, zero_division=0.0)
    g_mean = 0.0 if (recall == 0).any() else float(np.exp(np.mean(np.log(recall))))
    minority_recall = np.nan
    if train_class_counts is not None:
        counts = _as_array(train_class_counts)
        largest = max(y_true.max(), y_pred.max())
        if counts.ndim == 1 and largest >= counts.size:
            raise ValueError(
                f"train_class_counts: has {counts.size} classes; expected more than the "
                f"largest class index found in y_true/y_pred, {largest}"
            )
        minority = minority_classes(counts)
        minority_recall = float(np.mean(recall_score(
            y_true, y_pred, labels=minority, average=None, zero_division=np.nan
        )))
    values = [
        accuracy_score(y_true, y_pred),
        float(np.mean(recall)),
        f1_score(y_true, y_pred, average="macro", zero_division=0.0),
        g_mean,
        minority_recall,
    ]
    return pd.Series([float(v) for v in values], index=list(METRICS), name="value")


def summarise(frame: pd.DataFrame, by=None, metrics=None, *, ddof: int = 0,
              digits: int = 3) -> pd.DataFrame:
    """Mean ± standard deviation of metrics over repeated runs (e.g. seeds).

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per run, with the grouping columns and the metric columns.
    by : str or list of str, optional
        Grouping columns (e.g. ``["method", "rho", "beta"]``); ``None`` summarises all rows.
    metrics : list of str, optional
        Metric columns; default the columns of ``METRICS`` found in ``frame``.
    ddof : int
        Delta degrees of freedom of the standard deviation: 0 (default) divides by the number of
        runs n (the spread of the runs themselves, defined for n = 1); pass 1 for the sample
        standard deviation (divides by n - 1). NaN values are skipped.
    digits : int
        Decimals in the formatted strings.

    Returns
    -------
    pandas.DataFrame
        One row per group (indexed by ``by``) with, for each metric m, the string column ``m``
        ("0.912 ± 0.013") and numeric columns ``m_mean`` and ``m_std``, plus ``n_runs``.
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"frame: expected a pandas DataFrame; found {type(frame).__name__}")
    keys = [] if by is None else [by] if isinstance(by, str) else list(by)
    if metrics is None:
        metrics = [m for m in METRICS if m in frame.columns]
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    missing = [c for c in keys + metrics if c not in frame.columns]
    if missing or not metrics:
        raise ValueError(
            f"by/metrics: columns {missing or metrics} not usable; expected columns of frame "
            f"{list(frame.columns)}"
        )
    if keys:
        grouped = frame.groupby(keys, sort=True)
        mean, std, n = grouped[metrics].mean(), grouped[metrics].std(ddof=ddof), grouped.size()
    else:
        mean = frame[metrics].mean().to_frame().T
        std = frame[metrics].std(ddof=ddof).to_frame().T
        n = pd.Series([len(frame)])
    out = pd.DataFrame(index=mean.index)
    for m in metrics:
        out[m] = [f"{a:.{digits}f} ± {s:.{digits}f}" for a, s in zip(mean[m], std[m], strict=True)]
    for m in metrics:
        out[f"{m}_mean"] = mean[m].to_numpy()
        out[f"{m}_std"] = std[m].to_numpy()
    out["n_runs"] = n.to_numpy()
    return out


def expected_calibration_error(y_true, proba, n_bins: int = 15) -> float:
    """Expected calibration error of the predicted class probabilities.

    With confidence c_i = max_k p_ik, prediction ŷ_i = argmax_k p_ik and B equal-width bins
    I_b = ((b-1)/B, b/B] of the confidence (c = 0 goes to the first bin):

        ECE = Σ_b (|I_b| / N) · | acc(I_b) − conf(I_b) |,

    acc and conf being the mean correctness and mean confidence of the rows in the bin
    (Guo et al., "On calibration of modern neural networks", ICML 2017).

    Parameters
    ----------
    y_true : array-like of int, [N]
    proba : array-like, [N, K]
        Rows of class probabilities (non-negative, summing to 1 within 1e-4).
    n_bins : int
        B.
    """
    y_true = _check_class_vector(y_true, "y_true")
    p = _as_array(proba).astype(np.float64)
    if p.ndim != 2 or p.shape[0] != y_true.size:
        raise ValueError(f"proba: expected shape ({y_true.size}, K); found {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise ValueError("proba: expected finite, non-negative rows summing to 1")
    if y_true.max() >= p.shape[1]:
        raise ValueError(
            f"y_true: expected class indices < K={p.shape[1]} (proba's columns); found "
            f"{y_true.max()}"
        )
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive integer; found {n_bins!r}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y_true).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)
