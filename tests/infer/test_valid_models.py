"""The contract matrix of GammaPowerELBO: small models it must accept (``assert_ok``: a finite
loss, ``loss`` = ``loss_and_grads``, and the expected value where one is known) and models it
must refuse with a ``ValueError`` naming the site (``assert_error``), as Pyro's own
``tests/infer/test_valid_models.py`` does for its ELBOs."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from pyro_mmt.distributions import DiagStudentT
from pyro_mmt.estimator import build_model
from pyro_mmt.infer import (
    GammaPowerELBO,
    GaussianPowerNorm,
    MonteCarloPowerNorm,
    StudentTPowerNorm,
    declare_power_norm,
)
from pyro_mmt.likelihoods import LIKELIHOODS, Likelihood, register_likelihood
from pyro_mmt.models.multimodal_m2 import LatentMonteCarloPowerNorm

OBJECTIVES = {
    "auto": lambda: GammaPowerELBO("auto"),
    "explicit": lambda: GammaPowerELBO(-0.05),
    "2x auto": lambda: GammaPowerELBO("2x auto"),
    "monte_carlo": lambda: GammaPowerELBO(-0.05, closed_forms=False),
}


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)


def assert_ok(model, guide, *args, elbo=None):
    """A finite loss, and ``loss`` equals ``loss_and_grads`` at one seed."""
    elbo = elbo or GammaPowerELBO(-0.05)
    pyro.set_rng_seed(0)
    value = elbo.loss(model, guide, *args)
    pyro.set_rng_seed(0)
    with_grads = elbo.loss_and_grads(model, guide, *args)
    assert math.isfinite(value) and value == pytest.approx(with_grads, rel=1e-12)
    return value


def assert_error(model, guide, *args, match, elbo=None):
    elbo = elbo or GammaPowerELBO(-0.05)
    with pytest.raises(ValueError, match=match):
        elbo.loss(model, guide, *args)


# ------------------------------------------------------------------ a small t model by hand
def t_model(x, *, extra=None):
    """z ~ t_1(0, 1, 5), x ~ t_1(z, (5 + z²)/6, 6): the power form, with a declared norm."""
    nu = torch.tensor(5.0)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", DiagStudentT(nu, torch.zeros(1), torch.ones(1)))
        scale = ((nu + z.pow(2).sum(-1)) / (nu + 1)).sqrt().unsqueeze(-1)
        pyro.sample("x", DiagStudentT(nu + 1, z, scale), obs=x)
        ones = torch.ones(x.shape[0])
        declare_power_norm(StudentTPowerNorm(5.0, ones, 1, 0 * ones))
        if extra is not None:
            extra(x)


def t_guide(x, *, extra=None):
    loc = pyro.param("loc", torch.zeros(x.shape[0], 1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", DiagStudentT(torch.tensor(6.0), loc, torch.ones(x.shape[0], 1)))


X = torch.tensor([[0.3], [-1.2], [2.0]])


# ------------------------------------------------------------------------ accepted models
@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("nu", [5.0, math.inf], ids=["t", "gaussian"])
@pytest.mark.parametrize("labelled", [True, False], ids=["labelled", "unlabelled"])
def test_ok_the_multimodal_m2(objective, nu, labelled):
    m2 = build_model({"a": 3, "b": 2}, 3, latent_dim=2, hidden=(4,), nu=nu, alpha=0.5)
    x = {"a": torch.randn(5, 3), "b": torch.randn(5, 2)}
    mask = torch.ones(5, 2, dtype=torch.bool)
    mask[0, 1] = False
    y = torch.tensor([0, 1, 2, 0, 1]) if labelled else None
    assert_ok(m2.model, m2.guide, x, mask, y, elbo=OBJECTIVES[objective]())


@pytest.mark.parametrize("labelled", [True, False], ids=["labelled", "unlabelled"])
def test_ok_mixed_likelihoods_with_the_monte_carlo_norm(labelled):
    m2 = build_model({"a": 3, "b": 2, "c": 2}, 3, latent_dim=2, hidden=(4,), alpha=0.5,
                     likelihood={"a": "student_t", "b": "bernoulli", "c": "poisson"})
    x = {"a": torch.randn(5, 3), "b": torch.randint(0, 2, (5, 2)).double(),
         "c": torch.randint(0, 4, (5, 2)).double()}
    trace = poutine.trace(m2.model).get_trace(x)
    assert isinstance(trace.nodes["power_norm"]["infer"]["power_norm"],
                      LatentMonteCarloPowerNorm)
    y = torch.tensor([0, 1, 2, 0, 1]) if labelled else None
    for objective in ("auto", "explicit"):
        assert_ok(m2.model, m2.guide, x, None, y, elbo=OBJECTIVES[objective]())


class Laplace(Likelihood):
    """A family without a closed-form power integral: the model falls back to ancestral
    draws of the whole model for its norm."""

    name = "test_laplace"
    continuous = True

    def distribution(self, out):
        return dist.Laplace(out, self.sigma).to_event(1)


def test_ok_a_registered_family_without_a_power_integral_uses_ancestral_draws():
    register_likelihood(Laplace)
    try:
        m2 = build_model({"a": 3, "b": 2}, 2, latent_dim=2, hidden=(4,), alpha=1.0,
                         likelihood={"b": "test_laplace"})
        x = {"a": torch.randn(4, 3), "b": torch.randn(4, 2)}
        trace = poutine.trace(m2.model).get_trace(x)
        assert isinstance(trace.nodes["power_norm"]["infer"]["power_norm"], MonteCarloPowerNorm)
        for labels in (torch.tensor([0, 1, 1, 0]), None):
            assert_ok(m2.model, m2.guide, x, None, labels)
    finally:
        LIKELIHOODS.pop("test_laplace")


def test_ok_max_plate_nesting_guessed_and_module_interface():
    """elbo(model, guide) is a module whose parameters are the owner's; a step lowers nothing
    silently (finite, differentiable)."""
    m2 = build_model({"a": 3}, 2, latent_dim=2, hidden=(4,), alpha=1.0)
    loss_fn = GammaPowerELBO()(m2.model, m2.guide)
    assert {id(p) for p in loss_fn.parameters()} == {id(p) for p in m2.parameters()}
    x = {"a": torch.randn(6, 3)}
    loss = loss_fn(x, None, torch.tensor([0, 1, 0, 1, 0, 1]))
    loss.backward()
    assert all(p.grad is not None for p in m2.classifier.parameters())


def test_ok_factor_weights_enter_additively():
    """A pyro.factor inside the data plate with its own poutine.scale w adds w × its value per
    datum; one outside the plate is added once."""
    def inside(x, w=2.5):
        with poutine.scale(scale=w):
            pyro.factor("bonus", torch.full((x.shape[0],), 0.4))

    base = assert_ok(t_model, t_guide, X)
    pyro.clear_param_store()
    got = assert_ok(lambda x: t_model(x, extra=inside), t_guide, X)
    assert got == pytest.approx(base - 2.5 * 0.4 * 3, rel=1e-10)

    def global_factor(x):
        t_model(x)
        pyro.factor("penalty", torch.tensor(-0.7))

    assert assert_ok(global_factor, t_guide, X) == pytest.approx(base + 0.7, rel=1e-10)


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_ok_gaussian_auto_is_trace_enum_elbo():
    m2 = build_model({"a": 3}, 2, latent_dim=2, hidden=(4,), nu=math.inf, alpha=1.0)
    x, y = {"a": torch.randn(4, 3)}, torch.tensor([0, 1, 1, 0])
    for labels in (y, None):
        ours = assert_ok(m2.model, m2.guide, x, None, labels, elbo=GammaPowerELBO("auto"))
        pyro.set_rng_seed(0)
        ref = TraceEnum_ELBO(max_plate_nesting=1).loss(m2.model, m2.guide, x, None, labels)
        assert ours == pytest.approx(ref, rel=1e-12)


# ------------------------------------------------------------------------ refused models
def test_error_scaled_latent_site():
    """A β on z (latent_weight) is a KL-objective option: the power γ applies to the whole
    density, so GammaPowerELBO refuses the scaled site instead of ignoring the scale."""
    m2 = build_model({"a": 3}, 2, latent_dim=2, hidden=(4,), latent_weight=0.1)
    assert_error(m2.model, m2.guide, {"a": torch.randn(4, 3)}, match="site 'z'.*scale")


def test_error_scaled_observed_auxiliary_site():
    """ss_vae_M2's idiom: a poutine.scale'd observed site for the classification loss."""
    def aux(x):
        with poutine.scale(scale=50.0):
            pyro.sample("y_aux", dist.Categorical(logits=torch.zeros(2)),
                        obs=torch.zeros(x.shape[0], dtype=torch.long))

    assert_error(lambda x: t_model(x, extra=aux), t_guide, X, match="site 'y_aux'")


def test_error_global_latent_outside_the_data_plate():
    def model(x):
        pyro.sample("beta", dist.Normal(0.0, 1.0))
        t_model(x)

    def guide(x):
        pyro.sample("beta", dist.Normal(pyro.param("b", torch.tensor(0.0)), 1.0))
        t_guide(x)

    assert_error(model, guide, X, match="site 'beta'.*outside|site 'beta'.*plate")


def test_error_observed_site_the_norm_does_not_cover():
    """A Bernoulli modality beside a declared Student-t norm (today's silent failure)."""
    def symptoms(x):
        pyro.sample("x_sym", dist.Bernoulli(0.5 * torch.ones(x.shape[0], 2)).to_event(1),
                    obs=torch.ones(x.shape[0], 2))

    assert_error(lambda x: t_model(x, extra=symptoms), t_guide, X, match="site 'x_sym'")


def test_error_observed_dimension_the_norm_does_not_count():
    """Another Student-t site, of the right family, that the declared n leaves out."""
    def second(x):
        pyro.sample("x2", DiagStudentT(torch.tensor(6.0), torch.zeros(x.shape[0], 2),
                                       torch.ones(x.shape[0], 2)), obs=torch.zeros(x.shape[0], 2))

    assert_error(lambda x: t_model(x, extra=second), t_guide, X, match="observed dimensions")


def test_error_latent_prior_the_norm_does_not_hold_for():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", DiagStudentT(torch.tensor(6.0), z, torch.ones(1)), obs=x)
            ones = torch.ones(x.shape[0])
            declare_power_norm(StudentTPowerNorm(5.0, ones, 1, 0 * ones))

    assert_error(model, t_guide, X, match="site 'z'")


def test_error_two_continuous_guide_sites_with_closed_forms():
    def w_site(x):
        pyro.sample("w", dist.Normal(0.0, 1.0))

    def model(x):
        t_model(x, extra=w_site)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(x.shape[0], 1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", DiagStudentT(torch.tensor(6.0), loc, torch.ones(x.shape[0], 1)))
            pyro.sample("w", dist.Normal(0.0, 1.0))

    assert_error(model, guide, X, match="closed_forms")
    assert_ok(model, guide, X, elbo=GammaPowerELBO(-0.05, closed_forms=False))


def test_error_model_without_a_power_norm():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    assert_error(model, guide, X, match="declare_power_norm")


def test_error_sequential_enumeration():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=torch.zeros(2)))
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])
            ones = torch.ones(x.shape[0])
            declare_power_norm(GaussianPowerNorm(ones, 1, 0 * ones))

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=torch.zeros(2)),
                        infer={"enumerate": "sequential"})
            pyro.sample("z", dist.Normal(0.0, 1.0))

    assert_error(model, guide, X, match="site 'y'.*parallel")
