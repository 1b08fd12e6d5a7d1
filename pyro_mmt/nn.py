"""Network pieces shared by the models and guides, and the helpers for writing your own.

**The label under enumeration.** A network that takes the label y sees, in a labelled batch,
y of shape [B] beside an input of shape [B, ·]; under the guide's parallel enumeration of an
unlabelled batch, y has shape [K, 1] (all classes, to the left of the data plate) while the
input is still [B, ·] (or [K, B, ·] for a decoder, whose z depends on y). A network must
broadcast the two:

- :class:`LabelConditionedMLP` (the default networks) adds a class embedding to the first
  layer's pre-activation: the sum broadcasts to [K, B, ·], so one pass serves every class with
  no Python loop and no copy of the input per class;
- :func:`concat_label` gives the usual ``torch.cat([v, one_hot(y)], -1)`` with both broadcast
  first, and :class:`LabelConcat` wraps any network ``net(input)`` that expects that
  concatenation, so a user's decoder or encoder can be written the usual way.

:func:`register_module` is ``pyro.module`` for the model and the guide, skipped where it would
change nothing (a per-step cost; ``docs/performance.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.indep_messenger import IndepMessenger
from pyro.poutine.mask_messenger import MaskMessenger
from pyro.poutine.replay_messenger import ReplayMessenger
from pyro.poutine.runtime import _MODULE_NAMESPACE_DIVIDER, _PYRO_STACK
from pyro.poutine.scale_messenger import ScaleMessenger
from pyro.poutine.trace_messenger import TraceMessenger
from torch import nn

__all__ = [
    "LabelConditionedMLP",
    "LabelConcat",
    "apply_label_network",
    "concat_label",
    "mlp",
    "observed_dimension",
    "register_module",
]


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """A plain multilayer perceptron ``sizes[0] -> ... -> sizes[-1]`` (no final activation)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class LabelConditionedMLP(nn.Module):
    """f(v, y) = MLP(W v + E[y] + b): an MLP whose first layer also sees a class embedding.

    :param int in_dim: dimension of v.
    :param int num_classes: K (size of the embedding table).
    :param Sequence[int] hidden: hidden layer sizes (at least one).
    :param int out_dim: output dimension.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: Sequence[int], out_dim: int):
        super().__init__()
        hidden = list(hidden)
        if not hidden:
            raise ValueError("hidden: expected at least one hidden layer size, found none")
        self.input = nn.Linear(in_dim, hidden[0])
        self.label = nn.Embedding(num_classes, hidden[0])
        nn.init.normal_(self.label.weight, std=0.1)
        self.body = nn.Sequential(nn.SiLU(), mlp(hidden + [out_dim]))

    def forward(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """v: [..., B, in_dim]; y: int64 labels broadcastable to v's batch ([B] or [K, 1])."""
        return self.body(self.input(v) + self.label(y))


