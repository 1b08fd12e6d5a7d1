"""The benchmark's bookkeeping: the headline table picks the best classical baseline per setting
and says whether ours is best; w0 matches its tabulated values; the explicit-γ method resolves its γ."""

import math

import numpy as np
import pandas as pd
import pytest

from pyro_mmt.cli import main
from pyro_mmt.experiments.benchmark import (
    METHODS,
    entropy_weight_w0,
    headline_table,
    setting_count_spread,
    setting_counts,
)


def _results():
    rows = []
    values = {  # method -> (bacc per seed, minority recall per seed)
        "t_gamma": ([0.80, 0.90], [0.70, 0.80]),
        "gauss_kl": ([0.70, 0.80], [0.90, 0.90]),
        "lr": ([0.60, 0.70], [0.50, 0.50]),
        "selftrain": ([0.84, 0.84], [0.60, 0.60]),
        "labelspread": ([0.50, 0.50], [0.76, 0.76]),
        "smote_lr": ([np.nan, np.nan], [np.nan, np.nan]),
    }
    for method, (bacc, minority) in values.items():
        for seed in (0, 1):
            rows.append({"dataset": "toy", "rho": 10, "beta": 0.05, "seed": seed,
                         "method": method, "balanced_accuracy": bacc[seed],
                         "minority_recall": minority[seed]})
    return pd.DataFrame(rows)


def test_headline_table_picks_the_best_classical_baseline():
    table = headline_table(_results())
    assert len(table) == 1
    row = table.iloc[0]
    assert row["seeds"] == 2
    assert row["t_gamma"] == "0.850 ± 0.050 / 0.750 ± 0.050"
    assert row["best classical"].startswith("selftrain: 0.840 ± 0.000")  # smote_lr (NaN) skipped
    assert row["ours ≥ classical (bacc)"] == "yes"
    # labelspread (0.76) beats ours on minority recall; gauss_kl (0.90) is not classical
    assert row["ours ≥ classical (minority)"] == "no (labelspread)"


def test_rivals_are_compared_as_one_pool_and_counted():
    """ours (0.85 / 0.75) against gauss_kl (0.75 / 0.90) and a rival it beats on both: at
    least every rival on balanced accuracy, not on minority recall (gauss_kl names the miss)."""
    results = _results()
    weak = results[results["method"] == "lr"].assign(method="t_kl")
    table = headline_table(pd.concat([results, weak]), others=(), rivals=("gauss_kl", "t_kl"))
    row = table.iloc[0]
    assert row["gauss_kl"] == "0.750 ± 0.050 / 0.900 ± 0.000" and "t_kl" in table.columns
    assert row["ours ≥ rivals (bacc)"] == "yes"
    assert row["ours ≥ rivals (minority)"] == "no (gauss_kl)"
    counts = setting_counts(table).set_index("comparison")
    assert counts.loc["ours ≥ rivals (bacc)"].tolist() == [1, 1]
    assert counts.loc["ours ≥ rivals (minority)"].tolist() == [1, 0]
    assert counts.loc["ours ≥ classical (minority)"].tolist() == [1, 0]


def test_equal_means_summed_in_another_order_are_a_tie():
    """Minority recalls on five seeds as the benchmark wrote them (digits β = 0.2, development
    seeds): k / 129 with k summing to 559 for both, but in float64 the rival's mean has the
    larger last bit; that is a tie."""
    ours = [0.9534883720930233, 0.9069767441860465, 0.8449612403100776, 0.8604651162790696,
            0.7674418604651163]
    rival = [0.9457364341085271, 0.937984496124031, 0.8449612403100776, 0.8527131782945737,
             0.751937984496124]
    assert np.rint(np.array(ours) * 129).sum() == np.rint(np.array(rival) * 129).sum() == 559
    rows = [{"dataset": "digits", "rho": 10, "beta": 0.2, "seed": seed, "method": method,
             "balanced_accuracy": 0.9, "minority_recall": value}
            for method, values in (("t_gamma", ours), ("t_kl", rival))
            for seed, value in enumerate(values)]
    results = pd.DataFrame(rows)
    means = results.groupby("method")["minority_recall"].mean()
    assert means["t_kl"] > means["t_gamma"]  # the float64 rounding the tolerance is for
    row = headline_table(results, others=(), rivals=("t_kl",)).iloc[0]
    assert row["ours ≥ rivals (minority)"] == "yes"
    worse = results.assign(minority_recall=np.where(results["method"] == "t_gamma",
                                                    results["minority_recall"] - 1e-6,
                                                    results["minority_recall"]))
    row = headline_table(worse, others=(), rivals=("t_kl",)).iloc[0]
    assert row["ours ≥ rivals (minority)"] == "no (t_kl)"


