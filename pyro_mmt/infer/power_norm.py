"""How a model declares ||p||_{1+γ}, the norm of its joint density.

The γ-power divergence compares q with p/||p||_{1+γ}. That norm is an integral over the whole
joint space, so no trace contains it, yet it fixes the balance between the cross term and the
entropy term of :class:`~pyro_mmt.infer.GammaPowerELBO`. A model states it by calling
:func:`declare_power_norm` inside its data plate with one of the :class:`PowerNorm` classes
below. The declaration is a zero log-factor site, so every other Pyro objective
(``Trace_ELBO``, ``TraceEnum_ELBO``, ``Predictive``) ignores it.

Closed forms (``docs/derivation.md`` §3) exist for the all-Student-t power-form joint
(:class:`StudentTPowerNorm`) and the all-Gaussian joint (:class:`GaussianPowerNorm`); for any
other model (e.g. Bernoulli or Poisson modalities beside Student-t ones)
:class:`MonteCarloPowerNorm` estimates the norm from ancestral draws of the model itself
(``docs/derivation.md`` §9).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution

from pyro_mmt.distributions import (
    DiagStudentT,
    auto_gamma,
    gaussian_log_norm,
    power_form_log_constant,
    power_form_log_norm,
)

__all__ = [
    "PowerNorm",
    "StudentTPowerNorm",
    "GaussianPowerNorm",
    "MonteCarloPowerNorm",
    "declare_power_norm",
    "find_power_norm",
]


class PowerNorm:
    """Base class of a model's declaration of log ||p||_{1+γ} (one value per datum).

    It holds what every joint of this library's family shares: y ~ Cat(π), a d-dimensional
    latent z and n_i observed dimensions per datum with diagonal scale Λ. Subclasses implement
    :meth:`log_norm`; a subclass whose joint is a Student-t *power form* also implements
    :meth:`auto_gamma` and :meth:`log_power_form_constant`, which let
    :class:`~pyro_mmt.infer.GammaPowerELBO` use ``gamma="auto"`` and the Rao-Blackwellised
    cross term.

    :param torch.Tensor obs_dim: observed dimension n per datum (missing modalities excluded).
    :param int latent_dim: d.
    :param torch.Tensor log_det_obs_scale: log|Λ| = Σ_j n_j log σ_j² over the observed
        modalities, per datum.
    :param torch.Tensor class_log_prior: log π, shape [K], or None for a model without a label.
    :param str latent_site: name of the continuous latent site z (its prior must be the one the
        norm assumes).
    :param str class_site: name of the label site y.
    """

    #: whether the joint is a Student-t power form (exp(γ log p) affine in the quadratic Q).
    power_form = False

    def __init__(
        self,
        obs_dim: torch.Tensor,
        latent_dim: int,
        log_det_obs_scale: torch.Tensor,
        class_log_prior: torch.Tensor | None = None,
        latent_site: str = "z",
        class_site: str = "y",
    ):
        self.obs_dim = obs_dim
        self.latent_dim = int(latent_dim)
        self.log_det_obs_scale = log_det_obs_scale
        self.class_log_prior = class_log_prior
        self.latent_site = latent_site
        self.class_site = class_site

    @property
    def batch_shape(self) -> torch.Size:
        """Shape of the per-datum values (the data plate)."""
        return torch.broadcast_shapes(self.obs_dim.shape, self.log_det_obs_scale.shape)

    def log_norm(self, gamma: torch.Tensor) -> torch.Tensor:
        """log ||p||_{1+γ} per datum, for γ broadcastable to :attr:`batch_shape`."""
        raise NotImplementedError

    def log_conditional_norm(self, gamma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log ‖p(x, z | y)‖_{1+γ} per datum at the labels ``y`` (the label site's value,
        observed [B] or enumerated [K, 1]), the norm of the joint given the label (used by
        ``GammaPowerELBO(label_divergence="kl")``). For a joint whose conditional norm is the
        same for every y (the closed-form norms: the location μ(y, z) shifts out of the
        integral) it is ``log_norm`` less the label's part,
        log(Σ_y π_y^{1+γ})/(1 + γ)."""
        gamma = torch.as_tensor(gamma)
        log_norm = self.log_norm(gamma)
        if self.class_log_prior is None:
            return log_norm
        prior = self.class_log_prior.to(log_norm)
        g = gamma.to(log_norm).unsqueeze(-1)
        return log_norm - torch.logsumexp((1.0 + g) * prior, -1) / (1.0 + gamma.to(log_norm))

    def auto_gamma(self) -> torch.Tensor:
        """The "auto" γ = −2/(ν + n + d) per datum (t3VAE's choice; for the power form it
        makes p^γ affine in the quadratic Q)."""
        raise ValueError(
            f"gamma='auto' needs a model with degrees of freedom nu, but the model declared "
            f"{type(self).__name__} without one; pass an explicit gamma to GammaPowerELBO"
        )

    def covers(self, name: str, fn, *, latent: bool = False) -> str | None:
        """Whether this norm accounts for the site ``name`` of family ``fn`` (an observed
        site, or the latent site when ``latent``): None if it does, else what is wrong (a
        closed-form norm holds only for the family it was derived for)."""
        return None


