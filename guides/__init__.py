"""Inference models q(y, z | x), installed as ``pyro_mmt.guides``.

This folder is installed as the package ``pyro_mmt.guides``; import it under that name only
(``from pyro_mmt.guides import PoEClassifier``), so that there is one copy of each class.
"""

if __name__ != "pyro_mmt.guides":  # e.g. `import guides` from the repository root
    raise ImportError(
        f"this folder is the package pyro_mmt.guides; import it as `pyro_mmt.guides`, not "
        f"as `{__name__}` (one name, one copy of each class)"
    )

from pyro_mmt.guides.poe_t import ModalityEncoder, PoEClassifier, PoETGuide  # noqa: E402

__all__ = ["PoEClassifier", "ModalityEncoder", "PoETGuide"]
