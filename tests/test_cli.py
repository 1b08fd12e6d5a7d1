"""The ``pyro-mmt`` command line: every command runs in a smoke setting and
writes its files; ``--help`` works for each. Commands run in-process through ``main(argv)``."""

import functools
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pyro_mmt.experiments.benchmark
from pyro_mmt.cli import main
from pyro_mmt.data import MultimodalDataset, load_digits
from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier

#: a small single model (the ensemble of the defaults is tested with the estimator)
SMALL = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--batch-size", "32", "--quiet",
         "--n-init", "1"]


@pytest.fixture
def small_deep_models(monkeypatch):
    """The benchmark's deep methods with tiny networks (hidden (8,), d = 2), for smoke runs."""
    monkeypatch.setattr(
        pyro_mmt.experiments.benchmark, "MultimodalSemiSupervisedClassifier",
        functools.partial(MultimodalSemiSupervisedClassifier, hidden=(8,), latent_dim=2),
    )


@pytest.fixture
def tiny_npz(tmp_path):
    """80 digits as an .npz (x_top, x_bottom, y with 30 labels and -1 elsewhere; the bottom
    half missing in every fifth row)."""
    digits = load_digits()[:80]
    x, y = digits.to_numpy()
    y[30:] = -1
    x["bottom"][::5] = np.nan
    path = tmp_path / "tiny.npz"
    MultimodalDataset(x, y, num_classes=10).to_npz(path)
    return path


def test_train_evaluate_predict_on_an_npz(tiny_npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_npz), "--out", str(run), *SMALL]) == 0
    for name in ("config.json", "estimator.pt", "history.csv", "train.npz",
                 "training_curves.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["estimator"]["hidden"] == [8] and config["data"] == str(tiny_npz)
    assert len(pd.read_csv(run / "history.csv")) == 1

    # evaluate needs labelled rows: the npz's labelled part
    labelled = MultimodalDataset.from_npz(tiny_npz).labelled()
    labelled.to_npz(tmp_path / "labelled.npz")
    assert main(["evaluate", str(run), str(tmp_path / "labelled.npz"),
                 "--out", str(tmp_path / "metrics.csv")]) == 0
    metrics = pd.read_csv(tmp_path / "metrics.csv", index_col=0)["value"]
    assert 0 <= metrics["balanced_accuracy"] <= 1

    out = tmp_path / "proba.csv"
    assert main(["predict", str(run), str(tiny_npz), "--out", str(out)]) == 0
    proba = pd.read_csv(out, index_col="row")
    assert len(proba) == 80 and list(proba.columns) == ["predicted"] + [f"p_{k}" for k in range(10)]
    np.testing.assert_allclose(proba.filter(like="p_").sum(axis=1), 1.0, rtol=1e-5)
    assert "wrote 80 rows" in capsys.readouterr().out


def test_train_on_a_named_data_set_writes_the_run_folder(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["train", "digits", "--rho", "10", "--beta", "0.2", "--out", str(run),
                 *SMALL]) == 0
    for name in ("config.json", "estimator.pt", "history.csv", "metrics.csv", "train.npz",
                 "test.npz", "training_curves.png", "recall_vs_frequency.png",
                 "confusion_matrix.png"):
        assert (run / name).is_file(), name
    assert "balanced_accuracy" in capsys.readouterr().out
    # config.json records the decision rule the saved estimator predicts with
    from pyro_mmt.estimator import load_estimator

    config = json.loads((run / "config.json").read_text())
    est = load_estimator(run / "estimator.pt")
    assert config["decision_shift"] == est.decision_shift_ == 1.5
    np.testing.assert_allclose(config["reference_shares"], est.reference_shares_, atol=1e-6)
    assert main(["evaluate", str(run)]) == 0  # its own test split by default
    shown = capsys.readouterr().out
    saved = pd.read_csv(run / "metrics.csv", index_col=0)["value"]
    assert f"{saved['balanced_accuracy']:.4f}".rstrip("0") in shown


def test_benchmark_writes_results_and_tables(tmp_path, small_deep_models):
    out = tmp_path / "bench"
    assert main(["benchmark", "--datasets", "digits", "--seeds", "0", "--rho", "10", "--beta",
                 "0.2", "--methods", "lr", "t_gamma", "--epochs", "1", "--jobs", "1",
                 "--out", str(out)]) == 0
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["method"]) == ["lr", "t_gamma"] and len(results) == 2
    table = pd.read_csv(out / "table.csv")
    assert set(table["method"]) == {"lr", "t_gamma"}
    assert "±" in table["balanced_accuracy"].iloc[0]
    markdown = (out / "table.md").read_text()
    assert "t_gamma" in markdown and "balanced_accuracy" in markdown


