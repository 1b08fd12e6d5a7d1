"""The multimodal Student-t M2 model: its decoder chain is the power form, sites and shapes are
as documented, it runs with missing modalities and unlabelled batches, and it trains with
Pyro's own TraceEnum_ELBO."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.poutine.enum_messenger import EnumMessenger
from scipy import stats

from pyro_mmt.data import Standardiser, load_digits, long_tailed_split
from pyro_mmt.distributions import power_form_log_constant
from pyro_mmt.estimator import build_model_and_guide
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.guides import PoEClassifier
from pyro_mmt.models import MultimodalTModel
from pyro_mmt.training.svi import predict_proba, train

DIMS = {"a": 3, "b": 2, "c": 4}
SIGMA = {"a": 0.7, "b": 1.3, "c": 0.9}
K, D, NU = 3, 2, 5.0


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()}
    mask = torch.ones(n, len(DIMS), dtype=torch.bool)
    mask[0, 1] = False  # datum 0 misses "b"
    mask[1, 0] = False  # datum 1 misses "a"
    mask[2, [0, 2]] = False  # datum 2 has "b" only
    for j, m in enumerate(DIMS):
        x[m][~mask[:, j]] = 0.0
    y = torch.randint(0, K, (n,), generator=g)
    return x, mask, y


def _joint_log_prob(model, x, mask, y, z):
    """log p(x, y, z) from the model's own trace, z fixed."""
    trace = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(x, mask, y)
    trace.compute_log_prob()
    return sum(
        site["log_prob"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and name in {"y", "z", *(f"x_{m}" for m in DIMS)}
    )


def test_decoder_chain_is_the_power_form(float64):
    """Σ of the chain's log-densities = log π_y + log K − (ν+n+d)/2 log(1 + Q/ν), n the observed
    dimension of each datum (MATH.md F2), for random networks and missing modalities."""
    model = MultimodalTModel(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, sigma=SIGMA,
                             class_prior=[0.5, 0.3, 0.2])
    x, mask, y = _data()
    z = torch.randn(len(y), D)
    got = _joint_log_prob(model, x, mask, y, z)

    quad = z.pow(2).sum(-1)
    obs_dim = torch.zeros(len(y))
    log_det = torch.zeros(len(y))
    for j, m in enumerate(DIMS):
        resid = (x[m] - model.decoders[m](z, y)).div(SIGMA[m]).pow(2).sum(-1)
        quad = quad + mask[:, j] * resid
        obs_dim = obs_dim + mask[:, j] * DIMS[m]
        log_det = log_det + mask[:, j] * DIMS[m] * 2 * math.log(SIGMA[m])
    log_k = power_form_log_constant(NU, obs_dim, D, log_det)
    log_pi = torch.log(torch.tensor([0.5, 0.3, 0.2]))[y]
    expected = log_pi + log_k - (NU + obs_dim + D) / 2 * torch.log1p(quad / NU)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)


def test_decoder_is_one_multivariate_t_over_the_present_modalities(float64):
    """Given z, the chain of x sites equals scipy's multivariate t over the concatenated present
    modalities: t_n(μ, (ν+‖z‖²)/(ν+d) Λ, ν + d)."""
    model = MultimodalTModel(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, sigma=SIGMA)
    x, mask, y = _data()
    z = torch.randn(len(y), D)
    trace = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(x, mask, y)
    trace.compute_log_prob()
    got = sum(trace.nodes[f"x_{m}"]["log_prob"] for m in DIMS)
    for i in range(len(y)):
        present = [m for j, m in enumerate(DIMS) if mask[i, j]]
        value = torch.cat([x[m][i] for m in present]).numpy()
        loc = torch.cat([model.decoders[m](z[i:i + 1], y[i:i + 1])[0] for m in present])
        scale2 = torch.cat([torch.full((DIMS[m],), SIGMA[m] ** 2) for m in present])
        s2 = (NU + z[i].pow(2).sum()) / (NU + D)
        ref = stats.multivariate_t(loc=loc.detach().numpy(),
                                   shape=np.diag((s2 * scale2).numpy()), df=NU + D).logpdf(value)
        assert float(got[i].detach()) == pytest.approx(ref, rel=1e-10)


def test_gaussian_model_decoder_is_independent_normals(float64):
    model = MultimodalTModel(DIMS, K, latent_dim=D, hidden=(5,), nu=math.inf, sigma=SIGMA)
    x, mask, y = _data()
    z = torch.randn(len(y), D)
    got = _joint_log_prob(model, x, mask, y, z)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) - math.log(K)
    for j, m in enumerate(DIMS):
        lp = torch.distributions.Normal(model.decoders[m](z, y), SIGMA[m]).log_prob(x[m]).sum(-1)
        expected = expected + mask[:, j] * lp
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)


