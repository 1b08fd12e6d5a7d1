"""Benchmark metrics against hand-checked small cases."""

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_mmt.evaluation.metrics import (
    METRICS,
    classification_metrics,
    expected_calibration_error,
    minority_classes,
    per_class_recall,
    summarise,
)

# K = 3, four test rows per class. Recalls: class 0 3/4, class 1 2/4, class 2 4/4.
# Precisions: class 0 3/5 (rows 0, 1, 2, 6, 7 predicted 0), class 1 2/3, class 2 1.
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 0, 1, 1, 1, 0, 0, 2, 2, 2, 2]


def test_hand_checked_three_classes():
    m = classification_metrics(Y_TRUE, Y_PRED, train_class_counts=[100, 10, 50])
    assert list(m.index) == list(METRICS) == [
        "accuracy", "balanced_accuracy", "macro_f1", "g_mean", "minority_recall"]
    assert m["accuracy"] == pytest.approx(9 / 12)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 4 + 1) / 3)
    # F1: class 0 2(.6)(.75)/1.35 = 2/3, class 1 2(2/3)(1/2)/(7/6) = 4/7, class 2 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 7 + 1) / 3)
    assert m["g_mean"] == pytest.approx((3 / 4 * 2 / 4 * 1) ** (1 / 3))
    # K // 3 = 1 minority class: the one with 10 training rows, class 1
    assert m["minority_recall"] == pytest.approx(2 / 4)


def test_minority_ties_go_to_the_lower_class_index():
    m = classification_metrics(Y_TRUE, Y_PRED, train_class_counts=[10, 10, 50])
    assert m["minority_recall"] == pytest.approx(3 / 4)  # class 0, not class 1
    assert minority_classes([10, 10, 50]).tolist() == [0]
    assert minority_classes([5, 1, 5, 1, 9, 9, 2, 7, 7, 3]).tolist() == [1, 3, 6]  # K = 10: 3
    assert minority_classes([304, 30]).tolist() == [1]  # K = 2: the smaller class


def test_minority_recall_needs_train_counts():
    m = classification_metrics(Y_TRUE, Y_PRED)
    assert np.isnan(m["minority_recall"])
    assert m["accuracy"] == pytest.approx(0.75)


def test_two_classes_and_g_mean_zero():
    y_true = [0, 0, 0, 1, 1, 1]
    y_pred = [0, 0, 0, 0, 0, 0]  # class 1 never predicted: recall 0
    m = classification_metrics(y_true, y_pred, train_class_counts=[304, 30])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["g_mean"] == 0.0
    assert m["minority_recall"] == 0.0
    # F1 class 0: precision 1/2, recall 1 -> 2/3; class 1: 0
    assert m["macro_f1"] == pytest.approx(1 / 3)


def test_agrees_with_sklearn_and_imblearn_on_random_predictions():
    from imblearn.metrics import geometric_mean_score
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(6), 30)
    y_pred = np.where(rng.random(y_true.size) < 0.6, y_true, rng.integers(0, 6, y_true.size))
    m = classification_metrics(torch.as_tensor(y_true), y_pred)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["g_mean"] == pytest.approx(geometric_mean_score(y_true, y_pred))


def test_per_class_recall():
    r = per_class_recall(Y_TRUE, Y_PRED, num_classes=4)
    assert r.name == "recall" and list(r.index) == [0, 1, 2, 3]
    np.testing.assert_allclose(r.to_numpy()[:3], [0.75, 0.5, 1.0])
    assert np.isnan(r[3])  # no test row of class 3
    with pytest.raises(ValueError, match="num_classes=2"):
        per_class_recall(Y_TRUE, Y_PRED, num_classes=2)


@pytest.mark.parametrize(
    "y_true, y_pred, counts, match",
    [
        ([0, 1], [0], None, "y_pred: expected 2 entries"),
        ([0, -1], [0, 1], None, r"y_true: expected class indices >= 0"),
        ([0, 1.5], [0, 1], None, "y_true: expected integer class indices"),
        ([], [], None, "non-empty"),
        ([0, 2], [0, 1], [5, 5], "train_class_counts: has 2 classes"),
    ],
)
def test_metric_validation(y_true, y_pred, counts, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_pred, counts)


def test_summarise_mean_and_std():
    frame = pd.DataFrame({
        "method": ["a"] * 3 + ["b"] * 3,
        "seed": [0, 1, 2] * 2,
        "accuracy": [0.8, 0.9, 1.0, 0.5, 0.5, 0.5],
        "g_mean": [0.1, 0.2, 0.3, 0.0, 0.2, 0.4],
    })
    out = summarise(frame, "method", ["accuracy", "g_mean"])
    assert list(out.index) == ["a", "b"]
    # ddof = 0: std of [0.8, 0.9, 1.0] = sqrt(0.02 / 3) = 0.0816
    assert out.loc["a", "accuracy"] == "0.900 ± 0.082"
    assert out.loc["b", "accuracy"] == "0.500 ± 0.000"
    assert out.loc["a", "accuracy_mean"] == pytest.approx(0.9)
    assert out.loc["a", "accuracy_std"] == pytest.approx(np.sqrt(0.02 / 3))
    assert out.loc["b", "g_mean_std"] == pytest.approx(np.sqrt(0.08 / 3))
    assert out["n_runs"].tolist() == [3, 3]
    sample = summarise(frame, ["method"], ["accuracy"], ddof=1)
    assert sample.loc["a", "accuracy"] == "0.900 ± 0.100"
    overall = summarise(frame)  # default metrics: the METRICS columns present
    assert overall.loc[0, "accuracy_mean"] == pytest.approx(0.7)
    assert "g_mean" in overall.columns and "seed" not in overall.columns
    with pytest.raises(ValueError, match="not usable"):
        summarise(frame, "rho", ["accuracy"])


def test_expected_calibration_error_hand_value():
    # confidences 0.95 (right), 0.65 (wrong), 0.7 (right), 0.85 (right); 5 bins of width 0.2:
    # bin (0.8, 1]: acc 1, conf 0.9 -> 0.5 * 0.1; bin (0.6, 0.8]: acc 0.5, conf 0.675 -> 0.5 * 0.175
    proba = [[0.95, 0.05], [0.65, 0.35], [0.3, 0.7], [0.85, 0.15]]
    y_true = [0, 1, 1, 0]
    assert expected_calibration_error(y_true, proba, n_bins=5) == pytest.approx(0.1375)
    # perfectly confident and right: 0
    assert expected_calibration_error([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0


def test_expected_calibration_error_validation():
    with pytest.raises(ValueError, match="summing to 1"):
        expected_calibration_error([0], [[0.5, 0.6]])
    with pytest.raises(ValueError, match=r"proba: expected shape \(2, K\)"):
        expected_calibration_error([0, 1], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0], [[1.0, 0.0]], n_bins=0)
