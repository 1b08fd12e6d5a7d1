r"""The default model's training loss written directly in PyTorch, without Pyro.

This is the reference of ``benchmarks/overhead.py``: the same networks (the decoders, the
encoders and the classifier of one :class:`~pyro_mmt.models.MultimodalM2`, used as they are), the
same per-datum loss as :class:`~pyro_mmt.infer.GammaPowerELBO` with ``gamma="auto"`` and its
closed forms, for the all-Student-t model of ``docs/derivation.md`` §2, and the same random
draws in the same order (one Gamma mixing
variable per datum and label, then the normal noise), so that at one seed it returns the same
number as the Pyro step (``tests/test_benchmarks_smoke.py`` checks it in float64).

Per datum, with q(y | x) enumerated (or the observed label), z ~ q(z | x, y) drawn once per
label, p the power-form joint and γ = −2/(ν + n + d) (``docs/derivation.md``):

.. math::

    L = -\frac{1}{\gamma}\Big[\sum_y q_y\big(e^{\gamma(\log p - \log\|p\|)} - 1
          + c_y (\mathbb{E}\|z\|^2 - \|z\|^2)/\nu\big)
        - \Big(\big(1 + \sum_y q_y (q_y^{\gamma} I_y - 1)\big)^{1/(1+\gamma)} - 1\Big)\Big]
        - \alpha\, n_\alpha\, w_y \log q(y \mid x)\,[\text{labelled}],

:math:`n_\alpha` the datum's observed dimension n (``alpha_unit="dimension"``, the default)
or 1 (``"datum"``), :math:`I_y = \int q(z|x,y)^{1+\gamma}` and
:math:`c_y = (\pi_y K/\|p\|)^\gamma`. The closed-form helpers of :mod:`pyro_mmt.distributions`
(plain tensor functions) are reused; densities, sampling, fusion and the sums over labels are
written out here.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from pyro_mmt.distributions import (
    log_t_power_integral,
    power_form_log_constant,
    power_form_log_norm,
    prior_expert_scale,
)

__all__ = ["plain_loss", "PlainStep"]

_LOG_PI = math.log(math.pi)


def _log_t_normaliser(df, dim):
    return torch.lgamma((df + dim) / 2) - torch.lgamma(df / 2) - dim / 2 * (df.log() + _LOG_PI)


def plain_loss(m2, x, mask, y=None, scale=1.0):
    """The GammaPowerELBO loss of ``m2.model``/``m2.guide`` (a
    :class:`~pyro_mmt.models.MultimodalM2` with finite, fixed ν and every modality Student-t)
    on one batch, in plain PyTorch.

    :param m2: the model, which holds its guide's networks.
    :param x: modality name -> [B, n_j].
    :param mask: bool [B, M].
    :param y: int64 [B] for a labelled batch, None for an unlabelled one.
    :param float scale: the data plate's scale (``num_data / batch_size`` in training).
    """
    cfg = m2.config
    if m2.gaussian or cfg.learn_nu or not all(f == "student_t" for f in cfg.likelihood.values()):
        raise ValueError("plain_loss: written for the Student-t model (finite, fixed nu, every "
                         "modality student_t)")
    nu, d = cfg.nu, cfg.latent_dim
    classifier = m2.classifier
    present = mask.to(m2._dims.dtype)
    obs_dim = present @ m2._dims
    log_det = present @ (m2._dims * m2._log_sigma2)
    gamma = -2.0 / (nu + obs_dim + d)

    # ---- guide: q(y | x) and q(z | x, y)
    if y is None:
        logits = classifier(x, mask) + m2.unlabelled_logit_shift()
        log_q_y = torch.log_softmax(logits, -1).T  # [K, B]
        labels = torch.arange(cfg.num_classes, device=mask.device).unsqueeze(-1)  # [K, 1]
    else:
        log_q_y = None
        labels = y
    precision_sum, weighted_loc = 0.0, 0.0
    for j, m in enumerate(m2.modalities):
        loc_j, raw = m2.encoders[m].net(x[m], labels).split(d, dim=-1)
        prec_j = (F.softplus(raw) + 1e-4).reciprocal() * present[:, j : j + 1]
        precision_sum = precision_sum + prec_j
        weighted_loc = weighted_loc + prec_j * loc_j
    tau0 = prior_expert_scale(nu, obs_dim, d, log_det)
    fused_var = (tau0.reciprocal().unsqueeze(-1) + precision_sum).reciprocal()
    q_loc = fused_var * weighted_loc
    q_df = nu + obs_dim  # [B]
    q_scale = ((nu / q_df).unsqueeze(-1) * fused_var).sqrt()
    batch_shape = q_loc.shape[:-1]
    q_df = q_df.expand(batch_shape)
    w = torch.distributions.Gamma(q_df / 2, q_df / 2, validate_args=False).rsample()
    eps = torch.randn(q_loc.shape, dtype=q_loc.dtype, device=q_loc.device)
    z = q_loc + q_scale * eps * w.rsqrt().unsqueeze(-1)
    # log q(z | x, y) itself is not needed: its power integral has a closed form
    log_scale_sum = q_scale.log().sum(-1)

    # ---- model: log p(x, y, z), the chain of decoder sites
    log_prior_y = m2.class_log_prior[labels]  # [K, 1] or [B]
    z_sq = z.pow(2).sum(-1)
    nu_t = z_sq.new_tensor(nu)
    log_p = log_prior_y + _log_t_normaliser(nu_t, d) - 0.5 * (nu + d) * torch.log1p(z_sq / nu)
    quad = z_sq
    dof = torch.full_like(obs_dim, nu + d)
    for j, m in enumerate(m2.modalities):
        n_j = cfg.dims[m]
        loc = m2.decoders[m](z, labels)
        sigma2 = cfg.sigma[m] ** 2
        resid = (x[m] - loc).pow(2).sum(-1) / sigma2
        s2 = (nu + quad) / dof  # the decoder's scale² (in σ² units)
        lp = (
            _log_t_normaliser(dof, n_j)
            - n_j / 2 * (s2.log() + math.log(sigma2))
            - 0.5 * (dof + n_j) * torch.log1p(resid / (nu + quad))
        )
        on = mask[:, j]
        log_p = log_p + torch.where(on, lp, torch.zeros_like(lp))
        quad = quad + torch.where(on, resid, torch.zeros_like(resid))
        dof = dof + present[:, j] * n_j

    # ---- the γ-power terms
    log_norm = power_form_log_norm(nu, obs_dim, d, log_det, gamma, m2.class_log_prior)
    log_k = power_form_log_constant(nu, obs_dim, d, log_det)
    cross = torch.expm1(gamma * (log_p - log_norm))
    mean_sq = q_loc.pow(2).sum(-1) + q_df / (q_df - 2) * q_scale.pow(2).sum(-1)
    coef = torch.exp(gamma * (log_prior_y + log_k - log_norm))
    cross = cross + coef * (mean_sq - z_sq) / nu
    log_int = log_t_power_integral(q_df, d, 2 * log_scale_sum, gamma)
    if log_q_y is None:
        cross_m1 = cross
        inner_m1 = torch.expm1(log_int)
        aux = 0.0
        if cfg.alpha > 0:
            logits = classifier(x, mask) + cfg.logit_adjustment * m2.label_log_freq
            log_q = torch.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
            aux = cfg.alpha * m2.class_weights[y] * log_q
            if cfg.alpha_unit == "dimension":  # α per observed dimension of the datum
                aux = aux * obs_dim
    else:
        q_y = log_q_y.exp()
        cross_m1 = (q_y * cross).sum(0)
        inner_m1 = (q_y * torch.expm1(gamma * log_q_y + log_int)).sum(0)
        aux = 0.0
    entropy_m1 = torch.expm1(torch.log1p(inner_m1) / (1.0 + gamma))
    per_datum = -(cross_m1 - entropy_m1) / gamma - aux
    return (per_datum * scale).sum()


class PlainStep:
    """One training step in plain PyTorch: :func:`plain_loss`, backward, clamp the gradients to
    ±``clip_value`` (when given), ``optimizer.step()``, gradients set to None. ``optimizer`` is a ``torch.optim`` optimiser over the networks'
    parameters (``torch.optim.Adam(params, foreach=True)`` in the benchmarks)."""

    def __init__(self, m2, optimizer: torch.optim.Optimizer):
        self.m2, self.optimizer = m2, optimizer

    def __call__(self, x, mask, y=None, scale=1.0, clip_value=None) -> float:
        loss = plain_loss(self.m2, x, mask, y, scale)
        loss.backward()
        if clip_value is not None:
            for group in self.optimizer.param_groups:
                torch.nn.utils.clip_grad_value_(group["params"], clip_value, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()
