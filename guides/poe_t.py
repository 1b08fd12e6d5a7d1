r"""The product-of-experts guide q(y, z | x) = q(y | x) q(z | x, y) (DESIGN.md, "The model").

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
  is stationary when the data carry no information (MATH.md §5–6): a *unit* prior expert would
  force Σ ≤ I, far below the optimum (τ_0 ≈ 9 at n = 784). With ν = ∞ the fusion is the
  Gaussian PoE with a unit prior expert (MVAE) and q(z | x, y) = N(m, Σ).

The label enters every encoder through a class embedding that broadcasts over the enumerated
label dimension, so all classes are encoded in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from pyro_mmt.checks import (
    check_model_config,
    class_log_prior_tensor,
    full_mask,
    per_modality,
)
from pyro_mmt.distributions import gaussian_poe, prior_expert_scale, student_t_poe
from pyro_mmt.nn import LabelConditionedMLP, mlp, observed_dimension

__all__ = ["PoEClassifier", "ModalityEncoder", "PoETGuide"]


class PoEClassifier(nn.Module):
    r"""q(y | x) as a product of per-modality categorical experts.

    ``forward(x, mask)`` returns the logits :math:`\sum_j m_j f_j(x_j) [+ g(x)]`, where
    :math:`m_j` is 1 when modality j is present; a product of categorical experts is the
    categorical with the summed logits, so any subset of modalities gives a valid q(y | x).

    :param dims: modality name -> n_j.
    :param int num_classes: K.
    :param hidden: hidden layer sizes of each expert f_j.
    :param bool joint_head: add a head g on the concatenated modalities (missing ones zero).
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        num_classes: int,
        hidden: Sequence[int] = (128,),
        joint_head: bool = False,
    ):
        super().__init__()
        self.modalities = tuple(dims)
        self.num_classes = int(num_classes)
        self.experts = nn.ModuleDict(
            {m: mlp([int(n), *hidden, self.num_classes]) for m, n in dims.items()}
        )
        total = sum(int(n) for n in dims.values())
        self.joint = mlp([total, *hidden, self.num_classes]) if joint_head else None

    def forward(self, x: Mapping[str, torch.Tensor], mask: torch.Tensor | None = None):
        """Logits [B, K] from the present modalities."""
        batch = next(iter(x.values())).shape[0]
        mask = full_mask(mask, batch, len(self.modalities), next(iter(x.values())).device)
        present = mask.to(next(iter(x.values())).dtype)
        logits = sum(
            present[:, j : j + 1] * self.experts[m](x[m]) for j, m in enumerate(self.modalities)
        )
        if self.joint is not None:
            logits = logits + self.joint(torch.cat([x[m] for m in self.modalities], -1))
        return logits

    def predict_proba(self, x, mask=None, *, log_prior_shift: torch.Tensor | float = 0.0):
        """Class probabilities q(y | x) with logits shifted by ``log_prior_shift`` (e.g.
        −τ log π̂ for post-hoc logit adjustment, Menon et al. 2021). Rows sum to 1."""
        with torch.no_grad():
            return torch.softmax(self.forward(x, mask) + log_prior_shift, dim=-1)


