"""Tests of the power-norm declaration (docs/derivation.md §3): what GammaPowerELBO reads from
a model trace, against direct numerical integrals of p^{1+γ} and against the closed form written
out here; the per-datum "auto" γ with missing modalities."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from scipy import integrate, special, stats

from pyro_mmt.distributions import DiagStudentT
from pyro_mmt.estimator import build_model
from pyro_mmt.infer import (
    GaussianPowerNorm,
    MonteCarloPowerNorm,
    PowerNorm,
    StudentTPowerNorm,
    declare_power_norm,
    find_power_norm,
)

CLASS_PRIOR = (0.7, 0.3)
NU, SIGMA = 4.0, 0.6


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield


def nonlinear_mean(y, z):
    """μ(y, z) = sin(2z)(y+1) + 3y + z²/2: the norm must not depend on it."""
    return math.sin(2 * z) * (y + 1) + 3 * y + z**2 / 2 if isinstance(z, float) else (
        torch.sin(2 * z) * (y + 1) + 3 * y + z**2 / 2
    )


# ------------------------------------------------------- d = n = 1, K = 2, in Pyro and in scipy
def scalar_t_model(x, z, *, nu=NU, sigma=SIGMA, class_prior=CLASS_PRIOR):
    """y ~ Cat(π), z ~ t_1(0, 1, ν), x ~ t_1(μ(y, z), (ν + z²)/(ν + 1) σ², ν + 1), observed at
    given (x, z) for every y (the label enumerated by hand, as a batch dimension)."""
    log_pi = torch.tensor(class_prior).log()
    y = torch.arange(len(class_prior))
    with pyro.plate("data", len(class_prior)):
        pyro.sample("y", dist.Categorical(logits=log_pi), obs=y)
        zz = pyro.sample("z", DiagStudentT(torch.tensor(nu), torch.zeros(1), torch.ones(1)),
                         obs=torch.full((len(y), 1), z))
        scale = ((nu + zz.pow(2).sum(-1)) / (nu + 1)).sqrt() * sigma
        pyro.sample("x", DiagStudentT(torch.tensor(nu + 1), nonlinear_mean(y, zz[:, 0]).unsqueeze(-1),
                                      scale.unsqueeze(-1)),
                    obs=torch.full((len(y), 1), x))
        ones = torch.ones(len(y))
        declare_power_norm(StudentTPowerNorm(nu, ones, 1, ones * math.log(sigma**2),
                                             class_log_prior=log_pi))


def scipy_joint(x, y, z, *, nu=NU, sigma=SIGMA, class_prior=CLASS_PRIOR):
    """p(x, y, z) with scipy's univariate t densities."""
    return (
        class_prior[y] * stats.t.pdf(z, nu)
        * stats.t.pdf(x, nu + 1, loc=nonlinear_mean(y, z), scale=scipy_joint.scale(z))
    )


scipy_joint.scale = lambda z: math.sqrt((NU + z * z) / (NU + 1)) * SIGMA


def numerical_log_norm(gamma, joint, num_classes, *, num_nodes=400):
    """log ‖p‖_{1+γ} by quadrature of Σ_y ∫∫ p(x, y, z)^{1+γ} dx dz.

    Outer integral over z: adaptive (scipy's quad on the real line). Inner integral over x:
    Gauss–Legendre in θ with x = μ(y, z) + c(z) tan θ, θ ∈ (−π/2, π/2), c(z) the decoder's
    scale: a quadrature rule placed where the integrand's peak is, wherever the nonlinear mean
    puts it; the integrand is the joint itself, evaluated pointwise."""
    nodes, weights = special.roots_legendre(num_nodes)
    theta, weights = nodes * math.pi / 2, weights * math.pi / 2
    total = 0.0
    for y in range(num_classes):
        def inner(z, y=y):
            c = joint.scale(z)
            x = nonlinear_mean(y, z) + c * np.tan(theta)
            return float(np.sum(weights * joint(x, y, z) ** (1 + gamma) * c / np.cos(theta) ** 2))

        total += integrate.quad(inner, -math.inf, math.inf, epsabs=0, epsrel=1e-11, limit=200)[0]
    return math.log(total) / (1 + gamma)


def declared_norm(model, *args, **kwargs) -> PowerNorm:
    trace = poutine.trace(model).get_trace(*args, **kwargs)
    return find_power_norm(trace)[1]


