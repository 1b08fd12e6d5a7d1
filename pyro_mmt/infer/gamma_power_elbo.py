"""The γ-power divergence objective as a Pyro ELBO."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Number

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.distributions.util import scale_and_mask
from pyro.infer.elbo import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.trace_messenger import TraceMessenger
from pyro.poutine.util import site_is_subsample
from pyro.util import (
    check_model_guide_match,
    check_site_shape,
    get_rng_state,
    set_rng_state,
    warn_if_nan,
)
from torch import nn

from pyro_mmt.distributions import log_power_integral, second_moment
from pyro_mmt.infer.power_norm import MonteCarloPowerNorm, find_power_norm

__all__ = ["GammaPowerELBO", "LABEL_DIVERGENCES"]

#: How :class:`GammaPowerELBO` treats the label y: ``"gamma"`` puts (x, y, z) under one
#: γ-power divergence (the paper's objective); ``"kl"`` puts (x, z) | y under the γ-power
#: divergence and y under the KL (M2's label terms), ``docs/derivation.md`` §10.
LABEL_DIVERGENCES = ("gamma", "kl")

_MULTIPLE_OF_AUTO = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*x\s*auto\s*$")
_PARTICLE_PLATE = "num_particles_vectorized"


class _SampleTraceMessenger(TraceMessenger):
    """A flat trace that records sample sites only (param sites are not copied into it)."""

    #: for :func:`pyro_mmt.nn.register_module`: this trace ignores parameters
    records_params = False

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


def _same_scale(a, b) -> bool:
    if isinstance(a, Number) and isinstance(b, Number):
        return a == b
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return bool(torch.equal(*torch.broadcast_tensors(a, b.to(a))))


def _data_frames(site) -> set:
    """The vectorised plates of a site other than the particle plate."""
    return {f for f in site["cond_indep_stack"] if f.vectorized and f.name != _PARTICLE_PLATE}


def _observed_size(site) -> torch.Tensor | float:
    """Per-datum number of observed coordinates of a site: its event size where unmasked."""
    fn, size = site["fn"], 1
    for n in fn.event_shape:
        size *= n
    mask = site["mask"]
    if isinstance(fn, MaskedDistribution) and isinstance(fn._mask, torch.Tensor):
        mask = fn._mask if mask is None else mask & fn._mask
    if isinstance(fn, MaskedDistribution):
        fn = fn.base_dist
    cells = _observed_cells(fn)
    if cells is not None:  # missing cells: the observed ones only
        size = cells
    if mask is None:
        return size if isinstance(size, torch.Tensor) else float(size)
    return mask.to(torch.get_default_dtype()) * size


def _observed_cells(fn) -> torch.Tensor | None:
    """Per-datum observed cells of a distribution scored on some of its cells (a t marginal
    with ``observed_size``, or independent columns with a per-cell mask), else None."""
    if hasattr(fn, "observed_size"):
        return fn.observed_size.to(torch.get_default_dtype())
    if (isinstance(fn, dist.Independent) and isinstance(fn.base_dist, MaskedDistribution)
            and isinstance(fn.base_dist._mask, torch.Tensor)):
        cells = fn.base_dist._mask.to(torch.get_default_dtype())
        cells = cells.expand(fn.base_dist.batch_shape)
        return cells.flatten(-fn.reinterpreted_batch_ndims).sum(-1)
    return None


def _rng_state() -> dict:
    """torch's random state (and CUDA's when CUDA is in use), to run a step again with the
    same draws. Pyro's distributions draw from torch; numpy's and ``random``'s states are not
    kept (taking numpy's costs 80 µs, at every step), so a model that draws from those gets
    other draws on a step traced twice."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _mask_signature(mask):
    if mask is None or isinstance(mask, bool):
        return mask
    return ("tensor", tuple(mask.shape), mask.dtype)


def _fn_signature(fn) -> tuple:
    """The family of a site's distribution (through its wrappers) and its shapes."""
    parts = []
    while fn is not None:
        batch, event = getattr(fn, "batch_shape", None), getattr(fn, "event_shape", None)
        part = (type(fn), None if batch is None else tuple(batch),
                None if event is None else tuple(event))
        if isinstance(fn, MaskedDistribution):
            part += (_mask_signature(fn._mask),)
        elif isinstance(fn, torch.distributions.Independent):
            part += (fn.reinterpreted_batch_ndims,)
        parts.append(part)
        fn = getattr(fn, "base_dist", None)
    return tuple(parts)


def _infer_signature(infer: dict) -> tuple:
    return tuple(sorted(
        (key, value if value is None or isinstance(value, str | bool | int | float)
         else type(value))
        for key, value in infer.items()))


def _input_signature(value):
    """The arguments of a step as the cache of checks keys them: tensors by shape, dtype and
    device, containers by their items, numbers and strings by value, other objects by type."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return ("dict", tuple((key, _input_signature(v)) for key, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_input_signature(v) for v in value))
    return ("object", type(value))


def _trace_signature(model_trace, guide_trace) -> tuple | None:
    """What the checks of a step depend on, other than the values: per sample site of each
    trace its name, family (through its wrappers) and shapes, whether it is observed, whether
    its scale is the data plate's (the power-norm site's), its mask kind, plates and ``infer``
    settings (a declared norm by its type). None when some site's scale is a tensor (its
    values would have to be compared: such steps are always checked)."""
    plate_scale = None
    for site in model_trace.nodes.values():
        if site["type"] == "sample" and "power_norm" in site["infer"]:
            plate_scale = site["scale"]
    parts = []
    for trace in (guide_trace, model_trace):
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            scale = site["scale"]
            if isinstance(scale, torch.Tensor) or isinstance(plate_scale, torch.Tensor):
                return None
            value = site["value"]
            parts.append((
                name, _fn_signature(site["fn"]),
                tuple(value.shape) if isinstance(value, torch.Tensor) else type(value),
                site["is_observed"], scale == plate_scale, _mask_signature(site["mask"]),
                tuple((f.name, f.dim, f.size) for f in site["cond_indep_stack"]),
                _infer_signature(site["infer"]),
            ))
        parts.append("|")  # end of the guide's sites
    return tuple(parts)


@dataclass
class _ParticleTerms:
    """Per-datum pieces of one particle (or of the mean over vectorised particles).

    ``cross_m1`` = T1 − 1, ``inner_m1`` = Σ_y q_y^{1+γ} ∫ q(z|x,y)^{1+γ} dz − 1,
    ``elbo`` = the negative enumerated ELBO (used where γ = 0), ``aux`` = the model's
    auxiliary log-factors in the data plate (e.g. α log q(y|x)), all with the data plate's shape;
    ``global_aux`` = auxiliary factors outside the data plate (added once).
    """

    cross_m1: torch.Tensor
    inner_m1: torch.Tensor
    elbo: torch.Tensor | None
    aux: torch.Tensor
    global_aux: torch.Tensor | float
    gamma: torch.Tensor
    scale: torch.Tensor | float
    #: with ``label_divergence="kl"``: the whole per-datum loss of this particle (before −aux)
    direct: torch.Tensor | None = None


class _ELBOModule(nn.Module):
    """``elbo(model, guide)``: the loss as a module whose ``parameters()`` are those of the
    modules behind ``model`` and ``guide`` (the modules themselves, or the owners of bound
    methods such as ``m2.model``)."""

    def __init__(self, model, guide, elbo):
        super().__init__()
        owners = []
        for fn in (model, guide):
            owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
            if isinstance(owner, nn.Module) and all(owner is not o for o in owners):
                owners.append(owner)
        self.owners = nn.ModuleList(owners)
        self._model, self._guide, self.elbo = model, guide, elbo

    def forward(self, *args, **kwargs):
        return self.elbo.differentiable_loss(self._model, self._guide, *args, **kwargs)


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
    Where γ = 0 (the "auto" γ of the Gaussian model, ν = ∞) L is its limit, the negative
    enumerated ELBO that ``TraceEnum_ELBO`` computes (``docs/derivation.md`` §5).

    **How the terms are estimated.** The guide runs under parallel enumeration of its discrete
    sites (as in ``TraceEnum_ELBO``); the model is replayed against it; every datum keeps its
    own batch element, so the sum over the enumerated labels happens *inside* each datum's
    objective. From the traces' log-densities, with one reparameterised draw of z per label
    (per particle):

    - the cross term is estimated by :math:`\exp(\gamma(\log p(x,y,z) - \log\|p\|))`;
    - :math:`\int q^{1+\gamma}` by :math:`\exp(\gamma \log q(z|x,y))`.

    With ``closed_forms=True`` (default) these are replaced by closed forms (Rao-Blackwellisation,
    lower variance, no Jensen bias from the outer power):

    - :math:`\int q(z|x,y)^{1+\gamma}` for the guide's one continuous site
      (:func:`~pyro_mmt.distributions.log_power_integral`: the multivariate t
      :class:`~pyro_mmt.distributions.DiagStudentT`, the diagonal Gaussian);
    - for a Student-t power-form model with the "auto" γ, where
      :math:`p^\gamma = (\pi_y K)^\gamma (1 + Q_y/\nu)` is affine in
      :math:`Q_y = \|z\|^2 + \sum_j \|x_j-\mu_j\|^2/\sigma_j^2`, the :math:`\|z\|^2` part of the
      cross term is replaced by its expectation :math:`\mathbb{E}_q\|z\|^2`
      (:func:`~pyro_mmt.distributions.second_moment`); the reconstruction part stays Monte
      Carlo because the decoder is non-linear.

    **The norm.** :math:`\|p\|_{1+\gamma}` is an integral over the whole joint space that no
    trace contains, yet it sets the balance between the two terms. The model states it with
    :func:`~pyro_mmt.infer.declare_power_norm` inside its data plate:
    :class:`~pyro_mmt.infer.StudentTPowerNorm` for the power-form model,
    :class:`~pyro_mmt.infer.GaussianPowerNorm` for ν = ∞, and
    :class:`~pyro_mmt.infer.MonteCarloPowerNorm` for any other model (e.g. Bernoulli or
    Poisson modalities; ``docs/derivation.md`` §9).

    **Choice of γ.** ``gamma="auto"`` takes, per datum, :math:`\gamma = -2/(\nu + n + d)` with
    n the datum's observed dimension (t3VAE's choice [2]): then every term has a closed form
    except the reconstruction; at ν = ∞ it is 0, the KL. ``gamma="2x auto"`` (any positive
    multiple) takes that multiple of the per-datum auto γ; the t norm is finite for
    γ > −ν/(ν + n + d), i.e. up to ν/2 × auto. A float is used as given for every datum (the
    paper tunes it; γ > 0 is allowed).

    **What it refuses.** Under Pyro's validation (``pyro.enable_validation``) the objective
    checks that it computes what the model says, and raises a ``ValueError`` naming the site
    otherwise: a model or guide site outside the data plate (a global latent would be counted
    once per datum), a site whose ``poutine.scale`` differs from the data plate's (the power γ
    applies to the whole density: a scaled part, like a β on z or a scaled observed auxiliary
    site, has no meaning there; write such a term as ``pyro.factor``), an observed site whose
    family or total size the declared norm does not cover, a model-side latent site, a discrete
    guide site not enumerated in parallel, a continuous one without ``rsample``, and more than
    one continuous guide site with ``closed_forms=True``.

    **When the checks run.** Pyro's validation checks (distribution arguments and support,
    the model–guide match, site shapes, NaN log-densities) and the objective's own above
    depend on the structure of the traces, which is the same at every step of a training run.
    With ``cache_checks=True`` (default) and validation on, a step whose arguments are new (by
    shape, dtype and device: the first labelled and the first unlabelled batch, a last smaller
    batch) runs every check, and the *signature* of its traces (per sample site: name, family
    through its wrappers, shapes, observed or not, whether its scale is the data plate's, mask
    kind, plates, ``infer`` settings) is recorded once the step has passed them. A later step
    with such arguments is traced with the checks off and its signature compared with the
    recorded one: if it differs (the model or guide changed its structure), the step is traced
    again from the same torch random state with every check on, so that a model that becomes
    invalid is still refused, with the draws and loss of an unchecked step. Checks of *values*
    run on checked steps only: a parameter that becomes NaN later shows as a NaN loss (which
    :func:`~pyro_mmt.training.train` reports as a divergence) rather than as a distribution's
    argument error, and a pattern of missing modalities first seen after its shapes were
    checked is not checked again. A tensor ``poutine.scale`` makes every step checked.
    ``cache_checks=False`` checks every step, as Pyro's ELBOs do.

    **Assumptions.** Each element of the data plate is one datum (within-datum dimensions are
    events, ``to_event``); the only other plate allowed is the particle plate of
    ``vectorize_particles=True``.

    **The label under the KL** (``label_divergence="kl"``, ``docs/derivation.md`` §10). The
    γ-power divergence between the joints over (x, y, z) tempers q(y | x) along with q(z | x, y)
    (§7: the classifier's entropy enters with a weight of about 0.12), which makes unlabelled
    q(y | x) nearly hard. With ``label_divergence="kl"`` the γ-power divergence covers (x, z)
    given each label and the label enters as in M2:

    .. math::

        L(x) = \sum_y q(y|x)\, \ell_y(x) + w \sum_y q(y|x)\,[\log q(y|x) - \log\pi_y],\qquad
        \ell_y(x) = -\frac{1}{\gamma}\Big[\mathbb{E}_{q(z|x,y)}
            \Big(\frac{p(x, z|y)}{\|p(\cdot|y)\|_{1+\gamma}}\Big)^{\gamma}
            - \|q(\cdot|x, y)\|_{1+\gamma}\Big],

    with :math:`w` = ``label_weight``: 1 (M2's label terms), or ``"auto"``, the detached local
    slope :math:`\sum_y q(y|x)\,\mathbb{E}_q(p(x,z|y)/\|p(\cdot|y)\|)^\gamma` of
    :math:`\ell` in :math:`-\log p`, which puts the label terms on the log-likelihood's
    scale. As γ → 0 either is the negative M2 ELBO. It needs the norm of p(x, z | y): the
    closed-form norms and the mixed model's norm of ``docs/derivation.md`` §9.2 give it; the
    ancestral :class:`~pyro_mmt.infer.MonteCarloPowerNorm` is refused.

    ``elbo(model, guide)`` returns a ``torch.nn.Module`` whose ``forward(*args)`` is the
    differentiable loss and whose ``parameters()`` are those of the modules behind ``model``
    and ``guide`` (e.g. ``GammaPowerELBO()(m2.model, m2.guide)``).

    :param gamma: ``"auto"``, ``"<k>x auto"`` (k > 0) or a float γ with −1 < γ, γ ≠ 0.
    :param bool closed_forms: use the closed forms above (default True); False gives the pure
        Monte Carlo estimator from log-densities (for tests and for guides outside those
        families).
    :param int num_particles: number of draws of z per label and datum; the cross term and the
        inner sum of the entropy term are averaged over them before the outer power.
    :param max_plate_nesting: bound on nested plates; guessed from one run of the model and
        guide when not given (as Pyro's ELBOs do).
    :param bool vectorize_particles: draw the particles in one vectorised pass.
    :param bool cache_checks: with Pyro's validation on, run the checks on the first step of
        each trace signature only (see "When the checks run"); False runs them at every step.
    :param str label_divergence: ``"gamma"`` (default): one γ-power divergence over
        (x, y, z), the paper's objective; ``"kl"``: the label under the KL (above).
    :param label_weight: w of ``label_divergence="kl"``: a number > 0 (default 1) or
        ``"auto"``.

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
        cache_checks: bool = True,
        label_divergence: str = "gamma",
        label_weight: float | str = 1.0,
    ):
        if label_divergence not in LABEL_DIVERGENCES:
            raise ValueError(f"label_divergence: expected one of {list(LABEL_DIVERGENCES)}, "
                             f"found {label_divergence!r}")
        if isinstance(label_weight, str):
            if label_weight != "auto":
                raise ValueError(f"label_weight: expected 'auto' or a number > 0, found "
                                 f"{label_weight!r}")
        elif (isinstance(label_weight, bool) or not isinstance(label_weight, Number)
              or not math.isfinite(label_weight) or label_weight <= 0):
            raise ValueError(f"label_weight: expected 'auto' or a finite number > 0, found "
                             f"{label_weight!r}")
        self.label_divergence = label_divergence
        self.label_weight = label_weight if isinstance(label_weight, str) else float(label_weight)
        self.gamma_multiple = None  # k of "<k>x auto"; 1.0 for "auto"
        if isinstance(gamma, str):
            match = _MULTIPLE_OF_AUTO.match(gamma)
            if gamma.strip() == "auto":
                self.gamma_multiple = 1.0
            elif match and float(match.group(1)) > 0:
                self.gamma_multiple = float(match.group(1))
            else:
                raise ValueError(
                    f"gamma: expected 'auto', '<k>x auto' with k > 0 (e.g. '2x auto') or a "
                    f"float, found {gamma!r}"
                )
        else:
            if isinstance(gamma, bool) or not isinstance(gamma, Number):
                raise ValueError(f"gamma: expected 'auto', '<k>x auto' or a float, found "
                                 f"{gamma!r}")
            gamma = float(gamma)
            if not math.isfinite(gamma) or gamma <= -1.0 or gamma == 0.0:
                raise ValueError(
                    f"gamma: expected a finite float with gamma > -1 and gamma != 0 (gamma = 0 "
                    f"is the KL: use TraceEnum_ELBO), found {gamma}"
                )
        if isinstance(num_particles, bool) or int(num_particles) != num_particles \
                or num_particles < 1:
            raise ValueError(f"num_particles: expected an integer >= 1, found {num_particles!r}")
        if max_plate_nesting != float("inf") and (
                isinstance(max_plate_nesting, bool) or int(max_plate_nesting) != max_plate_nesting
                or max_plate_nesting < 1):
            raise ValueError(f"max_plate_nesting: expected an integer >= 1 (the data plate) or "
                             f"inf (guessed), found {max_plate_nesting!r}")
        self.gamma = gamma
        self.closed_forms = bool(closed_forms)
        self.cache_checks = bool(cache_checks)
        # arguments' signature -> the signature of the traces checked for them
        self._checked_signatures: dict[tuple, tuple] = {}
        super().__init__(
            num_particles=int(num_particles),
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )

    def __call__(self, model, guide) -> nn.Module:
        """The loss as a module (see the class docstring)."""
        return _ELBOModule(model, guide, self)

    @property
    def auto(self) -> bool:
        """Whether γ is the per-datum "auto" γ (not a multiple of it, nor a float)."""
        return self.gamma_multiple == 1.0

    # ---------------------------------------------------------------------------- traces
    def _get_trace(self, model, guide, args, kwargs):
        """The guide's and the model's traces of one particle, and how the rest of the step
        runs: ``(model_trace, guide_trace, validate, checked)``: ``validate`` says whether
        Pyro's validation stays on for the step's terms, and ``checked`` is the (arguments,
        traces) signature pair to record once they are computed (None: nothing to record).

        With ``cache_checks`` and validation on: arguments not seen before are traced with
        every check on; arguments seen before are traced with the checks off, and if the
        traces' signature is not the one checked for them, traced again from the same random
        state with every check on."""
        if isinstance(poutine.unwrap(guide), poutine.messenger.Messenger):  # a GuideMessenger
            traces = get_importance_trace("flat", self.max_plate_nesting, model, guide, args,
                                          kwargs)
            return (*traces, is_validation_enabled(), None)
        if not (self.cache_checks and is_validation_enabled()):
            return (*self._trace(model, guide, args, kwargs), is_validation_enabled(), None)
        key = _input_signature((args, kwargs))
        expected = self._checked_signatures.get(key)
        if expected is not None:
            state = _rng_state()
            with pyro.validation_enabled(False):
                model_trace, guide_trace = self._trace(model, guide, args, kwargs)
            if _trace_signature(model_trace, guide_trace) == expected:
                return model_trace, guide_trace, False, None
            _set_rng_state(state)  # the structure changed: the same step again, checked
        model_trace, guide_trace = self._trace(model, guide, args, kwargs)
        signature = _trace_signature(model_trace, guide_trace)
        return model_trace, guide_trace, True, None if signature is None else (key, signature)

    def _trace(self, model, guide, args, kwargs):
        """The guide's trace and the model's replayed against it, as Pyro's
        ``get_importance_trace`` makes them (with its checks when validation is on), with two
        savings per step: the traces hold sample sites only (no ``param`` sites: SVI records
        those in its own trace), and only the model's log-densities are computed here (the
        guide's are computed where they are needed, :meth:`_particle_terms`)."""
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
        if self.max_plate_nesting == float("inf"):
            # one run of model and guide, as Pyro's ELBOs do, leaving the random state as it was
            state = get_rng_state()
            self._guess_max_plate_nesting(model, guide, args, kwargs)
            set_rng_state(state)
        if self.vectorize_particles:
            guide = self._vectorized_num_particles(guide)
            model = self._vectorized_num_particles(model)
        # Discrete guide sites are enumerated in parallel to the left of all plates.
        guide = EnumMessenger(first_available_dim=-1 - self.max_plate_nesting)(guide)
        for _ in range(1 if self.vectorize_particles else self.num_particles):
            yield self._get_trace(model, guide, args, kwargs)

    # ------------------------------------------------------------------------ the checks
    def _check_sites(self, model_trace, guide_trace, norm_name, norm) -> None:
        """What the objective refuses (the class docstring), naming the site."""
        norm_site = model_trace.nodes[norm_name]
        data = _data_frames(norm_site)
        scale = norm_site["scale"]
        observed_size = 0.0
        for which, trace in (("model", model_trace), ("guide", guide_trace)):
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or name == norm_name:
                    continue
                if site["infer"].get("is_auxiliary"):
                    continue  # factors enter additively, with their own scale and plates
                if not data <= _data_frames(site) or _data_frames(site) != data:
                    raise ValueError(
                        f"{which} site '{name}': GammaPowerELBO computes one objective per "
                        f"datum of the data plate (the plate of the power-norm declaration, "
                        f"{sorted(f.name for f in data)}); this site is in the plates "
                        f"{sorted(f.name for f in _data_frames(site))}. A site outside the data "
                        "plate would be counted once per datum; put global terms in a "
                        "pyro.factor or the guide's parameters"
                    )
                if not _same_scale(site["scale"], scale):
                    raise ValueError(
                        f"{which} site '{name}': its poutine.scale differs from the data "
                        "plate's; GammaPowerELBO raises the whole density of a datum to the "
                        "power gamma, so part of it cannot be scaled (a beta on z, a scaled "
                        "observed auxiliary site). Write an extra weighted term as "
                        "pyro.factor(name, weight * log_prob), which enters additively"
                    )
                if which == "model" and site["is_observed"] and name != norm.class_site:
                    problem = norm.covers(name, site["fn"])
                    if problem:
                        raise ValueError(
                            f"model site '{name}': the declared power norm "
                            f"{type(norm).__name__} does not cover it ({problem}); declare a "
                            "norm that holds for the whole model (MonteCarloPowerNorm holds "
                            "for any model)"
                        )
                    observed_size = observed_size + _observed_size(site)
                elif which == "model" and name == norm.latent_site:
                    problem = norm.covers(name, site["fn"], latent=True)
                    if problem:
                        raise ValueError(f"model site '{name}': the declared power norm "
                                         f"{type(norm).__name__} does not hold for this latent "
                                         f"prior ({problem})")
        if not isinstance(norm, MonteCarloPowerNorm):
            expected = torch.as_tensor(norm.obs_dim)
            found = torch.as_tensor(observed_size, dtype=expected.dtype, device=expected.device)
            found, expected = torch.broadcast_tensors(found, expected)
            if not torch.equal(found, expected):
                raise ValueError(
                    f"model: the declared power norm counts {expected.flatten()[:4].tolist()} "
                    f"observed dimensions per datum, but the model's observed sites have "
                    f"{found.flatten()[:4].tolist()}; every observed site must be part of the "
                    "joint whose norm is declared"
                )

    # ----------------------------------------------------------------------------- terms
    def _gamma(self, norm) -> torch.Tensor:
        ref = norm.obs_dim
        if self.gamma_multiple is not None:
            return self.gamma_multiple * torch.as_tensor(norm.auto_gamma()).detach().to(ref)
        return torch.full_like(torch.as_tensor(ref, dtype=torch.get_default_dtype()),
                               self.gamma).to(ref)

    def _particle_terms(self, model_trace, guide_trace) -> _ParticleTerms:
        norm_name, norm = find_power_norm(model_trace)
        norm_site = model_trace.nodes[norm_name]
        if is_validation_enabled():
            self._check_sites(model_trace, guide_trace, norm_name, norm)
        ref = torch.as_tensor(norm.obs_dim)
        gamma = self._gamma(norm)
        kl = (gamma == 0)
        any_kl, all_kl = bool(kl.any()), bool(kl.all())
        safe_gamma = torch.where(kl, torch.ones_like(gamma), gamma)
        log_norm = norm.log_norm(torch.where(kl, torch.zeros_like(gamma), gamma))

        # log p(x, y, z) and the auxiliary factors, from the model trace
        data = _data_frames(norm_site)
        log_p, aux, global_aux = 0.0, 0.0, 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or name == norm_name:
                continue
            lp = scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])
            if site["infer"].get("is_auxiliary"):
                relative = site["scale"] / norm_site["scale"]  # the factor's own weight
                if _data_frames(site) == data:
                    aux = aux + relative * lp
                else:
                    global_aux = global_aux + (relative * lp).sum()
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
        if self.closed_forms and len(continuous) > 1:
            raise ValueError(
                f"guide sites {[s['name'] for s in continuous]}: closed_forms=True computes "
                "∫q^(1+gamma) for ONE continuous guide site; pass closed_forms=False for the "
                "Monte Carlo estimator of this guide"
            )
        log_q_enum = _sum_log_prob(enumerated)
        if self.label_divergence == "kl":
            return self._label_kl_terms(model_trace, guide_trace, norm, norm_site, gamma, kl,
                                        log_p, log_q_enum, continuous, aux, global_aux, ref)

        # cross term: T1 - 1 = Σ_y q_y [exp(γ(log p − log‖p‖)) − 1]  (+ Rao-Blackwellisation)
        cross = torch.expm1(gamma * (log_p - log_norm))
        if self.closed_forms and norm.power_form and self.auto and not all_kl:
            cross = cross + self._latent_rao_blackwell(model_trace, guide_trace, norm, gamma,
                                                       log_norm)

        # entropy term: Σ_y q_y^{1+γ} ∫ q(z|x,y)^{1+γ} dz = Σ_y q_y exp(γ log q_y + log I_y)
        if self.closed_forms and continuous:
            log_int = self._closed_power_integral(continuous[0], gamma)
        else:  # log q(z | x, y) is only needed without the closed form
            log_int = gamma * _sum_log_prob(continuous)
        entropy = torch.expm1(gamma * log_q_enum + log_int)

        # sum over the enumerated dimensions, weighted by q(y | x)
        q_enum = torch.exp(torch.as_tensor(log_q_enum, dtype=ref.dtype, device=ref.device))
        aux = torch.as_tensor(aux, dtype=ref.dtype, device=ref.device)
        cross_m1 = self._sum_enum(q_enum * cross)
        inner_m1 = self._sum_enum(q_enum * entropy)
        aux = self._sum_enum(q_enum * aux)
        elbo = None
        if any_kl:  # γ = 0: the negative enumerated ELBO, −Σ_y q_y [log p − log q_y − log q(z)]
            log_q = log_q_enum + _sum_log_prob(continuous)
            elbo = -self._sum_enum(q_enum * (log_p - log_q))
        return _ParticleTerms(cross_m1, inner_m1, elbo, aux, global_aux,
                              torch.where(kl, torch.zeros_like(safe_gamma), safe_gamma),
                              norm_site["scale"])

    @staticmethod
    def _closed_power_integral(site, gamma):
        """log ∫ q^{1+γ} of the guide's continuous site in closed form, or a ValueError naming
        the site when its family has none."""
        try:
            return log_power_integral(site["fn"], gamma)
        except NotImplementedError as error:
            raise ValueError(
                f"guide site '{site['name']}': closed_forms=True needs a guide family with a "
                f"closed-form power integral ({error}); pass closed_forms=False for the Monte "
                "Carlo estimator") from error

    def _label_kl_terms(self, model_trace, guide_trace, norm, norm_site, gamma, kl, log_p,
                        log_q_enum, continuous, aux, global_aux, ref) -> _ParticleTerms:
        """The per-datum loss with the label under the KL (``docs/derivation.md`` §10):

            Σ_y q_y ℓ_y + w Σ_y q_y (log q_y − log π_y),
            ℓ_y = −(1/γ)[E_q (p(x, z | y)/‖p(· | y)‖)^γ − ‖q(z | x, y)‖_{1+γ}],

        w = 1 or, for ``label_weight="auto"``, the detached local slope of ℓ in −log p,
        Σ_y q_y E_q (p(x, z | y)/‖p(· | y)‖)^γ."""
        class_site = model_trace.nodes.get(norm.class_site)
        if class_site is None:
            raise ValueError(
                f"model: label_divergence='kl' needs the label site '{norm.class_site}' that "
                "the power norm names; this model has none (use label_divergence='gamma')")
        log_prior = scale_and_mask(class_site["unscaled_log_prob"], 1.0, class_site["mask"])
        safe = torch.where(kl, torch.ones_like(gamma), gamma)
        log_norm = norm.log_conditional_norm(torch.where(kl, torch.zeros_like(gamma), gamma),
                                             class_site["value"])
        log_p_cond = log_p - log_prior
        slope = torch.exp(gamma * (log_p_cond - log_norm))  # (p(x, z | y)/‖p(·|y)‖)^γ
        cross_m1 = slope - 1.0
        if self.closed_forms and norm.power_form and self.auto and not bool(kl.all()):
            rb = self._latent_rao_blackwell(model_trace, guide_trace, norm, gamma, log_norm,
                                            with_class=False)
            cross_m1, slope = cross_m1 + rb, slope + rb
        if self.closed_forms and continuous:
            log_int = self._closed_power_integral(continuous[0], gamma)
        else:  # per particle: averaged after the power (the closed form has no such bias)
            log_int = gamma * _sum_log_prob(continuous)
        entropy_m1 = torch.expm1(log_int / (1.0 + safe))  # ‖q(z | x, y)‖_{1+γ} − 1
        per_label = -(cross_m1 - entropy_m1) / safe
        if bool(kl.any()):  # γ = 0: −[log p(x, z | y) − log q(z | x, y)]
            per_label = torch.where(kl, -(log_p_cond - _sum_log_prob(continuous)), per_label)
        q_enum = torch.exp(torch.as_tensor(log_q_enum, dtype=ref.dtype, device=ref.device))
        label = self._sum_enum(q_enum * (log_q_enum - log_prior))
        if self.label_weight == "auto":
            weight = self._sum_enum(q_enum * slope).detach()
        else:
            weight = self.label_weight
        direct = self._sum_enum(q_enum * per_label) + weight * label
        aux = self._sum_enum(q_enum * torch.as_tensor(aux, dtype=ref.dtype, device=ref.device))
        zero = torch.zeros_like(direct)
        return _ParticleTerms(zero, zero, None, aux, global_aux,
                              torch.where(kl, torch.zeros_like(safe), safe), norm_site["scale"],
                              direct=direct)

    def _latent_rao_blackwell(self, model_trace, guide_trace, norm, gamma, log_norm,
                              with_class=True):
        """(π_y K / ‖p‖)^γ (E_q‖z‖² − ‖z‖²)/ν: replaces the sampled ‖z‖² in Q_y by its mean
        (without π_y^γ for the label-conditional joint, ``with_class=False``)."""
        latent = norm.latent_site
        if latent not in guide_trace.nodes:
            return 0.0
        try:
            mean_sq = second_moment(guide_trace.nodes[latent]["fn"])
        except NotImplementedError:  # a guide family without a closed-form E‖z‖²
            return 0.0
        z = model_trace.nodes[latent]["value"]
        log_class = 0.0
        if with_class and norm.class_site in model_trace.nodes:
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
        def mean(values):
            return torch.stack(values).mean(0)

        if particles[0].direct is not None:  # label_divergence="kl": per-particle losses
            per_datum = mean([p.direct for p in particles])
            aux = mean([p.aux for p in particles])
            if self.vectorize_particles and self.num_particles > 1:
                dim = -self.max_plate_nesting
                if per_datum.dim() >= -dim:
                    per_datum = per_datum.mean(dim)
                if aux.dim() >= -dim:
                    aux = aux.mean(dim)
            global_aux = sum(torch.as_tensor(p.global_aux) for p in particles) / len(particles)
            return ((per_datum - aux) * particles[0].scale).sum() - global_aux
        cross_m1 = mean([p.cross_m1 for p in particles])
        inner_m1 = mean([p.inner_m1 for p in particles])
        aux = mean([p.aux for p in particles])
        elbo = None if particles[0].elbo is None else mean([p.elbo for p in particles])
        global_aux = sum(torch.as_tensor(p.global_aux) for p in particles) / len(particles)
        gamma, scale = particles[0].gamma, particles[0].scale
        if self.vectorize_particles and self.num_particles > 1:
            # the particle plate is the leftmost plate dimension
            dim = -self.max_plate_nesting
            if cross_m1.dim() >= -dim:
                cross_m1, inner_m1 = cross_m1.mean(dim), inner_m1.mean(dim)
            if aux.dim() >= -dim:
                aux = aux.mean(dim)
            if elbo is not None and elbo.dim() >= -dim:
                elbo = elbo.mean(dim)
            if gamma.dim() >= -dim:
                gamma = gamma.mean(dim)
        kl = gamma == 0
        safe = torch.where(kl, torch.ones_like(gamma), gamma)
        # ‖q‖ − 1 = exp(log(1 + inner − 1)/(1 + γ)) − 1, stable as γ → 0
        entropy_m1 = torch.expm1(torch.log1p(inner_m1) / (1.0 + safe))
        per_datum = -(cross_m1 - entropy_m1) / safe
        if elbo is not None:
            per_datum = torch.where(kl, elbo, per_datum)
        per_datum = per_datum - aux
        return (per_datum * scale).sum() - global_aux

    # ---------------------------------------------------------------------- public API
    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss as a differentiable tensor (for custom training loops and ``elbo(model,
        guide)`` modules)."""
        particles, checked = [], []
        for model_trace, guide_trace, validate, signature in self._get_traces(model, guide,
                                                                               args, kwargs):
            with pyro.validation_enabled(validate):
                particles.append(self._particle_terms(model_trace, guide_trace))
            if signature is not None:
                checked.append(signature)
        self._checked_signatures.update(checked)  # once every check of the step has passed
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
