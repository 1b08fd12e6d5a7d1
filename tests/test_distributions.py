"""Tests of pyro_mmt.distributions against scipy, quadrature, Monte Carlo and explicit formulas.

Closed forms are checked against independent computations: scipy's multivariate t, numerical
integration in one and two dimensions (F1, F3 of docs/derivation.md §3), large Monte Carlo
(second moments, shared mixing), the prior × decoder product (F2, §2) and a numerical
minimisation of the no-data objective (τ_0, docs/derivation.md §4). Everything runs in float64.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import integrate, optimize, stats

from pyro_mmt.distributions import (
    DiagStudentT,
    auto_gamma,
    gaussian_log_norm,
    gaussian_poe,
    log_power_integral,
    log_t_power_integral,
    power_form_log_constant,
    power_form_log_norm,
    prior_expert_scale,
    second_moment,
    student_t_poe,
)

QUAD = dict(epsabs=0.0, epsrel=1e-11)


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)


# ------------------------------------------------------------------------------------------
# numpy references


def ref_log_t(v, loc, scale2, df):
    """log t_D(v; loc, diag(scale2), df), written out with the math module (fast for quad)."""
    dim = len(v)
    delta = sum((vk - mk) ** 2 / sk for vk, mk, sk in zip(v, loc, scale2, strict=True))
    return (
        math.lgamma((df + dim) / 2)
        - math.lgamma(df / 2)
        - dim / 2 * math.log(df * math.pi)
        - 0.5 * sum(math.log(sk) for sk in scale2)
        - (df + dim) / 2 * math.log1p(delta / df)
    )


def ref_log_normal(v, loc, scale2):
    """log N(v; loc, diag(scale2)) with the math module."""
    return sum(
        -0.5 * math.log(2 * math.pi * sk) - 0.5 * (vk - mk) ** 2 / sk
        for vk, mk, sk in zip(v, loc, scale2, strict=True)
    )


def quad_1d(f, centre):
    """∫ f over R, split at the mode so that quad sees it."""
    return (
        integrate.quad(f, -np.inf, centre, **QUAD)[0] + integrate.quad(f, centre, np.inf, **QUAD)[0]
    )


def quad_2d(f, centre_outer, centre_inner, half_width=np.inf):
    """∫∫ f(inner, outer) over R², split at the mode; centre_inner may depend on outer.

    A finite ``half_width`` truncates the domain (for Gaussian integrands, whose mass beyond
    15 standard deviations is below 1e-40).
    """
    c_in = centre_inner if callable(centre_inner) else (lambda _o, c=centre_inner: c)

    def lo(o):
        return c_in(o) - half_width

    def hi(o):
        return c_in(o) + half_width

    total = 0.0
    outer = (centre_outer - half_width, centre_outer, centre_outer + half_width)
    for o_lo, o_hi in zip(outer[:-1], outer[1:], strict=True):
        total += integrate.dblquad(f, o_lo, o_hi, lo, c_in, **QUAD)[0]
        total += integrate.dblquad(f, o_lo, o_hi, c_in, hi, **QUAD)[0]
    return total


# ------------------------------------------------------------------------------------------
# DiagStudentT


@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("df", [0.8, 3.0, 30.0])
def test_log_prob_matches_scipy(dim, df):
    loc = torch.randn(dim)
    scale = torch.rand(dim) * 2 + 0.3
    value = 3 * torch.randn(7, dim)
    expected = stats.multivariate_t(loc.numpy(), np.diag(scale.numpy() ** 2), df=df).logpdf(
        value.numpy()
    )
    actual = DiagStudentT(df, loc, scale).log_prob(value)
    assert actual.shape == (7,)
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-11)


def test_batched_df_and_shapes():
    df = torch.tensor([2.5, 4.0, 11.0])
    loc = torch.randn(3, 4)
    scale = torch.rand(4) + 0.5
    d = DiagStudentT(df, loc, scale)
    assert d.batch_shape == (3,) and d.event_shape == (4,)
    assert d.rsample((5, 2)).shape == (5, 2, 3, 4)
    value = torch.randn(6, 1, 4)
    lp = d.log_prob(value)
    assert lp.shape == (6, 3)
    for i in range(3):
        ref = stats.multivariate_t(loc[i].numpy(), np.diag(scale.numpy() ** 2), df=df[i].item())
        np.testing.assert_allclose(lp[:, i].numpy(), ref.logpdf(value[:, 0].numpy()), rtol=1e-11)
    # the same as Pyro's MultivariateStudentT with a diagonal scale_tril
    mvt = dist.MultivariateStudentT(df, loc, torch.diag_embed(scale.expand(3, 4)))
    torch.testing.assert_close(lp, mvt.log_prob(value), rtol=1e-12, atol=0)

    e = d.expand((2, 3))
    assert e.batch_shape == (2, 3) and isinstance(e, DiagStudentT)
    torch.testing.assert_close(e.log_prob(value[:2]), lp[:2])


def test_mean_and_variance():
    df = torch.tensor([0.5, 1.5, 6.0])
    d = DiagStudentT(df, torch.ones(3, 2), torch.tensor([1.0, 2.0]))
    assert torch.isnan(d.mean[0]).all() and (d.mean[1:] == 1).all()
    assert torch.isnan(d.variance[0]).all() and torch.isinf(d.variance[1]).all()
    torch.testing.assert_close(d.variance[2], torch.tensor([1.0, 4.0]) * 6 / 4)


def test_validation():
    with pytest.raises(ValueError):
        DiagStudentT(3.0, torch.zeros(2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError):
        DiagStudentT(torch.tensor([3.0, 0.0]), torch.zeros(2, 2), torch.ones(2))
    pyro.enable_validation(False)
    DiagStudentT(3.0, torch.zeros(2), torch.tensor([1.0, -1.0]))  # not checked


def test_shared_mixing_variable():
    """One chi-square per draw: coordinates uncorrelated but their squares correlated.

    For t_2(0, I, ν), corr(z1², z2²) = (E w⁻² − (E w⁻¹)²)/(3 E w⁻² − (E w⁻¹)²) = 1/9 at ν = 10,
    where E w⁻¹ = ν/(ν−2), E w⁻² = ν²/((ν−2)(ν−4)). Independent coordinates give 0.
    """
    n, df = 200_000, 10.0
    z = DiagStudentT(df, torch.zeros(2), torch.ones(2)).sample((n,))
    u = dist.StudentT(df, torch.zeros(2), torch.ones(2)).to_event(1).sample((n,))

    def corr(a, b):
        return np.corrcoef(a.numpy(), b.numpy())[0, 1]

    assert abs(corr(z[:, 0], z[:, 1])) < 0.01  # SE ≈ 1/sqrt(n) = 0.0022
    assert abs(corr(z[:, 0] ** 2, z[:, 1] ** 2) - 1 / 9) < 0.03
    assert abs(corr(u[:, 0] ** 2, u[:, 1] ** 2)) < 0.02


def test_rsample_is_reparameterised():
    n, df = 200_000, 10.0
    loc = torch.tensor([0.5, -1.0], requires_grad=True)
    scale = torch.tensor([0.5, 2.0], requires_grad=True)
    nu = torch.tensor(df, requires_grad=True)
    z = DiagStudentT(nu, loc, scale).rsample((n,))
    (grad_loc,) = torch.autograd.grad(z.sum(), loc, retain_graph=True)
    torch.testing.assert_close(grad_loc, torch.full((2,), float(n)))
    # d/ds E (z − m)² = 2 s ν/(ν−2);  d/dν E Σ(z − m)² = −2 Σ s²/(ν−2)²
    grad_scale, grad_nu = torch.autograd.grad((z - loc.detach()).pow(2).mean(0).sum(), [scale, nu])
    expected = 2 * scale.detach() * df / (df - 2)
    np.testing.assert_allclose(grad_scale.numpy(), expected.numpy(), rtol=0.03)
    expected_dnu = -2 * scale.detach().pow(2).sum().item() / (df - 2) ** 2
    assert abs(grad_nu.item() - expected_dnu) < 0.05 * abs(expected_dnu)


@pytest.mark.parametrize("fn", ["diag_t", "normal", "mvt"])
def test_second_moment_monte_carlo(fn):
    loc = torch.tensor([0.5, -1.0, 2.0])
    scale = torch.tensor([0.5, 1.0, 2.0])
    d = {
        "diag_t": DiagStudentT(9.0, loc, scale),
        "normal": dist.Normal(loc, scale).to_event(1),
        "mvt": dist.MultivariateStudentT(9.0, loc, torch.diag(scale)),
    }[fn]
    sq = d.sample((400_000,)).pow(2).sum(-1)
    se = sq.std() / math.sqrt(sq.numel())
    exact = second_moment(d)
    assert exact.shape == ()
    assert abs(sq.mean() - exact) < 4 * se
    factor = 9 / 7 if fn != "normal" else 1.0
    torch.testing.assert_close(exact, loc.pow(2).sum() + factor * scale.pow(2).sum())


def test_second_moment_heavy_tail_and_unsupported():
    assert torch.isinf(DiagStudentT(2.0, torch.zeros(2), torch.ones(2)).second_moment())
    with pytest.raises(NotImplementedError, match="Gamma"):
        second_moment(dist.Gamma(torch.ones(2), 1.0))


# ------------------------------------------------------------------------------------------
# power integrals (docs/derivation.md §3 (F1))


T_CASES_1D = [(3.0, 0.4), (2.5, -0.2), (1.2, -0.3), (7.0, 1.5)]


@pytest.mark.parametrize("df,gamma", T_CASES_1D)
def test_t_power_integral_quad_1d(df, gamma):
    loc, scale = 0.7, 1.8
    d = DiagStudentT(df, torch.tensor([loc]), torch.tensor([scale]))

    def f(v):
        return math.exp((1 + gamma) * ref_log_t([v], [loc], [scale**2], df))

    expected = math.log(quad_1d(f, loc))
    np.testing.assert_allclose(d.log_power_integral(gamma).item(), expected, rtol=1e-9)
    np.testing.assert_allclose(log_power_integral(d, gamma).item(), expected, rtol=1e-9)


@pytest.mark.parametrize("df,gamma", [(4.0, 0.3), (6.0, -0.15)])
def test_t_power_integral_dblquad_2d(df, gamma):
    loc, scale = np.array([0.3, -1.0]), np.array([0.7, 1.6])
    loc_l, scale2_l = loc.tolist(), (scale**2).tolist()
    d = DiagStudentT(df, torch.tensor(loc), torch.tensor(scale))

    def f(v2, v1):
        return math.exp((1 + gamma) * ref_log_t([v1, v2], loc_l, scale2_l, df))

    expected = math.log(quad_2d(f, loc[0], loc[1]))
    np.testing.assert_allclose(d.log_power_integral(gamma).item(), expected, rtol=1e-8)


@pytest.mark.parametrize("gamma", [0.5, -0.3])
def test_gaussian_power_integral_quad(gamma):
    loc, scale = np.array([0.3, -1.0]), np.array([0.7, 1.6])
    loc_l, scale2_l = loc.tolist(), (scale**2).tolist()

    def f1(v):
        return math.exp((1 + gamma) * ref_log_normal([v], loc_l[:1], scale2_l[:1]))

    def f2(v2, v1):
        return math.exp((1 + gamma) * ref_log_normal([v1, v2], loc_l, scale2_l))

    expected_1 = math.log(quad_1d(f1, loc[0]))
    expected_2 = math.log(quad_2d(f2, loc[0], loc[1], half_width=30.0))
    normal = dist.Normal(torch.tensor(loc), torch.tensor(scale))
    np.testing.assert_allclose(log_power_integral(normal, gamma)[0].item(), expected_1, rtol=1e-9)
    np.testing.assert_allclose(
        log_power_integral(normal.to_event(1), gamma).item(), expected_2, rtol=1e-8
    )
    mvn = dist.MultivariateNormal(torch.tensor(loc), torch.diag(torch.tensor(scale) ** 2))
    np.testing.assert_allclose(log_power_integral(mvn, gamma).item(), expected_2, rtol=1e-8)


def test_log_power_integral_dispatch():
    loc, scale = torch.randn(4, 3), torch.rand(4, 3) + 0.5
    gamma = torch.tensor([-0.2, 0.1, 0.3, -0.05])
    indep = dist.Normal(loc, scale).to_event(1)
    value = log_power_integral(indep, gamma)
    d = 3
    formula = (
        -gamma * d / 2 * math.log(2 * math.pi)
        - gamma * scale.log().sum(-1)
        - d / 2 * torch.log1p(gamma)
    )
    torch.testing.assert_close(value, formula)
    # a batched gamma aligns with the Independent's batch shape, not the base's
    for i in range(4):
        one = dist.Normal(loc[i], scale[i]).to_event(1)
        torch.testing.assert_close(value[i], log_power_integral(one, gamma[i].item()))

    mask = torch.tensor([True, False, True, False])
    masked = log_power_integral(indep.mask(mask), gamma)
    torch.testing.assert_close(masked, torch.where(mask, formula, torch.zeros(4)))
    torch.testing.assert_close(log_power_integral(indep.mask(False), 0.2), torch.zeros(4))

    df = torch.tensor([3.0, 5.0, 8.0, 20.0])
    t = DiagStudentT(df, loc, scale)
    mvt = dist.MultivariateStudentT(df, loc, torch.diag_embed(scale))
    torch.testing.assert_close(log_power_integral(mvt, gamma), log_power_integral(t, gamma))
    torch.testing.assert_close(
        log_power_integral(t.expand((2, 4)), 0.2), log_power_integral(t, 0.2).expand(2, 4)
    )

    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])
    expected = probs.pow(1.3).sum(-1).log()
    torch.testing.assert_close(log_power_integral(dist.Categorical(probs), 0.3), expected)
    torch.testing.assert_close(log_power_integral(dist.OneHotCategorical(probs), 0.3), expected)

    with pytest.raises(NotImplementedError, match="Gamma"):
        log_power_integral(dist.Gamma(1.0, 1.0), 0.1)
    with pytest.raises(ValueError):
        log_power_integral(dist.Normal(0.0, 1.0), -1.0)
    with pytest.raises(ValueError):
        DiagStudentT(1.0, torch.zeros(2), torch.ones(2)).log_power_integral(-0.5)


def test_log_t_power_integral_per_datum_dimension():
    df = torch.tensor([3.0, 5.5, 12.0])
    dim = torch.tensor([1, 4, 9])
    gamma = auto_gamma(5.0, dim, 2)
    log_scales = [torch.randn(k) for k in dim.tolist()]
    log_det = torch.stack([2 * s.sum() for s in log_scales])
    value = log_t_power_integral(df, dim, log_det, gamma)
    for i, s in enumerate(log_scales):
        ref = DiagStudentT(df[i], torch.zeros(len(s)), s.exp()).log_power_integral(gamma[i])
        torch.testing.assert_close(value[i], ref)
    with pytest.raises(ValueError):
        log_t_power_integral(torch.tensor([3.0, 1.0]), 2, 0.0, -0.6)


def test_auto_gamma():
    assert auto_gamma(5, 784, 16) == pytest.approx(-2 / 805)
    torch.testing.assert_close(
        auto_gamma(5.0, torch.tensor([784, 64]), 16), torch.tensor([-2 / 805, -2 / 85])
    )
    for nu in (2, 1.5, torch.tensor([3.0, 2.0])):
        with pytest.raises(ValueError, match="nu"):
            auto_gamma(nu, 10, 2)


# ------------------------------------------------------------------------------------------
# the power-form joint (docs/derivation.md §2 (F2) and §3 (F3))


def test_power_form_identity():
    """π_y t_d(z;0,I,ν) t_n(x; μ, s(z)²Λ, ν+d) = π_y K (1 + Q/ν)^{−(ν+n+d)/2}, 2 modalities."""
    nu, d, dims, sigma = 4.5, 3, (2, 3), (0.7, 1.3)
    n = sum(dims)
    sig = torch.cat([torch.full((k,), s) for k, s in zip(dims, sigma, strict=True)])
    log_det = sum(k * math.log(s**2) for k, s in zip(dims, sigma, strict=True))
    log_pi = torch.log_softmax(torch.randn(3), -1)
    z, x, mu = 2 * torch.randn(10, d), 3 * torch.randn(10, n), torch.randn(10, 3, n)
    z_ = z.unsqueeze(-2)
    s2 = (nu + z_.pow(2).sum(-1)) / (nu + d)  # [10, 1]
    prior = DiagStudentT(nu, torch.zeros(d), torch.ones(d))
    decoder = DiagStudentT(nu + d, mu, s2.sqrt().unsqueeze(-1) * sig)
    lhs = log_pi + prior.log_prob(z_) + decoder.log_prob(x.unsqueeze(-2))  # [10, 3]
    mvt_decoder = dist.MultivariateStudentT(
        nu + d, mu, torch.diag_embed(s2.sqrt().unsqueeze(-1) * sig)
    )
    mvt_prior = dist.MultivariateStudentT(nu, torch.zeros(d), torch.eye(d))
    lhs_mvt = log_pi + mvt_prior.log_prob(z_) + mvt_decoder.log_prob(x.unsqueeze(-2))
    q = z_.pow(2).sum(-1) + ((x.unsqueeze(-2) - mu) / sig).pow(2).sum(-1)
    log_k = power_form_log_constant(nu, n, d, log_det)
    rhs = log_pi + log_k - (nu + n + d) / 2 * torch.log1p(q / nu)
    torch.testing.assert_close(lhs, rhs, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(lhs_mvt, rhs, rtol=1e-13, atol=1e-12)


def nonlinear_mean(y, z):
    return math.sin(2 * z) * (y + 1) + 3 * y + z**2 / 2


@pytest.mark.parametrize("gamma", ["auto", 0.3])
def test_power_form_log_norm_quadrature(gamma):
    """||p||^{1+γ} = Σ_y ∫∫ p(x, y, z)^{1+γ} dx dz for d = n = 1, K = 2, a nonlinear mean."""
    nu, sigma = 4.0, 0.7
    pi = np.array([0.3, 0.7])
    g = -2 / (nu + 2) if gamma == "auto" else gamma

    def log_joint(x, z, y):
        s2 = (nu + z**2) / (nu + 1)
        return (
            math.log(pi[y])
            + ref_log_t([z], [0.0], [1.0], nu)
            + ref_log_t([x], [nonlinear_mean(y, z)], [s2 * sigma**2], nu + 1)
        )

    total = sum(
        quad_2d(
            lambda x, z, y=y: math.exp((1 + g) * log_joint(x, z, y)),
            0.0,
            lambda z, y=y: nonlinear_mean(y, z),
        )
        for y in (0, 1)
    )
    log_norm = power_form_log_norm(
        nu, 1, 1, math.log(sigma**2), g, class_log_prior=torch.tensor(np.log(pi))
    )
    np.testing.assert_allclose(math.exp((1 + g) * log_norm.item()), total, rtol=1e-7)
    if gamma == "auto":  # the simplified form of F3 at γ = −2/(ν+n+d)
        log_k = power_form_log_constant(nu, 1, 1, math.log(sigma**2)).item()
        simple = math.log((pi ** (1 + g)).sum()) + g * log_k + math.log((nu + 2 - 2) / (nu - 2))
        np.testing.assert_allclose((1 + g) * log_norm.item(), simple, rtol=1e-12)


@pytest.mark.parametrize("gamma", [-0.3, 0.4])
def test_gaussian_log_norm_quadrature(gamma):
    sigma = 0.7
    pi = np.array([0.3, 0.7])

    def log_joint(x, z, y):
        return (
            math.log(pi[y])
            + ref_log_normal([z], [0.0], [1.0])
            + ref_log_normal([x], [nonlinear_mean(y, z)], [sigma**2])
        )

    total = sum(
        quad_2d(
            lambda x, z, y=y: math.exp((1 + gamma) * log_joint(x, z, y)),
            0.0,
            lambda z, y=y: nonlinear_mean(y, z),
            half_width=15.0,  # both standard deviations are below 1 / sqrt(1 + γ) < 1.2
        )
        for y in (0, 1)
    )
    log_norm = gaussian_log_norm(
        1, 1, math.log(sigma**2), gamma, class_log_prior=torch.tensor(np.log(pi))
    )
    np.testing.assert_allclose(math.exp((1 + gamma) * log_norm.item()), total, rtol=1e-7)


def test_log_norms_per_datum_and_gaussian_limit():
    obs_dim = torch.tensor([64.0, 784.0, 5.0])
    log_det = torch.tensor([0.0, -100.0, 2.0])
    gamma = auto_gamma(5.0, obs_dim, 16)
    log_pi = torch.log(torch.tensor([0.99, 0.01]))
    batched = power_form_log_norm(5.0, obs_dim, 16, log_det, gamma, class_log_prior=log_pi)
    for i in range(3):
        one = power_form_log_norm(
            5.0, int(obs_dim[i]), 16, log_det[i].item(), gamma[i].item(), class_log_prior=log_pi
        )
        torch.testing.assert_close(batched[i], one)
    # ν → ∞: the t joint tends to the Gaussian one
    t = power_form_log_norm(1e9, obs_dim, 16, log_det, -0.1)
    torch.testing.assert_close(t, gaussian_log_norm(obs_dim, 16, log_det, -0.1), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------
# τ_0 (docs/derivation.md §4, "Approximation 3")


@pytest.mark.parametrize(
    "n,d,nu,sigma,expected,tol",
    [
        (784, 16, 5.0, 1.0, 9.27, 0.005),
        (649, 32, 5.0, 1.0, 7.69, 0.005),
        (64, 16, 5.0, 1.0, 0.87, 0.005),
        (64, 16, 100.0, 1.0, 0.53, 0.005),
        (784, 16, 2.5, 1.0, 18.2, 0.05),
        (784, 16, 10.0, 1.0, 4.75, 0.005),
        (784, 16, 5.0, 0.25, 146.7, 0.05),
    ],
)
def test_prior_expert_scale_table(n, d, nu, sigma, expected, tol):
    tau = prior_expert_scale(nu, n, d, n * math.log(sigma**2))
    assert abs(tau.item() - expected) <= tol


def no_data_objective(log_sigma, nu, n, d, log_det):
    """L(Σ) of docs/derivation.md §4 for one modality, no label, m = 0, recon = 0,
    Σ = diag(exp log_sigma).

    Built from the general forms (F1 for ∫q^{1+γ}, F3 for ||p_0||), not from τ_0's formula.
    """
    gamma = auto_gamma(nu, n, d)
    log_c = gamma * (
        power_form_log_constant(nu, n, d, log_det) - power_form_log_norm(nu, n, d, log_det, gamma)
    )
    # q = t_d(m, ν/(ν+n) Σ, ν+n): log|S| = d log(ν/(ν+n)) + Σ log Σ_k
    log_det_q = d * math.log(nu / (nu + n)) + log_sigma.sum(-1)
    log_q_power = log_t_power_integral(nu + n, d, log_det_q, gamma)
    cross = log_c.exp() * (1 + nu / (nu + n - 2) * log_sigma.exp().sum(-1) / nu)
    entropy = (log_q_power / (1 + gamma)).exp()
    return -(cross - entropy) / gamma


@pytest.mark.parametrize(
    "nu,n,d,sigma",
    [(5.0, 784, 16, 1.0), (5.0, 64, 16, 1.0), (4.5, 5, 3, 0.8), (5.0, 784, 16, 0.25)],
)
def test_prior_expert_scale_minimises_objective(nu, n, d, sigma):
    log_det = n * math.log(sigma**2)
    tau0 = prior_expert_scale(nu, n, d, log_det).item()

    def scalar(log_tau):
        return no_data_objective(torch.full((d,), float(log_tau)), nu, n, d, log_det).item()

    res = optimize.minimize_scalar(scalar, bracket=(-3.0, 3.0), tol=1e-12)
    np.testing.assert_allclose(math.exp(res.x), tau0, rtol=1e-4)

    # stationary in every Σ_k (not only along Σ = τ I) ...
    def grad_at(log_tau):
        log_sigma = torch.full((d,), log_tau, requires_grad=True)
        return torch.autograd.grad(no_data_objective(log_sigma, nu, n, d, log_det), log_sigma)[0]

    assert grad_at(math.log(tau0)).abs().max() < 1e-9 * grad_at(math.log(2 * tau0)).abs().max()
    # ... and the root of dL/dlog τ is τ_0 to high precision
    root = optimize.brentq(
        _dlog_tau, math.log(tau0) - 1, math.log(tau0) + 1, args=(nu, n, d, log_det), xtol=1e-14
    )
    np.testing.assert_allclose(math.exp(root), tau0, rtol=1e-10)


def _dlog_tau(log_tau, nu, n, d, log_det):
    lt = torch.tensor(log_tau, requires_grad=True)
    (g,) = torch.autograd.grad(no_data_objective(lt.expand(d), nu, n, d, log_det), lt)
    return g.item()


def test_prior_expert_scale_per_datum():
    obs_dim = torch.tensor([784, 649, 64])
    latent = torch.tensor([16, 32, 16])
    tau = prior_expert_scale(5.0, obs_dim, latent, torch.zeros(3))
    for i in range(3):
        torch.testing.assert_close(
            tau[i], prior_expert_scale(5.0, int(obs_dim[i]), int(latent[i]), 0.0)
        )
    with pytest.raises(ValueError):
        prior_expert_scale(2.0, 10, 2, 0.0)


# ------------------------------------------------------------------------------------------
# product of experts (the encoder, docs/derivation.md §4, "Approximation 2")


def explicit_poe(locs, scale2s, present, prior_var):
    """Loop version: Σ⁻¹ = 1/τ0 + Σ_j present_j/Σ_j, m = Σ Σ_j present_j m_j/Σ_j."""
    precision = 1 / prior_var
    weighted = 0.0
    for m_j, s_j, p_j in zip(locs, scale2s, present, strict=True):
        if p_j:
            precision = precision + 1 / s_j
            weighted = weighted + m_j / s_j
    var = torch.ones_like(locs[0]) / precision
    return var * weighted, var


def test_student_t_poe_explicit_formula_and_broadcasting():
    M, K, B, d = 3, 2, 4, 5
    loc = torch.randn(M, K, B, d)
    scale2 = torch.rand(M, K, B, d) + 0.2
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=torch.bool)  # [B, M]
    obs_dim = torch.tensor([30.0, 20.0, 0.0, 10.0])
    prior = torch.tensor([2.0, 1.5, 3.0, 0.7])
    nu = 5.0
    q = student_t_poe(loc, scale2, mask, nu=nu, obs_dim=obs_dim, prior_scale=prior)
    assert isinstance(q, DiagStudentT)
    assert q.batch_shape == (K, B) and q.event_shape == (d,)
    for k in range(K):
        for b in range(B):
            m, var = explicit_poe(loc[:, k, b], scale2[:, k, b], mask[b], prior[b])
            n = obs_dim[b]
            torch.testing.assert_close(q.loc[k, b], m)
            torch.testing.assert_close(q.scale[k, b], (nu / (nu + n) * var).sqrt())
            torch.testing.assert_close(q.df[k, b], nu + n)
    # no expert present: the prior expert (0, τ0)
    torch.testing.assert_close(q.loc[:, 2], torch.zeros(K, d))
    torch.testing.assert_close(q.scale[:, 2], torch.full((K, d), math.sqrt(3.0)))

    # a list of experts broadcasting among themselves ([K, B, d] and [B, d])
    per_class, shared = torch.randn(K, B, d), torch.randn(B, d)
    s_class, s_shared = torch.rand(K, B, d) + 0.2, torch.rand(B, d) + 0.2
    from_list = student_t_poe(
        [per_class, shared],
        [s_class, s_shared],
        mask[:, :2],
        nu=nu,
        obs_dim=obs_dim,
        prior_scale=prior,
    )
    stacked = student_t_poe(
        torch.stack([per_class, shared.expand(K, B, d)]),
        torch.stack([s_class, s_shared.expand(K, B, d)]),
        mask[:, :2],
        nu=nu,
        obs_dim=obs_dim,
        prior_scale=prior,
    )
    torch.testing.assert_close(from_list.loc, stacked.loc)
    torch.testing.assert_close(from_list.scale, stacked.scale)

    # mask=None is "all present"
    all_on = student_t_poe(loc, scale2, None, nu=nu, obs_dim=30.0, prior_scale=2.0)
    ref = student_t_poe(
        loc, scale2, torch.ones(B, M, dtype=torch.bool), nu=nu, obs_dim=30.0, prior_scale=2.0
    )
    torch.testing.assert_close(all_on.loc, ref.loc)
    torch.testing.assert_close(all_on.scale, ref.scale)

    with pytest.raises(ValueError, match="mask"):
        student_t_poe(loc, scale2, mask[:, :2], nu=nu, obs_dim=obs_dim, prior_scale=prior)


@pytest.mark.parametrize("poe", ["t", "gaussian"])
def test_poe_ignores_masked_experts(poe):
    M, B, d = 3, 4, 2
    loc = torch.randn(M, B, d)
    scale2 = torch.rand(M, B, d) + 0.2
    mask = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    off = ~mask.T.unsqueeze(-1).expand(M, B, d)

    def fuse(loc, scale2):
        if poe == "t":
            return student_t_poe(
                loc,
                scale2,
                mask,
                nu=4.0,
                obs_dim=torch.tensor([5.0, 6, 7, 8]),
                prior_scale=torch.tensor(9.27),
            )
        return gaussian_poe(loc, scale2, mask)

    base = fuse(loc, scale2)
    for bad_loc, bad_scale2 in ((1e300, 1e-300), (math.nan, math.nan), (-math.inf, 0.0)):
        loc2 = torch.where(off, torch.full_like(loc, bad_loc), loc).requires_grad_()
        scale2_2 = torch.where(off, torch.full_like(scale2, bad_scale2), scale2).requires_grad_()
        q = fuse(loc2, scale2_2)
        assert torch.equal(q.mean, base.mean) and torch.equal(q.variance, base.variance)
        value = torch.randn(B, d)
        (q.log_prob(value).sum() + q.rsample().pow(2).sum()).backward()
        assert torch.isfinite(loc2.grad).all() and torch.isfinite(scale2_2.grad).all()
        assert (loc2.grad[off] == 0).all() and (scale2_2.grad[off] == 0).all()
        assert (loc2.grad[~off] != 0).any()


def test_student_t_poe_gaussian_limit():
    M, B, d = 2, 3, 4
    loc = torch.randn(M, B, d)
    scale2 = torch.rand(M, B, d) + 0.2
    mask = torch.tensor([[1, 1], [0, 1], [0, 0]], dtype=torch.bool)
    gauss = gaussian_poe(loc, scale2, mask)
    assert isinstance(gauss.base_dist, dist.Normal) and gauss.event_shape == (d,)
    for nu in (1e4, 1e8):
        t = student_t_poe(
            loc, scale2, mask, nu=nu, obs_dim=torch.tensor([20.0, 10.0, 0.0]), prior_scale=1.0
        )
        torch.testing.assert_close(t.loc, gauss.base_dist.loc, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(t.scale, gauss.base_dist.scale, rtol=20 / nu, atol=0)
    x = torch.randn(B, d)
    torch.testing.assert_close(t.log_prob(x), gauss.log_prob(x), rtol=1e-6, atol=0)


@pytest.mark.parametrize("gamma", [-2 / 6, 0.3])
@pytest.mark.parametrize("loc, scale", [(2.0, 1.0), (-1.5, 0.6)])
def test_class_conditional_prior_is_a_change_of_variables(gamma, loc, scale):
    """docs/derivation.md §12: a class's prior t(μ, a²) and the standard prior with the decoder
    read at a z' + μ give per-class γ-losses ℓ' = a^{γ/(1+γ)} ℓ (equal for a shift alone),
    ℓ = −(1/γ)[E_q (p(x, z)/‖p‖)^γ − ‖q‖], every integral by quadrature (d = n = 1)."""
    nu, sigma, x_obs = 4.0, 0.7, 1.3
    q_loc, q_scale, q_df = 0.8, 0.5, 7.0

    def mean(z):
        return math.sin(2 * z) + z**2 / 3

    def model(mu, a, read_at):  # p(z) = t(μ, a²), x | z ~ t(mean(read_at(z)), s²σ², ν + 1)
        def log_p(x, z):
            s2 = (nu + ((z - mu) / a) ** 2) / (nu + 1)
            return (ref_log_t([z], [mu], [a * a], nu)
                    + ref_log_t([x], [mean(read_at(z))], [s2 * sigma**2], nu + 1))
        return log_p, mu, lambda z: mean(read_at(z))

    def loss(log_p, z_centre, x_centre, m, b):
        def integral(f):
            return integrate.quad(f, -np.inf, np.inf, epsabs=0, epsrel=1e-11)[0]

        norm = quad_2d(lambda x, z: math.exp((1 + gamma) * log_p(x, z)), z_centre,
                       x_centre) ** (1 / (1 + gamma))
        cross = integral(lambda z: math.exp(ref_log_t([z], [m], [b * b], q_df)
                                            + gamma * log_p(x_obs, z)))
        q_norm = integral(lambda z: math.exp((1 + gamma) * ref_log_t([z], [m], [b * b], q_df)))
        return -(cross / norm**gamma - q_norm ** (1 / (1 + gamma))) / gamma

    shifted = loss(*model(loc, scale, lambda z: z), q_loc, q_scale)
    standard = loss(*model(0.0, 1.0, lambda z: scale * z + loc), (q_loc - loc) / scale,
                    q_scale / scale)
    np.testing.assert_allclose(standard, scale ** (gamma / (1 + gamma)) * shifted, rtol=1e-7)
    if scale == 1.0:  # a shift alone: the same loss
        np.testing.assert_allclose(standard, shifted, rtol=1e-7)
    else:  # a scale is not invisible: the factor is not 1
        assert abs(standard - shifted) > 1e-3 * abs(shifted)
