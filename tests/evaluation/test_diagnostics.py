"""Tests of pyro_mmt.evaluation.diagnostics and pyro_mmt.evaluation.diagnostic_plots.

The importance-sampling checks use a conjugate toy whose posterior and evidence are known:

    y ~ Categorical(π),  z | y ~ N(μ_y, I_2),  x_m | z ~ N(A_m z, s_m² I)  (m = a, b),

so p(y | x), p(z | x, y) = N(m_y(x), C(x)) and p(x) = Σ_y π_y N(x; A μ_y, A Aᵀ + S) are exact.
With q(z | x, y) = N(m_y, c² C) and the exact q(y | x), the weights are
w ∝ exp((1 − c²)/2 · χ²_d), whose tail is Pareto with shape k = 1 − c² (c < 1); for c > 1/√2
the weights have finite variance and ESS/S → 1/E_q[w²] = ((c²/√(2c² − 1)) ... see
``_ess_fraction``). Run in float64.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib.figure import Figure
from scipy.stats import multivariate_normal

from pyro_mmt.data import MultimodalDataset
from pyro_mmt.distributions import DiagStudentT
from pyro_mmt.estimator import build_model
from pyro_mmt.evaluation import diagnostic_plots as plots
from pyro_mmt.evaluation import diagnostics as D
from pyro_mmt.evaluation.diagnose import diagnose
from pyro_mmt.evaluation.metrics import expected_calibration_error

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "diagnostics.py"


# ----------------------------------------------------------------------------------------------
# the conjugate toy
# ----------------------------------------------------------------------------------------------


class ConjugateToy:
    """y ~ Cat(π), z | y ~ N(μ_y, I_2), x_m | z ~ N(A_m z, s_m² I); any subset of modalities."""

    DIMS = {"a": 2, "b": 3}

    def __init__(self, modalities=("a", "b")):
        g = torch.Generator().manual_seed(1)
        self.modalities = tuple(modalities)
        self.pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
        self.mu = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
        self.A = {m: torch.randn(n, 2, generator=g, dtype=torch.float64)
                  for m, n in self.DIMS.items()}
        self.s = {"a": 0.8, "b": 1.2}

    def model(self, x, mask, y=None):
        with pyro.plate("data", mask.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.pi), obs=y)
            z = pyro.sample("z", dist.Normal(self.mu[y], 1.0).to_event(1))
            for j, m in enumerate(self.modalities):
                fn = dist.Normal(z @ self.A[m].T, self.s[m]).to_event(1)
                pyro.sample(f"x_{m}", fn.mask(mask[:, j]), obs=x[m])

    def posterior_z(self, x, mask, y):
        """p(z | x, y) = N(loc, cov): loc [..., B, 2], cov [B, 2, 2]."""
        prec = torch.eye(2, dtype=torch.float64).expand(mask.shape[0], 2, 2)
        b = torch.zeros(mask.shape[0], 2, dtype=torch.float64)
        for j, m in enumerate(self.modalities):
            w = mask[:, j].double()
            prec = prec + w[:, None, None] * (self.A[m].T @ self.A[m]) / self.s[m] ** 2
            b = b + w[:, None] * (x[m] @ self.A[m]) / self.s[m] ** 2
        cov = torch.linalg.inv(prec)
        return (cov @ (self.mu[y] + b).unsqueeze(-1)).squeeze(-1), cov

    def log_posterior_y(self, x, mask):
        """log p(y | x) [B, K], from log p(x | y) = log p(x | z) p(z | y) / p(z | x, y) at z = loc."""
        ys = torch.arange(3).unsqueeze(-1).expand(3, mask.shape[0])
        loc, cov = self.posterior_z(x, mask, ys)
        lp = self.pi.log()[:, None] + dist.Normal(self.mu[ys], 1.0).to_event(1).log_prob(loc)
        for j, m in enumerate(self.modalities):
            lx = dist.Normal(loc @ self.A[m].T, self.s[m]).to_event(1).log_prob(x[m])
            lp = lp + torch.where(mask[:, j], lx, torch.zeros_like(lx))
        lp = lp - dist.MultivariateNormal(loc, cov, validate_args=False).log_prob(loc)
        return (lp - lp.logsumexp(0)).T

    def log_evidence(self, dataset, condition_on_labels=True):
        """Exact log p(x) (log p(x, y) for labelled rows when conditioning), via scipy."""
        xs, ys = dataset.to_numpy()
        out = []
        for i in range(len(dataset)):
            obs = [m for j, m in enumerate(self.modalities) if dataset.mask[i, j]]
            A = np.concatenate([self.A[m].numpy() for m in obs])
            S = np.diag(np.concatenate([np.full(self.DIMS[m], self.s[m] ** 2) for m in obs]))
            xo = np.concatenate([xs[m][i] for m in obs])
            comps = [math.log(self.pi[k]) + multivariate_normal(A @ self.mu[k].numpy(),
                                                                A @ A.T + S).logpdf(xo)
                     for k in range(3)]
            labelled = condition_on_labels and ys[i] >= 0
            out.append(comps[ys[i]] if labelled else np.logaddexp.reduce(comps))
        return np.array(out)


class ToyGuide:
    """q(y | x) = softmax(log p(y | x) / T), q(z | x, y) = N(m_y, c² C): exact for c = T = 1."""

    def __init__(self, toy, scale=1.0, temperature=1.0):
        self.toy, self.scale, self.temperature = toy, scale, temperature

    def logits(self, x, mask):
        return self.toy.log_posterior_y(x, mask) / self.temperature

    def guide(self, x, mask, y=None):
        with pyro.plate("data", mask.shape[0]):
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.logits(x, mask)),
                                infer={"enumerate": "parallel"})
            loc, cov = self.toy.posterior_z(x, mask, y)
            tril = self.scale * torch.linalg.cholesky(cov)
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=tril, validate_args=False))

    def predict_proba(self, x, mask):
        return torch.softmax(self.logits(x, mask), -1)


def toy_data(toy, n, *, seed=0, missing=True, labelled_every=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(toy.pi, n, replacement=True, generator=g)
    z = toy.mu[y] + torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = {m: (z @ toy.A[m].T + toy.s[m] * torch.randn(n, toy.DIMS[m], generator=g,
                                                      dtype=torch.float64)).numpy()
         for m in toy.modalities}
    if missing and len(toy.modalities) > 1:
        x["a"][1::5] = np.nan
        x["b"][3::5] = np.nan
    labels = y.numpy().copy()
    labels[np.arange(n) % labelled_every != 0] = -1
    return MultimodalDataset(x, labels, num_classes=3, class_names=["u", "v", "w"]).to(
        torch.float64
    )


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)  # conftest restores the default


def _ess_fraction(c2, d=2):
    """lim ESS/S = 1 / E_q[w̃²], E_q[w̃²] = ∫ N(0,1)²/N(0,c²) per whitened coordinate."""
    per_dim = c2 / math.sqrt(2 * c2 - 1)
    return 1 / per_dim**d


# ----------------------------------------------------------------------------------------------
# InferenceData: groups, dims, shapes, values
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "modalities, missing",
    [(("a", "b"), False), (("a", "b"), True), (("b",), False)],
    ids=["both", "both-missing", "b-only"],
)
def test_inference_data_groups_dims_shapes(float64, modalities, missing):
    toy = ConjugateToy(modalities)
    data = toy_data(toy, 10, missing=missing)
    S, P, N = 7, 3, len(data)
    idata = D.to_inference_data(toy, ToyGuide(toy, scale=1.3), data, num_samples=S,
                                num_predictive=P, seed=3, batch_size=4, attrs={"run": "t"})
    assert set(D.group_names(idata)) == {
        "posterior", "latent", "posterior_predictive", "sample_stats", "observed_data",
        "constant_data",
    }
    mask = data.mask.numpy()
    post = D.get_group(idata, "latent")
    assert post["z"].dims == ("chain", "draw", "datum", "latent")
    assert post["z"].shape == (1, S, N, 2)
    assert post["y"].dims == ("chain", "draw", "datum") and post["y"].shape == (1, S, N)
    assert post["class_prob"].dims == ("chain", "draw", "datum", "class")
    assert list(post["class"].values) == ["u", "v", "w"]
    np.testing.assert_allclose(post["class_prob"].sum("class"), 1.0)
    labels = data.y.numpy()
    labelled = labels >= 0
    np.testing.assert_array_equal(post["y"].values[0][:, labelled],
                                  np.broadcast_to(labels[labelled], (S, labelled.sum())))
    assert set(np.unique(post["y"].values)) <= {0, 1, 2}

    # posterior: the global quantities, the class shares of the data whose label was drawn
    share = D.get_group(idata, "posterior")["class_share"]
    assert list(D.get_group(idata, "posterior").data_vars) == ["class_share"]
    assert share.dims == ("chain", "draw", "class") and share.shape == (1, S, 3)
    drawn = post["y"].values[0][:, ~labelled]
    np.testing.assert_allclose(share.values[0],
                               np.stack([(drawn == k).mean(1) for k in range(3)], axis=1))

    pp = D.get_group(idata, "posterior_predictive")
    obs = D.get_group(idata, "observed_data")
    stats = D.get_group(idata, "sample_stats")
    ll = {m: stats[f"log_lik_{m}"] for m in modalities}
    ll["x"] = stats["log_lik"]
    for j, m in enumerate(modalities):
        n_m = toy.DIMS[m]
        assert pp[f"x_{m}"].dims == ("chain", "draw", "datum", f"{m}_feature")
        assert pp[f"x_{m}"].shape == (1, P, N, n_m)
        assert np.isfinite(pp[f"x_{m}"]).all()  # missing modalities are imputed
        assert ll[m].dims == ("chain", "draw", "datum")
        assert ll[m].shape == (1, S, N)
        np.testing.assert_array_equal(np.isnan(ll[m].values[0]),
                                      np.broadcast_to(~mask[:, j], (S, N)))
        assert obs[f"x_{m}"].dims == ("datum", f"{m}_feature")
        np.testing.assert_array_equal(np.isnan(obs[f"x_{m}"].values).all(1), ~mask[:, j])
        np.testing.assert_allclose(obs[f"x_{m}"].values[mask[:, j]],
                                   data.x[m].numpy()[mask[:, j]])
    # the toy's modalities are independent given z: the joint is the sum of the marginals
    marginals = sum(np.nan_to_num(ll[m].values) for m in modalities)
    np.testing.assert_allclose(ll["x"].values, marginals, rtol=1e-12)

    for name in ("log_joint", "log_q", "log_weight"):
        assert stats[name].dims == ("chain", "draw", "datum") and stats[name].shape == (1, S, N)
    np.testing.assert_allclose(stats["log_weight"], stats["log_joint"] - stats["log_q"])
    assert np.isfinite(stats["log_weight"]).all()

    const = D.get_group(idata, "constant_data")
    np.testing.assert_array_equal(const["label"], labels)
    np.testing.assert_array_equal(const["labelled"], labelled)
    np.testing.assert_array_equal(const["modality_mask"], mask)
    assert const["modality_mask"].dims == ("datum", "modality")
    assert list(const["modality"].values) == list(modalities)
    assert post.attrs["num_samples"] == S and post.attrs["seed"] == 3
    assert post.attrs["condition_on_labels"] == 1 and post.attrs["run"] == "t"
    assert D.run_attrs(idata)["model"] == "ConjugateToy"


def test_draws_are_seeded_and_leave_the_rng_alone(float64):
    toy = ConjugateToy()
    data = toy_data(toy, 6)
    state = torch.get_rng_state()
    a = D.to_inference_data(toy, ToyGuide(toy), data, num_samples=5, seed=11)
    b = D.to_inference_data(toy, ToyGuide(toy), data, num_samples=5, seed=11)
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(D.get_group(a, "latent")["z"],
                                  D.get_group(b, "latent")["z"])


@pytest.mark.parametrize("nu", [5.0, math.inf], ids=["student-t", "gaussian"])
def test_pyro_mmt_model_with_missing_modalities(nu):
    """The package's model and guide: shapes, finite weights, labels hidden on request, and the
    per-modality likelihood is the marginal t_{n_m}(μ_m, s(z)² σ_m² I, ν + d)."""
    rng = np.random.default_rng(0)
    n = 9
    x = {"a": rng.normal(size=(n, 4)), "b": rng.normal(size=(n, 3)), "c": rng.normal(size=(n, 2))}
    x["a"][[1, 4]] = np.nan
    x["b"][[2]] = np.nan
    x["c"][[0, 5]] = np.nan
    y = np.array([0, 1, 2, -1, -1, 0, -1, 1, -1])
    data = MultimodalDataset(x, y, num_classes=3)
    m2 = build_model(data.dims, 3, latent_dim=2, hidden=(16,), nu=nu,
                     sigma={"a": 0.8, "b": 1.0, "c": 1.3}, label_counts=[2, 2, 2],
                     decision_shift=0.0)  # untrained: no decision rule to learn
    idata = D.to_inference_data(m2, dataset=data, num_samples=6, condition_on_labels=False)
    post = D.get_group(idata, "latent")
    assert post["z"].shape == (1, 6, n, 2)
    assert not D.get_group(idata, "constant_data")["labelled"].values.any()
    assert np.isfinite(D.get_group(idata, "sample_stats")["log_weight"]).all()
    assert post.attrs["nu"] == nu and post.attrs["sigma_c"] == 1.3

    stats = D.get_group(idata, "sample_stats")
    z = torch.as_tensor(post["z"].values[0])
    y_draw = torch.as_tensor(post["y"].values[0])
    d = 2
    with torch.no_grad():
        for j, m in enumerate(data.modalities):
            loc = m2.decoders[m](z, y_draw)
            if math.isinf(nu):
                fn = dist.Normal(loc, m2.config.sigma[m]).to_event(1)
            else:
                s = ((nu + z.pow(2).sum(-1)) / (nu + d)).sqrt() * m2.config.sigma[m]
                fn = DiagStudentT(torch.tensor(nu + d), loc, s.unsqueeze(-1).expand(loc.shape))
            expected = fn.log_prob(data.x[m]).numpy()
            present = data.mask[:, j].numpy()
            np.testing.assert_allclose(stats[f"log_lik_{m}"].values[0][:, present],
                                       expected[:, present], rtol=1e-5, atol=1e-4)


def test_the_model_object_is_its_own_guide_and_its_settings_are_the_attributes(tmp_path):
    """A MultimodalM2 holds its guide: guide=None, the object twice and the bound methods give
    the same draws; the attributes are the model's config (alpha, per-modality settings as
    <name>_<m>) with the current, learned ν."""
    rng = np.random.default_rng(2)
    x = {"a": rng.normal(size=(6, 4)), "b": rng.normal(size=(6, 3))}
    x["b"][[1]] = np.nan
    data = MultimodalDataset(x, np.array([0, 1, 2, -1, -1, -1]), num_classes=3)
    m2 = build_model(data.dims, 3, latent_dim=2, hidden=(8,), alpha=0.7, learn_nu=True,
                     sigma={"a": 0.5, "b": 2.0}, class_weight="balanced", label_counts=[1, 1, 1],
                     decision_shift=0.0)
    with torch.no_grad():
        m2.nu_unconstrained.fill_(1.5)  # as if training had moved ν away from its start
    calls = [
        D.to_inference_data(m2, dataset=data, num_samples=4, seed=2),
        D.to_inference_data(m2, None, data, num_samples=4, seed=2),
        D.to_inference_data(m2, m2, data, num_samples=4, seed=2),
        D.to_inference_data(m2.model, m2.guide, data, num_samples=4, seed=2),
        D.to_inference_data(m2.model, dataset=data, num_samples=4, seed=2),
    ]
    for idata in calls[1:]:
        for group in ("posterior", "latent", "sample_stats"):
            for var in D.get_group(calls[0], group).data_vars:
                np.testing.assert_array_equal(D.get_group(idata, group)[var].values,
                                              D.get_group(calls[0], group)[var].values)
    attrs = D.run_attrs(calls[0])
    assert attrs["model"] == attrs["guide"] == "MultimodalM2"
    assert attrs["alpha"] == 0.7 and attrs["latent_dim"] == 2 and attrs["num_classes"] == 3
    assert attrs["sigma_a"] == 0.5 and attrs["sigma_b"] == 2.0
    assert attrs["dims_a"] == 4 and attrs["likelihood_b"] == "student_t"
    assert attrs["class_weight"] == "balanced" and attrs["label_counts"] == "[1, 1, 1]"
    assert attrs["learn_nu"] == 1 and attrs["nu_initial"] == 5.0
    assert attrs["nu"] == pytest.approx(float(m2.nu.detach())) and attrs["nu"] != 5.0
    assert D.get_group(calls[0], "posterior").attrs["alpha"] == 0.7
    back = D.run_attrs(D.load_netcdf(D.save_netcdf(calls[0], tmp_path / "run.nc")))
    assert back["sigma_b"] == 2.0 and back["nu"] == pytest.approx(attrs["nu"])

    with pytest.raises(ValueError, match="dataset="):
        D.to_inference_data(m2, data)
    with pytest.raises(ValueError, match="MultimodalDataset"):
        D.to_inference_data(m2)
    with pytest.raises(ValueError, match="guide"):
        D.to_inference_data(lambda x, mask, y=None: None, dataset=data)
    with pytest.raises(ValueError, match="out_dir"):
        diagnose(m2, dataset=data)
    with pytest.raises(ValueError, match="dataset="):
        diagnose(m2, data, tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("nu", [5.0, math.inf], ids=["student-t", "gaussian"])
def test_log_weights_agree_with_pyro_elbo(float64, nu):
    """The mean log weight over draws is a Monte Carlo ELBO: it must match Pyro's enumerated
    TraceEnum_ELBO on the package's model and guide (unlabelled data, missing modalities)."""
    rng = np.random.default_rng(1)
    x = {"a": rng.normal(size=(8, 4)), "b": rng.normal(size=(8, 3))}
    x["a"][[1, 4]] = np.nan
    data = MultimodalDataset(x, None, num_classes=3).to(torch.float64)
    m2 = build_model(data.dims, 3, latent_dim=2, hidden=(16,), nu=nu, decision_shift=0.0).double()
    S = 1000
    idata = D.to_inference_data(m2, None, data, num_samples=S, num_predictive=1)
    lw = D.get_group(idata, "sample_stats")["log_weight"].values[0]  # [S, N]
    ours, se = lw.mean(0).sum(), math.sqrt((lw.var(0) / S).sum())
    elbo = pyro.infer.TraceEnum_ELBO(num_particles=S, vectorize_particles=True,
                                     max_plate_nesting=1, strict_enumeration_warning=False)
    with pyro.get_param_store().scope(), torch.no_grad():
        pyro_elbo = -elbo.loss(m2.model, m2.guide, data.x, data.mask, None)
    # both are estimates with about the same standard error (enumeration only lowers Pyro's)
    assert ours == pytest.approx(pyro_elbo, abs=4 * math.sqrt(2) * se)


