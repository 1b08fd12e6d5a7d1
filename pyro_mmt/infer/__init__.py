"""Objectives: the γ-power divergence ELBO and how a model declares its power norm."""

from pyro_mmt.infer.gamma_power_elbo import GammaPowerELBO
from pyro_mmt.infer.power_norm import (
    GaussianPowerNorm,
    MonteCarloPowerNorm,
    PowerNorm,
    StudentTPowerNorm,
    declare_power_norm,
    find_power_norm,
)

__all__ = [
    "GammaPowerELBO",
    "PowerNorm",
    "StudentTPowerNorm",
    "GaussianPowerNorm",
    "MonteCarloPowerNorm",
    "declare_power_norm",
    "find_power_norm",
]