class ModalityEncoder(nn.Module):
    """One expert of q(z | x, y): (m_j, Σ_j) = net(x_j, y), Σ_j = softplus(·) + 1e-4.

    :param int in_dim: n_j.
    :param int num_classes: K.
    :param int latent_dim: d.
    :param hidden: hidden layer sizes.
    """

    def __init__(self, in_dim: int, num_classes: int, latent_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.net = LabelConditionedMLP(in_dim, num_classes, hidden, 2 * self.latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and diagonal scale matrix Σ_j, each [..., B, d]."""
        loc, raw = self.net(x, y).split(self.latent_dim, dim=-1)
        return loc, F.softplus(raw) + 1e-4


class PoETGuide(nn.Module):
    r"""The product-of-experts guide for :class:`~pyro_mmt.models.MultimodalTModel`.

    :param dims: modality name -> n_j (same as the model's).
    :param int num_classes: K.
    :param classifier: a :class:`PoEClassifier` (shared with the model's classification term);
        a new one is made when None.
    :param int latent_dim: d (same as the model's).
    :param hidden: hidden layer sizes of each encoder expert.
    :param float nu: ν of the model (``inf`` for the Gaussian model).
    :param sigma: σ_j of the model (they set τ_0).
    :param float unlabelled_prior_shift: τ' ≥ 0. For unlabelled data the enumerated q(y | x)
        uses logits f(x) + τ' log π̂ (π̂ from ``label_counts``): with a classifier trained to be
        class-balanced (logit adjustment), this restores the data's class frequencies in the
        enumeration (Menon et al., ICLR 2021). 0 (default) leaves q(y | x) as it is.
    :param label_counts: labelled class counts (needed when ``unlabelled_prior_shift > 0``).
    :param float latent_weight: β scaling the z site (as in the model).
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        num_classes: int,
        *,
        classifier: PoEClassifier | None = None,
        latent_dim: int = 16,
        hidden: Sequence[int] = (128,),
        nu: float = 5.0,
        sigma: float | Mapping[str, float] = 1.0,
        unlabelled_prior_shift: float = 0.0,
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
        self.latent_weight = float(latent_weight)
        check_model_config(self.modalities, self.dims, self.num_classes, self.latent_dim, self.nu)
        if classifier is None:
            classifier = PoEClassifier(self.dims, self.num_classes, hidden)
        # held by reference, not as a submodule: registered once, as "classifier"
        self.__dict__["classifier"] = classifier
        self.encoders = nn.ModuleDict(
            {
                m: ModalityEncoder(n, self.num_classes, self.latent_dim, hidden)
                for m, n in self.dims.items()
            }
        )
        self.register_buffer("_dims", torch.tensor([float(n) for n in self.dims.values()]))
        self.register_buffer(
            "_log_sigma2", torch.tensor([2 * math.log(self.sigma[m]) for m in self.modalities])
        )
        shift = float(unlabelled_prior_shift)
        if shift < 0:
            raise ValueError(f"unlabelled_prior_shift: expected >= 0, found {shift}")
        if shift > 0:
            if label_counts is None:
                raise ValueError("label_counts: unlabelled_prior_shift > 0 needs them, found None")
            counts = torch.as_tensor(label_counts, dtype=torch.get_default_dtype())
            log_freq = class_log_prior_tensor((counts / counts.sum()).tolist(), self.num_classes)
        else:
            log_freq = torch.zeros(self.num_classes)
        self.register_buffer("unlabelled_logit_shift", shift * log_freq)

    @property
    def gaussian(self) -> bool:
        """True for the ν = ∞ (Gaussian) guide."""
        return math.isinf(self.nu)

    def encode(self, x, mask, y) -> dist.TorchDistribution:
        """q(z | x, y), batched over y's shape ([B] or [K, 1] under enumeration)."""
        # lists of M experts: the fusion broadcasts and stacks them
        loc, scale2 = map(list, zip(*(self.encoders[m](x[m], y) for m in self.modalities),
                                    strict=True))
        if self.gaussian:
            return gaussian_poe(loc, scale2, mask)
        obs_dim, log_det = observed_dimension(mask, self._dims, self._log_sigma2)
        tau0 = prior_expert_scale(self.nu, obs_dim, self.latent_dim, log_det)
        return student_t_poe(
            loc, scale2, mask, nu=self.nu, obs_dim=obs_dim, prior_scale=tau0
        )

    def guide(self, x: Mapping[str, torch.Tensor], mask: torch.Tensor | None = None,
              y: torch.Tensor | None = None):
        """The guide; same arguments as the model's."""
        pyro.module("guide", self)
        pyro.module("classifier", self.classifier)
        batch = next(iter(x.values())).shape[0]
        mask = full_mask(mask, batch, len(self.modalities), self._dims.device)
        with pyro.plate("data", batch):
            if y is None:
                logits = self.classifier(x, mask) + self.unlabelled_logit_shift
                y = pyro.sample(
                    "y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"}
                )
            with poutine.scale(scale=self.latent_weight):
                pyro.sample("z", self.encode(x, mask, y))

    def predict_proba(self, x, mask=None, *, logit_adjustment: float = 0.0,
                      label_counts: Sequence[int] | None = None) -> torch.Tensor:
        """q(y | x) for new data with any subset of modalities (``mask``), optionally with
        post-hoc logit adjustment: logits − τ log π̂ (Menon et al. 2021)."""
        shift = 0.0
        if logit_adjustment:
            if label_counts is None:
                raise ValueError("label_counts: logit_adjustment needs the labelled class counts")
            # on the buffers' device: a CPU vector cannot shift CUDA logits
            counts = torch.as_tensor(label_counts, dtype=self._dims.dtype,
                                     device=self._dims.device)
            shift = -logit_adjustment * torch.log(counts / counts.sum())
        return self.classifier.predict_proba(x, mask, log_prior_shift=shift)