def test_netcdf_round_trip(float64, tmp_path):
    toy = ConjugateToy()
    data = toy_data(toy, 8)
    idata = D.to_inference_data(toy, ToyGuide(toy, scale=1.2), data, num_samples=30,
                                attrs={"hidden": (16, 8), "note": None, "flag": True})
    path = D.save_netcdf(idata, tmp_path / "sub" / "run.nc")
    back = D.load_netcdf(path)
    assert set(D.group_names(back)) == set(D.group_names(idata))
    for name in D.group_names(idata):
        a, b = D.get_group(idata, name), D.get_group(back, name)
        assert set(a.data_vars) == set(b.data_vars)
        for var in a.data_vars:
            assert a[var].dims == b[var].dims
            np.testing.assert_array_equal(a[var].values, b[var].values)
            assert a[var].dtype == b[var].dtype, (name, var)
        for coord in a.coords:
            np.testing.assert_array_equal(a[coord].values, b[coord].values)
    for attrs in (D.get_group(back, "posterior").attrs, D.run_attrs(back)):
        assert attrs["hidden"] == "[16, 8]" and attrs["note"] == "null" and attrs["flag"] == 1
    # the importance diagnostics read the same from the file
    pd.testing.assert_frame_equal(D.importance_diagnostics(idata), D.importance_diagnostics(back))
    path.unlink()  # the file was closed after loading
    with pytest.raises(ValueError, match="no netCDF file"):
        D.load_netcdf(path)