def test_demo_writes_its_table_and_plots(tmp_path, small_deep_models, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "1", "--dataset", "digits", "--methods", "t_gamma", "lr",
                 "--out", str(out)]) == 0
    table = pd.read_csv(out / "demo_metrics.csv")
    assert table["method"].tolist() == ["t_gamma", "lr"]
    for name in ("recall_vs_frequency.png", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 0
    assert "minority_recall" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "no-such-data"], "expected a data set name"),
    (["train", "absent.npz"], "no file at"),
    (["train", "digits", "--nu", "2"], "nu: expected a number > 2"),
    (["train", "digits", "--nu", "inf", "--learn-nu"], "no nu to learn"),
    (["evaluate", "no-such-run"], "RUN_DIR: no-such-run is not a run folder"),
])
def test_errors_name_the_argument(argv, message):
    with pytest.raises(SystemExit, match=message):
        main(argv)


@pytest.mark.parametrize("command", [None, "train", "evaluate", "predict", "benchmark", "demo"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"] if command is None else [command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: pyro-mmt") and "--help" in text


def test_console_script():
    script = Path(sys.executable).with_name("pyro-mmt")
    argv = [str(script)] if script.is_file() else [sys.executable, "-m", "pyro_mmt.cli"]
    done = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "error"})
    assert done.returncode == 0, done.stderr
    for command in ("train", "evaluate", "predict", "benchmark", "demo"):
        assert command in done.stdout


