"""Generative models p(x, y, z), installed as ``pyro_mmt.models``."""

from pyro_mmt.models.multimodal_t import MultimodalTModel

__all__ = ["MultimodalTModel"]
