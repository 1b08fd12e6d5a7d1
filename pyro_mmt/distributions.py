r"""Distributions and closed forms of the Student-t power-form model.

This module holds what the model, the guides and :class:`~pyro_mmt.infer.GammaPowerELBO` share:

- :class:`DiagStudentT`, a multivariate Student t with a diagonal scale and ONE chi-square
  mixing variable per draw (the latent prior, the decoder and the encoder of the model,
  ``docs/derivation.md`` §2 and §4), and :class:`IsotropicStudentT`, the decoder's conditional;
- power integrals :math:`\log\int p^{1+\gamma}` (``docs/derivation.md`` §3 (F1) and §4 (F4))
  for the t, Gaussian and categorical families: :func:`log_power_integral`,
  :func:`log_t_power_integral`;
- the norm :math:`\|p\|_{1+\gamma}` of the power-form joint (``docs/derivation.md`` §2 (F2) and
  §3 (F3)) and of its Gaussian (ν → ∞) analogue: :func:`power_form_log_constant`,
  :func:`power_form_log_norm`, :func:`gaussian_log_norm`;
- the "auto" exponent γ = −2/(ν+n+d) (:func:`auto_gamma`) and the scale τ_0 of the prior expert
  (:func:`prior_expert_scale`, ``docs/derivation.md`` §4 and §7);
- precision-weighted product-of-experts fusion (:func:`student_t_poe`, :func:`gaussian_poe`;
  ``docs/derivation.md`` §4).

Notation (as in ``docs/derivation.md``): the t density on :math:`\mathbb{R}^D` is

.. math::

    t_D(v; m, S, \nu) = C(\nu, D)\, |S|^{-1/2}\,
        \big(1 + (v-m)^\top S^{-1} (v-m)/\nu\big)^{-(\nu+D)/2},\qquad
    C(\nu, D) = \frac{\Gamma((\nu+D)/2)}{\Gamma(\nu/2)\,(\nu\pi)^{D/2}}.

n is the observed dimension (Σ_j n_j over the modalities present), d the latent dimension and
Λ = blockdiag(σ_j² I_{n_j}) the decoder's scale, so log|Λ| = Σ_j n_j log σ_j².
Derivations: ``docs/derivation.md`` (the model and its power form §2, the closed forms F1–F4
§2–§4, what the objective does with them §5–§7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Number

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import (
    ExpandedDistribution,
    MaskedDistribution,
    TorchDistribution,
)
from pyro.distributions.util import sum_rightmost

__all__ = [
    "DiagStudentT",
    "IsotropicStudentT",
    "ObservedCellsStudentT",
    "auto_gamma",
    "gaussian_log_norm",
    "gaussian_poe",
    "log_power_integral",
    "log_t_power_integral",
    "power_form_log_constant",
    "power_form_log_norm",
    "prior_expert_scale",
    "second_moment",
    "student_t_poe",
]

_LOG_PI = math.log(math.pi)
_LOG_2PI = math.log(2 * math.pi)


def _as_tensors(*values):
    """Convert numbers and tensors to floating tensors of one dtype and device.

    The dtype and device are those of the first floating-point tensor among ``values`` (else the
    first tensor's device and the default dtype), so integer dimensions such as ``obs_dim``
    become floats.
    """
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    floating = [t for t in tensors if t.is_floating_point()]
    if floating:
        dtype, device = floating[0].dtype, floating[0].device
    elif tensors:
        dtype, device = torch.get_default_dtype(), tensors[0].device
    else:
        dtype, device = torch.get_default_dtype(), None
    return tuple(torch.as_tensor(v, dtype=dtype, device=device) for v in values)


def _log_t_normaliser(df, dim):
    """log C(ν, D) = lgamma((ν+D)/2) − lgamma(ν/2) − (D/2) log(νπ) (tensors)."""
    return torch.lgamma((df + dim) / 2) - torch.lgamma(df / 2) - dim / 2 * (df.log() + _LOG_PI)


def _log_gaussian_power_integral(dim, log_det_cov, gamma):
    r"""log ∫ N_D(v; m, Σ)^{1+γ} dv = −(γD/2) log 2π − (γ/2) log|Σ| − (D/2) log(1+γ)."""
    dim, log_det_cov, gamma = _as_tensors(dim, log_det_cov, gamma)
    if bool((gamma <= -1).any()):
        raise ValueError(f"gamma: a Gaussian power integral needs 1 + gamma > 0, found {gamma}")
    return -gamma * dim / 2 * _LOG_2PI - gamma / 2 * log_det_cov - dim / 2 * torch.log1p(gamma)


def _finite_ratio_above_two(df):
    """df/(df − 2) where df > 2 and +inf elsewhere, with gradients that stay finite."""
    above = df > 2
    safe = torch.where(above, df, torch.full_like(df, 3.0))
    return torch.where(above, safe / (safe - 2), torch.full_like(df, math.inf))


class DiagStudentT(TorchDistribution):
    r"""Multivariate Student t on :math:`\mathbb{R}^D` with a diagonal scale matrix.

    .. math::

        z = m + s \odot \varepsilon / \sqrt{w},\qquad
        \varepsilon \sim N(0, I_D),\quad w \sim \mathrm{Gamma}(\nu/2, \nu/2),

    so :math:`z \sim t_D(m, S, \nu)` with :math:`S = \mathrm{diag}(s^2)`. ONE mixing variable
    :math:`w` is shared by all D coordinates of a draw: the coordinates are uncorrelated but
    dependent (their squares are positively correlated). This is the multivariate t of the
    model's prior and decoder and of the encoder (``docs/derivation.md`` §2 and §4), which the
    closed forms F1–F4 assume; it is NOT ``StudentT(df, loc, scale).to_event(1)``, which draws D
    independent mixing variables.
    It equals :class:`pyro.distributions.MultivariateStudentT` with
    ``scale_tril = diag(scale)``, without the triangular solve.

    The log-density is evaluated in closed form,

    .. math::

        \log p(v) = \log\Gamma\big(\tfrac{\nu+D}{2}\big) - \log\Gamma\big(\tfrac{\nu}{2}\big)
            - \tfrac{D}{2}\log(\nu\pi) - \sum_k \log s_k
            - \tfrac{\nu+D}{2}\log\big(1 + \delta/\nu\big),\qquad
        \delta = \sum_k \big((v_k - m_k)/s_k\big)^2.

    ``batch_shape`` is the broadcast of ``df.shape``, ``loc.shape[:-1]`` and
    ``scale.shape[:-1]``; ``event_shape`` is ``(D,)``. ``rsample`` is reparameterised in
    ``loc``, ``scale`` and ``df`` (through :class:`torch.distributions.Gamma`).

    :param df: degrees of freedom ν > 0 (a tensor or a float), broadcastable to the batch
        shape.
    :param torch.Tensor loc: location m, shape ``[..., D]``.
    :param torch.Tensor scale: diagonal scale s > 0 (square roots of the diagonal of S), shape
        ``[..., D]``.
    :param bool validate_args: as in :mod:`torch.distributions`; by default follows
        ``pyro.enable_validation``.
    :raises ValueError: if ``loc`` or ``scale`` is not a tensor with at least one dimension.
    """

    arg_constraints = {
        "df": constraints.positive,
        "loc": constraints.real_vector,
        "scale": constraints.independent(constraints.positive, 1),
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, df, loc, scale, validate_args=None):
        if not isinstance(loc, torch.Tensor) or loc.dim() < 1:
            raise ValueError("loc: expected a tensor of shape [..., D] with at least one dimension")
        if not isinstance(scale, torch.Tensor) or scale.dim() < 1:
            raise ValueError(
                "scale: expected a tensor of shape [..., D] with at least one dimension"
            )
        df = torch.as_tensor(df, dtype=loc.dtype, device=loc.device)
        event_shape = torch.broadcast_shapes(loc.shape[-1:], scale.shape[-1:])
        batch_shape = torch.broadcast_shapes(df.shape, loc.shape[:-1], scale.shape[:-1])
        self.df = df.expand(batch_shape)
        self.loc = loc.expand(batch_shape + event_shape)
        self.scale = scale.expand(batch_shape + event_shape)
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiagStudentT, _instance)
        batch_shape = torch.Size(batch_shape)
        new.df = self.df.expand(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.scale = self.scale.expand(batch_shape + self.event_shape)
        super(DiagStudentT, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self):
        """``loc`` where ν > 1, NaN elsewhere (as :class:`torch.distributions.StudentT`)."""
        return self.loc.masked_fill((self.df <= 1).unsqueeze(-1), math.nan)

    @property
    def variance(self):
        """``scale² ν/(ν−2)`` where ν > 2, +inf where 1 < ν ≤ 2, NaN where ν ≤ 1."""
        var = self.scale.pow(2) * _finite_ratio_above_two(self.df).unsqueeze(-1)
        return var.masked_fill((self.df <= 1).unsqueeze(-1), math.nan)

    def rsample(self, sample_shape=()):
        sample_shape = torch.Size(sample_shape)
        shape = self._extended_shape(sample_shape)
        half_df = self.df / 2
        w = torch.distributions.Gamma(half_df, half_df, validate_args=False).rsample(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps * w.rsqrt().unsqueeze(-1)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        dim = self.event_shape[0]
        delta = ((value - self.loc) / self.scale).pow(2).sum(-1)
        log_norm = _log_t_normaliser(self.df, dim) - self.scale.log().sum(-1)
        return log_norm - 0.5 * (self.df + dim) * torch.log1p(delta / self.df)

    def log_power_integral(self, gamma):
        r"""log ∫ p(v)^{1+γ} dv in closed form (``docs/derivation.md`` §3 (F1)).

        .. math::

            (1+\gamma)\log C(\nu, D) - \tfrac{\gamma}{2}\log|S| + \tfrac{D}{2}\log(\nu\pi)
                + \log\Gamma(a - D/2) - \log\Gamma(a),\qquad a = (1+\gamma)(\nu+D)/2.

        :param gamma: the exponent γ (a tensor or a float), broadcastable to the batch shape.
        :returns: a tensor of shape ``batch_shape`` (broadcast with γ).
        :raises ValueError: if (1+γ)(ν+D) ≤ D, where the integral diverges.
        """
        log_det_scale = 2 * self.scale.log().sum(-1)
        return log_t_power_integral(self.df, self.event_shape[0], log_det_scale, gamma)

    def second_moment(self):
        r"""E‖z‖² = ‖m‖² + ν/(ν−2) Σ_k s_k² for ν > 2 (+inf otherwise), shape ``batch_shape``."""
        trace = self.scale.pow(2).sum(-1)
        return self.loc.pow(2).sum(-1) + _finite_ratio_above_two(self.df) * trace


class IsotropicStudentT(DiagStudentT):
    r"""The decoder's conditional :math:`t_D(m, s^2 I, \nu)`: a :class:`DiagStudentT` whose
    scale is ONE number per batch element (``scale`` of shape ``batch_shape``).

    Its log-density needs only :math:`\|v - m\|^2`, without forming the D-vector of scales:

    .. math::

        \log p(v) = \log C(\nu, D) - D \log s
            - \tfrac{\nu + D}{2} \log\big(1 + \|v - m\|^2 / (s^2 \nu)\big).

    :meth:`sum_of_squares` keeps :math:`\|v - m\|^2` for the last value it was given, so the
    model, which needs the residual R_j for the next conditional of its chain, and the trace's
    log-density share one pass over the D-vectors (a copy made by ``expand`` to the same batch
    shape, as Pyro's plates make, shares it too).

    With validation on, ``df`` and ``scale`` are checked, ``loc`` is not: in the model it is
    the decoder's output, K x B x D numbers at every step, and checking them would cost more
    than the density; a NaN in ``loc`` makes the log-density NaN, which Pyro reports at the
    site (and the training loop as a divergence).
    """

    arg_constraints = {
        "df": constraints.positive,
        "iso_scale": constraints.positive,
    }

    def __init__(self, df, loc, scale, validate_args=None):
        if not isinstance(loc, torch.Tensor) or loc.dim() < 1:
            raise ValueError("loc: expected a tensor of shape [..., D] with at least one dimension")
        df = torch.as_tensor(df, dtype=loc.dtype, device=loc.device)
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        batch_shape, event_shape = loc.shape[:-1], loc.shape[-1:]
        if df.shape != batch_shape or scale.shape != batch_shape:
            batch_shape = torch.broadcast_shapes(df.shape, batch_shape, scale.shape)
        self.df = df.expand(batch_shape)
        self.loc = loc.expand(batch_shape + event_shape)
        self.iso_scale = scale.expand(batch_shape)
        self._squares = {}  # the last sum_of_squares: {"value": v, "result": ‖v − m‖²}
        TorchDistribution.__init__(self, batch_shape, event_shape, validate_args=validate_args)

    @property
    def scale(self) -> torch.Tensor:
        """The diagonal scale of :class:`DiagStudentT`: ``iso_scale`` repeated D times (a view)."""
        return self.iso_scale.unsqueeze(-1).expand(self.batch_shape + self.event_shape)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(IsotropicStudentT, _instance)
        batch_shape = torch.Size(batch_shape)
        new.df = self.df.expand(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.iso_scale = self.iso_scale.expand(batch_shape)
        new._squares = self._squares if batch_shape == self.batch_shape else {}
        TorchDistribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sum_of_squares(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\|v - m\|^2`, shape ``batch_shape`` (kept for the same ``value`` object)."""
        if self._squares.get("value") is not value:
            self._squares.update(value=value, result=(value - self.loc).pow(2).sum(-1))
        return self._squares["result"]

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        dim = self.event_shape[0]
        scale2 = self.iso_scale.pow(2)
        log_norm = _log_t_normaliser(self.df, dim) - dim / 2 * scale2.log()
        return log_norm - 0.5 * (self.df + dim) * torch.log1p(
            self.sum_of_squares(value) / (scale2 * self.df)
        )


class ObservedCellsStudentT(IsotropicStudentT):
    r"""An :class:`IsotropicStudentT` :math:`t_D(m, s^2 I, \nu)` scored on the observed cells
    of each value only: the marginal of a multivariate t over a subset of its coordinates is a
    t with the same ν and scale over that subset (``docs/derivation.md`` §11), so

    .. math::

        \log p(v_o) = \log C(\nu, D_o) - D_o \log s
            - \tfrac{\nu + D_o}{2} \log\big(1 + \|v_o - m_o\|^2 / (s^2 \nu)\big),

    with :math:`D_o` the number of observed cells of the value (per batch element) and
    :meth:`sum_of_squares` over them. Draws are of all D coordinates.

    :param cells: bool [..., D], True where a cell is observed (broadcast against the batch).
    """

    def __init__(self, df, loc, scale, cells, validate_args=None):
        super().__init__(df, loc, scale, validate_args=validate_args)
        self.cells = cells

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ObservedCellsStudentT, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.cells = self.cells
        return new

    @property
    def observed_size(self) -> torch.Tensor:
        """D_o per batch element."""
        size = self.cells.to(self.loc.dtype).sum(-1)
        return size.expand(torch.broadcast_shapes(size.shape, self.batch_shape))

    def sum_of_squares(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\|v_o - m_o\|^2`, over the observed cells."""
        if self._squares.get("value") is not value:
            squares = torch.where(self.cells, value - self.loc, torch.zeros_like(self.loc))
            self._squares.update(value=value, result=squares.pow(2).sum(-1))
        return self._squares["result"]

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        dim = self.observed_size
        scale2 = self.iso_scale.pow(2)
        log_norm = _log_t_normaliser(self.df, dim) - dim / 2 * scale2.log()
        return log_norm - 0.5 * (self.df + dim) * torch.log1p(
            self.sum_of_squares(value) / (scale2 * self.df)
        )


def log_t_power_integral(df, dim, log_det_scale, gamma):
    r"""log ∫ t_D(v; m, S, ν)^{1+γ} dv for tensor ν, D, log|S| and γ (``docs/derivation.md``
    §3 (F1)).

    .. math::

        (1+\gamma)\log C(\nu, D) - \tfrac{\gamma}{2}\log|S| + \tfrac{D}{2}\log(\nu\pi)
            + \log\Gamma(a - D/2) - \log\Gamma(a),\qquad a = (1+\gamma)(\nu+D)/2,

    with :math:`C(\nu, D) = \Gamma((\nu+D)/2)/(\Gamma(\nu/2)(\nu\pi)^{D/2})`. The integral does
    not depend on m. All arguments broadcast against each other, so the dimension may vary per
    datum (missing modalities, ``docs/derivation.md`` §2).

    :param df: degrees of freedom ν > 0 (a tensor or a float).
    :param dim: dimension D (a tensor or an int).
    :param log_det_scale: log|S|, the log-determinant of the scale matrix (a tensor or a float).
    :param gamma: the exponent γ (a tensor or a float).
    :returns: a tensor of the broadcast shape of the arguments.
    :raises ValueError: if (1+γ)(ν+D) ≤ D anywhere: the integral diverges there.
    """
    df, dim, log_det_scale, gamma = _as_tensors(df, dim, log_det_scale, gamma)
    if bool(((1 + gamma) * (df + dim) <= dim).any()):
        raise ValueError(
            "gamma: the t power integral needs (1 + gamma)(df + dim) > dim, found "
            f"gamma={gamma}, df={df}, dim={dim}"
        )
    a = (1 + gamma) * (df + dim) / 2
    return (
        (1 + gamma) * _log_t_normaliser(df, dim)
        - gamma / 2 * log_det_scale
        + dim / 2 * (df.log() + _LOG_PI)
        + torch.lgamma(a - dim / 2)
        - torch.lgamma(a)
    )


def log_power_integral(fn, gamma):
    r"""log ∫ p^{1+γ} for a distribution object, in closed form.

    Supported families (dispatch on type):

    - :class:`DiagStudentT` (and :class:`pyro.distributions.MultivariateStudentT`): F1 of
      ``docs/derivation.md`` §3;
    - :class:`~pyro.distributions.Normal` (per element) and
      :class:`~pyro.distributions.MultivariateNormal`:
      :math:`-\tfrac{\gamma D}{2}\log 2\pi - \tfrac{\gamma}{2}\log|\Sigma|
      - \tfrac{D}{2}\log(1+\gamma)`, so ``Normal(loc, scale).to_event(1)`` gives
      :math:`-\tfrac{\gamma D}{2}\log 2\pi - \gamma\sum\log\sigma - \tfrac{D}{2}\log(1+\gamma)`;
    - :class:`~pyro.distributions.Categorical` and
      :class:`~pyro.distributions.OneHotCategorical`: :math:`\log\sum_k p_k^{1+\gamma}`;
    - wrappers: ``Independent`` sums its reinterpreted dimensions (the integral of a product of
      independent factors is the product of their integrals); ``MaskedDistribution`` gives 0
      where the mask is False (a masked factor contributes ``log p = 0``, i.e. it is dropped);
      ``ExpandedDistribution`` expands its base's value.

    :param torch.distributions.Distribution fn: the distribution.
    :param gamma: the exponent γ (a tensor or a float), broadcastable to ``fn.batch_shape``.
    :returns: one value per batch element of ``fn`` (a tensor of shape ``fn.batch_shape``,
        broadcast with γ).
    :raises NotImplementedError: for a family without a closed form here (the message names its
        type).
    :raises ValueError: where the integral diverges (1+γ ≤ 0, or (1+γ)(ν+D) ≤ D for a t).
    """
    if isinstance(fn, DiagStudentT):
        return fn.log_power_integral(gamma)
    if isinstance(fn, MaskedDistribution):
        value = log_power_integral(fn.base_dist, gamma)
        mask = fn._mask
        if mask is True:
            return value
        if mask is False:
            return torch.zeros_like(value)
        return torch.where(mask, value, torch.zeros_like(value))
    if isinstance(fn, torch.distributions.Independent):
        ndims = fn.reinterpreted_batch_ndims
        if isinstance(gamma, torch.Tensor):
            # γ broadcasts with the wrapper's batch shape: align it with the base's batch shape.
            gamma = gamma.reshape(gamma.shape + (1,) * ndims)
        return sum_rightmost(log_power_integral(fn.base_dist, gamma), ndims)
    if isinstance(fn, ExpandedDistribution):
        value = log_power_integral(fn.base_dist, gamma)
        return value.expand(torch.broadcast_shapes(value.shape, fn.batch_shape))
    if isinstance(fn, torch.distributions.Normal):
        return _log_gaussian_power_integral(1, 2 * fn.scale.log(), gamma)
    if isinstance(fn, torch.distributions.MultivariateNormal):
        log_det = 2 * fn.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return _log_gaussian_power_integral(fn.event_shape[0], log_det, gamma)
    if isinstance(fn, dist.MultivariateStudentT):
        log_det = 2 * fn.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return log_t_power_integral(fn.df, fn.event_shape[0], log_det, gamma)
    if isinstance(fn, torch.distributions.Categorical | torch.distributions.OneHotCategorical):
        logits = fn.logits
        gamma = torch.as_tensor(gamma, dtype=logits.dtype, device=logits.device)
        if bool((gamma <= -1).any()):
            raise ValueError(f"gamma: Σ_k p_k^(1+gamma) needs 1 + gamma > 0, found {gamma}")
        return torch.logsumexp((1 + gamma).unsqueeze(-1) * logits, -1)
    raise NotImplementedError(
        f"log_power_integral: no closed form for {type(fn).__name__}; supported are "
        "DiagStudentT, MultivariateStudentT, Normal, MultivariateNormal, Categorical, "
        "OneHotCategorical and Independent/MaskedDistribution/ExpandedDistribution wrappers"
    )


def second_moment(fn):
    r"""E‖z‖² under a distribution, in closed form (``docs/derivation.md`` §4 (F4) uses it for
    the encoder).

    - :class:`DiagStudentT`: ‖m‖² + ν/(ν−2) Σ_k s_k² (ν > 2, +inf otherwise);
    - :class:`pyro.distributions.MultivariateStudentT`: ‖m‖² + ν/(ν−2) tr S;
    - :class:`~pyro.distributions.Normal`: m² + σ² per element, so
      ``Normal(loc, scale).to_event(1)`` gives ‖m‖² + Σ σ²;
    - :class:`~pyro.distributions.MultivariateNormal`: ‖m‖² + tr Σ;
    - ``Independent`` sums over its reinterpreted dimensions; ``MaskedDistribution`` and
      ``ExpandedDistribution`` use their base distribution (a mask changes the log-density
      weighting, not the draws).

    :param torch.distributions.Distribution fn: the distribution.
    :returns: a tensor of shape ``fn.batch_shape``.
    :raises NotImplementedError: for any other family (the message names its type).
    """
    if isinstance(fn, DiagStudentT):
        return fn.second_moment()
    if isinstance(fn, MaskedDistribution):
        return second_moment(fn.base_dist)
    if isinstance(fn, ExpandedDistribution):
        return second_moment(fn.base_dist).expand(fn.batch_shape)
    if isinstance(fn, torch.distributions.Independent):
        return sum_rightmost(second_moment(fn.base_dist), fn.reinterpreted_batch_ndims)
    if isinstance(fn, torch.distributions.Normal):
        return fn.loc.pow(2) + fn.scale.pow(2)
    if isinstance(fn, torch.distributions.MultivariateNormal):
        return fn.loc.pow(2).sum(-1) + fn.scale_tril.pow(2).sum((-2, -1))
    if isinstance(fn, dist.MultivariateStudentT):
        trace = fn.scale_tril.pow(2).sum((-2, -1))
        return fn.loc.pow(2).sum(-1) + _finite_ratio_above_two(fn.df) * trace
    raise NotImplementedError(
        f"second_moment: no closed form for {type(fn).__name__}; supported are DiagStudentT, "
        "MultivariateStudentT, Normal, MultivariateNormal and their Independent/Masked wrappers"
    )


def auto_gamma(nu, obs_dim, latent_dim):
    r"""The "auto" exponent γ = −2/(ν + n + d) of t3VAE (``docs/derivation.md`` §2).

    At this γ, p(x, y, z)^γ is affine in the power form's quadratic Q (F2 of
    ``docs/derivation.md`` §2), so every term of the objective has a closed form.
    ||p||_{1+γ} is then finite only for ν > 2 (F3, §3).

    :param nu: degrees of freedom ν of the prior, > 2 (a tensor or a float).
    :param obs_dim: observed dimension n (a tensor or an int; may vary per datum).
    :param latent_dim: latent dimension d (a tensor or an int).
    :returns: a float when every argument is a Python number, else a tensor of the broadcast
        shape.
    :raises ValueError: if ν ≤ 2 (anywhere).
    """
    if all(isinstance(v, Number) for v in (nu, obs_dim, latent_dim)):
        if not nu > 2:
            raise ValueError(f"nu: gamma='auto' needs nu > 2 (docs/derivation.md §3, F3), found {nu}")
        return -2.0 / (nu + obs_dim + latent_dim)
    nu, obs_dim, latent_dim = _as_tensors(nu, obs_dim, latent_dim)
    if bool((~(nu > 2)).any()):
        raise ValueError(f"nu: gamma='auto' needs nu > 2 (docs/derivation.md §3, F3), found {nu}")
    return -2 / (nu + obs_dim + latent_dim)


def power_form_log_constant(nu, obs_dim, latent_dim, log_det_obs_scale):
    r"""log K, the constant of the power-form joint (``docs/derivation.md`` §2 (F2)).

    .. math::

        \pi_y\, t_d(z; 0, I, \nu)\; t_n\big(x; \mu(y,z), \tfrac{\nu+\|z\|^2}{\nu+d}\Lambda,
            \nu+d\big) = \pi_y K (1 + Q_y/\nu)^{-(\nu+n+d)/2},

    with :math:`Q_y = \|z\|^2 + \sum_j \|x_j-\mu_j(y,z)\|^2/\sigma_j^2` and
    :math:`\log K = \log C(\nu, n+d) - \tfrac12\log|\Lambda|`.

    :param nu: degrees of freedom ν (a tensor or a float).
    :param obs_dim: observed dimension n (a tensor or an int; may vary per datum).
    :param latent_dim: latent dimension d (a tensor or an int).
    :param log_det_obs_scale: log|Λ| = Σ_j n_j log σ_j² over the observed modalities (a tensor
        or a float).
    :returns: a tensor of the broadcast shape of the arguments.
    """
    nu, n, d, log_det = _as_tensors(nu, obs_dim, latent_dim, log_det_obs_scale)
    return _log_t_normaliser(nu, n + d) - log_det / 2


def _class_log_power_sum(class_log_prior, gamma):
    """log Σ_y π_y^{1+γ} for log π of shape [..., K] and γ broadcastable to the batch."""
    return torch.logsumexp((1 + gamma).unsqueeze(-1) * class_log_prior, -1)


def power_form_log_norm(nu, obs_dim, latent_dim, log_det_obs_scale, gamma, class_log_prior=None):
    r"""log ‖p‖_{1+γ} of the power-form joint (``docs/derivation.md`` §3 (F3)).

    Shifting x by μ(y, z) (unit Jacobian) removes μ and y from the (x, z)-integral, so

    .. math::

        \log\|p\|_{1+\gamma} = \frac{1}{1+\gamma}\Big[\log\sum_y \pi_y^{1+\gamma}
            + \log\int t_{n+d}\big(0, \mathrm{diag}(I_d, \Lambda), \nu\big)^{1+\gamma}\Big],

    the second term by :func:`log_t_power_integral` with D = n + d and log|S| = log|Λ|. At
    γ = −2/(ν+n+d) it equals :math:`\log\big[\sum_y\pi_y^{1+\gamma}\, K^\gamma
    (\nu+n+d-2)/(\nu-2)\big]/(1+\gamma)`.

    :param nu: degrees of freedom ν (a tensor or a float).
    :param obs_dim: observed dimension n (a tensor or an int; may vary per datum).
    :param latent_dim: latent dimension d (a tensor or an int).
    :param log_det_obs_scale: log|Λ| = Σ_j n_j log σ_j² (a tensor or a float).
    :param gamma: the exponent γ (a tensor or a float).
    :param torch.Tensor class_log_prior: log π, shape ``[K]``; ``None`` (the default) omits the
        class factor (a model without a label, or the norm ‖p_0‖ without the class factor of
        ``docs/derivation.md`` §3).
    :returns: a tensor of the broadcast shape of the arguments.
    """
    nu, n, d, log_det, gamma = _as_tensors(nu, obs_dim, latent_dim, log_det_obs_scale, gamma)
    value = log_t_power_integral(nu, n + d, log_det, gamma)
    if class_log_prior is not None:
        value = value + _class_log_power_sum(class_log_prior.to(gamma), gamma)
    return value / (1 + gamma)


def gaussian_log_norm(obs_dim, latent_dim, log_det_obs_scale, gamma, class_log_prior=None):
    r"""log ‖p‖_{1+γ} of the Gaussian joint, the ν → ∞ model.

    For y ~ Cat(π), z ~ N(0, I_d), x | y, z ~ N(μ(y, z), Λ), shifting x by μ (unit Jacobian)
    leaves N(0, diag(I_d, Λ)), so

    .. math::

        \log\|p\|_{1+\gamma} = \frac{1}{1+\gamma}\Big[\log\sum_y \pi_y^{1+\gamma}
            - \tfrac{\gamma (n+d)}{2}\log 2\pi - \tfrac{\gamma}{2}\log|\Lambda|
            - \tfrac{n+d}{2}\log(1+\gamma)\Big]

    (the Gaussian analogue in ``docs/derivation.md`` §3).

    :param obs_dim: observed dimension n (a tensor or an int; may vary per datum).
    :param latent_dim: latent dimension d (a tensor or an int).
    :param log_det_obs_scale: log|Λ| = Σ_j n_j log σ_j² (a tensor or a float).
    :param gamma: the exponent γ > −1 (a tensor or a float).
    :param torch.Tensor class_log_prior: log π, shape ``[K]``; ``None`` (the default) omits the
        class factor.
    :returns: a tensor of the broadcast shape of the arguments.
    :raises ValueError: if 1 + γ ≤ 0 anywhere.
    """
    n, d, log_det, gamma = _as_tensors(obs_dim, latent_dim, log_det_obs_scale, gamma)
    value = _log_gaussian_power_integral(n + d, log_det, gamma)
    if class_log_prior is not None:
        value = value + _class_log_power_sum(class_log_prior.to(gamma), gamma)
    return value / (1 + gamma)


def prior_expert_scale(nu, obs_dim, latent_dim, log_det_obs_scale):
    r"""τ_0, the scale of the prior expert of :func:`student_t_poe` (``docs/derivation.md`` §4,
    "Approximation 3"; its values in §7).

    With no data information (one modality, no label, m = 0), the per-datum objective at
    γ = −2/(ν+n+d) is, by F2–F4 of ``docs/derivation.md`` §2–§4 (Σ the encoder's Σ,
    q = t_d(m, ν/(ν+n) Σ, ν+n)),

    .. math::

        L(\Sigma) = -\frac{1}{\gamma}\Big[c\Big(1 + \frac{\|m\|^2
            + \frac{\nu}{\nu+n-2}\mathrm{tr}\,\Sigma + \mathrm{recon}}{\nu}\Big)
            - A\, |\Sigma|^{\kappa}\Big],

    with :math:`c = (K/\|p_0\|)^\gamma`, :math:`\kappa = -\gamma/(2(1+\gamma)) = 1/(\nu+n+d-2)`
    and :math:`A = [(1 + d/(\nu+n-2))\, C'^\gamma]^{1/(1+\gamma)}`,
    :math:`C' = \Gamma(\tfrac{\nu+n+d}{2})/(\Gamma(\tfrac{\nu+n}{2})(\nu\pi)^{d/2})`
    (so :math:`A|\Sigma|^\kappa = (\int q^{1+\gamma})^{1/(1+\gamma)}`). Setting
    :math:`\partial L/\partial\Sigma_k = 0`, i.e.
    :math:`c/(\nu+n-2) = \kappa A |\Sigma|^\kappa/\Sigma_k`, at :math:`\Sigma = \tau I` gives

    .. math::

        \tau_0 = \Big[\frac{(\nu+n-2)\,\kappa\, A}{c}\Big]^{1/(1-d\kappa)},

    the unique minimiser (L is linear minus concave in τ, since dκ < 1). With
    :math:`\|p_0\|^{1+\gamma} = K^\gamma(\nu+n+d-2)/(\nu-2)` (F3),
    :math:`\log c = \tfrac{\gamma}{1+\gamma}[\log K - \log\tfrac{\nu+n+d-2}{\nu-2}]`.
    σ enters through log|Λ| (τ_0 ∝ σ^{−2n/(ν+n−2)}). Examples (σ = 1, d = 16, ν = 5; the table
    of ``docs/derivation.md`` §7): n = 784 → 9.27, n = 64 → 0.87.

    :param nu: degrees of freedom ν > 2 (a tensor or a float).
    :param obs_dim: observed dimension n (a tensor or an int; may vary per datum: the observed
        modalities).
    :param latent_dim: latent dimension d (a tensor or an int).
    :param log_det_obs_scale: log|Λ| = Σ_j n_j log σ_j² over the observed modalities (a tensor
        or a float).
    :returns: τ_0, a tensor of the broadcast shape of the arguments.
    :raises ValueError: if ν ≤ 2.
    """
    nu, n, d, log_det = _as_tensors(nu, obs_dim, latent_dim, log_det_obs_scale)
    gamma = auto_gamma(nu, n, d)
    total = nu + n + d
    kappa = 1 / (total - 2)
    log_k = power_form_log_constant(nu, n, d, log_det)
    log_c = gamma / (1 + gamma) * (log_k - torch.log((total - 2) / (nu - 2)))
    log_c_prime = (
        torch.lgamma(total / 2) - torch.lgamma((nu + n) / 2) - d / 2 * (nu.log() + _LOG_PI)
    )
    log_a = (torch.log1p(d / (nu + n - 2)) + gamma * log_c_prime) / (1 + gamma)
    log_tau = (torch.log((nu + n - 2) * kappa) + log_a - log_c) / (1 - d * kappa)
    return log_tau.exp()


def _stack_experts(values, name):
    if isinstance(values, torch.Tensor):
        return values
    if isinstance(values, Sequence) and len(values) > 0:
        return torch.stack(torch.broadcast_tensors(*values))
    raise ValueError(f"{name}: expected a tensor [M, *batch, d] or a list of M tensors")


def _precision_fusion(loc, scale2, mask, prior_precision):
    """Precision-weighted fusion of experts (m_j, Σ_j) and a prior expert (0, 1/prior_precision).

    Returns the fused (m, Σ), shape [*batch, d]. Masked experts are replaced by zero precision
    before any arithmetic, so their inputs (even NaN or inf) reach neither values nor gradients.
    """
    loc = _stack_experts(loc, "loc")
    scale2 = _stack_experts(scale2, "scale2")
    if loc.dim() < 2:
        raise ValueError(f"loc: expected shape [M, *batch, d], found {tuple(loc.shape)}")
    num_experts = loc.shape[0]
    if scale2.shape[0] != num_experts:
        raise ValueError(
            f"scale2: expected {num_experts} experts along dim 0 (as loc), found "
            f"shape {tuple(scale2.shape)}"
        )
    batch_shapes = [loc.shape[1:-1], scale2.shape[1:-1]]
    if mask is not None:
        if mask.dim() < 1 or mask.shape[-1] != num_experts:
            raise ValueError(
                f"mask: expected shape [*batch, {num_experts}], found {tuple(mask.shape)}"
            )
        batch_shapes.append(mask.shape[:-1])
    batch_shape = torch.broadcast_shapes(*batch_shapes)
    event_shape = torch.broadcast_shapes(loc.shape[-1:], scale2.shape[-1:])

    def align(x):  # [M, *b, k] -> [M, 1.., *b, k], right-aligning the batch dimensions
        extra = len(batch_shape) - (x.dim() - 2)
        return x.reshape(x.shape[:1] + (1,) * extra + x.shape[1:])

    loc, scale2 = align(loc), align(scale2)
    if mask is None:
        precision = scale2.reciprocal()
    else:
        present = align(mask.to(torch.bool).movedim(-1, 0).unsqueeze(-1))
        present = present.expand((num_experts,) + batch_shape + event_shape)
        safe_scale2 = torch.where(present, scale2, torch.ones_like(scale2))
        loc = torch.where(present, loc, torch.zeros_like(loc))
        precision = torch.where(present, safe_scale2.reciprocal(), torch.zeros_like(scale2))
    fused_var = (prior_precision + precision.sum(0)).reciprocal()
    fused_loc = fused_var * (precision * loc).sum(0)
    return fused_loc, fused_var


def student_t_poe(loc, scale2, mask, *, nu, obs_dim, prior_scale):
    r"""Precision-weighted product of Student-t experts with a prior expert (0, τ_0 I).

    The encoder's fusion rule (``docs/derivation.md`` §4, "Approximation 2"): for experts
    (m_j, Σ_j) present in the datum,

    .. math::

        \Sigma^{-1} = I/\tau_0 + \sum_j \mathrm{mask}_j\, \Sigma_j^{-1},\qquad
        m = \Sigma \sum_j \mathrm{mask}_j\, \Sigma_j^{-1} m_j,\qquad
        q(z \mid x) = t_d\big(m,\ \tfrac{\nu}{\nu+n}\Sigma,\ \nu+n\big),

    with n the observed dimension. Σ_j are diagonal, so all of this is elementwise in
    precision space. A missing modality (mask False) drops its expert. τ_0 is the scale at
    which the objective is stationary without data (:func:`prior_expert_scale`); a unit prior
    expert is wrong for the γ-objective (``docs/derivation.md`` §4). This is an approximation: a
    product of t densities is not a t, and the rule does not aim at the literal product but at
    the objective's own optimum (``docs/derivation.md`` §4, "Approximation 2").

    :param loc: expert locations m_j stacked along dim 0, a tensor of shape
        ``[M, *batch, d]``, or a list of M tensors that broadcast among themselves (they are
        broadcast and stacked).
    :param scale2: expert scales Σ_j > 0 (the diagonals, in "Σ units" before the ν/(ν+n)
        factor), same layout as ``loc``.
    :param mask: bool tensor ``[*batch, M]``, True where modality j is observed, or ``None``
        (all present). Batch dimensions of ``loc``, ``scale2`` and ``mask`` are right-aligned
        and broadcast, so experts ``[M, K, B, d]`` (per class) combine with a mask ``[B, M]``.
    :param nu: degrees of freedom ν of the model (a tensor or a float).
    :param obs_dim: observed dimension n per datum (a tensor or an int), broadcastable to the
        batch shape.
    :param prior_scale: τ_0 per datum (a tensor or a float), broadcastable to the batch shape.
    :returns: the :class:`DiagStudentT` ``DiagStudentT(df=ν+n, loc=m, scale=sqrt(ν/(ν+n) Σ))``,
        batch shape the broadcast batch shape, event shape ``(d,)``.
    :raises ValueError: if the experts' shapes, or the mask's, do not match (the message names
        the argument).
    """
    template = loc if isinstance(loc, torch.Tensor) else loc[0]
    nu, obs_dim, prior_scale = _as_tensors(template, nu, obs_dim, prior_scale)[1:]
    fused_loc, fused_var = _precision_fusion(
        loc, scale2, mask, prior_scale.reciprocal().unsqueeze(-1)
    )
    df = nu + obs_dim
    scale = (nu / df).unsqueeze(-1) * fused_var
    return DiagStudentT(df, fused_loc, scale.sqrt())


def gaussian_poe(loc, scale2, mask):
    r"""Precision-weighted product of Gaussian experts with a UNIT prior expert (ν → ∞).

    .. math::

        \Sigma^{-1} = I + \sum_j \mathrm{mask}_j\, \Sigma_j^{-1},\qquad
        m = \Sigma \sum_j \mathrm{mask}_j\, \Sigma_j^{-1} m_j,\qquad
        q(z \mid x) = N(m, \Sigma),

    the MVAE fusion (Wu & Goodman 2018) and the ν → ∞ limit of :func:`student_t_poe` with
    τ_0 = 1.

    :param loc: as in :func:`student_t_poe`.
    :param scale2: as in :func:`student_t_poe`.
    :param mask: as in :func:`student_t_poe`.
    :returns: the :class:`pyro.distributions.Independent` ``Normal(m, sqrt(Σ)).to_event(1)``.
    :raises ValueError: as in :func:`student_t_poe`.
    """
    fused_loc, fused_var = _precision_fusion(loc, scale2, mask, 1.0)
    return dist.Normal(fused_loc, fused_var.sqrt()).to_event(1)
