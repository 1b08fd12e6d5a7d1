"""Generative models p(x, y, z), installed as ``pyro_mmt.models``.

This folder is installed as the package ``pyro_mmt.models``; import it under that name only
(``from pyro_mmt.models import MultimodalM2``), so that there is one copy of each class.
"""

if __name__ != "pyro_mmt.models":  # e.g. `import models` from the repository root
    raise ImportError(
        f"this folder is the package pyro_mmt.models; import it as `pyro_mmt.models`, not "
        f"as `{__name__}` (one name, one copy of each class)"
    )

from pyro_mmt.models.multimodal_m2 import MultimodalM2  # noqa: E402

__all__ = ["MultimodalM2"]
