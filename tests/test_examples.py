"""Every example runs in its smoke mode (through its own argument parser, as ``python
examples/NAME.py ...`` would), and a decoder passed to the model, as ``custom_model.py`` passes
one, replaces the library's and nothing else."""

import copy
import functools
import importlib.util
import math
import re
import runpy
import sys
from pathlib import Path

import pandas as pd
import pyro
import pytest
import torch

import pyro_mmt.estimator
import pyro_mmt.experiments.benchmark
from pyro_mmt.data import Standardiser, load_digits
from pyro_mmt.data.loaders import FMNIST_DIR
from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier, build_model
from pyro_mmt.infer import GammaPowerELBO

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
OURS = ["quickstart", "custom_model", "missing_modalities", "compare_methods", "fashion_mnist",
        "imputation", "mixed_types"]
SMALL = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2"]


def run_example(name, argv, monkeypatch):
    """Run examples/NAME.py as a script with the arguments ``argv``."""
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")


@pytest.fixture
def small_deep_models(monkeypatch):
    """The benchmark's deep methods (and estimators built by the examples) with tiny networks."""
    small = functools.partial(MultimodalSemiSupervisedClassifier, hidden=(8,), latent_dim=2)
    monkeypatch.setattr(pyro_mmt.experiments.benchmark, "MultimodalSemiSupervisedClassifier", small)
    monkeypatch.setattr(pyro_mmt.estimator, "MultimodalSemiSupervisedClassifier", small)


@pytest.mark.parametrize("name", OURS)
def test_each_example_says_what_it_shows_and_how_to_run_it(name):
    text = (EXAMPLES / f"{name}.py").read_text()
    docstring = text.split('"""')[1]
    assert f"python examples/{name}.py" in docstring
    assert re.search(r"^def main\(args\):", text, re.M)
    assert "--seed" in text and 'if __name__ == "__main__":' in text


def test_quickstart(monkeypatch, capsys):
    run_example("quickstart", [*SMALL, "--subset", "150"], monkeypatch)
    out = capsys.readouterr().out
    assert "epoch   1" in out and "balanced_accuracy" in out and "minority_recall" in out


def test_custom_model(monkeypatch, capsys):
    run_example("custom_model", [*SMALL, "--subset", "150", "--dataset", "digits",
                                 "--modality", "bottom", "--sigma", "0.5"], monkeypatch)
    out = capsys.readouterr().out
    assert "linear decoder for 'bottom'" in out and "balanced accuracy" in out