def test_report_command_counts_the_settings_against_the_rivals(tmp_path, capsys):
    path = tmp_path / "results.csv"
    _results().to_csv(path, index=False)
    assert main(["report", str(path), "--rivals", "gauss_kl", "--out", str(tmp_path / "r")]) == 0
    counts = pd.read_csv(tmp_path / "r" / "settings.csv").set_index("comparison")
    assert counts.loc["ours ≥ rivals (minority)", "ours at least"] == 0
    assert counts.loc["ours ≥ rivals (bacc)", "ours at least"] == 1
    assert "ours ≥ rivals (minority)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--rivals"):
        main(["report", str(path), "--rivals", "t_kl"])


def test_report_command_prints_the_headline_table(tmp_path, capsys):
    path = tmp_path / "results.csv"
    _results().to_csv(path, index=False)
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "selftrain: 0.840" in out and "ours ≥ classical (minority)" in out


@pytest.mark.parametrize("n, d, expected", [(784, 16, 0.059), (649, 32, 0.059), (64, 16, 0.065)])
def test_w0_matches_math_table(n, d, expected):
    assert entropy_weight_w0(5.0, n, d) == pytest.approx(expected, abs=1e-3)


def test_w0_times_sigma2_is_one_over_2_pi_e_at_large_n():
    # for n >= 649 and nu <= 10, w0 sigma^2 is 1/(2 pi e) within 5%
    for nu in (2.5, 5.0, 10.0):
        assert entropy_weight_w0(nu, 784, 16) == pytest.approx(1 / (2 * math.pi * math.e), rel=0.05)


def test_registry_describes_every_method():
    for name, method in METHODS.items():
        assert method.name == name and method.description


def test_every_deep_methods_options_are_settings_the_estimator_accepts():
    """A misspelt or out-of-range option in a registry entry is caught here, not after a
    screen's first fit: every deep method's options are estimator parameters, and the
    estimator built with them passes its own parameter checks."""
    from pyro_mmt.data import load_dataset, long_tailed_split
    from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier
    from pyro_mmt.experiments.benchmark import resolve_options

    params = set(MultimodalSemiSupervisedClassifier().get_params())
    train = long_tailed_split(load_dataset("pbc"), 10, 0.2, 0).train  # mixed families
    deep = {name: m for name, m in METHODS.items() if m.deep and m.options is not None}
    assert {"t_gamma_joint_head_single", "t_gamma_nu30_single", "t_gamma_plain_single"} <= set(deep)
    for name, method in deep.items():
        options = resolve_options(method.options, train, "pbc")
        assert set(options) <= params, (name, set(options) - params)
        MultimodalSemiSupervisedClassifier(**options)._check_params()
    resolved = resolve_options(METHODS["gauss_kl_w0"].options, train, "pbc", epochs=2)
    assert 0 < resolved["latent_weight"] < 1 and resolved["epochs"] == 2
    assert "likelihood" not in resolve_options(METHODS["t_gamma_all_t"].options, train, "pbc")
    with pytest.raises(ValueError, match="nu"):  # the check itself refuses a bad value
        MultimodalSemiSupervisedClassifier(nu=1.0)._check_params()


