"""The per-class analysis (benchmarks/per_class.py): its class rows against a hand computation,
its summary's counts, and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.mixed_ensemble import _path, load_mixture
from benchmarks.per_class import class_rows, main, summarise

SPLIT = ("digits", 10, 0.05, 5)


def _arrays():
    """Three classes of 50, 15 and 5 training rows (class 2 the minority class). Every
    unlabelled row has q = (0.8, 0.1, 0.1), so r = ((4.8, 0.6, 0.6) + 1) / (6 + 3) =
    (0.644, 0.178, 0.178) with the library's one pseudo-count per class."""
    return {"test_proba": np.array([[0.6, 0.1, 0.3], [0.9, 0.05, 0.05]]),
            "test_y": np.array([2, 0]),
            "unlabelled_proba": np.tile([0.8, 0.1, 0.1], (6, 1)),
            "unlabelled_y": np.array([0, 0, 0, 1, 1, 2]),
            "labelled_counts": np.array([10, 3, 1]), "train_counts": np.array([50, 15, 5])}


def test_class_rows_against_a_hand_computation():
    rows = class_rows(_arrays(), delta=1.5).set_index("class")
    assert rows["rank"].tolist() == [0, 1, 2]
    assert rows["minority"].tolist() == [False, False, True]
    assert rows["labelled"].tolist() == [10, 3, 1]
    assert rows["reference_share"].to_numpy() == pytest.approx([5.8 / 9, 1.6 / 9, 1.6 / 9])
    # test row 0, q = (0.6, 0.1, 0.3): class 0 scores log 0.6 − 1.5 log(5.8/9) = 0.149, class 2
    # log 0.3 − 1.5 log(1.6/9) = 1.386: the shift predicts class 2, the fit as trained class 0
    assert rows.loc[2, "test_recall"] == 1.0
    assert rows.loc[2, "test_recall_as_trained"] == 0.0
    # test row 1, q = (0.9, 0.05, 0.05): class 0 0.555 against class 1 and 2 −0.407
    assert rows.loc[0, "test_recall"] == rows.loc[0, "test_recall_as_trained"] == 1.0
    assert math.isnan(rows.loc[1, "test_recall"])  # no test row of class 1
    # unlabelled q = (0.8, 0.1, 0.1): 0.437 against 0.286, class 0 at the rule and as trained
    assert rows["unlabelled_recall"].tolist() == [1.0, 0.0, 0.0]
    assert rows["unlabelled_recall_as_trained"].tolist() == [1.0, 0.0, 0.0]
    assert rows["unlabelled_predicted_share"].tolist() == [1.0, 0.0, 0.0]
    assert rows["unlabelled_true_share"].to_numpy() == pytest.approx([3 / 6, 2 / 6, 1 / 6])
    assert rows["mean_q_own_class"].to_numpy() == pytest.approx([0.8, 0.1, 0.1])


def test_rank_and_minority_agree_when_training_counts_tie():
    """Classes 0 and 1 have 5 training rows each: minority_classes takes the lower index as the
    smaller class, and so does the rank, so the minority class is the last rank."""
    arrays = {**_arrays(), "train_counts": np.array([5, 5, 10])}
    rows = class_rows(arrays).set_index("class")
    assert rows["rank"].tolist() == [2, 1, 0]
    assert rows["minority"].tolist() == [True, False, False]


def test_class_rows_with_no_shift_is_the_fit_as_trained():
    rows = class_rows(_arrays(), delta=0.0)
    assert rows["test_recall"].equals(rows["test_recall_as_trained"])
    assert rows["unlabelled_recall"].equals(rows["unlabelled_recall_as_trained"])


UNLABELLED = (0.3, 0.8, 0.5, 0.9)  # the pseudo-labels' recall at the rule, seeds 5–8


def _summary_rows():
    """Two methods over four splits' tail class (class 2): A loses it on seed 5 (recall 0.1), B
    on seeds 5 and 6. The pseudo-labels' recall at the rule is UNLABELLED for both methods;
    as trained it is its reverse, so a correlation read from the wrong column differs."""
    rows = []
    for method, recalls in (("A=1", (0.1, 0.9, 0.4, 0.7)), ("B=1", (0.2, 0.0, 0.6, 0.8))):
        for seed, recall, unlabelled in zip((5, 6, 7, 8), recalls, UNLABELLED, strict=True):
            rows.append({"dataset": "digits", "rho": 10, "beta": 0.05, "seed": seed,
                         "method": method, "class": 2, "rank": 2, "num_classes": 3,
                         "minority": True, "labelled": 1 if seed == 5 else 2, "train": 5,
                         "test_recall": recall, "test_recall_as_trained": recall,
                         "unlabelled_recall": unlabelled,
                         "unlabelled_recall_as_trained": UNLABELLED[::-1][seed - 5],
                         "unlabelled_predicted_share": 0.1, "unlabelled_true_share": 0.1,
                         "reference_share": 0.1, "mean_q_own_class": 0.5})
    return pd.DataFrame(rows)