class StudentTPowerNorm(PowerNorm):
    r"""Norm of the Student-t power-form joint (``docs/derivation.md`` §2 (F2) and §3 (F3)).

    The joint is

    .. math::

        p(x, y, z) = \pi_y\, K\, (1 + Q_y/\nu)^{-(\nu+n+d)/2},\qquad
        Q_y = \|z\|^2 + \sum_j \|x_j - \mu_j(y, z)\|^2/\sigma_j^2,

    with :math:`K = C(\nu, n+d) |\Lambda|^{-1/2}`, and its norm is

    .. math::

        \|p\|_{1+\gamma}^{1+\gamma} = \Big(\sum_y \pi_y^{1+\gamma}\Big)
            \int t_{n+d}(0, \mathrm{diag}(I_d, \Lambda), \nu)^{1+\gamma}.

    :param float nu: degrees of freedom ν of the prior (> 2).

    The other parameters are :class:`PowerNorm`'s.
    """

    power_form = True

    def __init__(
        self,
        nu: float,
        obs_dim: torch.Tensor,
        latent_dim: int,
        log_det_obs_scale: torch.Tensor,
        class_log_prior: torch.Tensor | None = None,
        latent_site: str = "z",
        class_site: str = "y",
    ):
        super().__init__(obs_dim, latent_dim, log_det_obs_scale, class_log_prior,
                         latent_site=latent_site, class_site=class_site)
        self.nu = nu if isinstance(nu, torch.Tensor) else float(nu)

    def covers(self, name, fn, *, latent=False):
        base = _base_distribution(fn)
        if not isinstance(base, DiagStudentT | dist.MultivariateStudentT):
            return (f"StudentTPowerNorm holds for multivariate Student-t sites, found "
                    f"{type(base).__name__}")
        return None

    def log_norm(self, gamma):
        return power_form_log_norm(
            self.nu,
            self.obs_dim,
            self.latent_dim,
            self.log_det_obs_scale,
            gamma,
            class_log_prior=self.class_log_prior,
        )

    def auto_gamma(self):
        return auto_gamma(self.nu, self.obs_dim, self.latent_dim)

    def log_power_form_constant(self):
        """log K, the constant of the power form (per datum)."""
        return power_form_log_constant(
            self.nu, self.obs_dim, self.latent_dim, self.log_det_obs_scale
        )


