"""The γ-power divergence objective as a Pyro ELBO."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.elbo import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.trace_messenger import TraceMessenger
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match, check_site_shape, warn_if_nan

from pyro_mmt.distributions import log_power_integral, second_moment
from pyro_mmt.infer.power_norm import find_power_norm

__all__ = ["GammaPowerELBO"]


class _SampleTraceMessenger(TraceMessenger):
    """A flat trace that records sample sites only (param sites are not copied into it)."""

    def _pyro_post_param(self, msg) -> None:
        pass


def _sum_log_prob(sites) -> torch.Tensor | float:
    """Σ of the sites' unscaled, masked log-densities (0.0 for no site), computed as
    ``Trace.compute_log_prob`` computes them and stored in the sites."""
    total = 0.0
    for site in sites:
        if "unscaled_log_prob" not in site:
            site["unscaled_log_prob"] = site["fn"].log_prob(
                site["value"], *site["args"], **site["kwargs"]
            )
        total = total + scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])
    return total


@dataclass
class _ParticleTerms:
    """Per-datum pieces of one particle (or of the mean over vectorised particles).

    ``cross_m1`` = T1 − 1, ``inner_m1`` = Σ_y q_y^{1+γ} ∫ q(z|x,y)^{1+γ} dz − 1, ``aux`` = the
    model's auxiliary log-factors (e.g. α log q(y|x)), all with the data plate's shape.
    """

    cross_m1: torch.Tensor
    inner_m1: torch.Tensor
    aux: torch.Tensor
    gamma: torch.Tensor
    scale: torch.Tensor | float


class GammaPowerELBO(ELBO):
    r"""The γ-power divergence between the guide and the model's joint, per datum, as a
    Pyro objective [1, 2].

    For γ ≠ 0 (γ > −1), with :math:`\|p\|_{1+\gamma} = (\int p^{1+\gamma})^{1/(1+\gamma)}`,

    .. math::

        D_\gamma(q \,\|\, p) = -\frac{1}{\gamma}\Big[\int q\,
            \Big(\frac{p}{\|p\|_{1+\gamma}}\Big)^{\gamma} - \|q\|_{1+\gamma}\Big]
            \;\longrightarrow\; \mathrm{KL}(q \,\|\, p) \quad (\gamma \to 0).

    With :math:`q(y, z \mid x) = q(y \mid x)\, q(z \mid x, y)` the per-datum objective is

    .. math::

        L(x) = -\frac{1}{\gamma}\Big[ \sum_y q(y|x)\, \mathbb{E}_{q(z|x,y)}
            \Big(\frac{p(x, y, z)}{\|p\|_{1+\gamma}}\Big)^{\gamma}
            - \Big(\sum_y q(y|x)^{1+\gamma} \int q(z|x,y)^{1+\gamma}\,dz\Big)^{1/(1+\gamma)}
            \Big],

    the sum over y collapsing onto the observed label for labelled data. The loss is
    :math:`\sum_i s_i L(x_i) - \sum_i s_i\, a_i`, with :math:`s_i` the data plate's scale
    (``poutine.scale``, subsampling) and :math:`a_i` the model's auxiliary log-factors
    (``pyro.factor`` sites, e.g. the classification term α log q(y|x)), which enter
    additively, as in :class:`~pyro.infer.TraceEnum_ELBO`, and are not raised to the power γ.
    As γ → 0 the loss tends to the negative enumerated ELBO that ``TraceEnum_ELBO`` computes
    (``docs/derivation.md`` §5).

    **How the terms are estimated.** The guide runs under parallel enumeration of its discrete
    sites (as in ``TraceEnum_ELBO``); the model is replayed against it; every datum keeps its
    own batch element, so the sum over the enumerated labels happens *inside* each datum's
    objective. From the traces' log-densities, with one reparameterised draw of z per label
    (per particle):

    - the cross term is estimated by :math:`\exp(\gamma(\log p(x,y,z) - \log\|p\|))`;
    - :math:`\int q^{1+\gamma}` by :math:`\exp(\gamma \log q(z|x,y))`.

    With ``closed_forms=True`` (default) these are replaced by closed forms where the sites
    allow it (Rao-Blackwellisation, lower variance, no Jensen bias from the outer power):

    - :math:`\int q(z|x,y)^{1+\gamma}` when the guide has one continuous site whose family has a
      closed form (:func:`~pyro_mmt.distributions.log_power_integral`: the multivariate t
      :class:`~pyro_mmt.distributions.DiagStudentT`, the diagonal Gaussian);
    - for a Student-t power-form model with ``gamma="auto"``, where
      :math:`p^\gamma = (\pi_y K)^\gamma (1 + Q_y/\nu)` is affine in
      :math:`Q_y = \|z\|^2 + \sum_j \|x_j-\mu_j\|^2/\sigma_j^2`, the :math:`\|z\|^2` part of the
      cross term is replaced by its expectation :math:`\mathbb{E}_q\|z\|^2`
      (:func:`~pyro_mmt.distributions.second_moment`); the reconstruction part stays Monte
      Carlo because the decoder is non-linear.

    **The norm.** :math:`\|p\|_{1+\gamma}` is an integral over the whole joint space that no
    trace contains, yet it sets the balance between the two terms. The model must state it with
    :func:`~pyro_mmt.infer.declare_power_norm` inside its data plate
    (:class:`~pyro_mmt.infer.StudentTPowerNorm` for the power-form model,
    :class:`~pyro_mmt.infer.GaussianPowerNorm` for ν = ∞); a model without one raises a
    ``ValueError``.

    **Choice of γ.** ``gamma="auto"`` takes, per datum, :math:`\gamma = -2/(\nu + n + d)` with
    n the datum's observed dimension (t3VAE's choice [2]): then every term has a closed form
    except the reconstruction. An explicit γ (the paper tunes it) is used as given.

    **Assumptions.** All continuous guide sites are reparameterised; discrete guide sites are
    enumerated in parallel (``config_enumerate`` / ``infer={"enumerate": "parallel"}``); the
    model enumerates nothing the guide does not; each element of the plates is one datum
    (within-datum dimensions are events, ``to_event``), so the only plate is the data plate
    (plus the particle plate when ``vectorize_particles=True``).

    :param gamma: ``"auto"`` or a float γ with −1 < γ, γ ≠ 0.
    :param bool closed_forms: use the closed forms above where available (default True); False
        gives the pure Monte Carlo estimator from log-densities (for tests and for models
        outside those families).
    :param int num_particles: number of draws of z per label and datum; the cross term and the
        inner sum of the entropy term are averaged over them before the outer power.
    :param int max_plate_nesting: bound on nested plates (required; 1 for the models here).
    :param bool vectorize_particles: draw the particles in one vectorised pass.

    References:

    [1] H. Fujisawa, S. Eguchi, "Robust parameter estimation with a small bias against heavy
        contamination", J. Multivariate Analysis 99 (2008).

    [2] J. Kim, J. Kwon, M. Cho, H. Lee, J.-H. Won, "t³-Variational Autoencoder: Learning
        Heavy-tailed Data with Student's t and Power Divergence", ICLR 2024.

    [3] D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling, "Semi-supervised Learning with
        Deep Generative Models", NeurIPS 2014.

    [4] S. Yoon, J. Kim, "Multimodal Deep Generative Model for Semi-Supervised Learning under
        Class Imbalance", arXiv:2605.06289 (2026).
    """

    def __init__(
        self,
        gamma: float | str = "auto",
        *,
        closed_forms: bool = True,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
    ):
        if isinstance(gamma, str):
            if gamma != "auto":
                raise ValueError(f"gamma: expected 'auto' or a float, found {gamma!r}")
        else:
            gamma = float(gamma)
            if not math.isfinite(gamma) or gamma <= -1.0 or gamma == 0.0:
                raise ValueError(
                    f"gamma: expected a finite float with gamma > -1 and gamma != 0 (gamma = 0 "
                    f"is the KL: use TraceEnum_ELBO), found {gamma}"
                )
        if max_plate_nesting == float("inf"):
            raise ValueError(
                "max_plate_nesting: GammaPowerELBO needs it given (1 for a model with one "
                "data plate), found inf"
            )
        if int(num_particles) < 1:
            raise ValueError(f"num_particles: expected an integer >= 1, found {num_particles}")
        self.gamma = gamma
        self.closed_forms = bool(closed_forms)
        super().__init__(
            num_particles=int(num_particles),
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )

    # ---------------------------------------------------------------------------- traces
    def _get_trace(self, model, guide, args, kwargs):
        """The guide's trace and the model's replayed against it, as Pyro's
        ``get_importance_trace`` makes them, with two savings per step: the traces hold sample
        sites only (no ``param`` sites: SVI records those in its own trace), and only the
        model's log-densities are computed here (the guide's are computed where they are
        needed, :meth:`_particle_terms`)."""
        if isinstance(poutine.unwrap(guide), poutine.messenger.Messenger):  # a GuideMessenger
            return get_importance_trace("flat", self.max_plate_nesting, model, guide, args,
                                        kwargs)
        guide_trace = _SampleTraceMessenger()(guide).get_trace(*args, **kwargs)
        model_trace = _SampleTraceMessenger()(
            poutine.replay(model, trace=guide_trace)
        ).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        for trace in (guide_trace, model_trace):
            for name, site in list(trace.nodes.items()):
                if site_is_subsample(site):
                    trace.remove_node(name)
        model_trace.compute_log_prob()
        if is_validation_enabled():
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    check_site_shape(site, self.max_plate_nesting)
        return model_trace, guide_trace

    def _get_traces(self, model, guide, args, kwargs):
        if self.vectorize_particles:
            guide = self._vectorized_num_particles(guide)
            model = self._vectorized_num_particles(model)
        # Discrete guide sites are enumerated in parallel to the left of all plates.
        guide = EnumMessenger(first_available_dim=-1 - self.max_plate_nesting)(guide)
        for _ in range(1 if self.vectorize_particles else self.num_particles):
            yield self._get_trace(model, guide, args, kwargs)

    # ----------------------------------------------------------------------------- terms
    def _particle_terms(self, model_trace, guide_trace) -> _ParticleTerms:
        norm_name, norm = find_power_norm(model_trace)
        norm_site = model_trace.nodes[norm_name]
        ref = norm.log_det_obs_scale
        if self.gamma == "auto":
            gamma = norm.auto_gamma()
        else:
            gamma = torch.as_tensor(self.gamma, dtype=ref.dtype, device=ref.device)
        log_norm = norm.log_norm(gamma)

        # log p(x, y, z) and the auxiliary factors, from the model trace
        log_p, aux = 0.0, 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            lp = scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])
            if site["infer"].get("is_auxiliary"):
                if name != norm_name:
                    aux = aux + lp
                continue
            if not site["is_observed"] and name not in guide_trace.nodes:
                raise ValueError(
                    f"model site '{name}': GammaPowerELBO does not enumerate model-side latent "
                    "sites; put them in the guide"
                )
            log_p = log_p + lp

        # the guide's enumerated sites (q(y | x)) and continuous ones (q(z | x, y))
        enumerated, continuous = [], []
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            enumerate_ = site["infer"].get("enumerate")
            if site["infer"].get("is_auxiliary"):
                raise ValueError(f"guide site '{name}': factor sites in the guide are not supported")
            if enumerate_ == "parallel":
                enumerated.append(site)
            elif enumerate_ is not None:
                raise ValueError(
                    f"guide site '{name}': only parallel enumeration is supported, found "
                    f"enumerate={enumerate_!r}"
                )
            elif site["fn"].has_rsample:
                continuous.append(site)
            else:
                raise ValueError(
                    f"guide site '{name}': GammaPowerELBO needs reparameterised continuous sites "
                    f"and parallel-enumerated discrete sites, found {type(site['fn']).__name__} "
                    "without rsample and without enumeration"
                )
        log_q_enum = _sum_log_prob(enumerated)

        # cross term: T1 - 1 = Σ_y q_y [exp(γ(log p − log‖p‖)) − 1]  (+ Rao-Blackwellisation)
        cross = torch.expm1(gamma * (log_p - log_norm))
        if self.closed_forms and norm.power_form and self.gamma == "auto":
            cross = cross + self._latent_rao_blackwell(model_trace, guide_trace, norm, gamma, log_norm)

        # entropy term: Σ_y q_y^{1+γ} ∫ q(z|x,y)^{1+γ} dz = Σ_y q_y exp(γ log q_y + log I_y)
        log_int = None
        if self.closed_forms and len(continuous) == 1:
            try:
                log_int = log_power_integral(continuous[0]["fn"], gamma)
            except NotImplementedError:  # a guide family without a closed form
                log_int = None
        if log_int is None:  # log q(z | x, y) is only needed without the closed form
            log_int = gamma * _sum_log_prob(continuous)
        entropy = torch.expm1(gamma * log_q_enum + log_int)

        # sum over the enumerated dimensions, weighted by q(y | x)
        q_enum = torch.exp(torch.as_tensor(log_q_enum, dtype=ref.dtype, device=ref.device))
        aux = torch.as_tensor(aux, dtype=ref.dtype, device=ref.device)
        cross_m1 = self._sum_enum(q_enum * cross)
        inner_m1 = self._sum_enum(q_enum * entropy)
        aux = self._sum_enum(q_enum * aux)
        return _ParticleTerms(cross_m1, inner_m1, aux, gamma, norm_site["scale"])

    def _latent_rao_blackwell(self, model_trace, guide_trace, norm, gamma, log_norm):
        """(π_y K / ‖p‖)^γ (E_q‖z‖² − ‖z‖²)/ν: replaces the sampled ‖z‖² in Q_y by its mean."""
        latent = norm.latent_site
        if latent not in guide_trace.nodes:
            return 0.0
        try:
            mean_sq = second_moment(guide_trace.nodes[latent]["fn"])
        except NotImplementedError:  # a guide family without a closed-form E‖z‖²
            return 0.0
        z = model_trace.nodes[latent]["value"]
        log_class = 0.0
        if norm.class_site in model_trace.nodes:
            log_class = model_trace.nodes[norm.class_site]["unscaled_log_prob"]
        log_coef = gamma * (log_class + norm.log_power_form_constant() - log_norm)
        return torch.exp(log_coef) * (mean_sq - z.pow(2).sum(-1)) / norm.nu

    def _sum_enum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over the enumeration dimensions (those left of the plates)."""
        extra = value.dim() - self.max_plate_nesting
        if extra > 0:
            value = value.sum(dim=tuple(range(extra)))
        return value

    def _combine(self, particles: list[_ParticleTerms]) -> torch.Tensor:
        cross_m1 = torch.stack([p.cross_m1 for p in particles]).mean(0)
        inner_m1 = torch.stack([p.inner_m1 for p in particles]).mean(0)
        aux = torch.stack([p.aux for p in particles]).mean(0)
        gamma, scale = particles[0].gamma, particles[0].scale
        if self.vectorize_particles and self.num_particles > 1:
            # the particle plate is the leftmost plate dimension
            dim = -self.max_plate_nesting
            if cross_m1.dim() >= -dim:
                cross_m1, inner_m1 = cross_m1.mean(dim), inner_m1.mean(dim)
            if aux.dim() >= -dim:
                aux = aux.mean(dim)
        # ‖q‖ − 1 = exp(log(1 + inner − 1)/(1 + γ)) − 1, stable as γ → 0
        entropy_m1 = torch.expm1(torch.log1p(inner_m1) / (1.0 + gamma))
        per_datum = -(cross_m1 - entropy_m1) / gamma - aux
        return (per_datum * scale).sum()

    # ---------------------------------------------------------------------- public API
    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss as a differentiable tensor (for custom training loops and ``elbo(model,
        guide)`` modules)."""
        particles = [
            self._particle_terms(model_trace, guide_trace)
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs)
        ]
        loss = self._combine(particles)
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs):
        """The loss as a float, without gradients."""
        with torch.no_grad():
            return torch.as_tensor(self.differentiable_loss(model, guide, *args, **kwargs)).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """The loss as a float; its gradients are accumulated into the parameters."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()

