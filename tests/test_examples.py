"""Every example runs in its smoke mode (through its own argument parser, as ``python
examples/NAME.py ...`` would), and the custom model of ``custom_model.py`` is the library's
model when no decoder is changed."""

import functools
import importlib.util
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
from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier, build_model_and_guide
from pyro_mmt.infer import GammaPowerELBO

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
OURS = ["quickstart", "custom_model", "missing_modalities", "compare_methods", "fashion_mnist"]
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
                                 "--modality", "bottom", "--quiet"], monkeypatch)
    out = capsys.readouterr().out
    assert "linear decoder for 'bottom' (σ = 0.5)" in out and "balanced_accuracy" in out


def test_custom_model_without_changes_is_the_library_model():
    """With every decoder a network and σ = 1, CustomModel's γ-loss equals MultimodalTModel's:
    the example's chain and norm declaration are the library's."""
    spec = importlib.util.spec_from_file_location("custom_model", EXAMPLES / "custom_model.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    digits = load_digits()[:24]
    data = Standardiser().fit_transform(digits)
    mask = data.mask.clone()
    mask[::4, 1] = False  # some rows miss the bottom half
    library, guide = build_model_and_guide(data.dims, 10, latent_dim=2, hidden=(8,), alpha=1.0)
    custom = example.CustomModel(data.dims, 10, guide.classifier, latent_dim=2, hidden=(8,),
                                 alpha=1.0)
    for m in data.modalities:
        custom.decoders[m].load_state_dict(library.decoders[m].state_dict())
    elbo = GammaPowerELBO(max_plate_nesting=1)
    for y in (data.y, None):  # a labelled and an unlabelled batch
        losses = []
        for model in (library, custom):
            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            losses.append(elbo.loss(model.model, guide.guide, data.x, mask, y))
        assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert isinstance(example.LinearDecoder(2, 10, 3)(torch.zeros(10, 4, 2),
                                                      torch.arange(10)[:, None]), torch.Tensor)


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