class GaussianPowerNorm(PowerNorm):
    r"""Norm of the Gaussian joint (the ν → ∞ model): y ~ Cat(π), z ~ N(0, I_d),
    x | y, z ~ N(μ(y, z), Λ). Shifting x by μ shows that the norm does not depend on μ:

    .. math::

        \|p\|_{1+\gamma}^{1+\gamma} = \Big(\sum_y \pi_y^{1+\gamma}\Big)
            \int N(0, I_d)^{1+\gamma} \int N(0, \Lambda)^{1+\gamma}.

    Parameters as :class:`PowerNorm`'s.
    """

    def covers(self, name, fn, *, latent=False):
        base = _base_distribution(fn)
        if not isinstance(base, dist.Normal | dist.MultivariateNormal):
            return f"GaussianPowerNorm holds for Gaussian sites, found {type(base).__name__}"
        return None

    def auto_gamma(self):
        """γ = −2/(ν + n + d) at ν = ∞: 0, the KL limit (``GammaPowerELBO`` then computes the
        negative ELBO)."""
        return torch.zeros_like(self.obs_dim)

    def log_norm(self, gamma):
        return gaussian_log_norm(
            self.obs_dim,
            self.latent_dim,
            self.log_det_obs_scale,
            gamma,
            class_log_prior=self.class_log_prior,
        )


class MonteCarloPowerNorm(PowerNorm):
    r"""‖p‖_{1+γ} of any model, by Monte Carlo over the model's own ancestral draws.

    .. math::

        \|p\|_{1+\gamma}^{1+\gamma} = \int p^{1+\gamma} = \mathbb{E}_{p}\big[p(x, y, z)^\gamma\big]
            \approx \frac1S \sum_s p(x_s, y_s, z_s)^\gamma,\qquad (x_s, y_s, z_s) \sim p,

    computed in log space (log-sum-exp). The draws are detached; the gradient of the returned
    value is that of the exact log-norm estimated by self-normalised weights,

    .. math::

        \nabla \log\|p\|_{1+\gamma} = \frac{\mathbb{E}_p[p^\gamma \nabla\log p]}
            {\mathbb{E}_p[p^\gamma]}
            \approx \sum_s w_s \nabla \log p(x_s, y_s, z_s),\qquad
            w_s \propto p(x_s, y_s, z_s)^\gamma,

    (a score-function form: discrete x need no reparameterisation). With
    :math:`\mathrm{CV}^2 = \mathrm{Var}_p(p^\gamma)/\mathbb{E}_p[p^\gamma]^2`, the estimate of
    log ‖p‖ has standard deviation about :math:`\mathrm{CV}/((1+\gamma)\sqrt S)` and is biased
    low by about :math:`\mathrm{CV}^2/(2S(1+\gamma))`; both need
    :math:`\int p^{1+2\gamma} < \infty`, and the self-normalised gradient has an O(1/S) bias.
    The norm depends on a datum only through which modalities it observes: one estimate is
    made per pattern of the ``observed`` mask, from ``num_draws`` draws of the whole model with
    that pattern, and its error is shared by every datum of the batch with that pattern.
    ``docs/derivation.md`` §9 derives all of this and measures how large S must be
    (``benchmarks/power_norm_draws.py``).

    :param model: the model callable ``model(x, mask, y, batch_size=...)`` whose joint this is
        (it must generate every site when called with ``x=None``).
    :param torch.Tensor observed: bool [B, M], the modalities each datum observes.
    :param torch.Tensor obs_dim: n per datum (for the "auto" γ).
    :param int latent_dim: d.
    :param nu: ν of the model (for the "auto" γ = −2/(ν + n + d)), or None.
    :param int num_draws: S, the draws per observed-modality pattern.
    """

    power_form = False
    #: S: draws per pattern (``docs/derivation.md`` §9, ``benchmarks/power_norm_draws.py``).
    default_num_draws = 1024

    def __init__(self, model, observed, obs_dim, latent_dim, *, nu=None, num_draws=None,
                 latent_site="z", class_site="y"):
        super().__init__(obs_dim, latent_dim, torch.zeros_like(obs_dim),
                         latent_site=latent_site, class_site=class_site)
        self.model = model
        self.observed = observed
        self.nu = nu
        self.num_draws = int(num_draws or self.default_num_draws)

    def log_conditional_norm(self, gamma, y):
        """Not available: ‖p(x, z | y)‖ depends on y when the decoder's families do not
        shift out of the integral (Bernoulli, Poisson, categorical)."""
        raise ValueError(
            "label_divergence='kl' needs the norm of p(x, z | y), the same for every y; the "
            "model declared MonteCarloPowerNorm (a modality that is not Student-t or Gaussian), "
            "whose conditional norm depends on y. Use label_divergence='gamma', or Student-t/"
            "Gaussian likelihoods for every modality")

    def auto_gamma(self):
        if self.nu is None:
            return super().auto_gamma()
        return auto_gamma(self.nu, self.obs_dim, self.latent_dim)

    def log_norm(self, gamma):
        gamma = torch.as_tensor(gamma, dtype=self.obs_dim.dtype, device=self.obs_dim.device)
        gamma = gamma.expand(self.batch_shape)
        patterns, which = torch.unique(self.observed, dim=0, return_inverse=True)
        values = []
        for k, pattern in enumerate(patterns):
            rows = which == k
            g = gamma[rows]
            if not bool((g == g[0]).all()):
                raise ValueError("gamma: the Monte Carlo power norm needs one gamma per "
                                 "pattern of observed modalities")
            values.append(self._log_norm_of_pattern(pattern, g[0]))
        return torch.stack(values)[which]

    def _log_norm_of_pattern(self, pattern, gamma):
        num = self.num_draws
        mask = pattern.expand(num, -1)
        with poutine.block():
            with torch.no_grad():  # ancestral draws of the whole model, detached
                draws = poutine.trace(self.model).get_trace(None, None, None, batch_size=num)
            x = {name[2:]: site["value"] for name, site in draws.nodes.items()
                 if site["type"] == "sample" and name.startswith("x_")}
            y = draws.nodes[self.class_site]["value"]
            latent = {self.latent_site: draws.nodes[self.latent_site]["value"]}
            # log p at the draws, differentiable in the parameters, with this pattern's mask
            trace = poutine.trace(poutine.condition(self.model, data=latent)).get_trace(
                x, mask, y)
        log_p = 0.0
        for site in trace.nodes.values():
            if site["type"] != "sample" or site["infer"].get("is_auxiliary"):
                continue
            lp = site["fn"].log_prob(site["value"])
            if site["mask"] is not None:
                lp = torch.where(site["mask"], lp, torch.zeros_like(lp))
            log_p = log_p + lp
        weighted = gamma * log_p
        value = (torch.logsumexp(weighted.detach(), 0) - math.log(num)) / (1 + gamma)
        weights = torch.softmax(weighted.detach(), 0)
        return value + (weights * (log_p - log_p.detach())).sum()