def test_a_decoder_passed_to_the_model_replaces_the_library_one_and_nothing_else():
    """``decoders=`` puts the given network in the model: with a copy of the library's decoder
    the γ-loss is the library model's (the chain, the guide and the norm declaration are
    unchanged), and the example's linear decoder broadcasts over the enumerated label."""
    spec = importlib.util.spec_from_file_location("custom_model", EXAMPLES / "custom_model.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    digits = load_digits()[:24]
    data = Standardiser().fit_transform(digits)
    mask = data.mask.clone()
    mask[::4, 1] = False  # some rows miss the bottom half
    library = build_model(data.dims, 10, latent_dim=2, hidden=(8,), alpha=1.0)
    given = copy.deepcopy(library.decoders["bottom"])
    custom = build_model(data.dims, 10, latent_dim=2, hidden=(8,), alpha=1.0,
                         decoders={"bottom": given})
    custom.load_state_dict(library.state_dict())
    assert custom.decoders["bottom"] is given
    elbo = GammaPowerELBO(max_plate_nesting=1)
    for y in (data.y, None):  # a labelled and an unlabelled batch
        losses = []
        for m2 in (library, custom):
            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            losses.append(elbo.loss(m2.model, m2.guide, data.x, mask, y))
        assert losses[1] == pytest.approx(losses[0], rel=1e-6)

    linear = example.linear_decoder(library.config, "bottom")
    out = linear(torch.zeros(10, 4, 2), torch.arange(10)[:, None])  # z [K, B, d], y [K, 1]
    assert isinstance(out, torch.Tensor) and out.shape == (10, 4, 32)
    with_linear = build_model(data.dims, 10, latent_dim=2, hidden=(8,), alpha=1.0,
                              decoders={"bottom": linear})
    for y in (data.y, None):
        pyro.clear_param_store()
        assert math.isfinite(elbo.loss(with_linear.model, with_linear.guide, data.x, mask, y))


def test_imputation(monkeypatch, capsys, tmp_path):
    """The example imputes the bottom halves (in pixel units: an error of the training mean's
    order, not the standardised units' hundreds) and draws the figure. That the imputation beats
    the mean needs the full 40 epochs (0.062 against 0.079), too long for a smoke test."""
    run_example("imputation", ["--epochs", "3", "--num-samples", "4", "--out", str(tmp_path)],
                monkeypatch)
    out = capsys.readouterr().out
    found = re.search(r"mean squared error ([\d.]+) \(filling in the training mean: ([\d.]+)\)",
                      out)
    assert found, out
    mse, baseline = map(float, found.groups())
    assert 0 < mse < 3 * baseline and 0.01 < baseline < 1
    assert (tmp_path / "imputation.png").stat().st_size > 10_000


def test_mixed_types(monkeypatch, capsys):
    run_example("mixed_types", ["--epochs", "1", "--seeds", "0"], monkeypatch)
    out = capsys.readouterr().out
    for name in ("mixed likelihoods", "every modality Student-t", "logistic regression"):
        assert name in out
    assert "'symptoms': 'bernoulli'" in out and "'edema': 'categorical'" in out


def test_missing_modalities(monkeypatch, capsys, tmp_path):
    run_example("missing_modalities", [*SMALL, "--subset", "150", "--quiet", "--out",
                                       str(tmp_path)], monkeypatch)
    table = pd.read_csv(tmp_path / "metrics_by_modality_subset.csv")
    assert table["modalities"].tolist() == ["top", "bottom", "top + bottom",
                                            "one random modality missing per row"]
    assert table["balanced_accuracy"].between(0, 1).all()
    assert "with one modality missing" in capsys.readouterr().out


def test_compare_methods(monkeypatch, capsys, tmp_path, small_deep_models):
    run_example("compare_methods", ["--datasets", "digits", "--methods", "lr", "t_gamma",
                                    "--gammas", "-0.02", "--seeds", "0", "--rho", "10",
                                    "--beta", "0.2", "--epochs", "1", "--out", str(tmp_path)],
                monkeypatch)
    results = pd.read_csv(tmp_path / "results.csv")
    assert results["method"].tolist() == ["lr", "t_gamma", "t_gamma[-0.02]"]
    assert len(pd.read_csv(tmp_path / "table.csv")) == 3
    assert "t_gamma[-0.02]" in (tmp_path / "table.md").read_text()
    assert "best balanced accuracy per setting" in capsys.readouterr().out
    assert "t_gamma[-0.02]" not in pyro_mmt.experiments.benchmark.METHODS  # registered for the run only


@pytest.mark.skipif(not (FMNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist(monkeypatch, tmp_path, small_deep_models):
    run_example("fashion_mnist", ["--subset", "400", "--rho", "2", "--epochs", "1",
                                  "--methods", "lr", "t_gamma", "--seeds", "0",
                                  "--out", str(tmp_path)], monkeypatch)
    results = pd.read_csv(tmp_path / "results.csv")
    assert results["method"].tolist() == ["lr", "t_gamma"]
    assert (results["rho"] == 2).all() and (tmp_path / "recall_vs_frequency.png").is_file()
    assert "t_gamma" in (tmp_path / "table.md").read_text()


def test_the_custom_model_estimator_pickles(monkeypatch):
    """The example's decoder factory is a functools.partial of a module-level function, so
    the estimator built with it (fitted or not) pickles, as joblib and n_jobs need."""
    import pickle

    spec = importlib.util.spec_from_file_location("custom_model", EXAMPLES / "custom_model.py")
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "custom_model", example)
    spec.loader.exec_module(example)
    digits = load_digits()[:60]
    clf = MultimodalSemiSupervisedClassifier(
        decoders={"bottom": functools.partial(example.linear_decoder, modality="bottom")},
        epochs=1, hidden=(8,), latent_dim=2).fit(digits)
    again = pickle.loads(pickle.dumps(clf))
    torch.testing.assert_close(torch.as_tensor(again.predict_proba(digits)),
                               torch.as_tensor(clf.predict_proba(digits)))
    assert not re.search(r"lambda \w*:", (EXAMPLES / "custom_model.py").read_text())