def test_sites_and_enumerated_shapes(float64):
    model, guide = build_model_and_guide(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, sigma=SIGMA)
    x, mask, _ = _data(n=7)
    enum_guide = EnumMessenger(first_available_dim=-2)(guide.guide)
    model_trace, guide_trace = get_importance_trace("flat", 1, model.model, enum_guide,
                                                    (x, mask, None), {})
    assert guide_trace.nodes["y"]["value"].shape == (K, 1)
    assert guide_trace.nodes["z"]["value"].shape == (K, 7, D)
    for m in DIMS:
        site = model_trace.nodes[f"x_{m}"]
        assert site["is_observed"] and site["log_prob"].shape == (K, 7)
    assert model_trace.nodes["z"]["log_prob"].shape == (K, 7)
    assert "classification" not in model_trace.nodes  # only labelled batches carry it


@pytest.mark.parametrize("nu", [NU, math.inf])
@pytest.mark.parametrize("case", ["all present", "one missing per datum", "unlabelled only"])
def test_runs_with_missing_modalities_and_unlabelled_batches(nu, case, float64):
    model, guide = build_model_and_guide(DIMS, K, latent_dim=D, hidden=(5,), nu=nu, sigma=SIGMA,
                                         alpha=1.0)
    x, _, y = _data(n=9)
    mask = torch.ones(9, len(DIMS), dtype=torch.bool)
    if case == "one missing per datum":
        mask[torch.arange(9), torch.arange(9) % len(DIMS)] = False
        for j, m in enumerate(DIMS):
            x[m][~mask[:, j]] = 0.0
    labels = None if case == "unlabelled only" else y
    elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    loss = elbo.differentiable_loss(model.model, guide.guide, x, mask, labels)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in [*model.parameters(), *guide.parameters()] if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_classification_term_is_alpha_weighted_log_q(float64):
    classifier = PoEClassifier(DIMS, K, (5,))
    model = MultimodalTModel(DIMS, K, latent_dim=D, hidden=(5,), classifier=classifier,
                             alpha=2.5, class_weight=[1.0, 2.0, 0.5], label_counts=[3, 2, 1],
                             logit_adjustment=1.0)
    x, mask, y = _data()
    trace = poutine.trace(model.model).get_trace(x, mask, y)
    site = trace.nodes["classification"]
    assert site["infer"]["is_auxiliary"]
    log_freq = torch.log(torch.tensor([3.0, 2.0, 1.0]) / 6.0)
    logits = classifier(x, mask) + log_freq
    expected = 2.5 * torch.tensor([1.0, 2.0, 0.5])[y] * torch.log_softmax(logits, -1)[
        torch.arange(len(y)), y]
    torch.testing.assert_close(site["fn"].log_prob(site["value"]), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"nu": 2.0}, "nu"),
        ({"nu": 1.5}, "nu"),
        ({"alpha": 1.0}, "classifier"),
        ({"alpha": -1.0}, "alpha"),
        ({"class_prior": [0.5, 0.5]}, "class_prior"),
        ({"class_prior": [0.5, 0.3, 0.3]}, "class_prior"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": {"a": 1.0}}, "sigma"),
        ({"class_weight": "balanced"}, "label_counts"),
        ({"class_weight": "balanced", "label_counts": [3, 0, 1]}, "label_counts"),
        ({"logit_adjustment": 1.0}, "label_counts"),
        ({"latent_dim": 0}, "latent_dim"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultimodalTModel(DIMS, K, **kwargs)


def test_empty_modality_and_bad_mask_are_refused():
    with pytest.raises(ValueError, match="dims"):
        MultimodalTModel({"a": 3, "b": 0}, K)
    model = MultimodalTModel(DIMS, K)
    x, _, y = _data()
    with pytest.raises(ValueError, match="mask"):
        model.model(x, torch.ones(len(y), 2, dtype=torch.bool), y)


def test_short_svi_run_with_trace_enum_elbo_learns_digits():
    """The model and guide fit Pyro's own machinery: TraceEnum_ELBO under SVI lowers the loss
    and classifies digits (ρ = 10, β = 0.2) far above chance (0.1)."""
    split = long_tailed_split(load_digits(), rho=10, beta=0.2, seed=0)
    scaler = Standardiser().fit(split.train)
    train_set, test_set = scaler.transform(split.train), scaler.transform(split.test)
    model, guide = build_model_and_guide(train_set.dims, train_set.num_classes, latent_dim=4,
                                         hidden=(32,), nu=math.inf, alpha=50.0)
    history = train(model.model, guide.guide, train_set,
                    objective=TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False),
                    optimizer=pyro.optim.Adam({"lr": 3e-3}), epochs=8, seed=0, progress=False)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    pred = predict_proba(guide, test_set).argmax(1)
    metrics = classification_metrics(test_set.y.numpy(), pred)
    assert metrics["balanced_accuracy"] > 0.6
