"""pyro-mmt: semi-supervised classification of class-imbalanced, multimodal, partially labelled
data with a Student-t deep generative model trained by the γ-power divergence, in Pyro.

Subpackages: ``pyro_mmt.data`` (data sets, splits, batches), ``pyro_mmt.models`` (p(x, y, z)),
``pyro_mmt.guides`` (q(y, z | x)), ``pyro_mmt.infer`` (``GammaPowerELBO``),
``pyro_mmt.distributions`` (the multivariate t and closed forms), ``pyro_mmt.training.svi`` (SVI),
``pyro_mmt.estimator`` (scikit-learn API), ``pyro_mmt.evaluation.metrics``, ``pyro_mmt.evaluation.diagnostics``
(ArviZ), ``pyro_mmt.experiments.benchmark``.
"""

__version__ = "0.1.0"

__all__ = ["MultimodalSemiSupervisedClassifier", "MultimodalM2", "ModelConfig", "GammaPowerELBO",
           "__version__"]

# imported on first use: models/ and guides/ import pyro_mmt's submodules themselves
_LAZY = {
    "MultimodalSemiSupervisedClassifier": "pyro_mmt.estimator",
    "MultimodalM2": "pyro_mmt.models",
    "ModelConfig": "pyro_mmt.config",
    "GammaPowerELBO": "pyro_mmt.infer",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pyro_mmt' has no attribute {name!r}")
