"""The mixed-ensemble measurement (benchmarks/mixed_ensemble.py): its mixture specs, its
averaging and decision rule against a hand computation, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.mixed_ensemble import _options, _path, fit_member, main, parse_counts, score_mixture
from pyro_mmt.config import ModelConfig
from pyro_mmt.evaluation.metrics import classification_metrics

SPLIT = ("digits", 10, 0.05, 5)


def test_parse_counts_reads_methods_and_counts():
    assert parse_counts("t_gamma_single=3+gauss_kl_single=2") == {
        "t_gamma_single": 3, "gauss_kl_single": 2}


@pytest.mark.parametrize("spec, found", [
    ("t_gamma_single", "is not METHOD=K"),
    ("t_gamma_single=0", "is not METHOD=K"),
    ("t_gamma_single=2.5", "is not METHOD=K"),
    ("t_gamma_single=-1", "is not METHOD=K"),
    ("t_gamma_single=\u00b2", "is not METHOD=K"),  # a digit to str.isdigit, not to int()
    ("nope=2", "'nope' is not a single-initialisation deep method"),
    ("t_gamma=2", "'t_gamma' is not a single-initialisation deep method"),  # five members
    ("lr=1", "'lr' is not a single-initialisation deep method"),  # not deep
    ("t_gamma_single=1+t_gamma_single=2", "appears twice"),
])
def test_parse_counts_refuses_bad_specs(spec, found):
    with pytest.raises(ValueError, match=found):
        parse_counts(spec)


def _labels(k=3, n_test=40, n_unl=60):
    rng = np.random.default_rng(123)
    return {"test_y": np.repeat(np.arange(k), n_test // k + 1)[:n_test],
            "unlabelled_y": rng.integers(0, k, n_unl),
            "labelled_counts": np.array([10, 3, 1]), "train_counts": np.array([50, 15, 5])}


def _member(out, method, i, rng, labels=None):
    """A member's file: q(y | x) leaning to class 0 on the unlabelled rows (as a fit trained on
    head-heavy rows does), so the decision shift changes many predictions."""
    labels = labels or _labels()
    n_test, n_unl = len(labels["test_y"]), len(labels["unlabelled_y"])
    arrays = {"test_proba": rng.dirichlet([2.0, 1.0, 1.0], n_test),
              "unlabelled_proba": rng.dirichlet([5.0, 1.0, 1.0], n_unl), **labels}
    path = _path(out, *SPLIT, method, i)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def test_score_mixture_averages_members_and_shifts_along_their_mean_prediction(tmp_path):
    rng = np.random.default_rng(0)
    a = [_member(tmp_path, "t_gamma_single", i, rng) for i in range(3)]
    b = [_member(tmp_path, "gauss_kl_single", i, rng) for i in range(2)]
    row = score_mixture(tmp_path, *SPLIT, "t_gamma_single=2+gauss_kl_single=1")
    used = a[:2] + b[:1]  # members 0, 1 of the first and 0 of the second
    q = np.mean([m["test_proba"] for m in used], 0)
    u = np.mean([m["unlabelled_proba"] for m in used], 0)
    # the decision rule by hand: r the mean prediction with one pseudo-count per class
    r = (u.sum(0) + 1) / (len(u) + u.shape[1])
    pred = (np.log(q) - ModelConfig.decision_shift * np.log(r)).argmax(1)
    assert (pred != q.argmax(1)).sum() >= 8  # the shift matters here
    expected = classification_metrics(a[0]["test_y"], pred, a[0]["train_counts"])
    assert row["method"] == "t_gamma_single=2+gauss_kl_single=1"
    for name, value in expected.items():
        assert row[name] == pytest.approx(value)
    # the pseudo-label columns describe the mixture's q̄ on the unlabelled rows
    true_shares = np.bincount(a[0]["unlabelled_y"], minlength=3) / len(u)
    shares = np.bincount(u.argmax(1), minlength=3) / len(u)
    assert row["pseudo_tv"] == pytest.approx(0.5 * np.abs(shares - true_shares).sum())
    entropy = -(u * np.log(u)).sum(1).mean()
    assert row["pseudo_entropy"] == pytest.approx(entropy)


def test_score_mixture_without_a_member_file_is_none(tmp_path):
    rng = np.random.default_rng(1)
    _member(tmp_path, "t_gamma_single", 0, rng)
    assert score_mixture(tmp_path, *SPLIT, "t_gamma_single=2") is None


def test_score_mixture_refuses_members_of_different_splits(tmp_path):
    rng = np.random.default_rng(2)
    _member(tmp_path, "t_gamma_single", 0, rng)
    other = _labels()
    other["unlabelled_y"] = (other["unlabelled_y"] + 1) % 3
    _member(tmp_path, "gauss_kl_single", 0, rng, labels=other)
    with pytest.raises(ValueError, match="unlabelled_y differs"):
        score_mixture(tmp_path, *SPLIT, "t_gamma_single=1+gauss_kl_single=1")


def test_bad_arguments_are_refused_naming_the_flag(tmp_path, capsys):
    def refused(*argv):
        with pytest.raises(SystemExit):
            main([*argv, "--out", str(tmp_path)])
        return capsys.readouterr().err

    assert "not development seeds" in refused("--seeds", "0", "--rescore")
    assert "--mixtures: mixture 't_gamma_single=0'" in refused(
        "--mixtures", "t_gamma_single=0", "--rescore")
    assert "--members: mixture 'nope=1'" in refused("--members", "nope=1")
    assert "--members: ['t_gamma_single'] given twice" in refused(
        "--members", "t_gamma_single=1", "t_gamma_single=2")
    # a mixture needing more members than are fitted is refused before any fit
    assert "t_gamma_single=3 needs 3 of t_gamma_single, --members fits 2" in refused(
        "--members", "t_gamma_single=2", "--mixtures", "t_gamma_single=3")
    assert "--jobs: expected an integer >= 1, found 0" in refused("--jobs", "0", "--rescore")
    assert not (tmp_path / "arrays").exists() or not any((tmp_path / "arrays").iterdir())


def test_rescore_says_what_it_cannot_score(tmp_path, capsys):
    rng = np.random.default_rng(3)
    _member(tmp_path, "t_gamma_single", 0, rng)
    main(["--datasets", "digits", "--seeds", "5", "--mixtures", "t_gamma_single=1",
          "t_gamma_single=2", "--rescore", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    # digits has 2 settings (β = 0.05, 0.2) at seed 5: 4 pairs, one scored
    assert "3 (split, mixture) pairs lack a member's fit" in out
    with pytest.raises(SystemExit, match="no mixture could be scored"):
        main(["--datasets", "digits", "--seeds", "6", "--rescore", "--out", str(tmp_path)])


def test_a_saved_member_of_other_options_is_refused_not_reused(tmp_path):
    rng = np.random.default_rng(4)
    _member(tmp_path, "t_gamma_single", 0, rng)  # a file without recorded options: kept
    assert fit_member(*SPLIT, "t_gamma_single", 0, tmp_path) == _path(
        tmp_path, *SPLIT, "t_gamma_single", 0)
    path = _path(tmp_path, *SPLIT, "gauss_kl_single", 0)
    with np.load(_path(tmp_path, *SPLIT, "t_gamma_single", 0)) as a:
        arrays = dict(a)
    # the file of one method's options under another method's name: refused before any fit
    np.savez(path, **arrays, options=np.array(_options("t_gamma_single")))
    with pytest.raises(ValueError, match="fitted with options .* but gauss_kl_single now has"):
        fit_member(*SPLIT, "gauss_kl_single", 0, tmp_path)
    np.savez(path, **arrays, options=np.array(_options("gauss_kl_single")))
    assert fit_member(*SPLIT, "gauss_kl_single", 0, tmp_path) == path
