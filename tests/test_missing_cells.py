"""Missing cells inside a modality: the model scores the observed cells only, so a datum with
cells missing has the loss of the same datum in a model without those features (for
GammaPowerELBO and TraceEnum_ELBO; docs/derivation.md §11); the data set, the guide, the
estimator and imputation through Predictive handle any pattern."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Predictive, TraceEnum_ELBO
from torch import nn

from pyro_mmt.config import ModelConfig
from pyro_mmt.data import MultimodalDataset
from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier
from pyro_mmt.infer import GammaPowerELBO
from pyro_mmt.models import MultimodalM2

K, D, B = 3, 2, 5
KEEP = [0, 2, 3]  # the observed columns of modality "a" (1 and 4 are missing)


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)


class Sliced(nn.Module):
    """A decoder whose outputs are another decoder's at some columns."""

    def __init__(self, net, columns):
        super().__init__()
        self.net, self.columns = net, list(columns)

    def forward(self, z, y):
        return self.net(z, y)[..., self.columns]


class Scattered(nn.Module):
    """An encoder of the kept columns that is another's of the full row, missing cells 0."""

    def __init__(self, net, columns, width):
        super().__init__()
        self.net, self.columns, self.width = net, list(columns), width

    def forward(self, x, y):
        full = x.new_zeros(x.shape[:-1] + (self.width,))
        full[..., self.columns] = x
        return self.net(full, y)


class ScatteredClassifier(nn.Module):
    def __init__(self, net, name, columns, width):
        super().__init__()
        self.net, self.name, self.columns, self.width = net, name, list(columns), width

    def forward(self, inputs, present):
        x = dict(inputs)
        full = x[self.name].new_zeros(x[self.name].shape[:-1] + (self.width,))
        full[..., self.columns] = x[self.name]
        x[self.name] = full
        return self.net(x, present)


def _pair(family_b="student_t", n_a=5, n_b=3):
    """Model ``full`` (modality a with n_a columns, some missing) and model ``kept`` (a with
    only the KEEP columns), with the same networks for the kept columns."""
    likelihood = {"a": "student_t", "b": family_b}
    settings = dict(num_classes=K, latent_dim=D, hidden=(8,), nu=5.0, likelihood=likelihood,
                    sigma={"a": 0.8, "b": 1.2}, label_counts=(3, 2, 1), missing_cells="zero")
    full = MultimodalM2(ModelConfig(dims={"a": n_a, "b": n_b}, **settings))
    kept = MultimodalM2(
        ModelConfig(dims={"a": len(KEEP), "b": n_b}, **settings),
        decoders={"a": Sliced(full.decoders["a"], KEEP), "b": full.decoders["b"]},
        encoders={"a": Scattered(full.encoders["a"].net, KEEP, n_a),
                  "b": full.encoders["b"].net},
        classifier=ScatteredClassifier(full.classifier, "a", KEEP, n_a),
    )
    return full, kept


def _batch(family_b, n_a=5, n_b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"a": torch.randn(B, n_a, generator=g),
         "b": (torch.randn(B, n_b, generator=g) if family_b == "student_t"
               else torch.randint(0, 2, (B, n_b), generator=g).to(torch.get_default_dtype()))}
    cells = torch.zeros(B, n_a, dtype=torch.bool)
    cells[:, KEEP] = True
    x["a"][~cells] = 0.0
    mask = torch.ones(B, 2, dtype=torch.bool)
    mask[0, 1] = False  # a missing modality too
    x["b"][0] = 0.0
    y = torch.tensor([0, 1, 2, 1, 0])
    return x, mask, y, cells


def _loss(objective, m2, *args, **kwargs):
    pyro.clear_param_store()
    pyro.set_rng_seed(7)
    return objective.differentiable_loss(m2.model, m2.guide, *args, **kwargs).item()


