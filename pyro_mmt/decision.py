"""Where the prediction puts the boundary between head and tail classes: the decision shift.

The classifier q(y | x) is trained class-balanced (logit adjustment), and predicts with the
logits f(x) − δ log r, where r, the *reference shares* (``decision_reference``), is one of

* ``"predicted"`` (the default): the classifier's own mean prediction on the unlabelled
  training rows, r_y = (Σ_n q(y | x_n) + 1) / (N + K) (:func:`reference_log_shares`: the
  mean with one pseudo-count per class, so that a handful of rows cannot push the shift far;
  without unlabelled rows r is uniform and the shift does nothing). A class the fitted model
  predicts often for those rows is penalised, one it rarely predicts is favoured: the shift
  corrects the model's own lean, whatever the objective, the number of initialisations or
  the data made it. With δ = 1 this is the prior correction q(y | x) / r_y, the distribution
  alignment of semi-supervised learning aimed at equal shares (``docs/derivation.md`` §13);
  δ > 1 corrects further.
* ``"labelled"``: the labelled class frequencies π̂ (the post-hoc logit adjustment of Menon
  et al., 2021). The same δ moves a soft q(y | x) further than a sharp one, so its best δ
  depends on the model.

δ = 0 is the classifier as trained; δ > 0 moves the boundary towards the classes with the
smaller reference share, δ < 0 towards the larger. The default, δ = 1.5 with the predicted
shares, was chosen on the development seeds (``docs/imbalance.md``); it is the best δ of that
rule, or level with the best, for one model and for three.

``decision_shift="auto"`` instead chooses δ after training from the model's own predictions
on the unlabelled training rows, which follow the data's long tail: δ is where the classes the
model predicts for those rows are spread most like π^λ (normalised; π the class proportions of
the unlabelled rows: the learned π of ``class_prior="learned"``, else π̂), λ =
``decision_shares``, the shift taken along the reference. λ = 1 aims at the rows' own class
proportions, λ = 0 at equal shares. No label of an unlabelled row is used. On the development
seeds, measured along π̂, it did not beat a fixed δ (it chose large negative shifts on PBC and
very large ones on mfeat), so it is an option, not the default.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["DECISION_REFERENCES", "DECISION_SHIFT_GRID", "REFERENCE_PSEUDO_COUNT",
           "choose_decision_shift", "predicted_shares", "reference_log_shares"]

#: The reference shares r of the decision shift f(x) − δ log r (module docstring).
DECISION_REFERENCES = ("predicted", "labelled")

#: The pseudo-count per class of the predicted reference shares (:func:`reference_log_shares`).
REFERENCE_PSEUDO_COUNT = 1.0

#: The shifts ``choose_decision_shift`` considers: −3 to 5 in steps of 0.05.
DECISION_SHIFT_GRID = tuple(round(-3.0 + 0.05 * i, 2) for i in range(161))

_CHUNK = 16  # grid points scored at once (memory: chunk × rows × classes)


def reference_log_shares(log_proba, *,
                         pseudo_count: float = REFERENCE_PSEUDO_COUNT) -> torch.Tensor:
    """log r_y, the predicted reference shares: the classifier's predictions over the rows of
    ``log_proba`` [N, K] (normalised log-probabilities, e.g. ``log_softmax`` of its logits, or
    the log of the averaged q̄ of several initialisations) summed with ``pseudo_count`` c per
    class, r_y = (Σ_n q(y | x_n) + c) / (N + cK): the posterior mean of the shares under a
    Dirichlet(c) prior, so that a few rows cannot move the shift far and no rows leave r
    uniform (the shift then does nothing). In float64, and finite for finite inputs however
    small a class's share (log-sum-exp, not the log of a sum).

    :raises ValueError: not [N, K], a value that is NaN or +inf, a negative or non-finite
        ``pseudo_count``, or N = 0 with c = 0 (nothing to average).
    """
    log_proba = torch.as_tensor(log_proba, dtype=torch.float64)
    if log_proba.ndim != 2 or log_proba.shape[1] == 0:
        raise ValueError(f"log_proba: expected log-probabilities of shape [N, K >= 1], found "
                         f"shape {tuple(log_proba.shape)}")
    if torch.isnan(log_proba).any() or (log_proba == math.inf).any():
        raise ValueError("log_proba: expected log-probabilities (−inf allowed), found a NaN or "
                         "+inf")
    if (isinstance(pseudo_count, bool) or not isinstance(pseudo_count, numbers.Real)
            or not math.isfinite(pseudo_count) or pseudo_count < 0):
        raise ValueError(f"pseudo_count: expected a finite number >= 0, found {pseudo_count!r}")
    rows, num_classes = log_proba.shape
    if rows == 0 and pseudo_count == 0:
        raise ValueError("log_proba: expected at least one row when pseudo_count is 0, found "
                         "shape (0, K)")
    log_sum = torch.logsumexp(log_proba, 0)  # −inf for N = 0
    if pseudo_count > 0:
        log_sum = torch.logaddexp(log_sum, torch.tensor(math.log(pseudo_count),
                                                        dtype=torch.float64))
    return log_sum - math.log(rows + pseudo_count * num_classes)


def predicted_shares(logits: torch.Tensor, log_freq: torch.Tensor,
                     shifts: torch.Tensor) -> torch.Tensor:
    """The share of rows predicted as each class, argmax f(x) − δ log r, for every δ of
    ``shifts`` [G] (``log_freq``: log r, the direction, π̂ or the predicted reference shares):
    a tensor [G, K] whose rows sum to 1."""
    logits = torch.as_tensor(logits)
    num_classes = logits.shape[-1]
    out = []
    for start in range(0, len(shifts), _CHUNK):
        chunk = shifts[start:start + _CHUNK].to(logits)
        pred = (logits[None] - chunk[:, None, None] * log_freq.to(logits)).argmax(-1)  # [g, N]
        counts = torch.zeros(len(chunk), num_classes, dtype=logits.dtype, device=logits.device)
        counts.scatter_add_(1, pred, torch.ones_like(pred, dtype=logits.dtype))
        out.append(counts / logits.shape[0])
    return torch.cat(out)


def choose_decision_shift(logits, log_freq, *, target_log_prior=None, shares: float = 0.5,
                          grid=DECISION_SHIFT_GRID) -> float:
    """The decision shift δ of ``decision_shift="auto"`` (module docstring).

    :param logits: the classifier's logits f(x) on the unlabelled training rows, [N, K].
    :param log_freq: log r [K], the direction of the shift (the reference shares: the labelled
        class frequencies π̂, or the predicted shares of :func:`reference_log_shares`).
    :param target_log_prior: log π [K] of the unlabelled rows (default ``log_freq``; the
        estimator passes π̂, or the learned π).
    :param float shares: λ in [0, 1]: the predicted class shares are aimed at π^λ, normalised.
    :param grid: the shifts considered.
    :returns: the δ of ``grid`` whose predicted class shares are nearest the target in total
        variation; among equally near ones, the one nearest 0 (the classifier as trained).
        With no rows (N = 0) there is nothing to aim: 0.
    :raises ValueError: a non-finite logit, ``shares`` outside [0, 1], shapes that disagree.
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)
    log_freq = torch.as_tensor(log_freq, dtype=torch.float64)
    if logits.ndim != 2 or log_freq.shape != (logits.shape[1],):
        raise ValueError(f"logits, log_freq: expected shapes [N, K] and [K], found "
                         f"{tuple(logits.shape)} and {tuple(log_freq.shape)}")
    if (isinstance(shares, bool) or not isinstance(shares, numbers.Real)
            or not 0.0 <= shares <= 1.0):
        raise ValueError(f"shares: expected a number in [0, 1], found {shares!r}")
    if not torch.isfinite(log_freq).all():
        raise ValueError(f"log_freq: expected finite log-frequencies, found "
                         f"{log_freq.tolist()}")
    target = log_freq if target_log_prior is None else torch.as_tensor(
        target_log_prior, dtype=torch.float64)
    if (target.shape != log_freq.shape or torch.isnan(target).any()
            or (target == math.inf).any()):
        raise ValueError(f"target_log_prior: expected {log_freq.shape[0]} log-probabilities "
                         f"(−inf allowed), found {target.tolist()}")
    if logits.shape[0] == 0:
        return 0.0
    if not torch.isfinite(logits).all():
        raise ValueError("logits: expected finite values, found a NaN or an infinity")
    # π^λ normalised; λ = 0 is equal shares (also where π has a zero)
    target = (torch.full_like(target, 1.0 / target.shape[0]) if shares == 0
              else torch.softmax(float(shares) * target, -1))
    shifts = torch.tensor(grid, dtype=torch.float64)
    distance = 0.5 * (predicted_shares(logits, log_freq, shifts) - target).abs().sum(-1)
    nearest = distance <= distance.min() + 1e-12
    candidates = shifts[nearest]
    return float(candidates[candidates.abs().argmin()])
