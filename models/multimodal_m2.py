r"""The multimodal M2 model p(x, y, z), and the object that owns it with its guide.

For one datum with modalities x = (x_1, ..., x_M):

.. math::

    y &\sim \mathrm{Categorical}(\pi) \\
    z &\sim t_d(0, I, \nu) \\
    x \mid y, z &\sim t_n\big(\mu(y, z),\; s(z)^2 \Lambda,\; \nu + d\big),
        \qquad s(z)^2 = \frac{\nu + \|z\|^2}{\nu + d},\quad
        \Lambda = \mathrm{blockdiag}(\sigma_j^2 I_{n_j}),

over the Student-t modalities, so that :math:`p(x, y, z) = \pi_y K (1 + Q_y/\nu)^{-(\nu+n+d)/2}`
with :math:`Q_y = \|z\|^2 + \sum_j \|x_j - \mu_j(y,z)\|^2/\sigma_j^2` (the *power form*,
``docs/derivation.md`` §2). The decoder is ONE multivariate t over those modalities, written as a
chain of sites ``x_<name>``, each the conditional of the joint t given z and the t modalities
before it (:class:`~pyro_mmt.likelihoods.StudentT`); the chain multiplies out to the joint
exactly. A modality of another family (Bernoulli, Poisson, categorical, Gaussian;
:mod:`pyro_mmt.likelihoods`) is independent of the others given (y, z). With ``nu=inf`` the
model is Gaussian (z ~ N(0, I), x_j | y, z ~ N(μ_j, σ_j² I)): the MVAE-style semi-supervised
VAE.

**What each site returns drives the rest.** The chain uses the value a site ``x_<name>``
returns, so the same model scores data (the site observed), generates it
(``model(batch_size=N)``, or ``Predictive``), and imputes a modality left out of ``x`` from
the others (``Predictive(model, guide=guide)``). A modality marked missing in ``mask`` is
marginalised out exactly: its site is masked and the chain skips it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_mmt.config import ModelConfig
from pyro_mmt.distributions import (
    DiagStudentT,
    auto_gamma,
    log_t_power_integral,
)
from pyro_mmt.guides.poe_t import ModalityEncoder, PoEClassifier, PoETGuide
from pyro_mmt.infer.power_norm import (
    GaussianPowerNorm,
    MonteCarloPowerNorm,
    PowerNorm,
    StudentTPowerNorm,
    declare_power_norm,
)
from pyro_mmt.likelihoods import Gaussian, Likelihood, StudentT, make_likelihood
from pyro_mmt.nn import (
    LabelConditionedMLP,
    apply_label_network,
    observed_cell_counts,
    observed_dimension,
    register_module,
)

__all__ = ["MultimodalM2", "LatentMonteCarloPowerNorm"]


class MultimodalM2(nn.Module):
    r"""The multimodal M2 model and its product-of-experts guide, with every network,
    parameter and setting they use.

    - :meth:`model` is p(x, y, z) (this file), plus the classification term on labelled data;
    - :meth:`guide` is q(y, z | x) = q(y | x) q(z | x, y), the guide module ``q``
      (:class:`~pyro_mmt.guides.PoETGuide`, ``guides/poe_t.py``) that this object owns;
    - :meth:`predict_proba` is q(y | x) for new data with any subset of the modalities.

    Train with Pyro's SVI: ``SVI(m2.model, m2.guide, optim, GammaPowerELBO())``. One object
    owns the decoders, ν (a parameter when learned), π and the guide ``q`` (with the classifier
    and the encoders: ``m2.classifier`` and ``m2.encoders`` are the guide's), so
    ``state_dict()``, ``.to(device)`` and saving see everything, and the settings live in ONE
    :class:`~pyro_mmt.config.ModelConfig` (``m2.config``), whose defaults are the estimator's.

    **Classification term.** M2 trains q(y | x) on labelled data with an extra term
    α Σ_labelled w_y log q(y | x), written as ``pyro.factor("classification", ...)``: a factor
    site is auxiliary, so :class:`~pyro_mmt.infer.GammaPowerELBO` adds it to the loss as it is
    rather than raising it to the power γ, and ``TraceEnum_ELBO`` adds it like any log-factor.
    With ``logit_adjustment`` τ the term uses logits f(x) + τ log π̂ (``docs/imbalance.md``);
    with ``alpha_unit="dimension"`` datum i's weight is α n_i w_y, n_i its observed dimension.

    **Your own networks** (the extension points): ``decoders={"image": net}`` replaces that
    modality's decoder, ``net(z, y) -> [..., B, out_dim]`` (out_dim = n_j, or n_j × C_j for a
    categorical modality); ``encoders={"image": net}`` replaces that modality's expert of
    q(z | x, y), ``net(x_j, y) -> [..., B, 2d]`` (location, then a raw scale made positive with
    softplus); ``classifier=`` replaces q(y | x), ``classifier(inputs, present) -> logits``.
    The label y has shape [B], or [K, 1] under the guide's enumeration: wrap a network written
    for ``cat([z, one_hot(y)])`` in :class:`~pyro_mmt.nn.LabelConcat`, which broadcasts it.
    The likelihood family of a modality is a setting (``ModelConfig.likelihood``).

    :param ModelConfig config: every setting (dimensions, families, ν, σ, α, the imbalance
        options).
    :param decoders: optional modality -> ``nn.Module`` replacing the default decoders.
    :param encoders: optional modality -> ``nn.Module`` replacing the default encoder experts.
    :param classifier: optional ``nn.Module`` replacing the default
        :class:`~pyro_mmt.guides.PoEClassifier`.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        decoders: Mapping[str, nn.Module] | None = None,
        encoders: Mapping[str, nn.Module] | None = None,
        classifier: nn.Module | None = None,
    ):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config: expected a pyro_mmt.ModelConfig, found "
                             f"{type(config).__name__}")
        self.config = cfg = config
        for name, given in (("decoders", decoders), ("encoders", encoders)):
            unknown = sorted(set(given or {}) - set(cfg.modalities))
            if unknown:
                raise ValueError(f"{name}: unknown modalities {unknown}; expected some of "
                                 f"{list(cfg.modalities)}")
            bad = [m for m, net in (given or {}).items() if not isinstance(net, nn.Module)]
            if bad:
                raise ValueError(f"{name}: expected nn.Module networks, found other objects "
                                 f"for {bad}")
        K, d, hidden = cfg.num_classes, cfg.latent_dim, cfg.hidden
        self.likelihoods: dict[str, Likelihood] = {
            m: make_likelihood(cfg.likelihood[m], n, sigma=cfg.sigma[m],
                               num_categories=cfg.num_categories.get(m))
            for m, n in cfg.dims.items()
        }
        in_dims = PoETGuide.input_dims(cfg, self.likelihoods)
        # (built in this order, classifier, decoders, encoders, so that a seed gives the same
        # initial weights as before the guide became a module of its own)
        if classifier is not None and not isinstance(classifier, nn.Module):
            raise ValueError(f"classifier: expected an nn.Module, found "
                             f"{type(classifier).__name__}")
        classifier = classifier if classifier is not None else PoEClassifier(
            in_dims, K, hidden, joint_head=cfg.joint_head)
        decoders, encoders = dict(decoders or {}), dict(encoders or {})
        self.decoders = nn.ModuleDict({
            m: decoders.get(m) or LabelConditionedMLP(d, K, hidden, lik.out_dim)
            for m, lik in self.likelihoods.items()
        })
        encoders = {
            m: ModalityEncoder(d, net=encoders[m]) if m in encoders
            else ModalityEncoder(d, in_dim=in_dims[m], num_classes=K, hidden=hidden)
            for m in cfg.modalities
        }
        #: the guide q(y, z | x), a module of its own that reads ν and π from this model
        self.q = PoETGuide(cfg, encoders=encoders, classifier=classifier,
                           likelihoods=self.likelihoods).share_with(self)
        self._register_load_state_dict_pre_hook(_state_before_the_guide_module)

        # ν: a parameter when learned (ν = 2 + softplus(θ)), else a constant
        if cfg.learn_nu:
            self.nu_unconstrained = nn.Parameter(torch.tensor(math.log(math.expm1(cfg.nu - 2))))
        else:
            self.register_buffer("_nu", torch.tensor(cfg.nu), persistent=False)
        counts = None if cfg.label_counts is None else torch.tensor(
            cfg.label_counts, dtype=torch.get_default_dtype())
        if cfg.class_weight is None:
            weights = torch.ones(K)
        elif cfg.class_weight == "balanced":
            weights = counts.sum() / (K * counts)
        else:
            weights = torch.tensor(cfg.class_weight)
        self.register_buffer("class_weights", weights, persistent=False)
        # π: log π of p(y); learned: a buffer that update_class_prior moves, starting at the
        # labelled class frequencies (uniform without labels)
        if cfg.class_prior == "uniform" or (cfg.class_prior == "learned" and counts is None):
            log_prior = torch.full((K,), -math.log(K))
        elif cfg.class_prior == "learned":
            log_prior = self.label_log_freq.clone()
        else:
            log_prior = torch.tensor(cfg.class_prior).log()
        self.register_buffer("class_log_prior", log_prior,
                             persistent=cfg.class_prior == "learned")

    # ------------------------------------------------------------------------- the guide
    def guide(self, x: Mapping[str, torch.Tensor] | None = None,
              mask: torch.Tensor | None = None, y: torch.Tensor | None = None,
              batch_size: int | None = None, cells: Mapping[str, torch.Tensor] | None = None):
        """q(y, z | x): the guide module's (:meth:`~pyro_mmt.guides.PoETGuide.guide`); same
        arguments as the model's."""
        return self.q.guide(x, mask, y, batch_size, cells)

    @property
    def classifier(self) -> nn.Module:
        """q(y | x)'s network (the guide's)."""
        return self.q.classifier

    @property
    def encoders(self) -> nn.ModuleDict:
        """The experts of q(z | x, y) (the guide's)."""
        return self.q.encoders

    @property
    def _dims(self) -> torch.Tensor:
        return self.q._dims

    @property
    def _log_sigma2(self) -> torch.Tensor:
        return self.q._log_sigma2

    @property
    def label_log_freq(self) -> torch.Tensor:
        """log π̂, the labelled class frequencies (zeros without ``label_counts``)."""
        return self.q.label_log_freq

    def encode(self, inputs, present, y, cells=None) -> dist.TorchDistribution:
        """q(z | x, y) (:meth:`~pyro_mmt.guides.PoETGuide.encode`)."""
        return self.q.encode(inputs, present, y, cells)

    def unlabelled_logit_shift(self) -> torch.Tensor:
        """τ' log π_u (:meth:`~pyro_mmt.guides.PoETGuide.unlabelled_logit_shift`)."""
        return self.q.unlabelled_logit_shift()

    def predict_proba(self, x, mask=None, *, logit_adjustment: float | None = None,
                      cells=None) -> torch.Tensor:
        """q(y | x) (:meth:`~pyro_mmt.guides.PoETGuide.predict_proba`)."""
        return self.q.predict_proba(x, mask, logit_adjustment=logit_adjustment, cells=cells)

    def calibrate_decision_shift(self, logits: torch.Tensor) -> float:
        """Learn the decision rule (the predicted reference shares, the δ of ``"auto"``) from
        the classifier's logits on the unlabelled training rows
        (:meth:`~pyro_mmt.guides.PoETGuide.calibrate_decision_shift`); returns δ."""
        return self.q.calibrate_decision_shift(logits)

    def classifier_logits(self, x, mask=None, cells=None) -> torch.Tensor:
        """The classifier's logits f(x) (:meth:`~pyro_mmt.guides.PoETGuide.classifier_logits`)."""
        return self.q.classifier_logits(x, mask, cells)

    def check_inputs(self, x, mask, y, batch_size):
        """The model's and guide's arguments, checked (:meth:`~pyro_mmt.guides.PoETGuide.check_inputs`)."""
        return self.q.check_inputs(x, mask, y, batch_size)

    def present(self, x, mask) -> torch.Tensor:
        """Bool [B, M]: modality j observed in this datum."""
        return self.q.present(x, mask)

    #: ``(y, known)`` with -1 an unobserved label (:meth:`~pyro_mmt.guides.PoETGuide.observed_labels`).
    observed_labels = staticmethod(PoETGuide.observed_labels)

    def network_inputs(self, x, cells=None) -> dict[str, torch.Tensor]:
        """The modalities as the networks see them."""
        return self.q.network_inputs(x, cells)

    # ------------------------------------------------------------------------- settings
    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality names, in order."""
        return self.config.modalities

    @property
    def nu(self) -> torch.Tensor:
        """ν as a tensor (``inf`` for the Gaussian model; differentiable when learned)."""
        if self.config.learn_nu:
            return 2 + nn.functional.softplus(self.nu_unconstrained)
        return self._nu

    @property
    def gaussian(self) -> bool:
        """True for the ν = ∞ (Gaussian) model."""
        return self.config.gaussian

    @property
    def closed_form_norm(self) -> bool:
        """Whether ‖p‖_{1+γ} has a closed form: every modality Student-t (or every one
        Gaussian when ν = ∞). Otherwise the model declares the Monte Carlo norm."""
        if self.gaussian:
            return all(isinstance(lik, StudentT | Gaussian) for lik in self.likelihoods.values())
        return all(lik.joint_t for lik in self.likelihoods.values())

    def class_prior(self) -> np.ndarray:
        """π of p(y), as probabilities."""
        return self.class_log_prior.detach().exp().cpu().double().numpy()

    def latent_prior(self) -> dist.TorchDistribution:
        """p(z): t_d(0, I, ν), or N(0, I) when ν = ∞."""
        zeros = self._dims.new_zeros(self.config.latent_dim)
        if self.gaussian:
            return dist.Normal(zeros, 1.0).to_event(1)
        return DiagStudentT(self.nu, zeros, torch.ones_like(zeros))

    # ---------------------------------------------------------------------------- model
    def model(self, x: Mapping[str, torch.Tensor] | None = None,
              mask: torch.Tensor | None = None, y: torch.Tensor | None = None,
              batch_size: int | None = None, cells: Mapping[str, torch.Tensor] | None = None):
        """p(x, y, z), plus α Σ w_y log q(y | x) on labelled data.

        :param x: modality -> [B, n_j] (rows of a missing modality hold any finite value);
            a modality left out of ``x`` (or ``x=None``) is sampled.
        :param mask: bool [B, M], True where modality j is observed (None: all of ``x``).
        :param y: int64 [B] for a labelled batch; None (or -1 in every row) samples y (or lets
            the guide enumerate it); -1 in some rows: y is latent, the guide keeps the given
            labels and draws the others from q(y | x) (for ``Predictive``).
        :param batch_size: B, needed only when neither ``x`` nor ``y`` is given.
        :param cells: missing cells: modality (given in ``x``) -> bool [B, n_j], True where a
            cell is observed (missing cells hold any value in the family's support, e.g. 0).
            Only the observed cells are scored (``docs/derivation.md`` §11), and the site
            ``x_<name>_missing`` draws the modality from p(x_j | x_observed, y, z): its missing
            cells are the posterior predictive draws under ``Predictive(model, guide=guide)``
            (its log-density is masked out: it changes no objective).
        """
        register_module("m2", self)
        cfg = self.config
        x, mask, batch = self.check_inputs(x, mask, y, batch_size)
        cells, mask = self.q.check_cells(cells, x, mask)
        y, known = self.observed_labels(y)  # -1 = unobserved
        labelled = y is not None and known is None
        # a modality given in x is observed where mask says so; one left out is sampled
        in_chain = mask if all(m in x for m in self.modalities) else torch.stack(
            [mask[:, j] if m in x else torch.ones_like(mask[:, j])
             for j, m in enumerate(self.modalities)], -1)
        # every modality in every row (tested on the CPU only: no host sync on a GPU): the
        # chain's sites need no mask, and R_j and n_j enter every row
        everywhere = in_chain.device.type == "cpu" and bool(in_chain.all())
        nu = self.nu
        with pyro.plate("data", batch):
            y = pyro.sample("y", dist.Categorical(logits=self.class_log_prior),
                            obs=y if known is None else None)  # partly labelled: the guide's
            with poutine.scale(scale=cfg.latent_weight):
                z = pyro.sample("z", self.latent_prior())

            # the decoder chain: x_j | y, z (and the Student-t modalities before j)
            missing = {}  # modality -> (family, decoder output), for its missing cells
            quad = z.pow(2).sum(-1)  # ‖z‖² + Σ_{k<j} R_k
            dof = (nu + cfg.latent_dim).expand(batch)  # ν + d + Σ_{k<j} n_k, per datum
            for j, m in enumerate(self.modalities):
                likelihood, present = self.likelihoods[m], in_chain[:, j]
                out = apply_label_network(self.decoders[m], f"decoders[{m!r}]", z, y)
                chained = likelihood.joint_t and not self.gaussian
                observed = cells.get(m)  # its cells, when some are missing
                if chained:
                    fn = likelihood.conditional(out, nu, quad, dof, observed)
                else:
                    fn = likelihood.distribution(out)
                    if observed is not None:
                        fn = likelihood.observed_cells(fn, observed)
                x_m = pyro.sample(f"x_{m}", fn if everywhere else fn.mask(present),
                                  obs=x.get(m))
                if chained:  # R_j = ‖x_j − μ_j‖²/σ_j², from the value the site returned
                    resid = fn.sum_of_squares(x_m) / likelihood.sigma**2
                    size = cfg.dims[m] if observed is None else fn.observed_size
                    if everywhere:
                        quad, dof = quad + resid, dof + size
                    else:
                        quad = quad + torch.where(present, resid, torch.zeros_like(resid))
                        dof = dof + present.to(quad.dtype) * size
                if observed is not None:
                    missing[m] = (likelihood, out)

            # the missing cells given every observed one, y and z: the Student-t modalities
            # continue the chain (exact), the others are independent given (y, z)
            # (not under the enumeration of y: the sites are for Predictive, which draws y)
            # (recorded as auxiliary sites whose log-density is masked out, like
            # pyro.deterministic: they change no objective and need no guide site)
            for m, (likelihood, out) in (missing.items() if y.dim() == 1 else ()):
                chained = likelihood.joint_t and not self.gaussian
                fn = (likelihood.conditional(out, nu, quad, dof) if chained
                      else likelihood.distribution(out))
                draw = fn.sample()
                pyro.sample(f"x_{m}_missing", fn.mask(False), obs=draw,
                            infer={"is_auxiliary": True})
                if chained:
                    hidden = ~cells[m]
                    resid = torch.where(hidden, draw - out, torch.zeros_like(draw)).pow(2).sum(-1)
                    quad = quad + resid / likelihood.sigma**2
                    dof = dof + hidden.to(quad.dtype).sum(-1)

            # ‖p‖_{1+γ}, which no trace contains (GammaPowerELBO needs it; others ignore it)
            declare_power_norm(self.power_norm(in_chain, cells))

            # α Σ_labelled w_y log q(y | x): the M2 classification term
            if labelled and x and cfg.alpha > 0:
                logits = (self.classifier(self.network_inputs(x, cells), self.present(x, mask))
                          + cfg.logit_adjustment * self.label_log_freq)
                log_q = dist.Categorical(logits=logits).log_prob(y)
                weight = cfg.alpha * self.class_weights[y]
                if cfg.alpha_unit == "dimension":  # α per observed dimension of the datum
                    counts = observed_cell_counts(cells, self.modalities, self._dims, batch)
                    weight = weight * observed_dimension(self.present(x, mask), self._dims,
                                                         self._log_sigma2, counts)[0]
                pyro.factor("classification", weight * log_q)

    def power_norm(self, observed: torch.Tensor,
                   cells: Mapping[str, torch.Tensor] | None = None):
        """The declaration of ‖p‖_{1+γ} for data whose observed modalities are ``observed``
        (bool [B, M]): closed form for the all-Student-t (or all-Gaussian) model; for a mixed
        model whose every family has a closed-form power integral, x summed or integrated
        exactly and z drawn (:class:`LatentMonteCarloPowerNorm`); otherwise ancestral draws of
        the whole model (:class:`~pyro_mmt.infer.MonteCarloPowerNorm`); ``docs/derivation.md``
        §9. With missing cells (``cells``), n counts each datum's observed cells (§11)."""
        counts = observed_cell_counts(cells, self.modalities, self._dims, observed.shape[0])
        obs_dim, log_det = observed_dimension(observed, self._dims, self._log_sigma2, counts)
        if not self.closed_form_norm:
            nu = None if self.gaussian else self.nu
            if all(lik.joint_t or lik.has_power_integral for lik in self.likelihoods.values()):
                return LatentMonteCarloPowerNorm(self, observed, obs_dim, nu=nu, cells=cells)
            norm = _NoNormWithMissingCells if cells else MonteCarloPowerNorm
            return norm(self.model, observed, obs_dim, self.config.latent_dim, nu=nu)
        if self.gaussian:
            return GaussianPowerNorm(obs_dim, self.config.latent_dim, log_det,
                                     self.class_log_prior)
        return StudentTPowerNorm(self.nu, obs_dim, self.config.latent_dim, log_det,
                                 self.class_log_prior)

    # ------------------------------------------------------------------ the class prior
    @torch.no_grad()
    def update_class_prior(self, logits: torch.Tensor, iterations: int = 50) -> np.ndarray:
        r"""Estimate π from the unlabelled rows (``class_prior="learned"``): the EM fixed point

        .. math::

            \pi_k \propto \sum_i q_\pi(k \mid x_i) + (a - 1),\qquad
            q_\pi(k \mid x_i) \propto \exp\big(f_k(x_i) + \tau' \log \pi_k\big),

        with f the classifier's logits on the unlabelled rows (``logits`` [N_u, K]), τ' the
        ``unlabelled_prior_shift`` and a the Dirichlet concentration. With a class-balanced f
        (logit adjustment) and τ' = 1 this is the EM estimate of the class proportions under
        prior shift (Saerens et al. 2002), the MAP estimate under the Dirichlet prior. Sets
        ``class_log_prior`` and returns π.
        """
        cfg = self.config
        if cfg.class_prior != "learned":
            raise ValueError(f"class_prior: update_class_prior needs class_prior='learned', "
                             f"found {cfg.class_prior!r}")
        logits = logits.to(self.class_log_prior)
        log_pi = self.class_log_prior.clone()
        for _ in range(int(iterations)):
            q = torch.softmax(logits + cfg.unlabelled_prior_shift * log_pi, -1)
            counts = q.sum(0) + (cfg.prior_concentration - 1.0)
            log_pi = torch.log(counts / counts.sum())
        self.class_log_prior.copy_(log_pi)
        return self.class_prior()


class _NoNormWithMissingCells(MonteCarloPowerNorm):
    """The norm of a model with missing cells and a family without a closed-form power
    integral: the ancestral draws of :class:`MonteCarloPowerNorm` score whole modalities, so
    the γ-objective refuses it (other objectives never ask for the norm)."""

    def _refuse(self, *args, **kwargs):
        raise ValueError(
            "cells: missing cells under the gamma_power objective need every family of a mixed "
            "model to have a closed-form power integral (Likelihood.log_power_integral with "
            "cells=); found a family without one; expected the built-in families (or fill the "
            "cells, or train with the kl objective)")

    log_norm = log_conditional_norm = _refuse


def _state_before_the_guide_module(state_dict, prefix, *args):
    """A ``state_dict`` saved before the guide became the submodule ``q`` (keys
    ``classifier.*``, ``encoders.*``) loads: its keys are renamed ``q.classifier.*``,
    ``q.encoders.*``."""
    for key in [k for k in state_dict if k.startswith((f"{prefix}classifier.",
                                                      f"{prefix}encoders."))]:
        state_dict[f"{prefix}q.{key[len(prefix):]}"] = state_dict.pop(key)


class LatentMonteCarloPowerNorm(PowerNorm):
    r"""‖p‖_{1+γ} of a mixed :class:`MultimodalM2` with x summed or integrated exactly and only
    z drawn (a Rao-Blackwellised form of :class:`~pyro_mmt.infer.MonteCarloPowerNorm`).

    Given (y, z) the modalities are independent blocks: the Student-t ones form one
    t_{n_t}(μ(y, z), s(z)²Λ_t, ν + d), whose power integral depends on z through s(z)² =
    (ν + ‖z‖²)/(ν + d) only (F1), and every other modality j has a closed-form
    I_j(y, z) = ∫ p(x_j | y, z)^{1+γ} dx_j (:meth:`~pyro_mmt.likelihoods.Likelihood.log_power_integral`).
    Hence, with the sum over y exact,

    .. math::

        \|p\|_{1+\gamma}^{1+\gamma} = \sum_y \pi_y^{1+\gamma}\,
            \mathbb{E}_{z \sim p(z)}\Big[p(z)^{\gamma}\, I_t(z) \prod_{j} I_j(y, z)\Big]
            \approx \frac1S \sum_{s,y} \pi_y^{1+\gamma} p(z_s)^\gamma I_t(z_s)
            \prod_j I_j(y, z_s),

    estimated by importance sampling of z from the t distribution r(z) that p(z)^{1+γ} I_t(z)
    is proportional to (:meth:`proposal`; I_t depends on z through (1 + ‖z‖²/ν) only), drawn
    by reparameterisation, so the gradient is the autograd gradient of the estimate. The
    Student-t part is then exact, and only the other families' I_j(y, z) vary from draw to
    draw: for the all-Student-t model the estimate is the closed form itself, and in general
    its variance is far below that of ancestral draws of x and z (``docs/derivation.md`` §9,
    ``benchmarks/power_norm_draws.py``).
    Missing modalities drop out of the product (their factor integrates to 1); one estimate is
    made per pattern of observed modalities, all from the same draws of z.

    :param m2: the model whose norm this is.
    :param torch.Tensor observed: bool [B, M], the modalities each datum observes.
    :param torch.Tensor obs_dim: n per datum (for the "auto" γ).
    :param nu: ν (None for the Gaussian model).
    :param int num_draws: S, draws of z.
    :param cells: missing cells (modality -> bool [B, n_j], True where observed): a missing
        cell drops out of its modality's factor, as a missing modality does (§11).
    """

    power_form = False
    #: S: draws of z (``docs/derivation.md`` §9).
    default_num_draws = 32

    def __init__(self, m2: MultimodalM2, observed, obs_dim, *, nu=None, num_draws=None,
                 cells=None):
        super().__init__(obs_dim, m2.config.latent_dim, torch.zeros_like(obs_dim),
                         class_log_prior=m2.class_log_prior)
        self.m2, self.observed, self.nu = m2, observed, nu
        self.cells = dict(cells or {})
        self.num_draws = int(num_draws or self.default_num_draws)

    def auto_gamma(self):
        if self.nu is None:
            return torch.zeros_like(self.obs_dim)
        return auto_gamma(self.nu, self.obs_dim, self.latent_dim)

    def proposal(self, gamma, n_t) -> dist.TorchDistribution:
        """The distribution of z that makes the Student-t part exact: p(z)^{1+γ} I_t(z) is
        proportional to the kernel of t_d(0, ν/df I, df) with df = (1+γ)(ν+d) + γ n_t − d
        (N(0, I/(1+γ)) for ν = ∞); the prior itself where that df would not be positive."""
        m2, d = self.m2, self.latent_dim
        zeros = m2._dims.new_zeros(d)
        if self.nu is None:
            return dist.Normal(zeros, (1 + gamma).rsqrt()).to_event(1)
        df = (1 + gamma) * (self.nu + d) + gamma * n_t - d
        if not bool(df > 0):
            return m2.latent_prior()
        return DiagStudentT(df, zeros, (self.nu / df).sqrt() * torch.ones_like(zeros))

    def log_norm(self, gamma):
        return self._log_norms(gamma, conditional=False)

    def log_conditional_norm(self, gamma, y):
        """log ‖p(x, z | y)‖_{1+γ} at the labels ``y`` (observed [B] or enumerated [K, 1]):
        the same estimate without the class factor and the sum over y, one value per class
        (the other families' I_j(y, z) depend on y)."""
        table = self._log_norms(gamma, conditional=True)  # [B, K]
        rows = torch.arange(table.shape[0], device=table.device)
        return table[rows, y]

    def _log_norms(self, gamma, conditional):
        m2, d = self.m2, self.latent_dim
        gamma = torch.as_tensor(gamma, dtype=self.obs_dim.dtype, device=self.obs_dim.device)
        gamma = gamma.expand(self.batch_shape)
        with_cells = [m for m in m2.likelihoods if m in self.cells]
        key = torch.cat([self.observed] + [self.cells[m] for m in with_cells], -1)
        patterns, which = torch.unique(key, dim=0, return_inverse=True)
        prior = m2.latent_prior()
        labels = torch.arange(m2.config.num_classes, device=self.obs_dim.device).unsqueeze(-1)
        values = []
        for k, pattern in enumerate(patterns):
            g = gamma[which == k]
            if not bool((g == g[0]).all()):
                raise ValueError("gamma: the power norm needs one gamma per pattern of "
                                 "observed modalities")
            g = g[0]
            present = [m for j, m in enumerate(m2.likelihoods) if bool(pattern[j])]
            pattern_cells, start = {}, len(m2.likelihoods)
            for m in with_cells:  # this pattern's observed cells
                pattern_cells[m] = pattern[start:start + m2.likelihoods[m].dim]
                start += m2.likelihoods[m].dim
            size = {m: int(pattern_cells[m].sum()) if m in pattern_cells
                    else m2.likelihoods[m].dim for m in present}
            chained = [m for m in present
                       if m2.likelihoods[m].joint_t and not m2.gaussian]
            n_t = sum(size[m] for m in chained)
            log_det_t = sum(size[m] * 2 * math.log(m2.likelihoods[m].sigma) for m in chained)
            # z from the proposal, reparameterised: the weights p(z)^{1+γ} I_t(z)/r(z) are
            # constant for the Student-t part, so only the other families add variance
            proposal = self.proposal(g, n_t)
            z = proposal.rsample((self.num_draws,))  # [S, d]
            total = (1 + g) * prior.log_prob(z) - proposal.log_prob(z)  # [S]
            if n_t:  # the Student-t block given z: t_{n_t}(μ, s(z)²Λ_t, ν + d), F1
                s2 = (self.nu + z.pow(2).sum(-1)) / (self.nu + d)
                total = total + log_t_power_integral(self.nu + d, n_t,
                                                     n_t * s2.log() + log_det_t, g)
            prior_y = 0.0 if conditional else self.class_log_prior.to(z).unsqueeze(-1)
            total = (1 + g) * prior_y + total.expand(m2.config.num_classes, -1)  # [K, S]
            for m in present:
                if m not in chained:  # a missing modality integrates to 1: left out
                    out = m2.decoders[m](z, labels)  # [K, S, out_dim]
                    total = total + (
                        m2.likelihoods[m].log_power_integral(out, g) if m not in pattern_cells
                        else m2.likelihoods[m].log_power_integral(out, g,
                                                                  cells=pattern_cells[m]))
            if conditional:  # one value per class
                log_integral = torch.logsumexp(total, -1) - math.log(self.num_draws)
            else:
                log_integral = torch.logsumexp(total.flatten(), 0) - math.log(self.num_draws)
            values.append(log_integral / (1 + g))
        return torch.stack(values)[which]