# (the mixed model is compared on unlabelled data: its Monte Carlo norm draws z after the
# model, whose labelled runs also draw the missing cells, so the random streams differ)
_OBJECTIVES = {
    "gamma_power": lambda: GammaPowerELBO(max_plate_nesting=1),
    # the estimator's default: the label under the KL, with vectorised particles
    "gamma_power_label_kl": lambda: GammaPowerELBO(max_plate_nesting=1, label_divergence="kl",
                                                   num_particles=3, vectorize_particles=True),
    "kl": lambda: TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False),
}


@pytest.mark.parametrize("objective", sorted(_OBJECTIVES))
@pytest.mark.parametrize("family_b, labelled", [("student_t", True), ("student_t", False),
                                                ("bernoulli", False)])
def test_missing_cells_give_the_loss_of_a_model_without_them(float64, objective, labelled,
                                                             family_b):
    full, kept = _pair(family_b)
    x, mask, y, cells = _batch(family_b)
    y = y if labelled else None
    make = _OBJECTIVES[objective]
    ours = _loss(make(), full, x, mask, y, cells={"a": cells})
    theirs = _loss(make(), kept, {"a": x["a"][:, KEEP], "b": x["b"]}, mask, y)
    assert math.isfinite(ours)
    assert ours == pytest.approx(theirs, rel=1e-10, abs=1e-10)
    # and the cells matter: the same data scored as complete give another loss
    assert _loss(make(), full, x, mask, y) != pytest.approx(theirs, rel=1e-6)


def test_missing_cells_in_the_bernoulli_modality(float64):
    """A column of the other family missing is the model without that column."""
    likelihood = {"a": "student_t", "b": "bernoulli"}
    settings = dict(num_classes=K, latent_dim=D, hidden=(8,), likelihood=likelihood,
                    label_counts=(3, 2, 1), missing_cells="zero")
    full = MultimodalM2(ModelConfig(dims={"a": 2, "b": 5}, **settings))
    kept = MultimodalM2(
        ModelConfig(dims={"a": 2, "b": len(KEEP)}, **settings),
        decoders={"a": full.decoders["a"], "b": Sliced(full.decoders["b"], KEEP)},
        encoders={"a": full.encoders["a"].net, "b": Scattered(full.encoders["b"].net, KEEP, 5)},
        classifier=ScatteredClassifier(full.classifier, "b", KEEP, 5),
    )
    g = torch.Generator().manual_seed(3)
    x = {"a": torch.randn(B, 2, generator=g),
         "b": torch.randint(0, 2, (B, 5), generator=g).to(torch.float64)}
    cells = torch.zeros(B, 5, dtype=torch.bool)
    cells[:, KEEP] = True
    x["b"][~cells] = 0.0
    mask = torch.ones(B, 2, dtype=torch.bool)
    for make in (lambda: GammaPowerELBO(max_plate_nesting=1),
                 lambda: TraceEnum_ELBO(max_plate_nesting=1)):
        ours = _loss(make(), full, x, mask, None, cells={"b": cells})
        theirs = _loss(make(), kept, {"a": x["a"], "b": x["b"][:, KEEP]}, mask, None)
        assert ours == pytest.approx(theirs, rel=1e-10, abs=1e-10)


def test_cells_are_checked(float64):
    full, _ = _pair()
    x, mask, y, cells = _batch("student_t")
    with pytest.raises(ValueError, match=r"cells\['a'\]: expected a bool tensor of shape "
                                         r"\(5, 5\), found torch.float64 \(5, 5\)"):
        full.model(x, mask, y, cells={"a": cells.double()})
    with pytest.raises(ValueError, match=r"cells: modalities \['c'\] are not given in x"):
        full.model(x, mask, y, cells={"c": cells})


def test_predictive_draws_the_missing_cells(float64):
    full, _ = _pair()
    x, mask, y, cells = _batch("student_t")
    draws = Predictive(full.model, guide=full.guide, num_samples=4,
                       return_sites=["x_a_missing"])(x, mask, None, cells={"a": cells})
    assert draws["x_a_missing"].shape == (4, B, 5)
    assert torch.isfinite(draws["x_a_missing"]).all()


