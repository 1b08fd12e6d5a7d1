r"""The product-of-experts guide q(y, z | x) = q(y | x) q(z | x, y).

- **Classifier** q(y | x): a product of per-modality categorical experts,
  :math:`q(y|x) \propto \exp\big(\sum_{j \text{ present}} f_j(x_j)_y\, [+\, g(x)_y]\big)`,
  optionally with a joint head g on all modalities. The label site is enumerated in parallel.
- **Encoder** q(z | x, y): each present modality gives an expert
  :math:`(m_j(x_j, y), \Sigma_j(x_j, y))`; with a prior expert :math:`(0, \tau_0 I)` they are
  fused by precision weighting,

  .. math::

      \Sigma^{-1} = I/\tau_0 + \sum_j \Sigma_j^{-1},\qquad
      m = \Sigma \sum_j \Sigma_j^{-1} m_j,\qquad
      q(z \mid x, y) = t_d\big(m, \tfrac{\nu}{\nu+n}\Sigma, \nu + n\big),

  n the observed dimension (the t3VAE encoder form). τ_0 is the scale at which the γ-objective
  is stationary when the data carry no information (``docs/derivation.md`` §4): a *unit* prior
  expert would force Σ ≤ I, far below that optimum (τ_0 ≈ 9 at n = 784). With ν = ∞ the
  fusion is the Gaussian PoE with a unit prior expert (MVAE) and q(z | x, y) = N(m, Σ).

The label enters every network through a class embedding that broadcasts over the enumerated
label dimension, so all classes are encoded in one pass.

:class:`PoETGuide` is the guide as a module of its own, built from a
:class:`~pyro_mmt.config.ModelConfig` (as CEVAE's ``Guide`` is): it owns the classifier and the
encoder experts, and can be built, run and tested alone. :class:`~pyro_mmt.models.MultimodalM2`
owns one as its submodule ``q`` (so ``state_dict()``, ``.to()`` and saving see it) and shares
with it the two quantities model and guide have in common: ν (one ν for the prior, the decoder,
the encoder and τ_0, a parameter when learned) and the class prior π (learned or not).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from pyro_mmt.config import ModelConfig
from pyro_mmt.distributions import gaussian_poe, prior_expert_scale, student_t_poe
from pyro_mmt.likelihoods import Likelihood, make_likelihood
from pyro_mmt.nn import (
    LabelConditionedMLP,
    apply_label_network,
    mlp,
    observed_cell_counts,
    observed_dimension,
    register_module,
)

__all__ = ["PoEClassifier", "ModalityEncoder", "PoETGuide"]


class PoEClassifier(nn.Module):
    r"""q(y | x) as a product of per-modality categorical experts.

    ``forward(x, present)`` returns the logits :math:`\sum_j m_j f_j(x_j) [+ g(x)]`, where
    :math:`m_j` is 1 when modality j is present; a product of categorical experts is the
    categorical with the summed logits, so any subset of modalities gives a valid q(y | x).

    :param dims: modality name -> input size of its expert.
    :param int num_classes: K.
    :param hidden: hidden layer sizes of each expert f_j.
    :param bool joint_head: add a head g on the concatenated modalities (missing ones zero).
    """

    def __init__(self, dims: Mapping[str, int], num_classes: int,
                 hidden: Sequence[int] = (128,), joint_head: bool = False):
        super().__init__()
        self.modalities = tuple(dims)
        self.dims = {m: int(n) for m, n in dims.items()}
        self.num_classes = int(num_classes)
        self.experts = nn.ModuleDict(
            {m: mlp([n, *hidden, self.num_classes]) for m, n in self.dims.items()}
        )
        total = sum(self.dims.values())
        self.joint = mlp([total, *hidden, self.num_classes]) if joint_head else None

    def forward(self, x: Mapping[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Logits [B, K] from the modalities present (``present`` bool [B, M]; a modality
        absent from ``x`` must be False there)."""
        logits = 0.0
        for j, m in enumerate(self.modalities):
            if m in x:
                logits = logits + present[:, j : j + 1].to(x[m].dtype) * self.experts[m](x[m])
        if self.joint is not None:
            ref = next(iter(x.values()))
            parts = [x[m] * present[:, j : j + 1].to(ref.dtype) if m in x
                     else ref.new_zeros(ref.shape[0], self.dims[m])
                     for j, m in enumerate(self.modalities)]
            logits = logits + self.joint(torch.cat(parts, -1))
        if not isinstance(logits, torch.Tensor):  # no modality given: a uniform q(y | x)
            logits = present.new_zeros(present.shape[0], self.num_classes,
                                       dtype=torch.get_default_dtype())
        return logits