def test_summary_counts_the_lost_tail_classes_and_who_loses_them():
    text = summarise(_summary_rows())
    assert "- A=1 and B=1: 1 lost by both, 0 by A=1 only, 1 by B=1 only" in text
    # by labelled rows: A loses its one-labelled-row class, B that one and one of two rows
    lost = text.split("by labelled rows")[1]
    assert "| A=1      |          1 |      1 |              1 |" in lost
    assert "| A=1      |          2 |      0 |              3 |" in lost
    assert "| B=1      |          2 |      1 |              3 |" in lost
    # the lost pairs by data set, and the means over every pair (here all tail pairs)
    by_data = text.split("By data set:")[1].split("##")[0]
    assert [line.split("|")[3].strip() for line in by_data.splitlines()
            if line.startswith("| ") and "digits" in line] == ["1", "2"]
    pooled = text.split("## Every data set together")[1]
    a_tail = next(x for x in pooled.splitlines() if x.startswith("| A=1"))
    cells = [c.strip() for c in a_tail.split("|")[1:-1]]
    assert cells[1:4] == ["tail", "4", f"{np.mean([0.1, 0.9, 0.4, 0.7]):.3f}".rstrip("0")]
    # the correlation of the pseudo-labels' recall at the rule with the test recall
    correlations = text.split("predict its test recall?")[1].split("##")[0]
    for method, recalls in (("A=1", (0.1, 0.9, 0.4, 0.7)), ("B=1", (0.2, 0.0, 0.6, 0.8))):
        expected = np.corrcoef(UNLABELLED, recalls)[0, 1]
        line = next(x for x in correlations.splitlines() if x.startswith(f"| {method}"))
        assert float(line.split("|")[2]) == pytest.approx(expected, abs=0.005)


def _member(out, method, member, arrays):
    path = _path(out, *SPLIT, method, member)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def test_main_writes_rows_summary_and_figure_and_says_what_it_left_out(tmp_path, capsys):
    a = _arrays()
    b = {**a, "test_proba": a["test_proba"][:, [0, 2, 1]]}
    _member(tmp_path, "t_gamma_single", 0, a)
    _member(tmp_path, "t_gamma_single", 1, b)
    out = tmp_path / "report"
    main([str(tmp_path), "--mixtures", "t_gamma_single=2", "--datasets", "digits", "--seeds",
          "5", "--out", str(out)])
    # digits has β = 0.05 and 0.2 at seed 5; only the first has members
    assert "1 (split, mixture) pairs lack a member's fit" in capsys.readouterr().out
    rows = pd.read_csv(out / "classes.csv")
    assert rows[["dataset", "rho", "beta", "seed", "method"]].drop_duplicates().values.tolist() \
        == [["digits", 10, 0.05, 5, "t_gamma_single=2"]]
    expected = class_rows(load_mixture(tmp_path, *SPLIT, "t_gamma_single=2"))
    np.testing.assert_array_equal(rows["test_recall"], expected["test_recall"])
    assert (out / "summary.md").read_text().startswith("## The tail classes")
    assert (out / "recall_by_rank.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments_are_refused_naming_the_argument(tmp_path, capsys):
    def refused(*argv):
        with pytest.raises(SystemExit):
            main([*argv, "--out", str(tmp_path / "report")])
        return capsys.readouterr().err

    assert "members: " in refused(str(tmp_path), "--mixtures", "t_gamma_single=1")
    (tmp_path / "arrays").mkdir()
    assert "--seeds: [0] are not development seeds" in refused(
        str(tmp_path), "--mixtures", "t_gamma_single=1", "--seeds", "0")
    assert "--mixtures: mixture 'nope=1'" in refused(str(tmp_path), "--mixtures", "nope=1")
    assert "--datasets: ['nope'] are not bundled data sets" in refused(
        str(tmp_path), "--mixtures", "t_gamma_single=1", "--datasets", "nope")
    assert "--seeds: [5] given twice" in refused(
        str(tmp_path), "--mixtures", "t_gamma_single=1", "--seeds", "5", "5")
    with pytest.raises(SystemExit, match="no mixture could be read"):
        main([str(tmp_path), "--mixtures", "t_gamma_single=1", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
