"""The training steps the benchmarks time, built the way the training loop builds them.

- :func:`build` makes the default model, which holds its guide (``build_model``: Student-t,
  ν = 5, ``gamma="auto"``, α = 40) at the benchmark sizes (hidden 256, d = 32 unless given);
- :func:`random_batch` a batch of standard-normal data with the given modality sizes, every
  modality present, labelled or not;
- :func:`pyro_step` one SVI step exactly as :func:`pyro_mmt.training.svi.train` runs it (its
  ``_checked_step``: ``poutine.scale(num_data / batch_size)`` around ``svi.step``);
- :func:`plain_step` the same step in plain PyTorch (:mod:`benchmarks.plain_step`).

Every step clamps gradients to ±10 (what ``pyro.optim.ClippedAdam``, the loop's default, does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pyro
import torch
from pyro.infer import SVI, TraceEnum_ELBO

from benchmarks.plain_step import PlainStep
from pyro_mmt.data import Batch
from pyro_mmt.estimator import build_model, make_objective
from pyro_mmt.infer import GammaPowerELBO
from pyro_mmt.training.optim import MultiTensorAdam
from pyro_mmt.training.svi import _checked_step

__all__ = [
    "DIMS",
    "CLIP",
    "build",
    "random_batch",
    "pyro_step",
    "plain_step",
    "step_flops",
]

#: The modality sizes of the benchmarks: UCI mfeat's six views and the two image halves of
#: (Fashion-)MNIST.
DIMS = {
    "mfeat": {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6},
    "halves": {"top": 392, "bottom": 392},
}

#: Gradient clamp of every benchmarked step (ClippedAdam's default ``clip_norm``).
CLIP = 10.0

#: The number of rows the scale pretends each group has (num_data in the training loop).
NUM_DATA = 10_000


def build(dims: Mapping[str, int], num_classes: int, *, hidden=(256,), latent_dim=32,
          seed=0, device="cpu"):
    """The default :class:`~pyro_mmt.models.MultimodalM2` (α = 40, ν = 5; it holds the model,
    the guide and the classifier) at the given sizes, on ``device``."""
    pyro.set_rng_seed(seed)
    m2 = build_model(dims, num_classes, hidden=tuple(hidden), latent_dim=latent_dim, alpha=40.0,
                     alpha_unit="datum", logit_adjustment=0.0, unlabelled_prior_shift=0.0)
    return m2.to(device)


def modules_of(m2) -> dict:
    """The modules the training loop checks and checkpoints: the one MultimodalM2."""
    return {"model": m2}


def random_batch(dims: Mapping[str, int], batch_size: int, num_classes: int, *,
                 labelled: bool, seed=0, device="cpu") -> Batch:
    """Standard-normal data, all modalities present; labels drawn uniformly when labelled."""
    gen = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(batch_size, n, generator=gen).to(device) for m, n in dims.items()}
    mask = torch.ones(batch_size, len(dims), dtype=torch.bool, device=device)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device) if labelled else None
    return Batch(x=x, mask=mask, y=y, index=torch.arange(batch_size))


def pyro_step(m2, *, optimizer: str = "multi_tensor", objective: str = "gamma_power",
              gamma: float | str = "auto", validation: bool = True) -> Callable[[Batch], float]:
    """A function ``step(batch) -> loss`` running one SVI step as the training loop does.

    :param optimizer: ``"multi_tensor"`` (:class:`~pyro_mmt.training.optim.MultiTensorAdam` with
        ``clip_value``) or ``"clipped_adam"`` (``pyro.optim.ClippedAdam``, one Adam per tensor).
    :param objective: ``"gamma_power"`` (GammaPowerELBO at ``gamma``) or ``"trace_enum"``
        (``TraceEnum_ELBO``).
    :param bool validation: Pyro's validation (argument and support checks) during the step.
    """
    if optimizer == "multi_tensor":
        optim = MultiTensorAdam({"lr": 1e-3, "clip_value": CLIP})
    elif optimizer == "clipped_adam":
        optim = pyro.optim.ClippedAdam({"lr": 1e-3, "clip_norm": CLIP})
    else:
        raise ValueError(f"optimizer: expected 'multi_tensor' or 'clipped_adam', found {optimizer!r}")
    if objective == "gamma_power":
        loss = (make_objective("gamma_power") if gamma == "auto"
                else GammaPowerELBO(gamma, max_plate_nesting=1))
    elif objective == "trace_enum":
        loss = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    else:
        raise ValueError(f"objective: expected 'gamma_power' or 'trace_enum', found {objective!r}")
    svi = SVI(m2.model, m2.guide, optim, loss=loss)
    modules = modules_of(m2)

    def step(batch: Batch) -> float:
        with pyro.validation_enabled(validation):
            return _checked_step(svi, batch, NUM_DATA / batch.size, modules, 0, 0, None)

    return step


def plain_step(m2) -> Callable[[Batch], float]:
    """The same step in plain PyTorch: one ``torch.optim.Adam(fused=True)`` over the same
    parameters (the update MultiTensorAdam makes), gradients clamped to ±10
    (``clip_grad_value_(foreach=True)``)."""
    adam = torch.optim.Adam(list(m2.parameters()), lr=1e-3, fused=True)
    step = PlainStep(m2, adam)

    def clipped_step(batch: Batch) -> float:
        return step(batch.x, batch.mask, batch.y, NUM_DATA / batch.size, clip_value=CLIP)

    return clipped_step


def step_flops(m2, batch: Batch) -> int:
    """Floating-point operations of one plain step's forward and backward passes (matrix
    products only, as ``torch.utils.flop_counter`` counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.plain_step import plain_loss

    with FlopCounterMode(display=False) as counter:
        loss = plain_loss(m2, batch.x, batch.mask, batch.y, 1.0)
        loss.backward()
    for p in m2.parameters():
        p.grad = None
    return int(counter.get_total_flops())
