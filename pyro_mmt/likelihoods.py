r"""Per-modality likelihood families p(x_j | y, z), chosen by name.

A family turns the output of a modality's decoder into a distribution over that modality's
n_j columns (one event of shape ``(n_j,)`` per datum) and checks that observed values lie in
its support. :class:`~pyro_mmt.models.MultimodalM2` takes one name per modality
(``likelihood={"image": "student_t", "symptoms": "bernoulli", "visits": "poisson"}``).

=============== ========================== ============================ ====================
name            decoder output (per datum)  p(x_j | y, z)                values
=============== ========================== ============================ ====================
``student_t``   location μ_j, n_j           part of ONE multivariate t   real
                                            with z (the power form)
``gaussian``    location μ_j, n_j           N(μ_j, σ_j² I)               real
``bernoulli``   logits, n_j                 Π Bernoulli                  0 or 1
``poisson``     n_j (rate = softplus)       Π Poisson                    0, 1, 2, ...
``categorical`` logits, n_j × C_j           Π Categorical(C_j)           0 .. C_j − 1
=============== ========================== ============================ ====================

The Student-t modalities are special: with z they form the power-form joint of
``docs/derivation.md`` §2, written in the model as a chain of conditionals
(:meth:`StudentT.conditional`). Every other family is conditionally independent given (y, z).
With ν = ∞ the Student-t modalities are Gaussian.

**Adding a family.** Subclass :class:`Likelihood`, set ``name``, implement
:meth:`~Likelihood.distribution` (and :meth:`~Likelihood.check_values`, and ``out_dim`` when the
decoder must output more than n_j numbers), then :func:`register_likelihood`. The γ-power
objective then trains it with the Monte Carlo power norm (``docs/derivation.md`` §9): nothing
else is needed, as long as the distribution can draw samples.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pyro.distributions as dist
import torch
from torch.nn import functional as F

from pyro_mmt.distributions import IsotropicStudentT, ObservedCellsStudentT

__all__ = [
    "Likelihood",
    "StudentT",
    "Gaussian",
    "Bernoulli",
    "Poisson",
    "Categorical",
    "LIKELIHOODS",
    "register_likelihood",
    "make_likelihood",
]


class Likelihood:
    """A family of p(x_j | y, z) for one modality of dimension n_j.

    :param int dim: n_j.
    :param float sigma: σ_j (continuous families).
    :param num_categories: C_j (categorical families).
    """

    #: The family's name (the key in :data:`LIKELIHOODS`).
    name: ClassVar[str] = ""
    #: Real-valued data: standardised by the estimator, scaled by σ_j.
    continuous: ClassVar[bool] = False
    #: Part of the multivariate-t chain with z (only :class:`StudentT`).
    joint_t: ClassVar[bool] = False
    #: Needs ``num_categories``.
    needs_categories: ClassVar[bool] = False

    def __init__(self, dim: int, *, sigma: float = 1.0, num_categories: int | None = None):
        self.dim = int(dim)
        self.sigma = float(sigma)
        self.num_categories = num_categories

    @property
    def out_dim(self) -> int:
        """Size of the decoder's output per datum (n_j unless the family needs more)."""
        return self.dim

    @property
    def in_dim(self) -> int:
        """Size of :meth:`as_input` per datum: what the encoder and the classifier see."""
        return self.dim

    def as_input(self, x: torch.Tensor) -> torch.Tensor:
        """The modality as the input of the encoder and the classifier (the values as they
        are, unless the family needs a code, e.g. one-hot categories)."""
        return x

    def distribution(self, out: torch.Tensor) -> dist.TorchDistribution:
        """p(x_j | y, z) from the decoder output ``out`` [..., out_dim]: event shape (n_j,)."""
        raise NotImplementedError

    def observed_cells(self, fn: dist.TorchDistribution,
                       cells: torch.Tensor) -> dist.TorchDistribution:
        """``fn`` (from :meth:`distribution`) scored on the observed cells only: ``cells`` bool
        [B, n_j], True where a cell is observed. The default masks the log-density of each
        column, which is exact for a family whose columns are independent given (y, z) (every
        built-in family but the Student-t chain, which :meth:`StudentT.conditional`
        marginalises instead)."""
        if not (isinstance(fn, dist.Independent) and fn.reinterpreted_batch_ndims == 1):
            raise ValueError(
                f"likelihood: the {self.name or type(self).__name__} family does not support "
                f"missing cells (its distribution is {type(fn).__name__}); expected one with "
                "independent columns, Independent(base, 1)"
            )
        return fn.base_dist.mask(cells).to_event(1)

    def check_values(self, values: np.ndarray, name: str) -> None:
        """Raise a ``ValueError`` naming ``name`` if an observed value is outside the support.
        ``values`` holds the observed rows only ([N_obs, n_j])."""

    def log_power_integral(self, out: torch.Tensor, gamma, cells=None) -> torch.Tensor:
        r""":math:`\log \int p(x_j \mid y, z)^{1+\gamma}\, dx_j` (a sum over x_j for a discrete
        family) for the decoder output ``out`` [..., out_dim]: shape ``out.shape[:-1]``. With
        ``cells`` (bool [n_j], the observed cells) the integral of the observed columns' density
        (the built-in families' columns are independent: a sum over the observed columns).

        A family that has it lets the model compute its power norm with x summed or integrated
        exactly and only z drawn (``docs/derivation.md`` §9); without it (the default raises
        ``NotImplementedError``) the norm falls back to ancestral draws of x.
        """
        raise NotImplementedError(f"{type(self).__name__} has no closed-form power integral")

    @property
    def has_power_integral(self) -> bool:
        """Whether :meth:`log_power_integral` is implemented."""
        return type(self).log_power_integral is not Likelihood.log_power_integral

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class StudentT(Likelihood):
    r"""The Student-t family: the modality is part of ONE multivariate t with z.

    In the chain of the model, given z and the Student-t modalities before it,

    .. math::

        x_j \mid z, x_{<j} \sim t_{n_j}\Big(\mu_j,\;
            \frac{\nu + \|z\|^2 + \sum_{k<j} R_k}{\nu + d + \sum_{k<j} n_k}\,\sigma_j^2 I,\;
            \nu + d + \sum_{k<j} n_k\Big),\qquad R_k = \|x_k - \mu_k\|^2/\sigma_k^2,

    (:meth:`conditional`); with ν = ∞, N(μ_j, σ_j² I) (:meth:`distribution`).
    """

    name = "student_t"
    continuous = True
    joint_t = True

    def conditional(self, loc, nu, quad, dof, cells=None) -> IsotropicStudentT:
        """The chain's conditional t_{n_j}(μ_j, (ν + quad)/dof σ_j² I, dof); with ``cells``
        (bool [B, n_j]) its marginal over the observed cells (same ν, scale and dof,
        ``docs/derivation.md`` §11)."""
        scale = ((nu + quad) / dof).sqrt() * self.sigma
        if cells is not None:
            return ObservedCellsStudentT(dof, loc, scale, cells)
        return IsotropicStudentT(dof, loc, scale)

    def distribution(self, out):
        return dist.Normal(out, self.sigma).to_event(1)

    def log_power_integral(self, out, gamma, cells=None):
        """The Gaussian case (ν = ∞); in the t model the chain's integral is the model's."""
        return _gaussian_log_power_integral(self, out, gamma, cells)