def test_indicator_inputs(float64):
    """With missing_cells="indicator" the networks see the cell mask next to the values; a
    missing cell and an observed 0 then give different q(y | x)."""
    m2 = MultimodalM2(ModelConfig(dims={"a": 4}, num_classes=K, latent_dim=D, hidden=(8,),
                                  missing_cells="indicator", decision_shift=0.0))
    x = {"a": torch.zeros(2, 4)}
    cells = torch.tensor([[True] * 4, [True, False, True, True]])
    inputs = m2.network_inputs(x, {"a": cells})
    assert inputs["a"].shape == (2, 8)
    assert inputs["a"][:, 4:].tolist() == cells.double().tolist()
    p = m2.predict_proba(x, cells={"a": cells})
    assert not torch.allclose(p[0], p[1])


def test_data_set_keeps_the_cells():
    a = np.arange(12, dtype=float).reshape(4, 3)
    a[0, 1] = np.nan  # a missing cell
    a[2] = np.nan  # a missing modality
    b = np.ones((4, 2))
    ds = MultimodalDataset({"a": a, "b": b}, [0, 1, -1, 0])
    assert ds.mask[:, 0].tolist() == [True, True, False, True]
    assert list(ds.cells) == ["a"]
    assert ds.cells["a"][0].tolist() == [True, False, True]
    assert ds.x["a"][0, 1] == 0.0
    batch = ds.batch([0, 1])
    assert batch.cells["a"].tolist() == [[True, False, True], [True, True, True]]
    x, _ = ds[[0, 2]].to_numpy()
    assert np.isnan(x["a"][0, 1]) and np.isnan(x["a"][1]).all() and x["a"][0, 0] == 0.0
    complete = MultimodalDataset({"b": b}, [0, 1, -1, 0])
    assert complete.cells == {} and complete.batch([0, 1]).cells == {}