def _base_distribution(fn):
    """The distribution under Masked/Expanded/Independent wrappers."""
    while isinstance(fn, MaskedDistribution | ExpandedDistribution | dist.Independent):
        fn = fn.base_dist
    return fn


def declare_power_norm(norm: PowerNorm, name: str = "power_norm") -> None:
    """Declare the model's ||p||_{1+γ} for :class:`~pyro_mmt.infer.GammaPowerELBO`.

    Call it inside the model's data plate. It records a site whose log-factor is zero (so other
    objectives and ``Predictive`` are unaffected) and whose ``infer`` dict carries ``norm``.

    :param PowerNorm norm: the declaration.
    :param str name: the site name.
    """
    if not isinstance(norm, PowerNorm):
        raise ValueError(
            f"norm: expected a pyro_mmt.infer.PowerNorm, found {type(norm).__name__}"
        )
    zeros = torch.zeros(norm.batch_shape, dtype=norm.log_det_obs_scale.dtype,
                        device=norm.log_det_obs_scale.device)
    unit = dist.Unit(zeros)
    pyro.sample(name, unit, obs=unit.sample(), infer={"is_auxiliary": True, "power_norm": norm})


def find_power_norm(model_trace) -> tuple[str, PowerNorm]:
    """The (site name, declaration) of the power norm in a model trace; ValueError if none."""
    found = [
        (name, site["infer"]["power_norm"])
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample" and "power_norm" in site.get("infer", {})
    ]
    if len(found) != 1:
        raise ValueError(
            f"model: GammaPowerELBO needs exactly one power-norm declaration "
            f"(pyro_mmt.infer.declare_power_norm inside the data plate), found {len(found)}. "
            "||p||_{1+gamma} appears in no trace, so the model must state it; see "
            "docs/derivation.md §3"
        )
    return found[0]