def _gaussian_log_power_integral(likelihood, out, gamma, cells=None):
    """log ∫ N(x; μ, σ_j² I)^{1+γ} dx over the modality's (observed) cells, for each μ in
    ``out``: n_j [−(γ/2) log 2π − γ log σ_j − ½ log(1 + γ)]."""
    gamma = torch.as_tensor(gamma, dtype=out.dtype, device=out.device)
    dim = likelihood.dim if cells is None else cells.to(out.dtype).sum(-1)
    value = dim * (-gamma / 2 * math.log(2 * math.pi) - gamma * math.log(likelihood.sigma)
                   - 0.5 * torch.log1p(gamma))
    return value.expand(torch.broadcast_shapes(out.shape[:-1], value.shape))


class Gaussian(Likelihood):
    """N(μ_j, σ_j² I), independent of the other modalities given (y, z)."""

    name = "gaussian"
    continuous = True

    def distribution(self, out):
        return dist.Normal(out, self.sigma).to_event(1)

    def log_power_integral(self, out, gamma, cells=None):
        """n_j [−(γ/2) log 2π − γ log σ_j − ½ log(1 + γ)]: it does not depend on μ."""
        return _gaussian_log_power_integral(self, out, gamma, cells)


class Bernoulli(Likelihood):
    """Independent Bernoulli columns with the decoder's logits; values 0 or 1."""

    name = "bernoulli"

    def distribution(self, out):
        return dist.Bernoulli(logits=out).to_event(1)

    def log_power_integral(self, out, gamma, cells=None):
        """Σ_i log(p_i^{1+γ} + (1 − p_i)^{1+γ}), p_i = sigmoid(logit_i)."""
        gamma = torch.as_tensor(gamma, dtype=out.dtype, device=out.device).unsqueeze(-1)
        both = torch.stack([F.logsigmoid(out), F.logsigmoid(-out)], -1)
        return _sum_cells(torch.logsumexp((1 + gamma.unsqueeze(-1)) * both, -1), cells)

    def check_values(self, values, name):
        bad = ~np.isin(values, (0, 1))
        if bad.any():
            raise ValueError(
                f"{name}: a bernoulli modality takes values 0 or 1, found "
                f"{np.unique(values[bad])[:5].tolist()}"
            )