# ----------------------------------------------------------------------------------------------
# importance sampling against the exact answers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("condition_on_labels", [True, False])
def test_exact_posterior_gives_constant_weights(float64, condition_on_labels):
    """q = p(y, z | x): log w = log p(x) (log p(x, y)) for every draw, ESS = S, k̂ = −inf, and the
    IWAE estimate is exact with any number of draws."""
    toy = ConjugateToy()
    data = toy_data(toy, 12)
    S = 40
    idata = D.to_inference_data(toy, ToyGuide(toy), data, num_samples=S,
                                condition_on_labels=condition_on_labels)
    table = D.importance_diagnostics(idata)
    exact = toy.log_evidence(data, condition_on_labels)
    np.testing.assert_allclose(table["log_evidence"], exact, rtol=0, atol=1e-10)
    np.testing.assert_allclose(table["elbo"], exact, rtol=0, atol=1e-10)
    np.testing.assert_allclose(table["ess"], S, rtol=1e-12)
    assert np.isneginf(table["khat"]).all() and not table["flagged"].any()
    summary = D.diagnostics_summary(idata, table)
    assert summary.loc["share_khat_above_0.7", "value"] == 0.0
    assert summary.loc["ess_fraction_mean", "value"] == pytest.approx(1.0)


@pytest.mark.parametrize("c2", [0.2, 0.5, 2.25])
def test_khat_and_ess_match_theory(float64, c2):
    """q(z | x, y) = N(m, c² C): k = 1 − c² for c² < 1 (flagged above 0.7), bounded weights and
    ESS/S → 1/E_q[w̃²] for c² = 2.25; the ESS is (Σ w)²/Σ w² of the stored weights."""
    toy = ConjugateToy()
    data = toy_data(toy, 16, seed=2)
    S = 4000
    idata = D.to_inference_data(toy, ToyGuide(toy, scale=math.sqrt(c2)), data, num_samples=S,
                                num_predictive=1, condition_on_labels=False)
    table = D.importance_diagnostics(idata)
    lw = D.get_group(idata, "sample_stats")["log_weight"].values[0].T  # [N, S]
    w = np.exp(lw - lw.max(1, keepdims=True))
    np.testing.assert_allclose(table["ess"], w.sum(1) ** 2 / (w**2).sum(1), rtol=1e-10)
    if c2 < 1:
        # over 8 data sets and seeds the mean k̂ was 0.73-0.82 (k = 0.8) and 0.45-0.53 (k = 0.5):
        # the χ² tail's log factor biases k̂ down at finite S
        assert table["khat"].mean() == pytest.approx(1 - c2, abs=0.1)
        assert table["flagged"].mean() > 0.5 if c2 == 0.2 else table["flagged"].mean() < 0.3
    else:
        assert (table["khat"] < 0).all() and not table["flagged"].any()
        assert table["ess_fraction"].mean() == pytest.approx(_ess_fraction(c2), abs=0.01)


