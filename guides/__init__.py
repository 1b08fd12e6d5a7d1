"""Inference models q(y, z | x), installed as ``pyro_mmt.guides``."""

from pyro_mmt.guides.poe_t import ModalityEncoder, PoEClassifier, PoETGuide

__all__ = ["PoEClassifier", "ModalityEncoder", "PoETGuide"]
