"""The benchmarks' reference step is the library's step, the fast decoder density is the
DiagStudentT's, and each benchmark script runs in its smoke mode."""

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from pyro import poutine

from benchmarks import overhead, scaling
from benchmarks.plain_step import plain_loss
from pyro_mmt.config import ModelConfig
from pyro_mmt.distributions import DiagStudentT, IsotropicStudentT
from pyro_mmt.estimator import build_model, make_objective


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("alpha_unit", ["datum", "dimension"])
def test_plain_loss_is_the_gamma_power_elbo(labelled, missing, alpha_unit):
    torch.set_default_dtype(torch.float64)
    dims = {"a": 5, "b": 7, "c": 3}
    m2 = build_model(
        dims, 4, latent_dim=3, hidden=(8,), alpha=2.0, alpha_unit=alpha_unit, label_counts=[1, 2, 3, 4],
        class_weight="balanced", logit_adjustment=0.5, unlabelled_prior_shift=0.7)
    x = {m: torch.randn(6, n) for m, n in dims.items()}
    mask = torch.ones(6, 3, dtype=torch.bool)
    if missing:
        mask[0, 1] = mask[2, 0] = mask[3, 2] = False
    y = torch.randint(0, 4, (6,)) if labelled else None
    pyro.set_rng_seed(1)  # the same draws of z in both
    with poutine.scale(scale=3.0):
        # the plain reference implements the joint γ-objective (the benchmarks' timed loss)
        expected = make_objective(label_divergence="gamma").differentiable_loss(
            m2.model, m2.guide, x, mask, y)
    pyro.set_rng_seed(1)
    found = plain_loss(m2, x, mask, y, scale=3.0)
    torch.testing.assert_close(found, expected, rtol=1e-12, atol=1e-9)


def test_isotropic_student_t_is_the_diagonal_one():
    torch.set_default_dtype(torch.float64)
    df, loc = torch.tensor([3.0, 7.0]), torch.randn(4, 2, 5)
    scale = torch.rand(4, 2) + 0.5
    iso = IsotropicStudentT(df, loc, scale)
    diag = DiagStudentT(df, loc, scale.unsqueeze(-1).expand(loc.shape))
    value = torch.randn(4, 2, 5)
    assert iso.batch_shape == diag.batch_shape == (4, 2) and iso.event_shape == (5,)
    torch.testing.assert_close(iso.log_prob(value), diag.log_prob(value))
    torch.testing.assert_close(iso.log_power_integral(-0.1), diag.log_power_integral(-0.1))
    torch.testing.assert_close(iso.second_moment(), diag.second_moment())
    assert iso.rsample((3,)).shape == (3, 4, 2, 5)

    # ‖v − m‖² is kept for the same value object, shared by same-shape copies, and recomputed
    # for another value or another shape
    squares = iso.sum_of_squares(value)
    assert iso.expand((4, 2)).sum_of_squares(value) is squares
    other = value + 1.0
    torch.testing.assert_close(iso.log_prob(other), diag.log_prob(other))
    wide = iso.expand((3, 4, 2))
    torch.testing.assert_close(wide.log_prob(value), diag.expand((3, 4, 2)).log_prob(value))
    with pytest.raises(ValueError, match="iso_scale"):
        IsotropicStudentT(df, loc, -scale, validate_args=True)


def test_overhead_smoke(tmp_path, capsys):
    overhead.main(["--quick", "--gamma-vs-enum", "--out", str(tmp_path / "o.csv")])
    assert (tmp_path / "o.csv").is_file() and (tmp_path / "o_gamma_vs_enum.csv").is_file()
    assert "ratio" in capsys.readouterr().out


def test_scaling_smoke(tmp_path):
    scaling.main(["--quick", "--sweeps", "K", "--out", str(tmp_path / "s.csv")])
    assert (tmp_path / "s.csv").read_text().count("\n") == 3