def test_run_benchmark_records_the_number_of_classes():
    from pyro_mmt.experiments.benchmark import run_benchmark

    results = run_benchmark(["breast"], ["la_lr", "smote_lr"], rhos=[10], betas=[0.05],
                            seeds=[0], progress=None)
    assert results["num_classes"].tolist() == [2, 2]
    assert results["balanced_accuracy"].iloc[0] > 0.5
    assert np.isnan(results["balanced_accuracy"].iloc[1])  # SMOTE: one labelled minority row


def test_parallel_runs_give_the_serial_rows():
    """jobs = 2 runs the fits in worker processes: the same rows in the same order (the
    seconds aside), deep methods included."""
    from pyro_mmt.experiments.benchmark import run_benchmark

    kwargs = dict(rhos=[10], betas=[0.2], seeds=[0, 1], epochs=1, progress=None)
    methods = ["la_lr", "t_gamma"]
    serial = run_benchmark(["breast"], methods, jobs=1, **kwargs)
    parallel = run_benchmark(["breast"], methods, jobs=2, **kwargs)
    pd.testing.assert_frame_equal(serial.drop(columns="seconds"),
                                  parallel.drop(columns="seconds"))
    assert serial["unlabelled"].eq("same").all() and serial["prior_tv"].isna().all()


def test_ablations_alone_concat_and_the_learned_prior_on_a_reversed_mix():
    """alone:<modality> fits one modality (NaN rows where the data set lacks it); the
    concatenated single-encoder model runs; a learned prior reports its total variation from
    the true unlabelled class proportions of a reversed mix."""
    from pyro_mmt.experiments.benchmark import run_benchmark

    results = run_benchmark(
        ["breast"], ["alone:se", "alone:pix", "t_gamma_concat", "t_gamma_learned_pi"],
        rhos=[10], betas=[0.2], seeds=[0], epochs=1, unlabelled="reversed", progress=None)
    rows = results.set_index("method")
    assert 0 <= rows.loc["alone:se", "balanced_accuracy"] <= 1
    assert np.isnan(rows.loc["alone:pix", "balanced_accuracy"])  # breast has no "pix"
    assert 0 <= rows.loc["t_gamma_concat", "balanced_accuracy"] <= 1
    assert 0 <= rows.loc["t_gamma_learned_pi", "prior_tv"] <= 1
    assert (results["unlabelled"] == "reversed").all()
    with pytest.raises(ValueError, match="unknown 'alone:'"):
        run_benchmark(["breast"], ["alone:"], progress=None)


def test_the_headline_method_is_the_estimators_defaults(monkeypatch):
    """t_gamma fits exactly MultimodalSemiSupervisedClassifier() (with the split's seed and the
    data set's likelihood families), and each ablation changes only the options it names."""
    import pyro_mmt.experiments.benchmark as bench
    from pyro_mmt.data import load_dataset, long_tailed_split
    from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier

    built = {}

    class Spy(MultimodalSemiSupervisedClassifier):
        def fit(self, X, y=None):
            built[self.objective, self.nu] = self.get_params()
            raise StopIteration

    monkeypatch.setattr(bench, "MultimodalSemiSupervisedClassifier", Spy)
    split = long_tailed_split(load_dataset("digits"), 10, 0.2, 0)
    for name in ("t_gamma", "gauss_kl"):
        with pytest.raises(StopIteration):
            bench.METHODS[name].fit_predict(split, 3, "digits")
    default = MultimodalSemiSupervisedClassifier(seed=3).get_params()
    t_gamma = built["gamma_power", default["nu"]]
    assert t_gamma == default
    gauss = built["kl", float("inf")]
    assert {k for k in default if gauss[k] != default[k]} == {"objective", "nu"}


def test_a_modality_alone_is_not_run_where_rows_lack_it():
    """PBC's panel is missing for 106 patients: 'alone:panel' gives a NaN row, not an error;
    a complete modality (age) runs."""
    from pyro_mmt.experiments.benchmark import run_benchmark

    rows = run_benchmark(["pbc"], ["alone:panel", "alone:age"], rhos=[10], betas=[0.2],
                         seeds=[0], epochs=1, progress=None)
    by_method = rows.set_index("method")["balanced_accuracy"]
    assert np.isnan(by_method["alone:panel"]) and 0 <= by_method["alone:age"] <= 1


