"""The baselines: every registered baseline predicts test labels of the right shape and range on
small digits and breast splits; la_lr's shift is logits − log π̂; ssl_mlp is deterministic for
a seed and leaves the caller's torch state alone; the headline table's collapse rule."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from pyro_mmt.data import load_dataset, long_tailed_split
from pyro_mmt.experiments import baselines
from pyro_mmt.experiments.benchmark import (
    CLASSICAL_BASELINES,
    DEEP_BASELINES,
    METHODS,
    headline_table,
)

SSL_STEPS = 40  # ssl_mlp's steps in these tests (the benchmark takes >= 500)


@pytest.fixture(scope="module")
def splits():
    """digits ρ = 10, β = 0.2 with its training rows cut to the labelled ones plus 60
    unlabelled (so that the self-training baselines stay fast), and breast ρ = 10, β = 0.05 (a
    single labelled row in the minority class)."""
    digits = long_tailed_split(load_dataset("digits"), 10, 0.2, 0)
    y = digits.train.y.numpy()
    keep = np.sort(np.concatenate([np.flatnonzero(y >= 0), np.flatnonzero(y < 0)[:60]]))
    digits = dataclasses.replace(digits, train=digits.train[keep],
                                 train_labels=digits.train_labels[keep])
    breast = long_tailed_split(load_dataset("breast"), 10, 0.05, 0)
    return {"digits": digits, "breast": breast}


def _fit_predict(name, split, dataset, seed=0):
    if name == "ssl_mlp":
        return baselines.ssl_mlp(split, seed, dataset, steps=SSL_STEPS)
    return METHODS[name].fit_predict(split, seed, dataset, None)


@pytest.mark.parametrize("dataset", ["digits", "breast"])
@pytest.mark.parametrize("name", [*CLASSICAL_BASELINES, *DEEP_BASELINES])
def test_baseline_predicts_test_labels(splits, dataset, name):
    split = splits[dataset]
    pred = _fit_predict(name, split, dataset)
    if pred is None:  # only SMOTE refuses a class with a single labelled row
        assert name == "smote_lr" and split.labelled_class_counts.min() == 1
        return
    pred = np.asarray(pred)
    assert pred.shape == (len(split.test),)
    assert pred.dtype.kind in "iu"
    assert pred.min() >= 0 and pred.max() < split.train.num_classes


def test_new_baselines_are_registered():
    for name in ("la_lr", "hgb", "rf", "selftrain_hgb", "ssl_mlp"):
        assert METHODS[name].fit_predict is getattr(baselines, name)
    assert METHODS["ssl_mlp"].deep and not METHODS["la_lr"].deep


@pytest.mark.parametrize("dataset", ["digits", "breast"])
def test_la_lr_subtracts_the_log_labelled_frequencies(splits, dataset):
    split = splits[dataset]
    train, test = baselines.views(split)
    y = split.train.y.numpy()
    lab = y >= 0
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(train[lab], y[lab])
    freq = np.bincount(y[lab]) / lab.sum()
    logits = clf.decision_function(test)
    if dataset == "breast":  # binary: the logit of class 1 against class 0
        expected = (logits - (np.log(freq[1]) - np.log(freq[0])) > 0).astype(int)
    else:
        expected = np.argmax(logits - np.log(freq), axis=1)
    pred = baselines.la_lr(split, 0, dataset)
    np.testing.assert_array_equal(pred, expected)
    # the shift matters: it moves predictions towards the rare classes
    plain = clf.predict(test)
    assert (pred != plain).any()
    rare = np.argmin(freq)
    assert (pred == rare).sum() >= (plain == rare).sum()


def test_labelled_frequencies_needs_every_class():
    assert baselines.labelled_frequencies(np.array([0, 1, 1, -1]), 2) == pytest.approx(
        [1 / 3, 2 / 3])
    with pytest.raises(ValueError, match=r"y: classes \[2\] have no labelled row"):
        baselines.labelled_frequencies(np.array([0, 1, -1]), 3)


def test_ssl_mlp_is_deterministic_and_leaves_torch_state_alone(splits):
    split = splits["digits"]
    torch.manual_seed(123)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    first = baselines.ssl_mlp(split, 3, "digits", steps=SSL_STEPS)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads
    second = baselines.ssl_mlp(split, 3, "digits", steps=SSL_STEPS)
    np.testing.assert_array_equal(first, second)
    other_seed = baselines.ssl_mlp(split, 4, "digits", steps=SSL_STEPS)
    assert (other_seed != first).any()


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps: expected a positive integer"),
    ({"epochs": 0}, "epochs: expected a positive integer"),
])
def test_ssl_mlp_rejects_bad_lengths(splits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        baselines.ssl_mlp(splits["breast"], 0, "breast", **kwargs)


def _collapse_results(dataset="digits", with_k_column=False):
    """K = 10: hgb (0.12, within 0.05 of 1/K) and rf (0.14) predict ~one class, hgb with a
    perfect minority recall; ssl_mlp is a deep baseline."""
    values = {  # method -> (bacc, minority recall), equal over the two seeds
        "t_gamma": (0.80, 0.70),
        "lr": (0.60, 0.50),
        "la_lr": (0.70, 0.65),
        "hgb": (0.12, 1.00),
        "rf": (0.14, 0.00),
        "ssl_mlp": (0.82, 0.60),
    }
    rows = []
    for method, (bacc, minority) in values.items():
        for seed in (0, 1):
            row = {"dataset": dataset, "rho": 10, "beta": 0.05, "seed": seed, "method": method,
                   "balanced_accuracy": bacc, "minority_recall": minority}
            if with_k_column:
                row["num_classes"] = 10
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("dataset, with_k_column, num_classes", [
    ("digits", False, None),  # K from DATASETS
    ("toy", True, None),  # K from the results' num_classes column
    ("toy", False, {"toy": 10}),  # K from the argument
    ("toy", False, 10),
])
def test_headline_table_sets_collapsed_baselines_aside(dataset, with_k_column, num_classes):
    table = headline_table(_collapse_results(dataset, with_k_column), num_classes=num_classes)
    row = table.iloc[0]
    assert row["collapsed"] == "hgb, rf"
    assert row["best classical"].startswith("la_lr: 0.700")
    assert row["ours ≥ classical (bacc)"] == "yes"
    assert row["ours ≥ classical (minority)"] == "yes"  # hgb's 1.00 does not count
    assert row["ssl_mlp"] == "0.820 ± 0.000 / 0.600 ± 0.000"
    assert row["ours ≥ deep baselines (bacc)"] == "no (ssl_mlp)"
    assert row["ours ≥ deep baselines (minority)"] == "yes"


def test_headline_table_without_k_keeps_every_baseline():
    row = headline_table(_collapse_results("toy")).iloc[0]
    assert row["collapsed"] == ""
    assert row["ours ≥ classical (minority)"] == "no (hgb)"


def test_collapse_rule_for_two_classes():
    # K = 2 (breast): 1/K = 0.5, so a balanced accuracy of 0.53 is a collapse, 0.56 is not
    frame = _collapse_results("breast")
    frame.loc[frame["method"] == "hgb", "balanced_accuracy"] = 0.53
    frame.loc[frame["method"] == "rf", "balanced_accuracy"] = 0.56
    row = headline_table(frame).iloc[0]
    assert row["collapsed"] == "hgb"
    assert row["ours ≥ classical (minority)"] == "yes"


def test_headline_table_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"results: missing columns \['minority_recall'\]"):
        headline_table(_collapse_results().drop(columns="minority_recall"))
    with pytest.raises(ValueError, match="num_classes: expected an int >= 2"):
        headline_table(_collapse_results(), num_classes=1)