def test_gpu_check_cpu_half(tmp_path):
    from benchmarks import gpu_check

    out = tmp_path / "g.csv"
    assert gpu_check.main(["--quick", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "g_numbers.csv").is_file()


def test_end_to_end_smoke(tmp_path):
    from benchmarks import end_to_end

    end_to_end.main(["--quick", "--no-demo", "--out", str(tmp_path / "e.csv")])
    row = pd.read_csv(tmp_path / "e.csv").iloc[0]
    assert row["samples_per_s"] > 0 and row["peak_rss_mib"] > 0


def test_epoch_overhead_smoke(tmp_path, capsys):
    """Whole epochs of train against plain epochs (issue 14), via overhead --defaults."""
    overhead.main(["--defaults", "--quick", "--out", str(tmp_path / "e.csv")])
    row = pd.read_csv(tmp_path / "e.csv").iloc[0]
    assert row["steps"] > 0 and row["ratio_train"] > 0 and row["ratio_train_q1"] > 0
    assert "ratio_train" in capsys.readouterr().out


def test_profile_step_smoke(tmp_path):
    from benchmarks import profile_step

    profile_step.main(["--quick", "--out", str(tmp_path / "p.csv")])
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    assert row["registration_ms"] > 0 and row["registration_claim_ms"] > 0


def test_parallel_speedup_smoke(tmp_path):
    from benchmarks import parallel_speedup

    parallel_speedup.main(["--quick", "--workload", "members", "--out", str(tmp_path / "p.csv")])
    table = pd.read_csv(tmp_path / "p.csv")
    assert sorted(table["jobs"]) == [1, 2] and table["same_as_serial"].all()


def test_compiled_loss_smoke(tmp_path):
    from benchmarks import compiled_loss

    compiled_loss.main(["--variants", "plain", "eager", "--rounds", "1",
                        "--out", str(tmp_path / "c.csv")])
    table = pd.read_csv(tmp_path / "c.csv")
    assert list(table["variant"]) == ["plain", "eager"] and (table["labelled_ms"] > 0).all()


def test_fit_stability_smoke(tmp_path):
    """One split, two fit seeds per configuration; the warm-up configuration is its own
    registered method, and the rows say which configuration and seed they are."""
    import argparse

    from benchmarks import fit_stability

    out = tmp_path / "f.csv"
    fit_stability.main(argparse.Namespace(
        dataset="digits", rho=10.0, beta=0.2, split_seed=0, fit_seeds=[0, 1],
        configs=["default", "default_warmup"], epochs=1, jobs=1, out=str(out)))
    table = pd.read_csv(out)
    assert list(zip(table["config"], table["fit_seed"], strict=True)) == [
        ("default", 0), ("default", 1), ("default_warmup", 0), ("default_warmup", 1)]
    assert table["balanced_accuracy"].between(0, 1).all()


@pytest.mark.filterwarnings("ignore:classes with fewer than 3 labelled rows")  # tiny splits
def test_select_defaults_smoke(tmp_path, capsys):
    """Two candidates on one setting's validation folds: one row per candidate and fold,
    and the paired summary against the reference."""
    import argparse

    from benchmarks import select_defaults

    out = tmp_path / "s.csv"
    select_defaults.main(argparse.Namespace(
        round=None, settings=["digits:10:0.2"], candidates=["base", "plain"], seeds=[0],
        folds=2, epochs=1, jobs=1, reference="base", resume=False, out=str(out)))
    table = pd.read_csv(out)
    assert sorted(set(table["candidate"])) == ["base", "plain"]
    assert len(table) == 4 and table["n_validation"].gt(0).all()
    assert "plain vs base (balanced_accuracy)" in capsys.readouterr().out


def test_missing_cells_smoke(tmp_path):
    """One data set, one pattern, one epoch: the classification rows of the four methods and
    the imputation rows of the four imputers, with finite errors."""
    import argparse

    from benchmarks import missing_cells

    out = tmp_path / "m.csv"
    missing_cells.main(argparse.Namespace(
        datasets=["breast"], patterns=["mcar30"], rho=10, beta=0.05, seed=0, epochs=1,
        num_samples=2, threads=1, out=str(out)))
    table = pd.read_csv(out)
    classification = table[table["task"] == "classification"]
    assert sorted(classification["method"]) == ["complete", "iterative+model", "mean+model",
                                                 "model"]
    imputation = table[table["task"] == "imputation"]
    assert sorted(imputation["method"]) == ["iterative", "knn", "mean", "model"]
    assert imputation["rmse"].gt(0).all() and imputation["missing_share"].between(0.25, 0.35).all()


def test_pyro_module_speed_smoke(tmp_path):
    """A PyroModule copy of the model trains beside the library's own registration."""
    from benchmarks import pyro_module_speed

    pyro_module_speed.main(["--quick", "--out", str(tmp_path / "p.csv")])
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    assert row["ratio"] > 0 and row["pyro_module_param_calls"] > row["module_param_calls"] > 0


def test_decision_shift_scores_saved_arrays_and_matches_the_lean(tmp_path):
    """Every δ of the grid is the argmax of log q − δ log π̂ scored by the benchmark's metrics;
    the matched comparison gives the other model the δ of the reference's tail share."""
    import numpy as np

    from benchmarks import decision_shift as ds
    from pyro_mmt.evaluation.metrics import classification_metrics

    rng = np.random.default_rng(0)
    counts = np.array([30, 10, 3])
    log_freq = np.log(counts / counts.sum())
    (tmp_path / "arrays").mkdir()
    for method, scale in (("t_gamma", 3.0), ("gauss_kl", 1.0)):
        np.savez(tmp_path / "arrays" / f"{ds._key('x', 10, 0.2, 5, method)}.npz",
                 test_proba=rng.dirichlet(np.ones(3) / scale, size=30),
                 test_y=np.repeat(np.arange(3), 10),
                 unlabelled_proba=rng.dirichlet(np.ones(3), size=40),
                 unlabelled_y=np.zeros(40, dtype=int), labelled_counts=counts,
                 train_counts=counts * 4)
    path = tmp_path / "arrays" / f"{ds._key('x', 10, 0.2, 5, 't_gamma')}.npz"
    rows = {r["method"]: r for r in ds.score(path, "x", 10, 0.2, 5, "t_gamma")}
    a = np.load(path)
    for delta in ds.SHIFTS:
        pred = (np.log(a["test_proba"]) - delta * log_freq).argmax(1)
        expected = classification_metrics(a["test_y"], pred, a["train_counts"])
        assert rows[f"t_gamma@{delta:g}"]["balanced_accuracy"] == expected["balanced_accuracy"]
    assert {f"t_gamma@auto{lam:g}" for lam in ds.SHARES} <= set(rows)
    # the fit's pseudo-labels, the same on every rule's row: argmax of the saved q(y | x)
    shares = np.bincount(a["unlabelled_proba"].argmax(1), minlength=3) / 40
    for row in rows.values():
        assert row["pseudo_tv"] == pytest.approx(1 - shares[0])  # every true label is 0
        assert row["pseudo_class_shares"] == ";".join(f"{v:.6g}" for v in shares)

    todo = [("x", 10, 0.2, 5, m) for m in ("t_gamma", "gauss_kl")]
    matched = ds.matched_lean(tmp_path, todo).set_index("method")
    assert matched.loc["t_gamma", "shift"] == 0.5  # the previous default along π̂
    b = np.load(tmp_path / "arrays" / f"{ds._key('x', 10, 0.2, 5, 'gauss_kl')}.npz")

    def tail(arr, d):
        return ((np.log(arr["unlabelled_proba"]) - d * log_freq).argmax(1) == 2).mean()

    reference = tail(a, 0.5)
    gap = abs(tail(b, matched.loc["gauss_kl", "shift"]) - reference)
    assert gap == min(abs(tail(b, g) - reference) for g in ds.MATCH_GRID)


def test_decision_shift_benchmark_rows_take_each_methods_delta_and_the_baselines(tmp_path):
    """--benchmark-rows names, for every fit scored, the rows of each benchmark method with that
    fit by the method's own rule (the defaults' δ along the predicted shares for t_gamma and
    t_gamma_single, δ = 0 for t_gamma_shift0, δ = 0.5 along π̂ for t_gamma_labelled), and
    --with-rows adds the other methods' rows of the same splits only."""
    from benchmarks import decision_shift as ds

    rules = [f"@{d:g}" for d in ds.SHIFTS] + [f"@pred{d:g}" for d in ds.PREDICTED_SHIFTS]
    rows = []
    for base in ("t_gamma", "t_gamma_single"):
        for code, rule in enumerate(rules):
            rows.append({"dataset": "x", "rho": 10, "beta": 0.2, "seed": 5, "unlabelled": "same",
                         "method": f"{base}{rule}", "base_method": base, "shift": np.nan,
                         "shares": np.nan, "balanced_accuracy": code})
    ensemble = [{**r, "method": r["method"].replace("t_gamma_single", "t_gamma_ens3"),
                 "base_method": "t_gamma_ens3"}
                for r in rows if r["base_method"] == "t_gamma_single"]
    three = ds.benchmark_rows(pd.DataFrame(ensemble))
    assert set(three["method"]) == {"t_gamma_ens3"}  # not t_gamma's names: another fit
    named = ds.benchmark_rows(pd.DataFrame(rows)).set_index("method")["balanced_accuracy"]
    default = rules.index(f"@pred{ModelConfig.decision_shift:g}")
    assert ModelConfig.decision_reference == "predicted"
    assert named.to_dict() == {"t_gamma": default, "t_gamma_shift0": rules.index("@0"),
                               "t_gamma_labelled": rules.index("@0.5"),
                               "t_gamma_single": default}
    baselines = pd.DataFrame({"dataset": ["x", "x", "y"], "rho": 10, "beta": 0.2,
                              "seed": [5, 5, 5], "method": ["lr", "t_gamma", "lr"],
                              "balanced_accuracy": [0.5, 0.9, 0.4]})
    baselines.to_csv(tmp_path / "b.csv", index=False)
    added = ds.other_rows([tmp_path / "b.csv"], named.reset_index().assign(
        dataset="x", rho=10, beta=0.2, seed=5))
    assert added[["dataset", "method"]].values.tolist() == [["x", "lr"]]


def test_decision_shift_extends_a_saved_ensemble_by_the_members_it_lacks(tmp_path, monkeypatch,
                                                                     capsys):
    """t_gamma (five members) on a split whose three-member fit t_gamma_ens3 is saved fits
    members 3 and 4 only (seeds seed + 3000, seed + 4000) and saves the five members' mean,
    which is what fitting all five gives."""
    from benchmarks import decision_shift as ds
    from pyro_mmt.config import TrainingConfig
    from pyro_mmt.experiments import benchmark

    assert TrainingConfig.n_init == 5
    assert ds.fewer_members("t_gamma") == (["t_gamma_ens3"], 3)
    assert ds.fewer_members("t_gamma_single") is None
    calls = []

    def member(seed, rows, k):  # one member's q(y | x): its own seed's draw
        return np.random.default_rng(seed).dirichlet(np.ones(k), size=rows)

    def fake_fit_predict(options):
        def fit_predict(split, seed, dataset):
            n, k = options.get("n_init", TrainingConfig.n_init), split.train.num_classes
            calls.append((seed, n))
            seeds = [seed + 1000 * i for i in range(n)]
            pred = np.zeros(0).view(benchmark.Predictions)
            unlabelled = int((~split.train.is_labelled.numpy()).sum())
            pred.estimates = {
                "test_proba": np.mean([member(s, len(split.test), k) for s in seeds], 0),
                "unlabelled_proba": np.mean([member(s + 1, unlabelled, k) for s in seeds], 0)}
            return pred
        return fit_predict

    monkeypatch.setattr(benchmark, "estimator_fit_predict", fake_fit_predict)
    (tmp_path / "arrays").mkdir()
    three = ds.fit_one("digits", 10.0, 0.2, 5, "t_gamma_ens3", tmp_path)
    five = ds.fit_one("digits", 10.0, 0.2, 5, "t_gamma", tmp_path)
    assert calls == [(5, 3), (3005, 2)]
    whole = tmp_path / "whole"
    (whole / "arrays").mkdir(parents=True)
    alone = ds.fit_one("digits", 10.0, 0.2, 5, "t_gamma", whole)
    assert calls[-1] == (5, 5)
    a, b = np.load(five), np.load(alone)
    for name in ("test_proba", "unlabelled_proba"):
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-12)
    assert not np.allclose(np.load(three)["test_proba"], a["test_proba"])
    assert int(a["n_init"]) == 5 and int(np.load(three)["n_init"]) == 3
    # a saved file of another number of members than its method's is refused, not reused
    stale = tmp_path / "stale"
    (stale / "arrays").mkdir(parents=True)
    (stale / "arrays" / five.name).write_bytes((tmp_path / "arrays" / three.name).read_bytes())
    with pytest.raises(ValueError, match="a fit of 3 members, expected 5"):
        ds.fit_one("digits", 10.0, 0.2, 5, "t_gamma", stale)
    with pytest.raises(SystemExit):  # a baseline has no q(y | x) to save
        ds.main(["--methods", "lr", "--rescore", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):  # the reported seeds only with --reported
        ds.main(["--seeds", "0", "--rescore", "--out", str(tmp_path / "x")])
    assert "--seeds: [0] are not development seeds" in capsys.readouterr().err

    # the script fits in waves by number of members, whatever the order of --methods
    calls.clear()
    ds.main(["--datasets", "digits", "--seeds", "5", "--rhos", "10", "--betas", "0.2",
             "--methods", "t_gamma", "t_gamma_ens3", "--jobs", "1", "--out",
             str(tmp_path / "script")])
    assert calls == [(5, 3), (3005, 2)]
    rows = pd.read_csv(tmp_path / "script" / "results.csv")
    assert set(rows["base_method"]) == {"t_gamma", "t_gamma_ens3"}