def test_pseudo_label_summary_against_hand_counts():
    """Three classes, six unlabelled rows; the minority (smallest training count) is class 2."""
    from pyro_mmt.experiments.benchmark import pseudo_label_summary

    proba = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
                      [0.1, 0.1, 0.8], [0.5, 0.5, 0.0]])  # argmax: 0, 0, 1, 1, 2, 0 (tie -> 0)
    truth = np.array([0, 0, 0, 1, 2, 2])
    out = pseudo_label_summary(proba, truth, train_class_counts=[50, 20, 5])
    # predicted shares (3/6, 2/6, 1/6) against true shares (3/6, 1/6, 2/6)
    assert out["pseudo_tv"] == pytest.approx(0.5 * (0 + 1 / 6 + 1 / 6))
    assert out["pseudo_minority_share"] == pytest.approx((1 / 6) / (2 / 6))
    assert out["pseudo_minority_recall"] == pytest.approx(0.5)  # class 2: one of two rows
    assert out["pseudo_balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    entropy = -(proba * np.log(np.clip(proba, 1e-300, None))).sum(1).mean()
    assert out["pseudo_entropy"] == pytest.approx(entropy)
    assert out["pseudo_class_shares"] == "0.5;0.333333;0.166667"
    assert out["true_class_shares"] == "0.5;0.166667;0.333333"
    empty = pseudo_label_summary(None, truth, [50, 20, 5])
    assert all(isinstance(v, float) and math.isnan(v) for v in empty.values())


def test_development_seed_selection_ranks_by_both_metrics_and_refuses_reported_seeds(tmp_path,
                                                                                   capsys):
    from benchmarks.select_on_dev_seeds import by_dataset, load_results, ranking
    from benchmarks.select_on_dev_seeds import main as select_main

    rows = []
    for seed in (5, 6, 7):
        for method, bacc, minority in (("t_gamma", 0.80, 0.60), ("a", 0.85, 0.50),
                                       ("b", 0.79, 0.70)):
            rows.append({"dataset": "toy", "rho": 10, "beta": 0.05, "seed": seed,
                         "method": method, "balanced_accuracy": bacc + 0.01 * seed,
                         "minority_recall": minority})
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    table = ranking(load_results([path]), "t_gamma")
    # "a" wins balanced accuracy by losing minority recall; "b" has the best mean of both
    assert list(table["method"]) == ["b", "t_gamma", "a"]
    b = table.set_index("method").loc["b"]
    assert b["balanced_accuracy w/t/l"] == "0 / 0 / 3"
    assert b["minority_recall w/t/l"] == "3 / 0 / 0"
    assert b["criterion gain"] == pytest.approx((0.79 + 0.70 - 0.80 - 0.60) / 2)
    # "c", fitted on the easiest split only (seed 7): the highest mean of its own splits,
    # 0.7775 against b's 0.775, but less gain there over t_gamma (0.0425) than b (0.045)
    easy = tmp_path / "easy.csv"
    pd.DataFrame(rows + [{**rows[-1], "method": "c", "balanced_accuracy": 0.935,
                          "minority_recall": 0.62}]).to_csv(easy, index=False)
    table = ranking(load_results([easy]), "t_gamma").set_index("method")
    assert table["criterion"].idxmax() == "c" and table.loc["c", "splits"] == 1
    assert table.loc["c", "criterion gain"] == pytest.approx(0.7775 - 0.735)
    assert list(table.index) == ["b", "c", "t_gamma", "a"]
    assert select_main([str(path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "ranking.md").exists()
    means = pd.read_csv(tmp_path / "out" / "by_dataset.csv", index_col="method")
    assert list(means.index) == ["b", "t_gamma", "a"]  # the ranking's order
    # b: balanced accuracy 0.79 + 0.01 × seed over seeds 5, 6, 7 is 0.85; minority 0.70
    assert means.loc["b", "toy"] == "0.850 / 0.700 (3)"
    # a split where b could not run (NaN metrics) is neither averaged nor counted, and a
    # method of the order without rows is left out
    failed = {**rows[2], "seed": 8, "balanced_accuracy": float("nan"),
              "minority_recall": float("nan")}
    assert rows[2]["method"] == "b"
    table = by_dataset(pd.DataFrame(rows + [failed]), ["b", "absent", "a"])
    assert list(table.index) == ["b", "a"] and table.loc["b", "toy"] == "0.850 / 0.700 (3)"
    written = pd.read_csv(tmp_path / "out" / "ranking.csv").set_index("method")["verdict"]
    # three splits cannot reach p < 0.05 (the smallest two-sided Wilcoxon p of 3 pairs is 0.25)
    assert written.to_dict() == {"b": "level", "t_gamma": "reference", "a": "level"}
    assert not (tmp_path / "out" / "mechanism.md").exists()  # no pseudo-label statistics
    # --methods ranks only the candidates named, with the reference
    assert select_main([str(path), "--methods", "a", "--out", str(tmp_path / "only")]) == 0
    only = pd.read_csv(tmp_path / "only" / "ranking.csv")
    assert sorted(only["method"]) == ["a", "t_gamma"]
    with pytest.raises(SystemExit):
        select_main([str(path), "--methods", "a", "nope"])
    assert "--methods: ['nope'] are not among the methods" in capsys.readouterr().err
    # --same: another round's rows of the reference under another name (seeds 8, 9, another
    # data set) count as the reference's, so "b" is paired on five splits, not three
    other = [{"dataset": "toy2", "rho": 10, "beta": 0.05, "seed": seed, "method": method,
              "balanced_accuracy": bacc, "minority_recall": minority}
             for seed in (8, 9) for method, bacc, minority in (
                 ("t_gamma_single=5", 0.80, 0.60), ("b", 0.79, 0.70))]
    pd.DataFrame(other).to_csv(tmp_path / "other.csv", index=False)
    assert select_main([str(path), str(tmp_path / "other.csv"), "--same", "t_gamma_single=5",
                        "t_gamma", "--out", str(tmp_path / "same")]) == 0
    same = pd.read_csv(tmp_path / "same" / "ranking.csv").set_index("method")
    assert "t_gamma_single=5" not in same.index
    assert same.loc["b", "minority_recall w/t/l"] == "5 / 0 / 0"
    with pytest.raises(SystemExit):
        select_main([str(path), "--same", "nope", "t_gamma"])
    assert "--same: 'nope' is not among the methods" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        select_main([str(path), "--same", "t_gamma", "t_gamma"])
    assert "--same: 't_gamma' given as its own other name" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # rows of the same splits: refused, not merged
        select_main([str(path), "--same", "a", "t_gamma"])
    assert "--same: 'a' and 't_gamma' both have rows of 3 split(s)" in \
        capsys.readouterr().err
    pd.DataFrame([{**rows[0], "seed": 0}]).to_csv(tmp_path / "reported.csv", index=False)
    with pytest.raises(ValueError, match="not development seeds"):
        load_results([tmp_path / "reported.csv"])


def test_development_seed_verdict_needs_a_significant_criterion_gain(tmp_path, capsys):
    """A candidate replaces the reference only when its criterion gain is significant
    (p < 0.05) with the mean and the ranks on its side: "up" gains 0.01 on each of 12 splits
    (two-sided Wilcoxon p = 2/2¹² ≈ 0.0005); "noisy" gains more on average but with its
    sign flipping (p ≈ 0.18); "down" loses on every split; "lopsided" gains 0.01 on 11
    splits and loses 0.2 on one, so its mean is negative while the test, on ranks, finds it
    ahead (p ≈ 0.03): neither side may claim it."""
    from scipy.stats import wilcoxon

    from benchmarks.select_on_dev_seeds import REPLACEMENT_LEVEL, rank_balance, ranking, verdict
    from benchmarks.select_on_dev_seeds import main as select_main

    rows = []
    for split in range(12):
        level = 0.6 + 0.01 * split
        for method, gap in (("t_gamma", 0.0), ("up", 0.01), ("down", -0.01),
                            ("noisy", (0.08 if split % 2 else -0.06) + 0.001 * split),
                            ("lopsided", -0.2 if split == 4 else 0.01)):
            rows.append({"dataset": f"toy{split % 3}", "rho": 10, "beta": 0.05,
                         "seed": 5 + split // 3, "method": method,
                         "balanced_accuracy": level + gap, "minority_recall": level + gap})
    table = ranking(pd.DataFrame(rows).assign(
        criterion=lambda f: (f["balanced_accuracy"] + f["minority_recall"]) / 2),
        "t_gamma").set_index("method")
    assert table.loc["noisy", "criterion gain"] > table.loc["up", "criterion gain"] > 0
    assert table.loc["noisy", "criterion p"] > REPLACEMENT_LEVEL > table.loc["up", "criterion p"]
    lopsided = table.loc["lopsided"]
    assert lopsided["criterion gain"] == pytest.approx((11 * 0.01 - 0.2) / 12)
    assert lopsided["criterion p"] < REPLACEMENT_LEVEL
    assert lopsided["criterion rank balance"] == pytest.approx((66 - 12) / 78)
    assert table["verdict"].to_dict() == {"noisy": "level", "up": "replaces",
                                          "t_gamma": "reference", "lopsided": "level",
                                          "down": "below"}
    assert (table.loc["up", "criterion rank balance"],
            table.loc["down", "criterion rank balance"]) == (1.0, -1.0)
    # the balance is the side of the signed-rank statistic scipy tests
    d = np.array([0.03, -0.01, 0.02, 0.0, -0.05, 0.04])
    w_plus = wilcoxon(d, zero_method="zsplit", alternative="greater").statistic
    total = len(d) * (len(d) + 1) / 2
    assert rank_balance(d) == pytest.approx((2 * w_plus - total) / total)
    assert math.isnan(rank_balance([]))
    assert verdict(0.01, float("nan"), 1.0) == "level"  # too few differing splits for a test
    assert verdict(float("nan"), 0.01, 1.0) == "level"
    assert verdict(0.0, 0.01, 1.0) == "level"
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    assert select_main([str(tmp_path / "results.csv")]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        "replaces t_gamma (p < 0.05, mean and ranks ahead): up (first by gain: up)")
    no_winner = pd.DataFrame([r for r in rows if r["method"] != "up"])
    no_winner.to_csv(tmp_path / "no_winner.csv", index=False)
    assert select_main([str(tmp_path / "no_winner.csv")]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        "replaces t_gamma (p < 0.05, mean and ranks ahead): none")


def _two_seed_settings(n_settings, ours_minus_rival):
    """n_settings copies of one setting with two seeds: ours and t_kl per seed, ours − t_kl on
    both metrics given per seed; the level of both moves with the seed."""
    rows = []
    for setting in range(n_settings):
        for seed, gap in enumerate(ours_minus_rival):
            level = 0.5 + 0.2 * seed
            for method, value in (("t_gamma", level + gap), ("t_kl", level)):
                rows.append({"dataset": f"toy{setting}", "rho": 10, "beta": 0.05, "seed": seed,
                             "method": method, "balanced_accuracy": value,
                             "minority_recall": value})
    return pd.DataFrame(rows)


def test_setting_count_spread_matches_the_binomial_of_resampled_seeds():
    """Ours wins seed 0 by 0.1 and loses seed 1 by 0.05: a resample of the two seeds keeps
    ours ≥ the rival unless it draws seed 1 twice, so each setting says "yes" with
    probability 3/4 and the count over 6 settings is Binomial(6, 3/4), while the observed
    count is 6. Its quartiles are 4 and 5 (``scipy.stats.binom.ppf``; the binomial's CDF
    is 0.17 and 0.47 at 3 and 4, 0.82 at 5: far from 1/4 and 3/4 for 300 draws)."""
    from scipy.stats import binom

    results = _two_seed_settings(6, (0.1, -0.05))
    spread = setting_count_spread(results, n_resamples=300, seed=1, level=0.5, others=(),
                                  rivals=("t_kl",)).set_index("comparison")
    row = spread.loc["ours ≥ rivals (minority)"]
    assert (row["settings"], row["ours at least"]) == (6, 6)
    assert (row["low"], row["high"]) == (binom.ppf(0.25, 6, 0.75), binom.ppf(0.75, 6, 0.75))
    assert (row["low"], row["high"]) == (4, 5)


def test_setting_count_spread_resamples_within_each_setting():
    """Ours is ahead of the rival on every seed of one setting and behind on every seed of
    another, with a classical baseline below both: drawing seeds within each setting never
    changes a count, drawing them across settings would."""
    rows = []
    for dataset, gap in (("ahead", 0.1), ("behind", -0.1)):
        for seed in range(3):
            for method, value in (("t_gamma", 0.6 + gap + 0.05 * seed), ("t_kl", 0.6),
                                  ("lr", 0.3)):
                rows.append({"dataset": dataset, "rho": 10, "beta": 0.05, "seed": seed,
                             "method": method, "balanced_accuracy": value,
                             "minority_recall": value})
    spread = setting_count_spread(pd.DataFrame(rows), n_resamples=30, others=(),
                                  rivals=("t_kl",)).set_index("comparison")
    for comparison, expected in (("ours ≥ rivals (bacc)", 1), ("ours ≥ classical (bacc)", 2)):
        row = spread.loc[comparison]
        assert row["ours at least"] == row["low"] == row["median"] == row["high"] == expected


def test_setting_count_spread_keeps_the_methods_of_a_seed_together():
    """Ours is 0.01 above the rival in every split while both move by 0.2 from seed to seed:
    resampling the seeds of each method apart would lose half the settings, keeping each
    seed's rows together never loses one."""
    results = _two_seed_settings(4, (0.01, 0.01))
    spread = setting_count_spread(results, n_resamples=50, others=(), rivals=("t_kl",))
    row = spread.set_index("comparison").loc["ours ≥ rivals (bacc)"]
    assert row["low"] == row["median"] == row["high"] == 4


@pytest.mark.parametrize("options, match", [
    ({"n_resamples": 0}, "n_resamples"), ({"n_resamples": 2.5}, "n_resamples"),
    ({"level": 1.0}, "level"), ({"level": float("nan")}, "level"), ({"seed": 0.5}, "seed"),
    ({"seed": -1}, "seed"), ({"ours": "t_kl"}, "no setting")])
def test_setting_count_spread_refuses_bad_arguments(options, match):
    with pytest.raises(ValueError, match=match):
        setting_count_spread(_results(), **options)


def test_setting_count_spread_needs_the_seed_column():
    with pytest.raises(ValueError, match="seed"):
        setting_count_spread(_results().drop(columns="seed"))
    with pytest.raises(ValueError, match="1 rows without one"):
        setting_count_spread(_results().astype({"seed": float}).assign(
            seed=lambda r: r["seed"].mask(r.index == 0)))


def test_setting_count_spread_reads_generators_of_methods_on_every_resample():
    results = _two_seed_settings(2, (0.01, 0.01))
    spread = setting_count_spread(results, n_resamples=5, others=(),
                                  rivals=(m for m in ["t_kl"]))
    row = spread.set_index("comparison").loc["ours ≥ rivals (bacc)"]
    assert row["low"] == row["high"] == 2


def test_report_command_resamples_the_seeds(tmp_path, capsys):
    path = tmp_path / "results.csv"
    _two_seed_settings(3, (0.1, -0.05)).to_csv(path, index=False)
    assert main(["report", str(path), "--rivals", "t_kl", "--resample", "40",
                 "--out", str(tmp_path / "r")]) == 0
    counts = pd.read_csv(tmp_path / "r" / "settings.csv").set_index("comparison")
    assert counts.loc["ours ≥ rivals (bacc)", "ours at least"] == 3
    assert {"median", "low", "high"} <= set(counts.columns)
    assert "40 resamples" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--resample"):
        main(["report", str(path), "--resample", "-1"])
