r"""The multimodal Student-t M2 model p(x, y, z) (DESIGN.md, "The model").

For one datum with modalities x = (x_1, ..., x_M), x_j ∈ R^{n_j}:

.. math::

    y &\sim \mathrm{Categorical}(\pi) \\
    z &\sim t_d(0, I, \nu) \\
    x \mid y, z &\sim t_n\big(\mu(y, z),\; s(z)^2 \Lambda,\; \nu + d\big),
        \qquad s(z)^2 = \frac{\nu + \|z\|^2}{\nu + d},\quad
        \Lambda = \mathrm{blockdiag}(\sigma_j^2 I_{n_j}),

so that :math:`p(x, y, z) = \pi_y K (1 + Q_y/\nu)^{-(\nu+n+d)/2}` with
:math:`Q_y = \|z\|^2 + \sum_j \|x_j - \mu_j(y,z)\|^2/\sigma_j^2` (the *power form*, MATH.md F2).

The decoder is ONE multivariate t over all modalities, which independent per-modality t's are
not. It is written here as a chain of per-modality sites ``x_<name>``, each the conditional of
the joint t given z and the modalities before it:

.. math::

    x_j \mid z, x_{<j} \sim t_{n_j}\Big(\mu_j(y, z),\;
        \frac{\nu + \|z\|^2 + \sum_{k<j} R_k}{\nu + d + \sum_{k<j} n_k}\,\sigma_j^2 I,\;
        \nu + d + \sum_{k<j} n_k\Big), \qquad R_k = \|x_k - \mu_k\|^2/\sigma_k^2,

which multiplies out to the joint exactly. A missing modality is dropped from the chain (its
site is masked and it adds nothing to the running sums): that is exact marginalisation, and n
becomes the observed dimension. With ``nu=float("inf")`` the model is Gaussian
(z ~ N(0, I), x_j | y, z ~ N(μ_j, σ_j² I)): the MVAE-style semi-supervised VAE.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import TorchDistribution, constraints
from torch import nn

from pyro_mmt.checks import (
    check_model_config,
    class_log_prior_tensor,
    class_weight_tensor,
    full_mask,
    label_counts_tensor,
    per_modality,
)
from pyro_mmt.distributions import DiagStudentT, _log_t_normaliser
from pyro_mmt.infer.power_norm import GaussianPowerNorm, StudentTPowerNorm, declare_power_norm
from pyro_mmt.nn import LabelConditionedMLP, observed_dimension

__all__ = ["IsotropicStudentT", "MultimodalTModel"]


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


class MultimodalTModel(nn.Module):
    r"""Multimodal Student-t M2: p(y) p(z) Π_j p(x_j | y, z, x_{<j}), plus the classification
    term on labelled data.

    **Classification term.** M2 trains q(y | x) on labelled data with an extra term
    α Σ_labelled log q(y | x). It is written here as ``pyro.factor("classification", ...)``
    because it is not part of the generative density: a factor site is auxiliary, so
    :class:`~pyro_mmt.infer.GammaPowerELBO` adds it to the loss as it is rather than raising it
    to the power γ, and ``TraceEnum_ELBO`` adds it like any log-factor. The classifier is the
    guide's (:class:`~pyro_mmt.guides.PoEClassifier`), held by reference and registered under
    the name ``"classifier"`` in both model and guide, so that its parameters exist once.

    **Class imbalance** (both off by default; ``docs/imbalance.md``):

    - ``class_weight``: weights w_y on the classification term, e.g. "balanced" weights
      N_L/(K n_y) from the labelled class counts (King & Zeng 2001; scikit-learn's
      ``class_weight="balanced"``);
    - ``logit_adjustment`` τ: the classification term uses logits f(x) + τ log π̂ (π̂ the
      labelled class frequencies), so that f itself is trained to be class-balanced
      (logit-adjusted loss, Menon et al., ICLR 2021). Predict with f (no adjustment).

    :param dims: modality name -> n_j, in the order of the data's modalities.
    :param int num_classes: K.
    :param int latent_dim: d.
    :param hidden: hidden layer sizes of each decoder μ_j(y, z).
    :param float nu: ν > 2, or ``float("inf")`` for the Gaussian model.
    :param sigma: σ_j, one float for all modalities or a mapping name -> σ_j (fixed).
    :param class_prior: π, a length-K sequence summing to 1; uniform when None.
    :param classifier: the guide's classifier module ``classifier(x, mask) -> logits``; needed
        when ``alpha > 0``.
    :param float alpha: weight α of the classification term (0 disables it).
    :param class_weight: None, "balanced" or a length-K sequence of weights w_y.
    :param float logit_adjustment: τ ≥ 0 of the logit-adjusted classification term.
    :param label_counts: labelled class counts, length K; needed by "balanced" weights and by
        the logit adjustment.
    :param float latent_weight: β scaling the z sites' log-densities (a β-VAE under
        ``TraceEnum_ELBO``; GammaPowerELBO ignores site scales other than the data plate's).
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        num_classes: int,
        *,
        latent_dim: int = 16,
        hidden: Sequence[int] = (128,),
        nu: float = 5.0,
        sigma: float | Mapping[str, float] = 1.0,
        class_prior: Sequence[float] | None = None,
        classifier: nn.Module | None = None,
        alpha: float = 0.0,
        class_weight: str | Sequence[float] | None = None,
        logit_adjustment: float = 0.0,
        label_counts: Sequence[int] | None = None,
        latent_weight: float = 1.0,
    ):
        super().__init__()
        self.modalities = tuple(dims)
        self.dims = {m: int(dims[m]) for m in self.modalities}
        self.num_classes = int(num_classes)
        self.latent_dim = int(latent_dim)
        self.nu = float(nu)
        self.sigma = per_modality(sigma, self.modalities, "sigma")
        self.alpha = float(alpha)
        self.logit_adjustment = float(logit_adjustment)
        self.latent_weight = float(latent_weight)
        check_model_config(self.modalities, self.dims, self.num_classes, self.latent_dim, self.nu)
        if self.alpha < 0:
            raise ValueError(f"alpha: expected a weight >= 0, found {alpha}")
        if self.alpha > 0 and classifier is None:
            raise ValueError("classifier: alpha > 0 needs the guide's classifier, found None")
        # held by reference, not as a submodule: its parameters are registered as "classifier"
        self.__dict__["classifier"] = classifier

        self.decoders = nn.ModuleDict(
            {
                m: LabelConditionedMLP(self.latent_dim, self.num_classes, hidden, n)
                for m, n in self.dims.items()
            }
        )
        self.register_buffer("class_log_prior", class_log_prior_tensor(class_prior, self.num_classes))
        self.register_buffer(
            "_dims", torch.tensor([float(n) for n in self.dims.values()])
        )
        self.register_buffer(
            "_log_sigma2", torch.tensor([2 * math.log(self.sigma[m]) for m in self.modalities])
        )
        counts = None if label_counts is None else label_counts_tensor(label_counts, self.num_classes)
        self.register_buffer("class_weights", class_weight_tensor(class_weight, counts, self.num_classes))
        if self.logit_adjustment and counts is None:
            raise ValueError("label_counts: logit_adjustment > 0 needs the labelled class counts")
        label_log_freq = (
            torch.zeros(self.num_classes) if counts is None else torch.log(counts / counts.sum())
        )
        self.register_buffer("label_log_freq", label_log_freq)

    @property
    def gaussian(self) -> bool:
        """True for the ν = ∞ (Gaussian) model."""
        return math.isinf(self.nu)

    def latent_prior(self) -> dist.TorchDistribution:
        """p(z): t_d(0, I, ν), or N(0, I) when ν = ∞."""
        zeros = self._dims.new_zeros(self.latent_dim)
        if self.gaussian:
            return dist.Normal(zeros, 1.0).to_event(1)
        return DiagStudentT(zeros.new_tensor(self.nu), zeros, torch.ones_like(zeros))

    def model(self, x: Mapping[str, torch.Tensor], mask: torch.Tensor | None = None,
              y: torch.Tensor | None = None):
        """The generative model. ``x``: name -> [B, n_j] (missing rows filled with 0),
        ``mask``: bool [B, M] (None = all present), ``y``: int64 [B] for a labelled batch or
        None for an unlabelled one (the label is then enumerated by the guide)."""
        pyro.module("model", self)
        labelled = y is not None
        batch = next(iter(x.values())).shape[0]
        mask = full_mask(mask, batch, len(self.modalities), self._dims.device)
        obs_dim, log_det = observed_dimension(mask, self._dims, self._log_sigma2)

        with pyro.plate("data", batch):
            y = pyro.sample("y", dist.Categorical(logits=self.class_log_prior), obs=y)
            with poutine.scale(scale=self.latent_weight):
                z = pyro.sample("z", self.latent_prior())

            # the decoder chain: x_j | y, z, x_{<j} (see the module docstring)
            quad = z.pow(2).sum(-1)  # ‖z‖² + Σ_{k<j} R_k
            dof = torch.full_like(obs_dim, self.nu + self.latent_dim)  # ν + d + Σ_{k<j} n_k
            for j, m in enumerate(self.modalities):
                loc = self.decoders[m](z, y)
                present = mask[:, j]
                if self.gaussian:
                    fn = dist.Normal(loc, self.sigma[m]).to_event(1)
                else:
                    scale = ((self.nu + quad) / dof).sqrt() * self.sigma[m]
                    fn = IsotropicStudentT(dof, loc, scale)  # t_{n_j}(μ_j, scale² I, dof)
                pyro.sample(f"x_{m}", fn.mask(present), obs=x[m])
                if not self.gaussian:
                    # R_j = ‖x_j − μ_j‖²/σ_j² (the site's log-density reuses ‖x_j − μ_j‖²)
                    resid = fn.sum_of_squares(x[m]) / self.sigma[m] ** 2
                    quad = quad + torch.where(present, resid, torch.zeros_like(resid))
                    dof = dof + present.to(dof.dtype) * self.dims[m]

            # ‖p‖_{1+γ}, which no trace contains (GammaPowerELBO needs it; others ignore it)
            if self.gaussian:
                norm = GaussianPowerNorm(obs_dim, self.latent_dim, log_det, self.class_log_prior)
            else:
                norm = StudentTPowerNorm(
                    self.nu, obs_dim, self.latent_dim, log_det, self.class_log_prior
                )
            declare_power_norm(norm)

            # α Σ_labelled w_y log q(y | x): the M2 classification term
            if labelled and self.alpha > 0:
                pyro.module("classifier", self.classifier)
                logits = self.classifier(x, mask) + self.logit_adjustment * self.label_log_freq
                log_q = dist.Categorical(logits=logits).log_prob(y)
                pyro.factor("classification", self.alpha * self.class_weights[y] * log_q)
