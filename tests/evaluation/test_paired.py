"""Paired comparisons: pairs are runs on the same split; wins, ties, losses, mean difference and
the signed-rank p-value per setting and pooled, against hand-computed values and scipy."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from pyro_mmt.evaluation.paired import paired_comparison, win_table


def _results():
    """Setting a (4 seeds): d = ours − other = [0.25, 0, 0.125, −0.125]; setting b (3 seeds):
    ours is NaN on seed 1, d = [0.25, 0] on seeds 0 and 2. Dyadic values, so every d is exact.
    ours has an extra run (a, seed 4) without a counterpart."""
    values = {
        ("a", 10, 0.2): {"ours": [0.75, 0.5, 0.875, 0.5, 0.9], "other": [0.5, 0.5, 0.75, 0.625],
                         "third": [0.75, 0.75, 0.75, 0.75]},
        ("b", 50, 0.05): {"ours": [0.5, np.nan, 0.25], "other": [0.25, 0.5, 0.25],
                          "third": [0.5, 0.5, 0.5]},
    }
    rows = []
    for (dataset, rho, beta), methods in values.items():
        for method, bacc in methods.items():
            for seed, value in enumerate(bacc):
                rows.append({"dataset": dataset, "rho": rho, "beta": beta, "seed": seed,
                             "method": method, "balanced_accuracy": value,
                             "minority_recall": 1.0 - value})
    return pd.DataFrame(rows)


def test_per_setting_counts_and_pooled_row_match_hand_computation():
    table = paired_comparison(_results(), "ours", "other")
    assert list(table.columns) == ["dataset", "rho", "beta", "n_pairs", "n_dropped", "wins",
                                   "ties", "losses", "mean_diff", "p_value"]
    assert table["dataset"].tolist() == ["a", "b", "all"]
    a, b, pooled = (table.iloc[i] for i in range(3))
    # a: d = [0.25, 0, 0.125, -0.125]; the extra seed 4 of ours has no pair
    assert (a["n_pairs"], a["n_dropped"], a["wins"], a["ties"], a["losses"]) == (4, 0, 2, 1, 1)
    assert a["mean_diff"] == pytest.approx(0.0625)
    # zsplit ranks of |d|: 0 -> 1 (split 0.5 / 0.5), 0.125 -> 2.5 twice, 0.25 -> 4:
    # R+ = 4 + 2.5 + 0.5 = 7, R- = 2.5 + 0.5 = 3; scipy's two-sided statistic is min = 3
    check = wilcoxon([0.25, 0, 0.125, -0.125], zero_method="zsplit", alternative="two-sided")
    assert check.statistic == 3.0
    assert a["p_value"] == pytest.approx(check.pvalue)
    # b: seed 1 dropped (ours NaN); d = [0.25, 0]: one non-tied pair, so no p-value
    assert (b["n_pairs"], b["n_dropped"], b["wins"], b["ties"], b["losses"]) == (2, 1, 1, 1, 0)
    assert b["mean_diff"] == pytest.approx(0.125)
    assert math.isnan(b["p_value"])
    # pooled: every pair of both settings
    assert (pooled["rho"], pooled["beta"]) == ("all", "all")
    assert (pooled["n_pairs"], pooled["n_dropped"], pooled["wins"], pooled["ties"],
            pooled["losses"]) == (6, 1, 3, 2, 1)
    assert pooled["mean_diff"] == pytest.approx(0.5 / 6)
    expected = wilcoxon([0.25, 0, 0.125, -0.125, 0.25, 0], zero_method="zsplit").pvalue
    assert pooled["p_value"] == pytest.approx(expected)


def test_p_value_of_a_tiny_case_is_the_exact_signed_rank_value():
    # d = [0.25, 0.5, -0.125]: ranks 2, 3, 1; R- = 1. Of the 2^3 sign patterns, R+ <= 1 or
    # R+ >= 5 happens in 4: exact two-sided p = 4/8 = 0.5
    frame = pd.DataFrame({
        "dataset": "x", "rho": 10, "beta": 0.2, "seed": [0, 1, 2] * 2,
        "method": ["ours"] * 3 + ["other"] * 3,
        "balanced_accuracy": [0.75, 1.0, 0.375, 0.5, 0.5, 0.5],
    })
    table = paired_comparison(frame, "ours", "other")
    assert table.iloc[0]["p_value"] == pytest.approx(0.5)
    assert table.iloc[0]["p_value"] == pytest.approx(
        wilcoxon([0.25, 0.5, -0.125], zero_method="zsplit", alternative="two-sided").pvalue)
    assert (table.iloc[0]["wins"], table.iloc[0]["losses"]) == (2, 1)


def test_tiny_differences_are_ties_and_by_chooses_the_settings():
    frame = _results()
    frame.loc[(frame["method"] == "other") & (frame["dataset"] == "a") & (frame["seed"] == 0),
              "balanced_accuracy"] = 0.75 + 1e-13
    table = paired_comparison(frame, "ours", "other", by=("dataset",))
    assert table["dataset"].tolist() == ["a", "b", "all"]
    assert (table.iloc[0]["wins"], table.iloc[0]["ties"], table.iloc[0]["losses"]) == (1, 2, 1)
    only_pooled = paired_comparison(frame, "ours", "other", by=())
    assert len(only_pooled) == 1 and only_pooled.iloc[0]["n_pairs"] == 6


def test_every_pair_dropped_gives_nan_summary():
    frame = _results()
    frame.loc[frame["method"] == "ours", "minority_recall"] = np.nan
    table = paired_comparison(frame, "ours", "other", metric="minority_recall")
    pooled = table.iloc[-1]
    assert (pooled["n_pairs"], pooled["n_dropped"]) == (0, 7)
    assert math.isnan(pooled["mean_diff"]) and math.isnan(pooled["p_value"])


def test_win_table_has_one_row_per_other_method():
    table = win_table(_results(), "ours", ["other", "third"])
    assert table["method"].tolist() == ["other", "third"]
    other = table.iloc[0]
    assert other["n_pairs"] == 7
    assert (other["balanced_accuracy wins"], other["balanced_accuracy ties"],
            other["balanced_accuracy losses"]) == (3, 2, 1)
    # minority recall = 1 − bacc: every win becomes a loss
    assert (other["minority_recall wins"], other["minority_recall ties"],
            other["minority_recall losses"]) == (1, 2, 3)
    assert other["balanced_accuracy p"] == pytest.approx(other["minority_recall p"])
    # third: a d = [0, -0.25, 0.125, -0.25], b d = [0, -0.25] (seed 1 dropped)
    third = table.iloc[1]
    assert (third["balanced_accuracy wins"], third["balanced_accuracy ties"],
            third["balanced_accuracy losses"]) == (1, 2, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"ours": "nope", "other": "other"}, "ours: unknown method 'nope'"),
    ({"ours": "ours", "other": "nope"}, "other: unknown method 'nope'"),
    ({"ours": "ours", "other": "ours"}, "other: expected a method other than ours"),
    ({"ours": "ours", "other": "other", "metric": "g_mean"}, "metric: 'g_mean' is not a column"),
    ({"ours": "ours", "other": "other", "by": ("n_labelled",)}, r"results: missing columns \['n_l"),
])
def test_paired_comparison_errors_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_comparison(_results(), **kwargs)


def test_missing_split_key_and_repeated_runs_are_errors():
    with pytest.raises(ValueError, match=r"results: missing columns \['seed'\]"):
        paired_comparison(_results().drop(columns="seed"), "ours", "other")
    doubled = pd.concat([_results(), _results()], ignore_index=True)
    with pytest.raises(ValueError, match="results: method 'ours' has 8 repeated runs"):
        paired_comparison(doubled, "ours", "other")
    with pytest.raises(ValueError, match="others: unknown method 'nope'"):
        win_table(_results(), "ours", ["other", "nope"])
    with pytest.raises(ValueError, match="metrics: 'g_mean' is not a column"):
        win_table(_results(), "ours", ["other"], metrics=("balanced_accuracy", "g_mean"))
    with pytest.raises(ValueError, match="others: expected at least one method"):
        win_table(_results(), "ours", [])
