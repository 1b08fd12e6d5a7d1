"""The mixed-ensemble measurement (benchmarks/mixed_ensemble.py): its mixture specs, its
averaging and decision rule against a hand computation, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.mixed_ensemble import _path, main, parse_counts, score_mixture
from pyro_mmt.config import ModelConfig
from pyro_mmt.evaluation.metrics import classification_metrics


def test_parse_counts_reads_methods_and_counts():
    assert parse_counts("t_gamma_single=3+gauss_kl_single=2") == {
        "t_gamma_single": 3, "gauss_kl_single": 2}


@pytest.mark.parametrize("spec, found", [
    ("t_gamma_single", "is not METHOD=K"),
    ("t_gamma_single=0", "is not METHOD=K"),
    ("t_gamma_single=2.5", "is not METHOD=K"),
    ("t_gamma_single=-1", "is not METHOD=K"),
    ("nope=2", "'nope' is not a single-initialisation deep method"),
    ("t_gamma=2", "'t_gamma' is not a single-initialisation deep method"),  # five members
    ("lr=1", "'lr' is not a single-initialisation deep method"),  # not deep
    ("t_gamma_single=1+t_gamma_single=2", "appears twice"),
])
def test_parse_counts_refuses_bad_specs(spec, found):
    with pytest.raises(ValueError, match=found):
        parse_counts(spec)


def _member(out, method, i, rng, k=3, n_test=40, n_unl=60):
    test_y = np.repeat(np.arange(k), n_test // k + 1)[:n_test]
    arrays = {"test_proba": rng.dirichlet(np.ones(k), n_test),
              "unlabelled_proba": rng.dirichlet(np.ones(k), n_unl),
              "test_y": test_y, "unlabelled_y": rng.integers(0, k, n_unl),
              "labelled_counts": np.array([10, 3, 1]), "train_counts": np.array([50, 15, 5])}
    path = _path(out, "digits", 10, 0.05, 5, method, i)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def test_score_mixture_averages_members_and_shifts_along_their_mean_prediction(tmp_path):
    rng = np.random.default_rng(0)
    a = [_member(tmp_path, "t_gamma_single", i, rng) for i in range(3)]
    b = [_member(tmp_path, "gauss_kl_single", i, rng) for i in range(2)]
    row = score_mixture(tmp_path, "digits", 10, 0.05, 5,
                        "t_gamma_single=2+gauss_kl_single=1")
    used = a[:2] + b[:1]  # members 0, 1 of the first and 0 of the second
    q = np.mean([m["test_proba"] for m in used], 0)
    u = np.mean([m["unlabelled_proba"] for m in used], 0)
    # the decision rule by hand: r the mean prediction with one pseudo-count per class
    r = (u.sum(0) + 1) / (len(u) + u.shape[1])
    pred = (np.log(q) - ModelConfig.decision_shift * np.log(r)).argmax(1)
    expected = classification_metrics(a[0]["test_y"], pred, a[0]["train_counts"])
    assert row["method"] == "t_gamma_single=2+gauss_kl_single=1"
    for name, value in expected.items():
        assert row[name] == pytest.approx(value)
    # a different mixture of the same files scores differently here (the test can fail)
    other = score_mixture(tmp_path, "digits", 10, 0.05, 5, "t_gamma_single=3")
    assert other["balanced_accuracy"] != row["balanced_accuracy"] or \
        other["pseudo_tv"] != row["pseudo_tv"]


def test_score_mixture_without_a_member_file_is_none(tmp_path):
    rng = np.random.default_rng(1)
    _member(tmp_path, "t_gamma_single", 0, rng)
    assert score_mixture(tmp_path, "digits", 10, 0.05, 5, "t_gamma_single=2") is None


def test_reported_seeds_and_bad_mixtures_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--seeds", "0", "--out", str(tmp_path), "--rescore"])
    assert "not development seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--mixtures", "t_gamma_single=0", "--out", str(tmp_path), "--rescore"])
    assert "is not METHOD=K" in capsys.readouterr().err
