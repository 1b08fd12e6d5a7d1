"""Registering a module's parameters at every step at full speed, behind one switch.

Pyro's SVI learns which parameters to update from the ``param`` sites it traces during a step,
so a model and a guide register their modules at every step (``pyro.module``): at the
estimator's default sizes, 84 parameters sent one by one through Pyro's handlers, about 1 ms
per call (``docs/performance.md``). :func:`register_module` skips the registration where it
would change nothing. That needs Pyro's internals (its handler stack), so it lives here, with
its switch:

- :func:`use_fast_registration` turns the fast path on (the default) or off everywhere: off,
  :func:`register_module` is ``pyro.module``;
- :func:`fast_pyro_module` (entered by :func:`~pyro_mmt.training.train` around its steps)
  gives ``pyro.module`` itself the fast path, so a model written the idiomatic way, with
  ``pyro.module("name", net)``, trains as fast as the library's own. Both paths give the same
  loss and gradients (``tests/infer/test_module_registration.py``). A ``PyroModule``, which
  registers each parameter through ``pyro.param`` as it reads it, keeps Pyro's path: the
  default model converted to one trains about 1.08× slower per epoch than the library's own
  (``benchmarks/pyro_module_speed.py``, ``docs/performance.md``).
"""

from __future__ import annotations

import contextlib

import pyro
import pyro.primitives
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.indep_messenger import IndepMessenger
from pyro.poutine.mask_messenger import MaskMessenger
from pyro.poutine.replay_messenger import ReplayMessenger
from pyro.poutine.runtime import _MODULE_NAMESPACE_DIVIDER, _PYRO_STACK
from pyro.poutine.scale_messenger import ScaleMessenger
from pyro.poutine.trace_messenger import TraceMessenger
from torch import nn

__all__ = ["register_module", "use_fast_registration", "fast_pyro_module"]

#: Pyro's own ``pyro.module``, whatever ``pyro.module`` is bound to.
_PYRO_MODULE = pyro.primitives.module

#: The switch (:func:`use_fast_registration`).
_FAST = True

#: Handlers that do nothing with a ``param`` message that anything after the step reads.
_PARAM_NEUTRAL_HANDLERS = (ScaleMessenger, MaskMessenger, EnumMessenger, IndepMessenger)


def use_fast_registration(enabled: bool = True) -> bool:
    """Turn the fast path of :func:`register_module` (and of ``pyro.module`` inside
    :func:`fast_pyro_module`) on or off; returns the previous setting."""
    global _FAST
    previous, _FAST = _FAST, bool(enabled)
    return previous


@contextlib.contextmanager
def fast_pyro_module():
    """Within: ``pyro.module`` is :func:`register_module` (restored afterwards)."""
    previous = pyro.module
    pyro.module = register_module
    try:
        yield
    finally:
        pyro.module = previous


def register_module(name: str, module: nn.Module, update_module_params: bool = False):
    """``pyro.module(name, module)``, skipped where it would change nothing; returns
    ``module``.

    The registration is skipped when every handler on Pyro's stack either ignores parameters
    (scale, mask, plates, enumeration, a replay of sample sites, a trace of sample sites only:
    a ``TraceMessenger`` with ``records_params = False``) or is a trace that already holds
    this module's parameters:

    - registered by the guide earlier in the same step (SVI's trace of parameters, under
      :class:`~pyro_mmt.infer.GammaPowerELBO`): the model does not register them again;
    - or *claimed* from the trace: :func:`~pyro_mmt.training.train`'s trace of parameters
      (``claim_module``) adds the very sites that the module's registration in an earlier step
      of the run recorded, after checking that they are still the module's trainable
      parameters, in order.

    Anywhere else (no such trace, any other handler: ``lift``, ``block``, a replay of
    parameters, a trace of the model alone), with ``update_module_params`` or with the switch
    off, it registers as ``pyro.module`` does.

    :param str name: the name given to ``pyro.module``.
    :param nn.Module module: the module.
    """
    if _FAST and not update_module_params and _registered_in_this_run(name, module):
        return module
    return _PYRO_MODULE(name, module, update_module_params)


def _registered_in_this_run(name: str, module: nn.Module) -> bool:
    if not _PYRO_STACK:
        return False
    first = next((n for n, p in module.named_parameters() if p.requires_grad), None)
    if first is None:
        return False
    full_name = f"{name}{_MODULE_NAMESPACE_DIVIDER}{first}"
    recorded = False
    for handler in _PYRO_STACK:
        if isinstance(handler, TraceMessenger):
            if not getattr(handler, "records_params", True):
                continue  # a trace of sample sites only
            node = handler.trace.nodes.get(full_name)
            if node is None or node["type"] != "param":
                claim = getattr(handler, "claim_module", None)
                if claim is None or not claim(name, module):
                    return False
            recorded = True
        elif isinstance(handler, ReplayMessenger):
            if handler.params is not None:
                return False
        elif not isinstance(handler, _PARAM_NEUTRAL_HANDLERS):
            return False
    return recorded
