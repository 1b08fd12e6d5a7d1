"""Objectives: the γ-power divergence ELBO and how a model declares its power norm; the fast
registration of modules' parameters (``pyro.module``) behind one switch."""

from pyro_mmt.infer.gamma_power_elbo import GammaPowerELBO
from pyro_mmt.infer.module_registration import (
    fast_pyro_module,
    register_module,
    use_fast_registration,
)
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
    "register_module",
    "use_fast_registration",
    "fast_pyro_module",
]
