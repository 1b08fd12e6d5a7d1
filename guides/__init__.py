"""Inference models q(y, z | x), installed as ``pyro_mmt.guides``."""