def test_diagnose_writes_netcdf_summary_and_plots(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["train", "digits", "--rho", "10", "--beta", "0.2", "--out", str(run),
                 "--imbalance", *SMALL]) == 0
    capsys.readouterr()
    out = tmp_path / "diag"
    assert main(["diagnose", str(run), "--num-samples", "30", "--num-predictive", "2",
                 "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "khat" in shown and f"files to {out}" in shown
    assert list(out.glob("*.nc")), "no netCDF written"
    assert len(list(out.glob("*.png"))) >= 3
    from pyro_mmt.evaluation.diagnostics import get_group, load_netcdf, run_attrs

    data = load_netcdf(next(out.glob("*.nc")))
    test = MultimodalDataset.from_npz(run / "test.npz")
    assert get_group(data, "latent")["z"].shape[:3] == (1, 30, len(test))
    # the attributes are the fitted model's settings
    attrs = run_attrs(data)
    default = MultimodalSemiSupervisedClassifier()
    assert attrs["model"] == "MultimodalM2" and attrs["alpha"] == default.alpha
    assert attrs["alpha_unit"] == default.alpha_unit
    assert attrs["class_weight"] == "balanced" and attrs["latent_dim"] == 2
    assert attrs["split"] == "test" and attrs["sigma_top"] == 1.0


def test_train_with_learned_nu_and_class_prior(tiny_npz, tmp_path):
    from pyro_mmt.estimator import load_estimator

    run = tmp_path / "learned"
    assert main(["--threads", "1", "train", str(tiny_npz), "--out", str(run), "--learn-nu",
                 "--class-prior", "learned", *SMALL]) == 0
    options = json.loads((run / "config.json").read_text())["estimator"]
    assert options["learn_nu"] is True and options["class_prior"] == "learned"
    assert options["n_threads"] == 1
    est = load_estimator(run / "estimator.pt")
    assert est.config_.learn_nu and est.config_.class_prior == "learned"
    nu = float(est.model_.nu.detach())
    assert nu > 2 and nu != 5.0  # trained from its start
    np.testing.assert_allclose(est.class_prior_.sum(), 1.0)


def test_train_with_the_fused_optimiser(tiny_npz, tmp_path):
    run = tmp_path / "fused"
    assert main(["train", str(tiny_npz), "--out", str(run), "--optimizer", "fused_adam",
                 *SMALL]) == 0
    assert json.loads((run / "config.json").read_text())["estimator"]["optimizer"] == "fused_adam"
    assert np.isfinite(pd.read_csv(run / "history.csv")["loss"]).all()


def test_distributed_train_under_torchrun(tiny_npz, tmp_path):
    """`torchrun --nproc_per_node=2 -m pyro_mmt.cli train ... --distributed`: two CPU processes
    (gloo) train one model; rank 0 alone writes the run folder."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0",
         "-m", "pyro_mmt.cli", "train", str(tiny_npz), "--out", str(run), "--distributed",
         *SMALL],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "estimator.pt").is_file() and (run / "history.csv").is_file()
    assert result.stdout.count("trained in") == 1


# ------------------------------------------------------------- run folders, interrupts, resume
def _fail_in_training(monkeypatch, epoch, error=KeyboardInterrupt):
    """The estimator's training raises ``error`` (KeyboardInterrupt: as Ctrl-C) at the end of
    ``epoch``, once."""
    import pyro_mmt.estimator
    from pyro_mmt.training.svi import train

    armed = [True]

    def failing(*args, on_epoch_end=None, **kwargs):
        def callback(done):
            if on_epoch_end is not None:
                on_epoch_end(done)
            if armed[0] and done == epoch:
                armed[0] = False
                raise error

        return train(*args, on_epoch_end=callback, **kwargs)

    monkeypatch.setattr(pyro_mmt.estimator, "train", failing)


THREE_EPOCHS = [*SMALL[:1], "3", *SMALL[2:]]


def _proba(run, tiny_npz, tmp_path, name):
    out = tmp_path / f"{name}.csv"
    assert main(["predict", str(run), str(tiny_npz), "--out", str(out)]) == 0
    return pd.read_csv(out, index_col="row")


def test_ctrl_c_leaves_an_unfinished_run_that_resumes_to_the_uninterrupted_one(
        tiny_npz, tmp_path, monkeypatch, capsys):
    from pyro_mmt.cli import partial_dir

    straight = tmp_path / "straight"
    assert main(["train", str(tiny_npz), "--out", str(straight), *THREE_EPOCHS]) == 0

    run = tmp_path / "run"
    _fail_in_training(monkeypatch, epoch=2)
    assert main(["train", str(tiny_npz), "--out", str(run), *THREE_EPOCHS]) == 130
    err = capsys.readouterr().err
    assert "1 complete epoch(s) are saved" in err and "--resume" in err
    assert not run.exists()  # nothing that looks like a run
    partial = partial_dir(run)
    config = json.loads((partial / "config.json").read_text())
    assert config["status"] == "interrupted" and config["epochs_done"] == 1
    assert (partial / "checkpoints" / "checkpoint.pt").is_file()
    for command in (["evaluate", str(run)], ["predict", str(run), str(tiny_npz)],
                    ["diagnose", str(run)]):
        with pytest.raises(SystemExit, match=r"not finished \(status interrupted\).*--resume"):
            main(command)
    for command in (["evaluate", str(partial)], ["diagnose", str(partial)]):
        with pytest.raises(SystemExit, match="does not hold a finished run"):
            main(command)
    with pytest.raises(SystemExit, match="unfinished run .* is in .*--resume.*--overwrite"):
        main(["train", str(tiny_npz), "--out", str(run), *THREE_EPOCHS])
    with pytest.raises(SystemExit, match="--resume: .*other --alpha"):
        main(["train", str(tiny_npz), "--out", str(run), *THREE_EPOCHS, "--alpha", "10",
              "--resume"])

    assert main(["train", str(tiny_npz), "--out", str(run), *THREE_EPOCHS, "--resume"]) == 0
    assert not partial.exists() and not (run / "checkpoints").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["status"] == "finished" and config["epochs_done"] == 3
    assert len(config["resumes"]) == 1
    history = pd.read_csv(run / "history.csv")
    pd.testing.assert_frame_equal(history.drop(columns="seconds"),
                                  pd.read_csv(straight / "history.csv").drop(columns="seconds"))
    pd.testing.assert_frame_equal(_proba(run, tiny_npz, tmp_path, "a"),
                                  _proba(straight, tiny_npz, tmp_path, "b"), atol=1e-6)


def test_a_diverged_run_resumes_with_a_lower_learning_rate(tiny_npz, tmp_path, monkeypatch,
                                                           capsys):
    """The divergence advice works from the command line: --resume --lr <smaller>."""
    from pyro_mmt.cli import partial_dir

    run = tmp_path / "run"
    _fail_in_training(monkeypatch, epoch=2)
    assert main(["train", str(tiny_npz), "--out", str(run), *THREE_EPOCHS]) == 130
    capsys.readouterr()
    assert main(["train", str(tiny_npz), "--out", str(run), *THREE_EPOCHS, "--resume",
                 "--lr", "1e30"]) == 1
    err = capsys.readouterr().err
    assert "training diverged at epoch 2" in err and "--resume --lr 1e+29" in err
    assert json.loads((partial_dir(run) / "config.json").read_text())["status"] == "diverged"
    assert not run.exists()
    assert main(["train", str(tiny_npz), "--out", str(run), *THREE_EPOCHS, "--resume",
                 "--lr", "3e-4"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["status"] == "finished" and config["estimator"]["lr"] == 3e-4
    assert [r["lr"] for r in config["resumes"]] == [1e30, 3e-4]
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [1, 2, 3]


def test_a_run_folder_is_replaced_only_with_overwrite_and_only_when_complete(
        tiny_npz, tmp_path, monkeypatch):
    from pyro_mmt.cli import partial_dir

    run = tmp_path / "run"
    assert main(["train", str(tiny_npz), "--out", str(run), *SMALL]) == 0
    (run / "note.txt").write_text("the old run")
    before = (run / "estimator.pt").read_bytes()
    with pytest.raises(SystemExit, match="--out: .* already holds a finished run.*--overwrite"):
        main(["train", str(tiny_npz), "--out", str(run), *SMALL])
    # a failed new run leaves the old one as it was, and no unfinished run behind
    _fail_in_training(monkeypatch, epoch=1, error=RuntimeError("disk full"))
    with pytest.raises(RuntimeError, match="disk full"):
        main(["train", str(tiny_npz), "--out", str(run), "--seed", "1", "--overwrite", *SMALL])
    assert (run / "estimator.pt").read_bytes() == before and (run / "note.txt").is_file()
    assert not partial_dir(run).exists()
    assert main(["train", str(tiny_npz), "--out", str(run), "--seed", "1", "--overwrite",
                 *SMALL]) == 0
    assert not (run / "note.txt").exists()  # nothing of the old run is left
    assert json.loads((run / "config.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tiny.npz"]


def test_bad_options_write_nothing(tiny_npz, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"error: lr: expected a finite number > 0.*found 0.0"):
        main(["train", str(tiny_npz), "--out", str(run), "--lr", "0", *SMALL])
    with pytest.raises(SystemExit, match="--resume: there is no unfinished run"):
        main(["train", str(tiny_npz), "--out", str(run), "--resume", *SMALL])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.npz"]


def test_a_folder_without_a_finished_status_is_refused(tiny_npz, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(tiny_npz), "--out", str(run), *SMALL]) == 0
    config = json.loads((run / "config.json").read_text())
    del config["status"]  # as written before the status was recorded
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="no status .*expected \"status\": \"finished\""):
        main(["evaluate", str(run), str(tiny_npz)])


def test_predict_on_features_only_and_on_a_subset_of_the_modalities(tiny_npz, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(tiny_npz), "--out", str(run), *SMALL]) == 0
    x, _ = MultimodalDataset.from_npz(tiny_npz).to_numpy()
    np.savez(tmp_path / "features.npz", **{f"x_{m}": v for m, v in x.items()})
    np.savez(tmp_path / "top.npz", x_top=x["top"])
    full = _proba(run, tiny_npz, tmp_path, "full")
    features = _proba(run, tmp_path / "features.npz", tmp_path, "features")
    pd.testing.assert_frame_equal(features, full)
    top = _proba(run, tmp_path / "top.npz", tmp_path, "top")
    assert len(top) == 80 and list(top.columns) == list(full.columns)
    np.savez(tmp_path / "other.npz", x_left=x["top"])
    with pytest.raises(SystemExit, match=r"unknown modalities \['left'\]"):
        main(["predict", str(run), str(tmp_path / "other.npz")])


def test_report_refuses_methods_without_results(tmp_path, capsys):
    results = pd.DataFrame({
        "dataset": "digits", "rho": 10.0, "beta": 0.2, "seed": [0, 0, 0],
        "method": ["t_gamma", "gauss_kl", "lr"], "balanced_accuracy": [0.8, 0.7, 0.6],
        "minority_recall": [0.5, 0.4, 0.3], "num_classes": 10})
    path = tmp_path / "results.csv"
    results.to_csv(path, index=False)
    assert main(["report", str(path)]) == 0
    assert "t_gamma" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"--ours: no results for \['foo'\].*\['gauss_kl', 'lr', "
                                         r"'t_gamma'\]") as info:
        main(["report", str(path), "--ours", "foo"])
    assert info.value.code not in (0, None)
    with pytest.raises(SystemExit, match=r"--others: no results for \['bar'\]"):
        main(["report", str(path), "--others", "gauss_kl", "bar"])


def test_demo_help_lists_the_methods_it_runs(capsys):
    from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier
    from pyro_mmt.experiments.demo import DEMO_METHODS

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {' '.join(DEMO_METHODS)})" in text
    epochs = MultimodalSemiSupervisedClassifier().epochs
    assert f"(default: the estimator's, {epochs!r})" in text


def test_train_help_lists_every_file_of_a_run_folder(capsys):
    from pyro_mmt.cli import RUN_FILES, RUN_PLOTS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in [*RUN_FILES.values(), *RUN_PLOTS]:
        assert name in text, name
    assert "--overwrite" in text and "--resume" in text


@pytest.mark.parametrize("script", sorted(Path(__file__).parents[1].glob("examples/*.py")),
                         ids=lambda p: p.stem)
def test_example_help_descriptions_are_whole_sentences(script, monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(script), run_name="__main__")
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    description = help_text.split("\n\n")[1]  # after the usage
    assert " ".join(description.split()).endswith("."), description


def test_diagnose_with_too_few_draws_says_khat_is_not_estimated(tiny_npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_npz), "--out", str(run), *SMALL]) == 0
    capsys.readouterr()
    assert main(["diagnose", str(run), "--num-samples", "10", "--num-predictive", "2",
                 "--out", str(tmp_path / "diag")]) == 0
    shown = capsys.readouterr().out
    assert "not estimated" in shown and "at least 30 draws" in shown
    summary = pd.read_csv(tmp_path / "diag" / "summary.csv", index_col=0)["value"]
    assert np.isnan(summary["share_khat_above_0.7"]) and summary["num_data_with_khat"] == 0


def test_a_damaged_estimator_file_is_an_error_naming_it(tiny_npz, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(tiny_npz), "--out", str(run), *SMALL]) == 0
    whole = (run / "estimator.pt").read_bytes()
    (run / "estimator.pt").write_bytes(whole[: len(whole) // 3])
    with pytest.raises(SystemExit, match=r"^error: path: .*estimator.pt is not a readable torch"):
        main(["predict", str(run), str(tiny_npz)])


def test_benchmark_jobs_give_the_rows_of_a_serial_run(tmp_path):
    """``--jobs 2`` (two worker processes, one torch thread each) writes the rows of
    ``--jobs 1``, in the same order, apart from the seconds."""
    common = ["benchmark", "--datasets", "breast", "--seeds", "0", "1", "--rho", "10",
              "--beta", "0.2", "--methods", "t_gamma", "lr", "--epochs", "2"]
    tables = []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        assert main([*common, "--jobs", jobs, "--out", str(out)]) == 0
        tables.append(pd.read_csv(out / "results.csv"))
    serial, parallel = (t.drop(columns="seconds") for t in tables)
    assert len(serial) == 4
    pd.testing.assert_frame_equal(serial, parallel)


def test_defaults_of_the_command_line():
    """The fused optimiser by default (issue 14); --jobs from the cores available."""
    from pyro_mmt.cli import _available_cores, _estimator_options, build_parser
    from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier

    args = build_parser().parse_args(["train", "digits"])
    assert args.optimizer is None  # None: the estimator's own default
    given = _estimator_options(args)
    assert "optimizer" not in given and "alpha" not in given
    built = MultimodalSemiSupervisedClassifier(**given).get_params()
    default = MultimodalSemiSupervisedClassifier().get_params()
    differing = {k for k in default if built[k] != default[k]}
    assert differing <= {"seed", "progress", "n_threads", "distributed"}, differing
    assert built["optimizer"] == "fused_adam"
    args = build_parser().parse_args(["benchmark"])
    assert args.jobs == _available_cores() >= 1
    with pytest.raises(SystemExit, match="--jobs"):
        main(["benchmark", "--jobs", "0", "--datasets", "breast"])


def test_tune_writes_scores_summary_and_the_winner(tmp_path):
    """`pyro-mmt tune`: every grid point on every fold, the winner is the best mean, and the
    printed train command parses back to the winner's options."""
    from pyro_mmt.cli import _estimator_options, build_parser

    out = tmp_path / "tune"
    argv = ["tune", "digits", "--grid", "alpha=100,1000", "--grid", "latent-dim=4,8",
            "--epochs", "1", "--folds", "2", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    scores = pd.read_csv(out / "scores.csv")
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    best = json.loads((out / "best.json").read_text())
    assert len(scores) == 4 * 2 and scores["candidate"].nunique() == 4
    means = scores.groupby("candidate")["balanced_accuracy"].mean()
    assert summary.index[0] == means.idxmax() or means.max() == means[summary.index[0]]
    assert best["status"] == "finished" and set(best["best"]) == {"alpha", "latent_dim"}
    assert best["fixed"] == {"epochs": 1}
    train_args = build_parser().parse_args(shlex.split(best["train_command"])[1:])
    options = _estimator_options(train_args)
    assert options["alpha"] == best["best"]["alpha"]
    assert options["latent_dim"] == best["best"]["latent_dim"] and options["epochs"] == 1
    # the results are not replaced without --overwrite, nor left half-written
    with pytest.raises(SystemExit, match="--overwrite"):
        main(argv)
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


@pytest.mark.parametrize("grid, match", [
    (["alpha=1,x"], "alpha: cannot read 'x'"),
    (["alpha"], "NAME=V1,V2"),
    (["beta=1,2"], "expected one of the estimator's options"),
    (["alpha=1", "alpha=2"], "given twice"),
    (["alpha=-1,10"], "alpha"),
])
def test_tune_refuses_bad_grids(tmp_path, grid, match):
    argv = ["tune", "digits", "--epochs", "1", "--out", str(tmp_path / "t")]
    for g in grid:
        argv += ["--grid", g]
    with pytest.raises((SystemExit, ValueError), match=match):
        main(argv)
    assert not (tmp_path / "t").exists()


def test_tune_refuses_an_option_also_in_the_grid(tmp_path):
    with pytest.raises(SystemExit, match="also given as an option"):
        main(["tune", "digits", "--grid", "alpha=1,10", "--alpha", "5", "--out",
              str(tmp_path / "t")])


def test_report_counts_paired_wins_and_writes_them(tmp_path, capsys):
    """Two seeds: t_gamma beats lr on both and ties gauss_kl on one; the counts say so."""
    results = pd.DataFrame({
        "dataset": "digits", "rho": 10.0, "beta": 0.2, "seed": [0, 0, 0, 1, 1, 1],
        "method": ["t_gamma", "gauss_kl", "lr"] * 2,
        "balanced_accuracy": [0.8, 0.7, 0.6, 0.9, 0.9, 0.5],
        "minority_recall": [0.5, 0.6, 0.3, 0.7, 0.8, 0.2], "num_classes": 10})
    path = tmp_path / "results.csv"
    results.to_csv(path, index=False)
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    assert "paired split by split" in capsys.readouterr().out
    wins = pd.read_csv(tmp_path / "rep" / "wins.csv").set_index("method")
    assert wins.loc["lr", ["balanced_accuracy wins", "balanced_accuracy losses"]].tolist() == [2, 0]
    assert wins.loc["gauss_kl", ["balanced_accuracy wins", "balanced_accuracy ties"]].tolist() \
        == [1, 1]
    assert wins.loc["gauss_kl", "minority_recall losses"] == 2
    assert (tmp_path / "rep" / "headline.md").read_text().count("digits") == 1


def test_benchmark_with_a_class_balanced_unlabelled_mix(tmp_path, small_deep_models):
    out = tmp_path / "bench"
    assert main(["benchmark", "--datasets", "digits", "--seeds", "0", "--rho", "10", "--beta",
                 "0.2", "--methods", "lr", "--unlabelled", "uniform", "--jobs", "1",
                 "--out", str(out)]) == 0
    results = pd.read_csv(out / "results.csv")
    assert results["unlabelled"].tolist() == ["uniform"]