@pytest.mark.parametrize("gamma", ["auto", -0.2, 0.3])
def test_student_t_declaration_matches_numerical_integral(gamma):
    """The norm that GammaPowerELBO reads from the trace, class prior (0.7, 0.3) included,
    equals the quadrature of Σ_y ∫∫ p^{1+γ} for a nonlinear mean (1e-11 relative; the
    quadrature agrees to ~3e-14)."""
    norm = declared_norm(scalar_t_model, 0.3, -0.2)
    assert isinstance(norm, StudentTPowerNorm) and norm.power_form
    if gamma == "auto":
        gamma = norm.auto_gamma()
        assert torch.allclose(gamma, torch.tensor(-2 / (NU + 1 + 1)))
        gamma = gamma[0].item()
    value = norm.log_norm(torch.tensor(gamma))
    expected = numerical_log_norm(gamma, scipy_joint, len(CLASS_PRIOR))
    assert torch.allclose(value, torch.tensor(expected), rtol=1e-11, atol=0)


@pytest.mark.parametrize("x,z", [(0.3, -0.2), (2.5, 1.7), (-4.0, 3.0)])
def test_declared_constant_is_that_of_the_power_form(x, z):
    """log p(x, y, z) of the traced model = log π_y + log K − (ν+n+d)/2 log(1 + Q_y/ν), with log K
    the declaration's `log_power_form_constant` (what the Rao-Blackwellised cross term uses)."""
    trace = poutine.trace(scalar_t_model).get_trace(x, z)
    trace.compute_log_prob()
    log_p = sum(site["log_prob"] for name, site in trace.nodes.items()
                if site["type"] == "sample" and name != "power_norm")
    norm = find_power_norm(trace)[1]
    y = torch.arange(2)
    quad = z**2 + (x - nonlinear_mean(y, torch.tensor(z))) ** 2 / SIGMA**2
    power_form = (torch.tensor(CLASS_PRIOR).log() + norm.log_power_form_constant()
                  - (NU + 2) / 2 * torch.log1p(quad / NU))
    assert torch.allclose(log_p, power_form, rtol=1e-12, atol=1e-12)
    assert torch.equal(trace.nodes["power_norm"]["log_prob"], torch.zeros(2))


# ------------------------------------------------------------------ the Gaussian analogue
def scalar_gaussian_joint(x, y, z, *, sigma=SIGMA, class_prior=CLASS_PRIOR):
    return (class_prior[y] * stats.norm.pdf(z)
            * stats.norm.pdf(x, loc=nonlinear_mean(y, z), scale=sigma))


scalar_gaussian_joint.scale = lambda z: SIGMA


@pytest.mark.parametrize("gamma", [-0.3, 0.5])
def test_gaussian_declaration_matches_numerical_integral(gamma):
    ones = torch.ones(1)
    norm = GaussianPowerNorm(ones, 1, ones * math.log(SIGMA**2),
                             class_log_prior=torch.tensor(CLASS_PRIOR).log())
    value = norm.log_norm(torch.tensor(gamma))
    expected = numerical_log_norm(gamma, scalar_gaussian_joint, len(CLASS_PRIOR))
    assert torch.allclose(value, torch.tensor(expected), rtol=1e-11, atol=0)


# ------------------------------------------------ the full model: per-datum n, γ and norm
DIMS = {"a": 5, "b": 3}
SIGMAS = {"a": 0.7, "b": 1.3}


def t_log_power_integral(df, dim, log_det_scale, gamma):
    """log ∫ t_D(v; 0, S, ν)^{1+γ} dv, written out (docs/derivation.md F1)."""
    a = (1 + gamma) * (df + dim) / 2
    log_c = math.lgamma((df + dim) / 2) - math.lgamma(df / 2) - dim / 2 * math.log(df * math.pi)
    return ((1 + gamma) * log_c - gamma / 2 * log_det_scale + dim / 2 * math.log(df * math.pi)
            + math.lgamma(a - dim / 2) - math.lgamma(a))


def full_model_norm(nu, class_prior):
    model = build_model(DIMS, 3, latent_dim=2, hidden=(4,), nu=nu, sigma=SIGMAS,
                        class_prior=class_prior or "uniform")
    mask = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    x = {m: torch.randn(4, n) * mask[:, j : j + 1] for j, (m, n) in enumerate(DIMS.items())}
    norm = declared_norm(model.model, x, mask, torch.tensor([0, 1, 2, 0]))
    observed = [[m for j, m in enumerate(DIMS) if mask[i, j]] for i in range(4)]
    n = [sum(DIMS[m] for m in obs) for obs in observed]
    log_det = [sum(DIMS[m] * math.log(SIGMAS[m] ** 2) for m in obs) for obs in observed]
    return norm, n, log_det