def concat_label(v: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``torch.cat([v, one_hot(y)], -1)`` with v's batch and y broadcast against each other.

    :param torch.Tensor v: input of shape [..., B, n] (e.g. z of shape [B, d] or [K, B, d]).
    :param torch.Tensor y: int64 labels of a shape broadcastable to v's batch shape: [B], or
        [K, 1] under the guide's parallel enumeration.
    :param int num_classes: K, the width of the one-hot code.
    :return: [..., B, n + K] with the broadcast batch shape (e.g. [K, B, n + K]).
    """
    batch = torch.broadcast_shapes(v.shape[:-1], y.shape)
    code = nn.functional.one_hot(y, num_classes).to(v.dtype)
    return torch.cat([v.expand(batch + v.shape[-1:]), code.expand(batch + code.shape[-1:])], -1)


class LabelConcat(nn.Module):
    """Wrap a network written for the input ``cat([v, one_hot(y)])`` into the ``(v, y)``
    interface of the decoders and encoders, broadcasting over the enumerated label.

    Example: a decoder of modality ``"top"`` (n = 32) from z (d = 16) and the label (K = 10)::

        decoder = LabelConcat(nn.Sequential(nn.Linear(16 + 10, 64), nn.ReLU(),
                                            nn.Linear(64, 32)), num_classes=10)

    :param nn.Module net: maps [..., n + K] to the output.
    :param int num_classes: K.
    """

    def __init__(self, net: nn.Module, num_classes: int):
        super().__init__()
        self.net = net
        self.num_classes = int(num_classes)

    def forward(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``net(concat_label(v, y, K))``."""
        return self.net(concat_label(v, y, self.num_classes))


def apply_label_network(net: nn.Module, name: str, v: torch.Tensor,
                        y: torch.Tensor) -> torch.Tensor:
    """``net(v, y)`` for a decoder or encoder ``name``; a network that fails on the
    enumerated label's shape (a ``cat([v, one_hot(y)])`` written for y of shape [B], given
    y of shape [K, 1]) gets an error that names :class:`LabelConcat`, the way out."""
    try:
        return net(v, y)
    except RuntimeError as error:
        if isinstance(net, LabelConcat) or y.shape == v.shape[:-1]:
            raise
        raise RuntimeError(
            f"{name}: the network failed on an input of shape {tuple(v.shape)} with labels of "
            f"shape {tuple(y.shape)} ({str(error).splitlines()[0]}). When the label of an "
            "unlabelled batch is enumerated, y has shape [K, 1] and must broadcast against the "
            "batch; a network written on torch.cat([v, one_hot(y)], -1) does not: wrap it as "
            "pyro_mmt.nn.LabelConcat(net, num_classes), which broadcasts the two (see "
            "examples/custom_model.py)") from error


def observed_dimension(
    mask: torch.Tensor, dims: torch.Tensor, log_sigma2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datum observed dimension n = Σ_j m_j n_j and log|Λ| = Σ_j m_j n_j log σ_j².

    :param torch.Tensor mask: bool [B, M], True where modality j is present.
    :param torch.Tensor dims: [M], the modality dimensions n_j (floating).
    :param torch.Tensor log_sigma2: [M], log σ_j².
    :return: (n, log|Λ|), each of shape [B].
    """
    present = mask.to(dims.dtype)
    return present @ dims, present @ (dims * log_sigma2)


# ------------------------------------------------------------- parameter registration
#: Handlers that do nothing with a ``param`` message that anything after the step reads.
_PARAM_NEUTRAL_HANDLERS = (ScaleMessenger, MaskMessenger, EnumMessenger, IndepMessenger)


def register_module(name: str, module: nn.Module) -> None:
    """``pyro.module(name, module)``, skipped where it would change nothing.

    Pyro's SVI learns which parameters to update from the ``param`` sites it traces during a
    step, so the model and the guide register their module at every step: 84 parameters sent
    one by one through Pyro's handlers, about 1 ms per call at the estimator's default sizes
    (``docs/performance.md``). The registration is skipped when every handler on Pyro's stack
    either ignores parameters (scale, mask, plates, enumeration, a replay of sample sites, a
    trace of sample sites only) or is a trace that already holds this module's parameters:

    - registered by the guide earlier in the same step (SVI's trace of parameters, under
      :class:`~pyro_mmt.infer.GammaPowerELBO`): the model does not register them again;
    - or *claimed* from the trace: :func:`~pyro_mmt.training.train`'s trace of parameters
      (``claim_module``) adds the very sites that the module's registration in an earlier step
      of the run recorded, after checking that they are still the module's trainable
      parameters, in order.

    Anywhere else (no such trace, any other handler: ``lift``, ``block``, a replay of
    parameters, a trace of the model alone) it registers as ``pyro.module`` does.

    :param str name: the name given to ``pyro.module``.
    :param nn.Module module: the module.
    """
    if not _registered_in_this_run(name, module):
        pyro.module(name, module)


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
