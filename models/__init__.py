"""Generative models p(x, y, z), installed as ``pyro_mmt.models``."""
