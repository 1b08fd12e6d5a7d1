"""How a model declares ||p||_{1+γ}, the norm of its joint density.

The γ-power divergence compares q with p/||p||_{1+γ}. That norm is an integral over the whole
joint space, so no trace contains it, yet it fixes the balance between the cross term and the
entropy term of :class:`~pyro_mmt.infer.GammaPowerELBO`. A model states it by calling
:func:`declare_power_norm` inside its data plate with one of the :class:`PowerNorm` classes
below. The declaration is a zero log-factor site, so every other Pyro objective
(``Trace_ELBO``, ``TraceEnum_ELBO``, ``Predictive``) ignores it.

See ``docs/derivation.md`` §3 for the closed forms.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from pyro_mmt.distributions import (
    auto_gamma,
    gaussian_log_norm,
    power_form_log_constant,
    power_form_log_norm,
)

__all__ = [
    "PowerNorm",
    "StudentTPowerNorm",
    "GaussianPowerNorm",
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

    def auto_gamma(self) -> torch.Tensor:
        """The γ that makes p^γ affine in the power form's quadratic: −2/(ν + n + d)."""
        raise ValueError(
            f"gamma='auto' needs a Student-t power-form model, but the model declared "
            f"{type(self).__name__}; pass an explicit gamma to GammaPowerELBO"
        )


class StudentTPowerNorm(PowerNorm):
    r"""Norm of the Student-t power-form joint of DESIGN.md (MATH.md F2–F3).

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
        self.nu = float(nu)

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

    def log_norm(self, gamma):
        return gaussian_log_norm(
            self.obs_dim,
            self.latent_dim,
            self.log_det_obs_scale,
            gamma,
            class_log_prior=self.class_log_prior,
        )


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

