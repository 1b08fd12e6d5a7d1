"""Argument checks shared by the models and guides: each raises a ValueError that names the
argument, what was found and what was expected."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = [
    "per_modality",
    "check_model_config",
    "class_log_prior_tensor",
    "label_counts_tensor",
    "class_weight_tensor",
    "full_mask",
]

def per_modality(value, modalities, name) -> dict[str, float]:
    """One positive float per modality from a scalar or a mapping."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(modalities))
        missing = [m for m in modalities if m not in value]
        if unknown or missing:
            raise ValueError(
                f"{name}: expected one value per modality {list(modalities)}, found unknown "
                f"{unknown} and missing {missing}"
            )
        out = {m: float(value[m]) for m in modalities}
    else:
        out = {m: float(value) for m in modalities}
    bad = {m: v for m, v in out.items() if not (v > 0 and math.isfinite(v))}
    if bad:
        raise ValueError(f"{name}: expected finite positive values, found {bad}")
    return out


def check_model_config(modalities, dims, num_classes, latent_dim, nu):
    """Checks of the sizes shared by model and guide."""
    if not modalities:
        raise ValueError("dims: expected at least one modality, found none")
    empty = [m for m, n in dims.items() if n < 1]
    if empty:
        raise ValueError(f"dims: expected every modality to have n_j >= 1, found empty {empty}")
    if num_classes < 2:
        raise ValueError(f"num_classes: expected >= 2, found {num_classes}")
    if latent_dim < 1:
        raise ValueError(f"latent_dim: expected >= 1, found {latent_dim}")
    if not (nu > 2):
        raise ValueError(
            f"nu: expected nu > 2 (the power norm and E‖z‖² need it) or inf, found {nu}"
        )


def class_log_prior_tensor(class_prior, num_classes) -> torch.Tensor:
    """log π as a tensor; uniform when ``class_prior`` is None."""
    if class_prior is None:
        return torch.full((num_classes,), -math.log(num_classes))
    p = torch.as_tensor(class_prior, dtype=torch.float64)
    if p.shape != (num_classes,) or not torch.isfinite(p).all() or (p <= 0).any():
        raise ValueError(
            f"class_prior: expected {num_classes} positive probabilities, found {p.tolist()}"
        )
    if abs(float(p.sum()) - 1.0) > 1e-6:
        raise ValueError(f"class_prior: expected probabilities summing to 1, found sum {float(p.sum())}")
    return torch.log(p).to(torch.get_default_dtype())


def label_counts_tensor(label_counts, num_classes) -> torch.Tensor:
    """Labelled class counts; every class must have at least one labelled sample."""
    c = torch.as_tensor(label_counts, dtype=torch.get_default_dtype())
    if c.shape != (num_classes,):
        raise ValueError(f"label_counts: expected shape ({num_classes},), found {tuple(c.shape)}")
    empty = torch.nonzero(c <= 0).flatten().tolist()
    if empty:
        raise ValueError(
            f"label_counts: every class needs a labelled sample, found none for classes {empty}"
        )
    return c


def class_weight_tensor(class_weight, counts, num_classes) -> torch.Tensor:
    """Weights w_y of the classification term: ones, "balanced" N_L/(K n_y), or given."""
    if class_weight is None:
        return torch.ones(num_classes)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight: expected None, 'balanced' or weights, found {class_weight!r}")
        if counts is None:
            raise ValueError("label_counts: class_weight='balanced' needs the labelled class counts")
        return counts.sum() / (num_classes * counts)
    w = torch.as_tensor(class_weight, dtype=torch.get_default_dtype())
    if w.shape != (num_classes,) or (w < 0).any() or not torch.isfinite(w).all():
        raise ValueError(f"class_weight: expected {num_classes} finite weights >= 0, found {w.tolist()}")
    return w


def full_mask(mask, batch, num_modalities, device) -> torch.Tensor:
    """The modality mask, all True when None; checked for shape and dtype."""
    if mask is None:
        return torch.ones(batch, num_modalities, dtype=torch.bool, device=device)
    if mask.shape != (batch, num_modalities) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask: expected a bool tensor of shape ({batch}, {num_modalities}), found "
            f"{mask.dtype} {tuple(mask.shape)}"
        )
    return mask