def _with_missing_cells(fraction=0.3, seed=0, n=90):
    """Three classes in two modalities (one Bernoulli); ``fraction`` of the cells missing at
    random (never a whole row)."""
    rng = np.random.default_rng(seed)
    y_true = np.repeat(np.arange(3), n // 3)
    centres = 3.0 * rng.normal(size=(3, 5))
    a = centres[y_true] + rng.normal(size=(n, 5))
    b = (rng.random((n, 3)) < 0.2 + 0.3 * y_true[:, None]).astype(float)
    complete = {"a": a.copy(), "b": b.copy()}
    for x in (a, b):
        hidden = rng.random(x.shape) < fraction
        hidden[hidden.all(axis=1), 0] = False
        x[hidden] = np.nan
    y = np.full(n, -1)
    for k in range(3):
        y[np.flatnonzero(y_true == k)[:8]] = k
    return {"a": a, "b": b}, y, y_true, complete


@pytest.mark.parametrize("objective", ["gamma_power", "kl"])
def test_the_estimator_fits_predicts_and_imputes_with_30_percent_of_cells_missing(objective):
    X, y, y_true, complete = _with_missing_cells(0.3)
    est = MultimodalSemiSupervisedClassifier(
        hidden=(8,), latent_dim=2, epochs=2, batch_size=32, objective=objective,
        likelihood={"a": "student_t", "b": "bernoulli"}).fit(X, y)
    assert est.config_.missing_cells == "indicator"  # "auto" with missing cells
    proba = est.predict_proba(X)
    assert proba.shape == (90, 3) and np.allclose(proba.sum(1), 1)
    assert set(est.predict(X)) <= {0, 1, 2}
    filled, draws = est.impute(X, num_samples=8, return_draws=True)
    for m, x in X.items():
        hidden = np.isnan(x)
        assert np.isfinite(filled[m]).all()
        assert np.array_equal(filled[m][~hidden], x[~hidden])  # observed cells unchanged
        assert draws[m].shape == (8,) + x.shape and np.isfinite(draws[m]).all()
        assert (draws[m][:, ~hidden] == x[~hidden]).all()
    assert set(np.unique(draws["b"])) <= {0.0, 1.0}
    assert ((filled["b"] >= 0) & (filled["b"] <= 1)).all()
    # the same draws for the same seed
    again = est.impute(X, num_samples=8)
    assert all(np.array_equal(again[m], filled[m]) for m in X)
    # a modality missing as a whole is filled from the others
    X_less = {"a": X["a"][:4]}
    filled = est.impute(X_less)
    assert np.isfinite(filled["b"]).all() and np.isfinite(filled["a"]).all()
    assert np.array_equal(filled["a"][~np.isnan(X_less["a"])], X_less["a"][~np.isnan(X_less["a"])])


def test_impute_checks_its_arguments():
    X, y, _, _ = _with_missing_cells(0.3, n=30)
    est = MultimodalSemiSupervisedClassifier(hidden=(8,), latent_dim=2, epochs=1).fit(X, y)
    with pytest.raises(ValueError, match=r"num_samples"):
        est.impute(X, num_samples=0)


def test_complete_data_keep_the_networks_of_complete_data():
    """Without a missing cell, "auto" adds no indicator: the networks (and the fitted numbers)
    are those of complete data."""
    X, y, _, complete = _with_missing_cells(0.0)
    est = MultimodalSemiSupervisedClassifier(hidden=(8,), latent_dim=2, epochs=1).fit(complete, y)
    assert est.config_.missing_cells == "auto" and not est.config_.cell_indicators
    assert est.model_.encoders["a"].net.input.in_features == 5
    # its predictions on rows with missing cells: the cells enter at the training mean
    X_test, _, _, _ = _with_missing_cells(0.3, seed=1)
    proba = est.predict_proba(X_test)
    assert np.isfinite(proba).all() and np.allclose(proba.sum(1), 1)
    assert np.isfinite(est.impute(X_test)["a"]).all()
    X, y, _, _ = _with_missing_cells(0.3)
    est = MultimodalSemiSupervisedClassifier(hidden=(8,), latent_dim=2, epochs=1).fit(X, y)
    assert est.model_.encoders["a"].net.input.in_features == 10  # values and cell mask


def test_diagnostics_refuse_missing_cells():
    X, y, _, _ = _with_missing_cells(0.3, n=30)
    est = MultimodalSemiSupervisedClassifier(hidden=(8,), latent_dim=2, epochs=1).fit(X, y)
    with pytest.raises(ValueError, match=r"dataset: the diagnostics take rows without missing "
                                         r"cells; found missing cells in modalities \['a', 'b'\]"):
        est.to_inference_data(X, num_samples=2)


def test_a_family_without_a_power_integral_trains_with_the_kl_objective_only(float64):
    from pyro_mmt.likelihoods import LIKELIHOODS, Likelihood, register_likelihood

    class Laplacian(Likelihood):  # independent columns, no closed-form power integral
        name = "laplacian_for_missing_cells"
        continuous = True

        def distribution(self, out):
            return pyro.distributions.Laplace(out, 1.0).to_event(1)

    register_likelihood(Laplacian)
    try:
        m2 = MultimodalM2(ModelConfig(dims={"a": 2, "b": 3}, num_classes=K, latent_dim=D,
                                      hidden=(8,), likelihood={"b": Laplacian.name}))
    finally:
        LIKELIHOODS.pop(Laplacian.name)
    x = {"a": torch.randn(4, 2), "b": torch.randn(4, 3)}
    mask = torch.ones(4, 2, dtype=torch.bool)
    cells = {"b": torch.tensor([[True, False, True]] * 4)}
    kl = TraceEnum_ELBO(max_plate_nesting=1).loss(m2.model, m2.guide, x, mask, None, cells=cells)
    assert math.isfinite(kl)
    with pytest.raises(ValueError, match=r"cells: missing cells under the gamma_power "
                                         r"objective need every family"):
        GammaPowerELBO(max_plate_nesting=1).loss(m2.model, m2.guide, x, mask, None, cells=cells)