class ModalityEncoder(nn.Module):
    """One expert of q(z | x, y): (m_j, Σ_j) from ``net(x_j, y)`` = [location, raw scale],
    Σ_j = softplus(raw) + 1e-4.

    :param int latent_dim: d.
    :param net: the network ``net(x_j, y) -> [..., 2d]``; when None, a
        :class:`~pyro_mmt.nn.LabelConditionedMLP` with ``in_dim``, ``num_classes`` and
        ``hidden``.
    """

    def __init__(self, latent_dim: int, net: nn.Module | None = None, *,
                 in_dim: int | None = None, num_classes: int | None = None,
                 hidden: Sequence[int] = (128,)):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.net = net if net is not None else LabelConditionedMLP(
            in_dim, num_classes, hidden, 2 * self.latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and diagonal scale matrix Σ_j, each [..., B, d]."""
        out = self.net(x, y)
        if out.shape[-1] != 2 * self.latent_dim:
            raise ValueError(f"encoder: expected an output of size 2 * latent_dim = "
                             f"{2 * self.latent_dim} (location, raw scale), found {out.shape[-1]}")
        loc, raw = out.split(self.latent_dim, dim=-1)
        return loc, F.softplus(raw) + 1e-4


class PoETGuide(nn.Module):
    r"""The product-of-experts guide q(y, z | x) = q(y | x) q(z | x, y), built from a
    :class:`~pyro_mmt.config.ModelConfig` (see the module docstring for the maths).

    ``guide(x, mask, y, batch_size)`` is the Pyro guide (the model's arguments; an unlabelled
    batch enumerates y in parallel); :meth:`encode` is q(z | x, y), :meth:`predict_proba`
    q(y | x) for any subset of the modalities.

    Alone, the guide uses the config's ν and, for the prior shift τ' of unlabelled rows, the
    labelled class frequencies (or the uniform π). Owned by a model (:meth:`share_with`, as
    :class:`~pyro_mmt.models.MultimodalM2` does), it reads ν and π from the model, so a
    learned ν or π is the same in both.

    :param ModelConfig config: the settings (dimensions, families, ν, the imbalance options).
    :param encoders: optional modality -> network ``net(x_j, y) -> [..., B, 2d]`` (or a
        :class:`ModalityEncoder`) replacing that modality's default expert.
    :param classifier: optional ``nn.Module`` replacing the default :class:`PoEClassifier`,
        ``classifier(inputs, present) -> logits``.
    :param likelihoods: the modalities' :class:`~pyro_mmt.likelihoods.Likelihood` objects
        (default: made from the config), which say how each modality enters the networks.
    """

    def __init__(self, config: ModelConfig, *, encoders: Mapping[str, nn.Module] | None = None,
                 classifier: nn.Module | None = None,
                 likelihoods: Mapping[str, Likelihood] | None = None):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config: expected a pyro_mmt.ModelConfig, found "
                             f"{type(config).__name__}")
        self.config = cfg = config
        self.likelihoods: dict[str, Likelihood] = dict(likelihoods) if likelihoods else {
            m: make_likelihood(cfg.likelihood[m], n, sigma=cfg.sigma[m],
                               num_categories=cfg.num_categories.get(m))
            for m, n in cfg.dims.items()}
        in_dims = self.input_dims(cfg, self.likelihoods)
        K, d = cfg.num_classes, cfg.latent_dim
        if classifier is not None and not isinstance(classifier, nn.Module):
            raise ValueError(f"classifier: expected an nn.Module, found "
                             f"{type(classifier).__name__}")
        self.classifier = classifier if classifier is not None else PoEClassifier(
            in_dims, K, cfg.hidden, joint_head=cfg.joint_head)
        encoders = dict(encoders or {})
        self.encoders = nn.ModuleDict({
            m: encoders[m] if isinstance(encoders.get(m), ModalityEncoder)
            else ModalityEncoder(d, net=encoders[m]) if m in encoders
            else ModalityEncoder(d, in_dim=in_dims[m], num_classes=K, hidden=cfg.hidden)
            for m in cfg.modalities})
        # what the settings imply, derived once (not state: rebuilt from the config)
        self.register_buffer("_nu", torch.tensor(cfg.nu), persistent=False)
        self.register_buffer("_dims", torch.tensor([float(n) for n in cfg.dims.values()]),
                             persistent=False)
        self.register_buffer("_log_sigma2", torch.tensor(
            [2 * math.log(cfg.sigma[m]) if lik.continuous else 0.0
             for m, lik in self.likelihoods.items()]), persistent=False)
        counts = None if cfg.label_counts is None else torch.tensor(
            cfg.label_counts, dtype=torch.get_default_dtype())
        self.register_buffer("label_log_freq", torch.zeros(K) if counts is None
                             else torch.log(counts / counts.sum()), persistent=False)
        # the δ predictions use (state: "auto" is calibrated after training; NaN until then)
        self.register_buffer("decision_shift", torch.tensor(
            math.nan if cfg.decision_shift == "auto" else cfg.decision_shift))
        # log r of decision_reference="predicted": the mean q(y | x) of the unlabelled training
        # rows (state, calibrated after training; NaN until then)
        self.register_buffer("decision_log_shares", torch.full((K,), math.nan))
        self._owner = None

    @staticmethod
    def input_dims(config: ModelConfig, likelihoods: Mapping[str, Likelihood]) -> dict[str, int]:
        """The input size of each modality's networks: the family's (:meth:`~pyro_mmt.
        likelihoods.Likelihood.in_dim`), plus n_j for the cell mask with
        ``missing_cells="indicator"``."""
        extra = config.cell_indicators
        return {m: lik.in_dim + (lik.dim if extra else 0) for m, lik in likelihoods.items()}

    def share_with(self, owner: nn.Module) -> PoETGuide:
        """Read ν (``owner.nu``) and the class prior (``owner.class_log_prior``) from the model
        ``owner``, and register the owner's parameters in Pyro's param store (one name for the
        model's and the guide's). The owner is not a submodule (no cycle in the module tree)."""
        object.__setattr__(self, "_owner", owner)
        return self

    # ------------------------------------------------------------------------- settings
    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality names, in order."""
        return self.config.modalities

    @property
    def nu(self) -> torch.Tensor:
        """ν: the owner's (learned or not), else the config's."""
        return self._nu if self._owner is None else self._owner.nu

    @property
    def gaussian(self) -> bool:
        """True for the ν = ∞ (Gaussian) model."""
        return self.config.gaussian

    @property
    def class_log_prior(self) -> torch.Tensor:
        """log π: the owner's, else the labelled class frequencies for ``"learned"`` (the
        model's starting value), uniform or the given π."""
        if self._owner is not None:
            return self._owner.class_log_prior
        cfg = self.config
        if cfg.class_prior == "learned" and cfg.label_counts is not None:
            return self.label_log_freq
        if isinstance(cfg.class_prior, str):
            return torch.full_like(self.label_log_freq, -math.log(cfg.num_classes))
        return torch.tensor(cfg.class_prior).to(self.label_log_freq).log()

    # ---------------------------------------------------------------------------- guide
    def guide(self, x: Mapping[str, torch.Tensor] | None = None,
              mask: torch.Tensor | None = None, y: torch.Tensor | None = None,
              batch_size: int | None = None, cells: Mapping[str, torch.Tensor] | None = None):
        """q(y, z | x); same arguments as the model's. An unlabelled batch enumerates y; rows
        with y = -1 in a partly labelled batch draw y from q(y | x), the others keep their
        label (a point mass)."""
        if self._owner is None:
            register_module("guide", self)
        else:
            register_module("m2", self._owner)
        x, mask, batch = self.check_inputs(x, mask, y, batch_size)
        cells, mask = self.check_cells(cells, x, mask)
        y, known = self.observed_labels(y)
        present = self.present(x, mask)
        inputs = self.network_inputs(x, cells)
        with pyro.plate("data", batch):
            if y is None or known is not None:
                logits = self.classifier(inputs, present) + self.unlabelled_logit_shift()
                if known is not None:  # the labelled rows: all mass on their label
                    point = F.one_hot(y.clamp(min=0), logits.shape[-1]).to(logits.dtype).log()
                    logits = torch.where(known[:, None], point, logits)
                y = pyro.sample(
                    "y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"}
                )
            with poutine.scale(scale=self.config.latent_weight):
                pyro.sample("z", self.encode(inputs, present, y, cells))

    def encode(self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor,
               y: torch.Tensor, cells: Mapping[str, torch.Tensor] | None = None
               ) -> dist.TorchDistribution:
        """q(z | x, y) from the network inputs, batched over y's shape ([B] or [K, 1]);
        ``cells`` (missing cells) sets the observed dimension of the prior expert."""
        given = [m for m in self.modalities if m in inputs]
        columns = [self.modalities.index(m) for m in given]
        loc, scale2 = [], []
        for m in given:  # the experts of the modalities given; missing rows are masked below
            loc_m, scale2_m = apply_label_network(self.encoders[m], f"encoders[{m!r}]",
                                                  inputs[m], y)
            loc.append(loc_m)
            scale2.append(scale2_m)
        if not given:  # no data: the prior expert alone
            shape = torch.broadcast_shapes(y.shape, present.shape[:1]) + (self.config.latent_dim,)
            loc = [self._dims.new_zeros(shape)]
            scale2 = [self._dims.new_ones(shape)]
            expert_mask = present.new_zeros(present.shape[0], 1)
        else:
            expert_mask = present[:, columns]
            if expert_mask.device.type == "cpu" and bool(expert_mask.all()):
                # every expert present in every row: the same fusion, without the masking
                # passes over the [M, K, B, d] experts (no host sync on a GPU: masked there)
                expert_mask = None
        if self.gaussian:
            return gaussian_poe(loc, scale2, expert_mask)
        counts = observed_cell_counts(cells, self.modalities, self._dims, present.shape[0])
        obs_dim, log_det = observed_dimension(present, self._dims, self._log_sigma2, counts)
        tau0 = prior_expert_scale(self.nu, obs_dim, self.config.latent_dim, log_det)
        return student_t_poe(loc, scale2, expert_mask, nu=self.nu, obs_dim=obs_dim,
                             prior_scale=tau0)

    def unlabelled_logit_shift(self) -> torch.Tensor:
        """τ' log π_u, added to q(y | x) when y is enumerated (``docs/imbalance.md``): π_u the
        learned class prior, or the labelled class frequencies."""
        cfg = self.config
        if cfg.unlabelled_prior_shift == 0:
            return torch.zeros_like(self.label_log_freq)
        log_pi = self.class_log_prior if cfg.class_prior == "learned" else self.label_log_freq
        return cfg.unlabelled_prior_shift * log_pi

    forward = guide

    @torch.no_grad()
    def predict_proba(self, x: Mapping[str, torch.Tensor], mask: torch.Tensor | None = None,
                      *, logit_adjustment: float | None = None,
                      cells: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """q(y | x) [B, K] for data with any subset of the modalities (absent keys or
        ``mask``) and of their cells (``cells``), with the decision shift of the prediction:
        logits − δ log r, r the reference shares (:meth:`decision_log_reference`: the
        classifier's mean prediction on the unlabelled training rows, or the labelled class
        frequencies π̂; :mod:`pyro_mmt.decision`). δ is ``logit_adjustment`` when given, else
        :meth:`prediction_shift` (the config's ``decision_shift``, calibrated for ``"auto"``;
        it shifts nothing while r is uniform, e.g. π̂ without ``label_counts``). Rows sum
        to 1."""
        x, mask, _ = self.check_inputs(x, mask, None, None)
        cells, mask = self.check_cells(cells, x, mask)
        if logit_adjustment is None:
            logit_adjustment = self.prediction_shift()
        elif logit_adjustment and self.config.decision_reference == "labelled" \
                and self.config.label_counts is None:
            raise ValueError("logit_adjustment: post-hoc adjustment needs the labelled class "
                             "counts (config.label_counts), found None")
        elif logit_adjustment and torch.isnan(self.decision_log_reference()).any():
            raise ValueError("logit_adjustment: the predicted reference shares are not "
                             "calibrated yet (call calibrate_decision_shift(logits of the "
                             "unlabelled rows) first), found NaN")
        logits = self.classifier(self.network_inputs(x, cells), self.present(x, mask))
        return torch.softmax(self.shift_logits(logits, logit_adjustment), dim=-1)

    def shift_logits(self, logits: torch.Tensor, delta: float) -> torch.Tensor:
        """logits − δ log r (:meth:`decision_log_reference`), in the logits' dtype and device;
        the logits themselves for δ = 0 (r need not be known then). The estimator shifts its
        members' log q̄ with it."""
        if not delta:
            return logits
        return logits - delta * self.decision_log_reference().to(logits)

    @property
    def calibrated(self) -> bool:
        """Whether what the decision rule learns after training (the predicted shares of
        ``decision_reference="predicted"``, the δ of ``decision_shift="auto"``:
        :attr:`~pyro_mmt.config.ModelConfig.learned_decision`) is in place; True when there is
        nothing to learn."""
        if not self.config.learned_decision:
            return True
        return not (torch.isnan(self.decision_log_reference()).any()
                    or math.isnan(float(self.decision_shift)))

    def decision_log_reference(self) -> torch.Tensor:
        """log r [K], the reference shares of the decision shift: the stored mean prediction
        on the unlabelled training rows for ``decision_reference="predicted"``
        (:meth:`calibrate_decision_shift`), else the labelled class frequencies π̂."""
        if self.config.decision_reference == "predicted":
            return self.decision_log_shares.to(self.label_log_freq)
        return self.label_log_freq

    def prediction_shift(self) -> float:
        """The decision shift δ predictions use: the config's number, or for
        ``decision_shift="auto"`` the one :meth:`calibrate_decision_shift` chose; 0, with a
        warning, before that ran (for ``"auto"``, or for ``decision_reference="predicted"``,
        whose shares are learned at the same time). δ = 0 shifts along nothing and needs no
        calibration."""
        if self.config.decision_shift == 0:
            return 0.0
        if not self.calibrated:
            warnings.warn("the decision rule has not been calibrated (decision_reference="
                          f"{self.config.decision_reference!r}, decision_shift="
                          f"{self.config.decision_shift!r}): predicting with δ = 0 (call "
                          "calibrate_decision_shift(logits of the unlabelled rows) after "
                          "training; pyro_mmt.training.train and the estimator do)",
                          stacklevel=3)
            return 0.0
        if self.config.decision_shift != "auto":  # the config owns a number
            return self.config.decision_shift
        return float(self.decision_shift)

    @torch.no_grad()
    def calibrate_decision_shift(self, logits: torch.Tensor) -> float:
        """Learn the decision rule from the classifier's logits f(x) on the unlabelled training
        rows [N, K] (or the log of an ensemble's averaged q̄), store it and return δ: for
        ``decision_reference="predicted"`` the reference shares r, the rows' softmax(f(x))
        summed with one pseudo-count per class (:func:`pyro_mmt.decision.
        reference_log_shares`; uniform when N = 0), and for ``decision_shift="auto"`` δ
        (:func:`pyro_mmt.decision.choose_decision_shift` along log r, aimed at π^λ with π the
        learned class prior for ``class_prior="learned"``, else the labelled class frequencies,
        λ = ``decision_shares``). A config with a number keeps it."""
        from pyro_mmt.decision import choose_decision_shift, reference_log_shares

        cfg = self.config
        logits = logits.detach().cpu().double()
        if cfg.decision_reference == "predicted":
            self.decision_log_shares.copy_(reference_log_shares(torch.log_softmax(logits, -1)))
        if cfg.decision_shift != "auto":
            return float(cfg.decision_shift)
        target = self.class_log_prior if cfg.class_prior == "learned" else self.label_log_freq
        delta = choose_decision_shift(logits, self.decision_log_reference().cpu(),
                                      target_log_prior=target.detach().cpu(),
                                      shares=cfg.decision_shares)
        self.decision_shift.fill_(delta)
        return delta

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the config owns a number (a state saved with another, e.g. a checkpoint resumed with
        # a new decision_shift, takes it); for "auto" the state's choice, and δ = 0 for a
        # state saved before the decision shift was state (what such a model predicted with);
        # the predicted shares of a state saved before they were state: not calibrated (such
        # a state was saved with the labelled reference, which its config then names)
        key = prefix + "decision_shift"
        if self.config.decision_shift != "auto":
            state_dict[key] = torch.tensor(self.config.decision_shift)
        else:
            state_dict.setdefault(key, torch.tensor(0.0))
        state_dict.setdefault(prefix + "decision_log_shares",
                              torch.full_like(self.decision_log_shares, math.nan))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def classifier_logits(self, x: Mapping[str, torch.Tensor],
                          mask: torch.Tensor | None = None,
                          cells: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The classifier's logits f(x) [B, K] (no shift)."""
        x, mask, _ = self.check_inputs(x, mask, None, None)
        cells, mask = self.check_cells(cells, x, mask)
        return self.classifier(self.network_inputs(x, cells), self.present(x, mask))

    # ------------------------------------------------------------------ shared checks
    @staticmethod
    def observed_labels(y):
        """``(y, known)``: -1 marks an unobserved label (the data sets' convention). All
        observed: ``(y, None)``; none: ``(None, None)``, y is then a latent variable; some:
        ``(y, known)`` with ``known`` the bool [B] of observed rows (used by ``Predictive`` on
        a partly labelled batch; training batches are all labelled or all unlabelled)."""
        if y is None:
            return None, None
        known = y >= 0
        if bool(known.all()):
            return y, None
        if not bool(known.any()):
            return None, None
        return y, known

    def check_inputs(self, x, mask, y, batch_size) -> tuple[dict, torch.Tensor, int]:
        """The arguments of the model and the guide, checked: ``x`` as a dict (empty for
        None), the mask as bool [B, M] over every modality, and B."""
        modalities = self.modalities
        x = {} if x is None else x
        if not isinstance(x, Mapping):
            raise ValueError(f"x: expected None or a mapping modality -> tensor [B, n_j], "
                             f"found {type(x).__name__}")
        unknown = sorted(set(x) - set(modalities))
        if unknown:
            raise ValueError(f"x: unknown modalities {unknown}; expected some of "
                             f"{list(modalities)}")
        batch = None
        for m, value in x.items():
            width = self.likelihoods[m].dim
            if not isinstance(value, torch.Tensor) or value.dim() != 2 \
                    or value.shape[1] != width:
                found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(f"x[{m!r}]: expected a tensor of shape [B, {width}], found "
                                 f"{found}")
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise ValueError(f"x[{m!r}]: expected {batch} rows like the other modalities, "
                                 f"found {value.shape[0]}")
        if y is not None:
            if not isinstance(y, torch.Tensor) or y.dim() != 1:
                raise ValueError(f"y: expected an int64 tensor [B] or None, found "
                                 f"{tuple(y.shape) if isinstance(y, torch.Tensor) else y!r}")
            if batch is None:
                batch = y.shape[0]
            elif y.shape[0] != batch:
                raise ValueError(f"y: expected {batch} labels (one per row of x), found "
                                 f"{y.shape[0]}")
        if batch_size is not None:
            if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
                raise ValueError(f"batch_size: expected a positive integer, found {batch_size!r}")
            if batch is not None and batch != batch_size:
                raise ValueError(f"batch_size: expected {batch} (the rows of x or y), found "
                                 f"{batch_size}")
            batch = int(batch_size)
        if batch is None:
            raise ValueError("batch_size: expected x, y or batch_size to give the number of "
                             "rows, found none of them")
        device = self._dims.device
        if mask is None:
            mask = torch.ones(batch, len(modalities), dtype=torch.bool, device=device)
        elif (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
              or mask.shape != (batch, len(modalities))):
            found = (f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor)
                     else type(mask).__name__)
            raise ValueError(f"mask: expected a bool tensor of shape ({batch}, "
                             f"{len(modalities)}), found {found}")
        return dict(x), mask, batch

    def present(self, x: Mapping[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Bool [B, M]: modality j observed in this datum (given in ``x`` and not masked)."""
        if all(m in x for m in self.modalities):
            return mask
        given = torch.tensor([m in x for m in self.modalities], device=mask.device)
        return mask & given

    def check_cells(self, cells, x, mask) -> tuple[dict, torch.Tensor]:
        """``cells`` checked (modality -> bool [B, n_j], True where a cell is observed, for
        modalities given in ``x``; None: every cell of every observed row), and the mask with
        a modality observed only where one of its cells is."""
        if cells is None or (isinstance(cells, Mapping) and not cells):
            return {}, mask
        if not isinstance(cells, Mapping):
            raise ValueError(f"cells: expected None or a mapping modality -> bool tensor "
                             f"[B, n_j], found {type(cells).__name__}")
        unknown = sorted(set(cells) - set(x))
        if unknown:
            raise ValueError(f"cells: modalities {unknown} are not given in x; expected some "
                             f"of {list(x)}")
        batch = mask.shape[0]
        for m, value in cells.items():
            width = self.likelihoods[m].dim
            if (not isinstance(value, torch.Tensor) or value.dtype != torch.bool
                    or value.shape != (batch, width)):
                found = (f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                         else type(value).__name__)
                raise ValueError(f"cells[{m!r}]: expected a bool tensor of shape ({batch}, "
                                 f"{width}), found {found}")
        any_cell = torch.stack([cells[m].any(-1) if m in cells else torch.ones_like(mask[:, j])
                                for j, m in enumerate(self.modalities)], -1)
        return dict(cells), mask & any_cell

    def network_inputs(self, x: Mapping[str, torch.Tensor],
                       cells: Mapping[str, torch.Tensor] | None = None
                       ) -> dict[str, torch.Tensor]:
        """The modalities as the encoders and the classifier see them (e.g. one-hot codes).

        A missing cell (``cells``) enters as 0 in its family's code; with
        ``missing_cells="indicator"`` the cell mask (1 = observed) follows the code, so the
        networks tell a missing cell from an observed 0 (``docs/derivation.md`` §11)."""
        inputs = {}
        for m, v in x.items():
            likelihood = self.likelihoods[m]
            code = likelihood.as_input(v)
            observed = None if not cells else cells.get(m)
            if observed is not None:  # each cell's share of the code (C_j entries if one-hot)
                per_cell = likelihood.in_dim // likelihood.dim
                code = code * observed.repeat_interleave(per_cell, -1).to(code.dtype)
            if self.config.cell_indicators:
                indicator = (torch.ones_like(v, dtype=code.dtype) if observed is None
                             else observed.to(code.dtype))
                code = torch.cat([code, indicator], -1)
            inputs[m] = code
        return inputs