def test_auto_gamma_is_per_datum_with_missing_modalities():
    """γ = −2/(ν + n_i + d), n_i the observed dimension of datum i (8, 5, 3, 8)."""
    norm, n, _ = full_model_norm(5.0, None)
    assert n == [8, 5, 3, 8]
    expected = torch.tensor([-2 / (5.0 + n_i + 2) for n_i in n])
    assert torch.allclose(norm.auto_gamma(), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("gamma", ["auto", -0.1, 0.2])
def test_full_model_declaration_per_datum(gamma):
    """The declared log‖p‖ per datum: [log Σ_y π_y^{1+γ} + log ∫ t_{n+d}(0, diag(I, Λ), ν)^{1+γ}]
    /(1+γ) over the observed modalities, and at γ = auto also the simplified form
    [log Σ π^{1+γ} + γ log K + log((ν+n+d−2)/(ν−2))]/(1+γ) (F3)."""
    nu, prior = 5.0, (0.5, 0.3, 0.2)
    norm, n, log_det = full_model_norm(nu, prior)
    gammas = [-2 / (nu + n_i + 2) for n_i in n] if gamma == "auto" else [gamma] * len(n)
    value = norm.log_norm(torch.tensor(gammas))
    log_pi = torch.tensor(prior).log()
    for i, (g, n_i, ld) in enumerate(zip(gammas, n, log_det, strict=True)):
        log_class = torch.logsumexp((1 + g) * log_pi, 0).item()
        expected = (log_class + t_log_power_integral(nu, n_i + 2, ld, g)) / (1 + g)
        assert value[i].item() == pytest.approx(expected, rel=1e-12)
        if gamma == "auto":
            log_k = (math.lgamma((nu + n_i + 2) / 2) - math.lgamma(nu / 2)
                     - (n_i + 2) / 2 * math.log(nu * math.pi) - ld / 2)
            simple = (log_class + g * log_k + math.log((nu + n_i + 2 - 2) / (nu - 2))) / (1 + g)
            assert value[i].item() == pytest.approx(simple, rel=1e-12)


def test_gaussian_full_model_declaration_per_datum():
    norm, n, log_det = full_model_norm(math.inf, (0.5, 0.3, 0.2))
    assert isinstance(norm, GaussianPowerNorm)
    gamma = -0.2
    value = norm.log_norm(torch.tensor(gamma))
    log_class = torch.logsumexp((1 + gamma) * torch.tensor((0.5, 0.3, 0.2)).log(), 0).item()
    for i, (n_i, ld) in enumerate(zip(n, log_det, strict=True)):
        dim = n_i + 2
        log_int = -gamma * dim / 2 * math.log(2 * math.pi) - gamma / 2 * ld - dim / 2 * math.log1p(gamma)
        assert value[i].item() == pytest.approx((log_class + log_int) / (1 + gamma), rel=1e-12)
    # "auto" at ν = ∞: γ = −2/(∞ + n + d) = 0, the KL limit
    assert torch.equal(norm.auto_gamma(), torch.zeros(4))


# ------------------------------------------------------------------------------- errors
def test_declare_power_norm_rejects_other_objects():
    with pytest.raises(ValueError, match="PowerNorm"):
        declare_power_norm(1.0)


def test_find_power_norm_needs_exactly_one_declaration():
    def model(num):
        ones = torch.ones(3)
        with pyro.plate("data", 3):
            for i in range(num):
                declare_power_norm(StudentTPowerNorm(5.0, ones, 1, 0 * ones), name=f"norm_{i}")

    for num in (0, 2):
        trace = poutine.trace(model).get_trace(num)
        with pytest.raises(ValueError, match=f"found {num}"):
            find_power_norm(trace)


def test_auto_gamma_needs_nu_above_two():
    ones = torch.ones(2)
    with pytest.raises(ValueError, match="nu"):
        StudentTPowerNorm(2.0, ones, 1, 0 * ones).auto_gamma()


# ------------------------------------------------------------- the Monte Carlo power norm
def test_monte_carlo_norm_equals_the_closed_form_for_the_t_and_gaussian_models():
    """For the all-Student-t and the all-Gaussian model the closed form is known: the Monte
    Carlo norm built from the model's own ancestral draws (8000 per pattern, 6 repeats) agrees
    within 4 standard errors, per pattern of missing modalities."""
    mask = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    x = {m: torch.randn(4, n) * mask[:, j : j + 1] for j, (m, n) in enumerate(DIMS.items())}
    for nu, gamma in ((5.0, "auto"), (5.0, -0.05), (math.inf, -0.05)):
        m2 = build_model(DIMS, 3, latent_dim=2, hidden=(4,), nu=nu, sigma=SIGMAS,
                         class_prior=(0.5, 0.3, 0.2))
        closed = declared_norm(m2.model, x, mask, torch.tensor([0, 1, 2, 0]))
        mc = MonteCarloPowerNorm(m2.model, mask, closed.obs_dim, 2,
                                 nu=None if math.isinf(nu) else m2.nu, num_draws=8000)
        g = closed.auto_gamma() if gamma == "auto" else torch.full((4,), gamma)
        expected = closed.log_norm(g)
        with torch.no_grad():
            estimates = torch.stack([mc.log_norm(g) for _ in range(6)])
        se = estimates.std(0) / math.sqrt(6)
        assert ((estimates.mean(0) - expected).abs() < 4 * se + 1e-6).all(), (
            nu, gamma, estimates.mean(0), expected, se)


def test_monte_carlo_norm_gradient_matches_the_closed_form_in_nu():
    """d log‖p‖/dν: the closed form's gradient (autograd through the t power integral) and the
    Monte Carlo norm's self-normalised score gradient agree within 4 SE; and the gradient with
    respect to a decoder's weights is zero in expectation (the norm of the power form does not
    depend on the means)."""
    m2 = build_model(DIMS, 3, latent_dim=2, hidden=(4,), nu=5.0, sigma=SIGMAS, learn_nu=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    x = {m: torch.zeros(1, n) for m, n in DIMS.items()}
    closed = declared_norm(m2.model, x, mask, torch.tensor([0]))
    gamma = torch.tensor([-0.05])
    (exact,) = torch.autograd.grad(closed.log_norm(gamma).sum(), m2.nu_unconstrained)
    weight = m2.decoders["a"].input.weight
    grads, weight_grads = [], []
    for _ in range(8):
        mc = MonteCarloPowerNorm(m2.model, mask, closed.obs_dim, 2, nu=m2.nu, num_draws=4000)
        g_nu, g_w = torch.autograd.grad(mc.log_norm(gamma).sum(),
                                        [m2.nu_unconstrained, weight])
        grads.append(g_nu)
        weight_grads.append(g_w)
    grads, weight_grads = torch.stack(grads), torch.stack(weight_grads)
    se = grads.std() / math.sqrt(len(grads))
    assert abs(grads.mean() - exact) < 4 * se + 1e-6, (grads.mean(), exact, se)
    w_se = weight_grads.std(0) / math.sqrt(len(weight_grads))
    assert ((weight_grads.mean(0)).abs() < 4 * w_se + 1e-8).all()


def test_monte_carlo_norm_of_a_bernoulli_model_equals_the_exact_sum_and_integral():
    """A tiny model with a Bernoulli modality (d = 1, K = 2, three binary features):
    ‖p‖^{1+γ} = Σ_y π_y^{1+γ} ∫ t_1(z; ν)^{1+γ} Π_i (p_i^{1+γ} + (1 − p_i)^{1+γ}) dz, the sum
    over x exact and the integral over z by quadrature, against both Monte Carlo norms (the
    declared one, x summed exactly, and the ancestral one, x drawn)."""
    nu, gamma = 5.0, -0.2
    m2 = build_model({"b": 3}, 2, latent_dim=1, hidden=(4,), nu=nu, likelihood="bernoulli",
                     class_prior=(0.7, 0.3))
    from pyro_mmt.models.multimodal_m2 import LatentMonteCarloPowerNorm

    mask = torch.ones(1, 1, dtype=torch.bool)
    latent = declared_norm(m2.model, {"b": torch.zeros(1, 3)}, mask, torch.tensor([0]))
    assert isinstance(latent, LatentMonteCarloPowerNorm)  # the Bernoulli sum is exact

    def integrand(z, y):
        with torch.no_grad():
            logits = m2.decoders["b"](torch.tensor([[z]]), torch.tensor([y]))[0]
        prob = torch.sigmoid(logits).double().numpy()
        bern = np.prod(prob ** (1 + gamma) + (1 - prob) ** (1 + gamma))
        return stats.t.pdf(z, nu) ** (1 + gamma) * bern

    total = sum(prior ** (1 + gamma) * integrate.quad(integrand, -np.inf, np.inf, args=(y,),
                                                       epsrel=1e-10, limit=200)[0]
                for y, prior in enumerate((0.7, 0.3)))
    expected = math.log(total) / (1 + gamma)
    ancestral = MonteCarloPowerNorm(m2.model, mask, latent.obs_dim, 1, nu=m2.nu)
    for norm in (latent, ancestral):
        norm.num_draws = 20000
        with torch.no_grad():
            estimates = torch.stack([norm.log_norm(torch.tensor([gamma])) for _ in range(6)])
        se = estimates.std() / math.sqrt(6)
        assert abs(estimates.mean().item() - expected) < 4 * se.item() + 1e-6, (
            type(norm).__name__, estimates.mean(), expected, se)


# ------------------------------------------------- the latent Monte Carlo norm (x exact, z drawn)
@pytest.mark.parametrize("nu", [5.0, math.inf], ids=["t", "gaussian"])
def test_latent_norm_is_exact_for_the_all_t_and_all_gaussian_models(nu):
    """With only Student-t (or only Gaussian) modalities, p(z)^{1+γ} I_t(z) is proportional to
    the proposal's density, so every draw gives the same weight: three draws reproduce the
    closed form (F3) exactly, per pattern of missing modalities, for the auto and other γ."""
    from pyro_mmt.models.multimodal_m2 import LatentMonteCarloPowerNorm

    mask = torch.tensor([[True, True], [True, False], [False, True]])
    m2 = build_model(DIMS, 3, latent_dim=2, hidden=(4,), nu=nu, sigma=SIGMAS,
                     class_prior=(0.5, 0.3, 0.2))
    closed = m2.power_norm(mask)
    assert isinstance(closed, StudentTPowerNorm | GaussianPowerNorm)
    latent = LatentMonteCarloPowerNorm(m2, mask, closed.obs_dim,
                                       nu=None if math.isinf(nu) else m2.nu, num_draws=3)
    gammas = [torch.full((3,), -0.05), torch.full((3,), 0.1)]
    if not math.isinf(nu):
        gammas.append(closed.auto_gamma())
    for gamma in gammas:
        torch.testing.assert_close(latent.log_norm(gamma), closed.log_norm(gamma),
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("families", [
    {"b": "bernoulli"}, {"b": "poisson"}, {"b": "categorical"}, {"b": "gaussian"}])
def test_latent_norm_agrees_with_ancestral_draws(families):
    """For each family with a closed-form power integral, the latent norm (x exact, z drawn)
    and the ancestral Monte Carlo norm (everything drawn) estimate the same ‖p‖, here with a
    Student-t modality beside it and a missing-modality pattern."""
    from pyro_mmt.models.multimodal_m2 import LatentMonteCarloPowerNorm

    kwargs = {"num_categories": {"b": 3}} if families["b"] == "categorical" else {}
    m2 = build_model({"a": 2, "b": 3}, 2, latent_dim=2, hidden=(4,), nu=5.0,
                     likelihood=families, **kwargs)
    mask = torch.tensor([[True, True], [False, True]])
    norm = m2.power_norm(mask)
    assert isinstance(norm, LatentMonteCarloPowerNorm)
    ancestral = MonteCarloPowerNorm(m2.model, mask, norm.obs_dim, 2, nu=m2.nu, num_draws=20000)
    gamma = torch.full((2,), -0.1)
    norm.num_draws = 20000
    with torch.no_grad():
        latent_values = torch.stack([norm.log_norm(gamma) for _ in range(4)])
        ancestral_values = torch.stack([ancestral.log_norm(gamma) for _ in range(4)])
    diff = latent_values.mean(0) - ancestral_values.mean(0)
    se = (latent_values.var(0) / 4 + ancestral_values.var(0) / 4).sqrt()
    assert (diff.abs() < 4 * se + 1e-4).all(), (diff, se)


def test_family_power_integrals_against_direct_sums():
    from pyro_mmt.likelihoods import make_likelihood

    out = torch.randn(5, 6)
    gamma = torch.tensor(-0.2)
    bern = make_likelihood("bernoulli", 6).log_power_integral(out, gamma)
    p = torch.sigmoid(out)
    torch.testing.assert_close(bern, torch.log(p ** 0.8 + (1 - p) ** 0.8).sum(-1))
    pois = make_likelihood("poisson", 6).log_power_integral(out, gamma)
    rate = torch.nn.functional.softplus(out) + 1e-6
    k = torch.arange(200.0)
    pmf = torch.distributions.Poisson(rate.unsqueeze(-1)).log_prob(k).exp()
    torch.testing.assert_close(pois, torch.log((pmf ** 0.8).sum(-1)).sum(-1))
    cat = make_likelihood("categorical", 2, num_categories=3).log_power_integral(out, gamma)
    probs = torch.softmax(out.reshape(5, 2, 3), -1)
    torch.testing.assert_close(cat, torch.log((probs ** 0.8).sum(-1)).sum(-1))