class Poisson(Likelihood):
    """Independent Poisson columns with rate softplus(decoder output); counts 0, 1, 2, ..."""

    name = "poisson"

    def distribution(self, out):
        return dist.Poisson(F.softplus(out) + 1e-6).to_event(1)

    def log_power_integral(self, out, gamma, cells=None):
        """Σ_i log Σ_{k=0}^{k_max} Poisson(k; λ_i)^{1+γ}, the series cut at
        k_max = λ_max + 12 √λ_max + 30 (the terms beyond are below e^{-70} of the sum's
        largest for |γ| < 0.5)."""
        gamma = torch.as_tensor(gamma, dtype=out.dtype, device=out.device)
        rate = F.softplus(out) + 1e-6
        top = float(rate.detach().max())
        k = torch.arange(int(top + 12 * math.sqrt(top) + 30) + 1, dtype=out.dtype,
                         device=out.device)
        log_pmf = k * rate.unsqueeze(-1).log() - rate.unsqueeze(-1) - torch.lgamma(k + 1)
        scale = (1 + gamma).reshape(gamma.shape + (1, 1))
        return _sum_cells(torch.logsumexp(scale * log_pmf, -1), cells)

    def check_values(self, values, name):
        bad = (values < 0) | (values != np.round(values))
        if bad.any():
            raise ValueError(
                f"{name}: a poisson modality takes non-negative integer counts, found "
                f"{np.unique(values[bad])[:5].tolist()}"
            )


class Categorical(Likelihood):
    """Independent categorical columns, each with C_j categories coded 0 .. C_j − 1; the
    decoder outputs n_j × C_j logits."""

    name = "categorical"
    needs_categories = True

    def __init__(self, dim, *, sigma=1.0, num_categories=None):
        if num_categories is None or int(num_categories) < 2:
            raise ValueError(f"num_categories: a categorical modality needs >= 2 categories, "
                             f"found {num_categories!r}")
        super().__init__(dim, sigma=sigma, num_categories=int(num_categories))

    @property
    def out_dim(self):
        return self.dim * self.num_categories

    @property
    def in_dim(self):
        return self.dim * self.num_categories

    def as_input(self, x):
        """One-hot codes of the n_j columns, flattened to n_j × C_j."""
        code = F.one_hot(x.long(), self.num_categories)
        return code.to(torch.get_default_dtype() if not x.is_floating_point() else x.dtype
                       ).flatten(-2)

    def distribution(self, out):
        logits = out.reshape(out.shape[:-1] + (self.dim, self.num_categories))
        return dist.Categorical(logits=logits).to_event(1)

    def log_power_integral(self, out, gamma, cells=None):
        """Σ_i log Σ_c p_ic^{1+γ}."""
        gamma = torch.as_tensor(gamma, dtype=out.dtype, device=out.device)
        logits = out.reshape(out.shape[:-1] + (self.dim, self.num_categories))
        scale = (1 + gamma).reshape(gamma.shape + (1, 1))
        return _sum_cells(torch.logsumexp(scale * torch.log_softmax(logits, -1), -1), cells)

    def check_values(self, values, name):
        bad = (values < 0) | (values >= self.num_categories) | (values != np.round(values))
        if bad.any():
            raise ValueError(
                f"{name}: a categorical modality with {self.num_categories} categories takes "
                f"integer codes 0..{self.num_categories - 1}, found "
                f"{np.unique(values[bad])[:5].tolist()}"
            )


def _sum_cells(columns: torch.Tensor, cells) -> torch.Tensor:
    """Σ over the last dimension, over the observed cells only when ``cells`` is given."""
    if cells is None:
        return columns.sum(-1)
    return torch.where(cells, columns, torch.zeros_like(columns)).sum(-1)


#: The families by name.
LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (StudentT, Gaussian, Bernoulli, Poisson, Categorical)
}


def register_likelihood(cls: type[Likelihood]) -> type[Likelihood]:
    """Add a :class:`Likelihood` subclass to :data:`LIKELIHOODS` under ``cls.name`` (usable as
    a class decorator). Refuses a name already taken."""
    if not (isinstance(cls, type) and issubclass(cls, Likelihood)) or not cls.name:
        raise ValueError(f"cls: expected a Likelihood subclass with a name, found {cls!r}")
    if cls.name in LIKELIHOODS and LIKELIHOODS[cls.name] is not cls:
        raise ValueError(f"cls: the name {cls.name!r} is taken by {LIKELIHOODS[cls.name]}")
    LIKELIHOODS[cls.name] = cls
    return cls


def make_likelihood(name: str, dim: int, *, sigma: float = 1.0,
                    num_categories: int | None = None) -> Likelihood:
    """The family ``name`` for a modality of dimension ``dim``."""
    if name not in LIKELIHOODS:
        raise ValueError(f"likelihood: expected one of {sorted(LIKELIHOODS)}, found {name!r}")
    return LIKELIHOODS[name](dim, sigma=sigma, num_categories=num_categories)