def test_iwae_converges_to_the_exact_evidence(float64):
    """With a wrong q (flattened q(y | x), over-dispersed q(z | x, y)) the IWAE estimate is below
    log p(x) and rises to it as the number of draws grows (Burda et al. 2016). Its expectation
    for k draws is the mean over the S/k disjoint groups of k of one run of S draws."""
    toy = ConjugateToy()
    data = toy_data(toy, 24, seed=5)
    exact = toy.log_evidence(data, condition_on_labels=False)
    S = 3000
    idata = D.to_inference_data(toy, ToyGuide(toy, scale=1.5, temperature=3.0), data,
                                num_samples=S, num_predictive=1, condition_on_labels=False)
    table = D.importance_diagnostics(idata)
    lw = D.get_group(idata, "sample_stats")["log_weight"].values[0].T  # [N, S]
    gap = {
        k: float(np.mean(D.iwae_log_evidence(lw.reshape(len(data), S // k, k)).mean(1) - exact))
        for k in (1, 10, 100, S)
    }
    # over 10 seeds: gap[1] ≈ −0.82, gap[10] ≈ −0.047, gap[100] ≈ −0.006, |gap[S]| < 0.005
    assert gap[1] == pytest.approx(float(np.mean(table["elbo"] - exact)))
    assert gap[1] < -0.5
    assert gap[1] < gap[10] < gap[100] < 0.005
    assert gap[S] == pytest.approx(float(np.mean(table["log_evidence"] - exact)))
    assert abs(gap[S]) < 0.01


def test_importance_functions_on_arrays():
    S = 50
    constant = np.full((1, S), -3.0)
    one_big = np.r_[0.0, np.full(S - 1, -1e3)][None]
    rng = np.random.default_rng(0)
    heavy = rng.standard_t(1.5, size=(1, S)) * 3
    lw = np.concatenate([constant, one_big, heavy])
    assert D.pareto_khat(lw)[0] == -np.inf
    np.testing.assert_allclose(D.importance_sampling_ess(lw)[:2], [S, 1.0])
    np.testing.assert_allclose(D.iwae_log_evidence(constant), [-3.0])
    table = D.importance_diagnostics(lw)
    assert list(table.columns) == ["khat", "ess", "ess_fraction", "log_evidence", "elbo",
                                   "flagged"]
    assert np.isnan(D.pareto_khat(lw[:, :10])[2])  # too few draws for the tail fit
    assert np.isnan(D.pareto_khat(np.array([[0.0, np.nan] * 20]))[0])
    with pytest.raises(ValueError, match=r"\[N, S\]"):
        D.pareto_khat(np.zeros((2, 3, 4)))


# ----------------------------------------------------------------------------------------------
# classifier checks, summary, plots, the report and the example
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def toy_idata(float64):
    toy = ConjugateToy()
    data = toy_data(toy, 30, seed=4)
    return D.to_inference_data(toy, ToyGuide(toy, scale=0.8, temperature=2.0), data,
                               num_samples=30, num_predictive=4)


def test_classifier_checks(toy_idata):
    checks = D.classifier_checks(toy_idata, n_bins=10)
    const = D.get_group(toy_idata, "constant_data")
    proba = D.get_group(toy_idata, "latent")["class_prob"].values[0, 0]
    label = const["label"].values
    known = label >= 0
    assert checks.ece == pytest.approx(expected_calibration_error(label[known], proba[known], 10))
    rel = checks.reliability
    assert rel["count"].sum() == known.sum()
    filled = rel["count"] > 0
    ece = (rel["count"][filled] / known.sum()
           * (rel["accuracy"][filled] - rel["confidence"][filled]).abs()).sum()
    assert ece == pytest.approx(checks.ece)
    unconditioned = ~const["labelled"].values
    assert checks.entropy_by_class["count"].sum() == unconditioned.sum()
    entropy = -(proba * np.log(proba)).sum(1)
    np.testing.assert_allclose(checks.per_datum["entropy"], entropy)
    assert (checks.entropy_by_class["entropy_normalised_mean"].dropna() <= 1).all()
    summary = D.diagnostics_summary(toy_idata)
    assert summary.loc["ece", "value"] == pytest.approx(checks.ece)
    assert summary.loc["num_labelled_for_calibration", "value"] == known.sum()


def test_plots_return_figures_and_write_png(toy_idata, tmp_path):
    made = {
        "ppc": plots.plot_ppc(toy_idata, path=tmp_path / "ppc.png"),
        "khat": plots.plot_khat(toy_idata, path=tmp_path / "khat.png"),
        "pca": plots.plot_latent_pca(toy_idata, path=tmp_path / "pca.png"),
        "recon": plots.plot_reconstructions(toy_idata, rows=[0, 1, 3],
                                            image_shapes={"a": (1, 2)},
                                            path=tmp_path / "recon.png"),
        "calibration": plots.plot_calibration(toy_idata, path=tmp_path / "calibration.png"),
    }
    for name, fig in made.items():
        assert isinstance(fig, Figure), name
        png = {"pca": "pca", "recon": "recon"}.get(name, name)
        assert (tmp_path / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    titles = [ax.get_title() for ax in made["recon"].axes]
    assert "a (missing: imputed)" in titles  # datum 1 misses modality a


def test_diagnose_writes_everything(float64, tmp_path):
    toy = ConjugateToy()
    data = toy_data(toy, 15)
    paths, summary = diagnose(toy, ToyGuide(toy, scale=1.2), data, tmp_path / "out",
                                num_samples=30, seed=1)
    expected = {"inference_data", "summary", "per_datum", "reliability", "entropy_by_class",
                "ppc", "khat", "latent_pca", "reconstructions", "calibration"}
    assert set(paths) == expected
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    for metric in ("khat_mean", "share_khat_above_0.7", "iwae_log_px_mean", "ece"):
        assert np.isfinite(summary.loc[metric, "value"]), metric
    assert D.get_group(D.load_netcdf(paths["inference_data"]), "latent").sizes["draw"] == 30


def test_example_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("diagnostics_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = example.parse_args([
        "--epochs", "1", "--num-samples", "30", "--num-predictive", "3", "--max-rows", "40",
        "--hidden", "16", "--latent-dim", "2", "--out", str(tmp_path),
    ])
    report = example.main(args)
    assert (tmp_path / "reconstructions.png").is_file()
    assert report.summary.loc["num_data", "value"] == 40


# ----------------------------------------------------------------------------------------------
# from the estimator; too few draws for k̂; the plots' drawing
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_estimator():
    """An estimator fitted on 60 rows of two modalities far from standardised units (mean 50),
    and its X, labels."""
    from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier

    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(3), 20)
    x = 3.0 * rng.normal(size=(3, 6))[y_true] + rng.normal(size=(60, 6)) + 50.0
    X = {"a": x[:, :4], "b": x[:, 4:]}
    y = np.where(np.arange(60) % 3 == 0, y_true, -1)
    est = MultimodalSemiSupervisedClassifier(hidden=(8,), latent_dim=2, epochs=2,
                                             batch_size=16).fit(X, y)
    return est, X, y_true


def _log_weights(idata):
    return D.get_group(idata, "sample_stats")["log_weight"].values


def test_to_inference_data_from_the_estimator_standardises_as_predict(fitted_estimator):
    """to_inference_data(est, X) with X in each form fit accepts equals the model_ on the
    standardised data set; a subset of the modalities works as in predict."""
    est, X, y = fitted_estimator
    reference = D.to_inference_data(
        est.model_, dataset=est.standardiser_.transform(MultimodalDataset(X, y)), num_samples=4)
    frame = pd.concat({m: pd.DataFrame(v) for m, v in X.items()}, axis=1)
    for form in (X, frame, MultimodalDataset(X, y)):
        idata = D.to_inference_data(est, form, y=None if isinstance(form, MultimodalDataset)
                                    else y, num_samples=4)
        np.testing.assert_allclose(_log_weights(idata), _log_weights(reference), rtol=1e-6)
        np.testing.assert_array_equal(D.get_group(idata, "constant_data")["label"].values, y)
    subset = D.to_inference_data(est, {"a": X["a"]}, num_samples=4)
    assert D.get_group(subset, "constant_data")["modality_mask"].values[:, 1].sum() == 0
    with pytest.raises(ValueError, match=r"^guide: .*expected None with an estimator"):
        D.to_inference_data(est, est.model_, X)
    with pytest.raises(ValueError, match=r"^X\[.a.\]: expected shape \[N, 4\]"):
        D.to_inference_data(est, {"a": X["a"][:, :3]})


def test_raw_data_given_to_the_model_warn(fitted_estimator):
    est, X, y = fitted_estimator
    with pytest.warns(UserWarning,
                      match=r"modalities .a. \(mean \d.*to_inference_data\(est, X\)"):
        D.to_inference_data(est.model_, dataset=MultimodalDataset(X, y), num_samples=2)
    with pytest.raises(ValueError, match=r"^dataset: expected a MultimodalDataset in the model's"):
        D.to_inference_data(est.model_, dataset=X)
    with pytest.raises(ValueError, match=r"^y: labels are given with an estimator"):
        D.to_inference_data(est.model_, dataset=MultimodalDataset(X, y), y=y)


def test_diagnose_accepts_the_estimator(fitted_estimator, tmp_path):
    est, X, y = fitted_estimator
    paths, summary = diagnose(est, X, out_dir=tmp_path, y=y, num_samples=30, num_predictive=2)
    assert summary.loc["num_data_with_khat", "value"] == 60
    assert np.isfinite(summary.loc["share_khat_above_0.7", "value"])


def test_too_few_draws_for_khat_are_not_reported_as_no_flags(toy_idata):
    """With S < 30 draws k̂ is NaN: the summary's shares are NaN (not 0%) and the k̂ plot says
    why instead of drawing nothing under a '0.0% above 0.7' title."""
    toy = ConjugateToy()
    idata = D.to_inference_data(toy, ToyGuide(toy, scale=0.8), toy_data(toy, 12),
                                num_samples=D.KHAT_MIN_DRAWS - 1, num_predictive=2)
    summary = D.diagnostics_summary(idata)["value"]
    assert summary["num_data_with_khat"] == 0 and np.isnan(summary["khat_mean"])
    assert np.isnan(summary["share_khat_above_0.7"])
    assert np.isnan(summary["share_khat_above_threshold_for_S"])
    fig = plots.plot_khat(idata)
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "not estimated" in titles and "above" not in titles
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "at least 30 draws" in texts
    # with enough draws: every datum has a k̂ and the shares are numbers
    summary = D.diagnostics_summary(toy_idata)["value"]
    assert summary["num_data_with_khat"] == summary["num_data"]
    assert 0 <= summary["share_khat_above_0.7"] <= 1


def test_reconstructions_draw_tabular_features_as_markers_on_integer_ticks(toy_idata):
    fig = plots.plot_reconstructions(toy_idata, rows=[0, 2])
    for ax in fig.axes:
        assert ax.lines, ax.get_title()
        assert all(line.get_linestyle() == "None" for line in ax.lines), ax.get_title()
        ticks = ax.get_xticks()
        shown = ticks[(ticks >= ax.get_xlim()[0]) & (ticks <= ax.get_xlim()[1])]
        np.testing.assert_array_equal(shown, np.round(shown))


def test_the_arviz_requirement_follows_the_python_version():
    """pyproject.toml asks for ArviZ 0.x where 1.x cannot install (Python < 3.12) and for 1.x
    from Python 3.12 on; the installed line is the one the adapter uses."""
    import tomllib

    from packaging.requirements import Requirement

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    requirements = [Requirement(r) for r in
                    tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    arviz = [r for r in requirements if r.name == "arviz"]
    for python, allowed, refused in (("3.11", "0.23.4", "1.3.0"), ("3.12", "1.3.0", "0.23.4"),
                                     ("3.13", "1.3.0", "0.23.4")):
        (req,) = [r for r in arviz if r.marker.evaluate({"python_version": python})]
        assert allowed in req.specifier and refused not in req.specifier, python
    import sys

    assert D.arviz_line() == (1 if sys.version_info >= (3, 12) else 0)


# ----------------------------------------------------------------------------------------------
# what ArviZ's own functions do with the InferenceData (both ArviZ lines)
# ----------------------------------------------------------------------------------------------


def _arviz():
    D.arviz_line()  # imports ArviZ as the adapter does (0.x warns once a day at import)
    import arviz as az

    return az


def test_az_summary_is_quick_and_shows_the_class_shares(toy_idata):
    """az.summary reads the posterior group: one row per class (the share of the unlabelled
    data in that class, per draw), not a row per datum and latent dimension."""
    import time

    az = _arviz()
    start = time.perf_counter()
    table = az.summary(toy_idata, kind="stats")
    assert time.perf_counter() - start < 5.0
    assert list(table.index) == ["class_share[u]", "class_share[v]", "class_share[w]"]
    share = D.get_group(toy_idata, "posterior")["class_share"].values[0]
    np.testing.assert_allclose(table["mean"].to_numpy(), share.mean(0), atol=0.01)
    assert table["mean"].sum() == pytest.approx(1.0, abs=0.02)
    # the full table too (r_hat needs two chains: the draws are independent, it stays NaN)
    full = az.summary(toy_idata)
    assert len(full) == 3 and (full["ess_bulk"] > 0).all()


def test_az_loo_refuses_and_elpd_is_what_az_compare_takes(float64):
    """No log_likelihood group: az.loo refuses. elpd() gives the IWAE log p(x_i) (+ the log
    Jacobian of the data's units) with their k̂ as ArviZ's LOO object; az.compare ranks two
    guides by it, with the paired standard error of the difference."""
    az = _arviz()
    toy = ConjugateToy()
    data = toy_data(toy, 24, seed=5)
    exact = D.to_inference_data(toy, ToyGuide(toy), data, num_samples=30,
                                condition_on_labels=False)
    with pytest.raises(TypeError, match="log likelihood not found"):
        az.loo(exact)

    result = D.elpd(exact)
    pointwise = result["loo_i"] if D.arviz_line() == 0 else result.elpd_i
    total = result["elpd_loo"] if D.arviz_line() == 0 else result.elpd
    khat = result["pareto_k"] if D.arviz_line() == 0 else result.pareto_k
    # the exact posterior as q: constant weights, the estimate is the exact log evidence
    truth = toy.log_evidence(data, condition_on_labels=False)
    np.testing.assert_allclose(pointwise.values, truth, rtol=1e-10)
    assert total == pytest.approx(truth.sum(), rel=1e-10)
    assert np.isneginf(khat.values).all()

    # a poor guide: its k̂ are high and compare ranks it below the exact one
    narrow = D.to_inference_data(toy, ToyGuide(toy, scale=0.4), data, num_samples=30,
                                 condition_on_labels=False)
    with warnings.catch_warnings():
        # ArviZ 0.x's compare sorts its table with pandas' deprecated inplace keyword
        warnings.filterwarnings("ignore", message="The inplace keyword in DataFrame.sort_values",
                                category=DeprecationWarning)
        table = az.compare({"exact": result, "narrow": D.elpd(narrow)})
    assert list(table.index) == ["exact", "narrow"]
    # elpd_diff is best minus this on ArviZ 0.x, this minus best on 1.x
    diff = abs(table.loc["narrow", "elpd_diff"])
    assert diff > 2 * table.loc["narrow", "dse"] > 0
    warning = (lambda r: r["warning"] if D.arviz_line() == 0 else r.warning)
    assert warning(D.elpd(narrow)) and not warning(result)
    if D.arviz_line() == 0:
        assert table.loc["narrow", "warning"] and not table.loc["exact", "warning"]
    else:  # ArviZ 1.x reports the count of k̂ above good_k
        assert "k̂" in table.loc["narrow", "diag_elpd"]
        assert "k̂" not in table.loc["exact", "diag_elpd"]

    with pytest.raises(ValueError, match=r"^data: expected at least 30 draws"):
        D.elpd(D.to_inference_data(toy, ToyGuide(toy), data, num_samples=5))
    with pytest.raises(ValueError, match=r"^data: expected an InferenceData"):
        D.elpd(np.zeros((3, 30)))


def test_estimator_to_inference_data_is_in_the_units_of_x(fitted_estimator):
    """est.to_inference_data(X): observed data equal X (as stored, float32), the posterior
    predictive is de-standardised (its mean near the data's, not near 0), the draws equal those
    of the functional form, and elpd is the standardised one plus the log Jacobian."""
    est, X, y = fitted_estimator
    idata = est.to_inference_data(X, y=y, num_samples=30, num_predictive=5)
    obs = D.get_group(idata, "observed_data")
    pp = D.get_group(idata, "posterior_predictive")
    for m, values in X.items():
        np.testing.assert_array_equal(obs[f"x_{m}"].values, values.astype(np.float32))
        assert abs(float(pp[f"x_{m}"].mean()) - values.mean()) < 0.2 * values.std() + 1.0
        assert float(pp[f"x_{m}"].std()) > 0.1 * values.std()
    assert D.run_attrs(idata)["units"] == "data (de-standardised)"
    same = D.to_inference_data(est, X, y=y, num_samples=30, num_predictive=5)
    np.testing.assert_array_equal(_log_weights(idata), _log_weights(same))
    model_units = D.to_inference_data(
        est.model_, dataset=est.standardiser_.transform(MultimodalDataset(X, y)),
        num_samples=30, num_predictive=5)
    scale = sum(np.log(est.standardiser_.scale_[m]).sum() for m in X)
    np.testing.assert_allclose(D.get_group(idata, "constant_data")["log_jacobian"], -scale)
    np.testing.assert_allclose(
        D.get_group(model_units, "constant_data")["log_jacobian"], 0.0)
    pointwise = (lambda r: r["loo_i"] if D.arviz_line() == 0 else r.elpd_i)
    np.testing.assert_allclose(pointwise(D.elpd(idata)).values,
                               pointwise(D.elpd(model_units)).values - scale, rtol=1e-5)


def test_arviz_reads_the_predictive_and_the_latent_group(toy_idata):
    """ArviZ's posterior predictive plot reads posterior_predictive and observed_data, and its
    summary reads the latent group when asked for it (rows 0 and 1 of z)."""
    az = _arviz()
    import matplotlib.pyplot as plt

    if D.arviz_line() == 0:
        with warnings.catch_warnings():
            # ArviZ 0.x's plotting code calls a helper that matplotlib 3.11 deprecates
            warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping",
                                    category=DeprecationWarning)
            axes = az.plot_ppc(toy_idata, var_names=["x_a"])
        assert np.size(axes) >= 1
    else:
        num_predictive = D.get_group(toy_idata, "posterior_predictive").sizes["draw"]
        assert az.plot_ppc_dist(toy_idata, var_names=["x_a"], num_samples=num_predictive)
    plt.close("all")  # ArviZ draws through pyplot
    table = az.summary(toy_idata, group="latent", var_names=["z"], coords={"datum": [0, 1]},
                       kind="stats")
    assert list(table.index) == ["z[0, 0]", "z[0, 1]", "z[1, 0]", "z[1, 1]"]
