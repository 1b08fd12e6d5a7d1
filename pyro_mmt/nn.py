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
change nothing (a per-step cost; ``docs/performance.md``); it lives in
:mod:`pyro_mmt.infer.module_registration`, with the switch that turns the fast path on and off,
and :func:`~pyro_mmt.training.train` gives ``pyro.module`` itself the same fast path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_mmt.infer.module_registration import register_module

__all__ = [
    "LabelConditionedMLP",
    "LabelConcat",
    "apply_label_network",
    "concat_label",
    "mlp",
    "observed_cell_counts",
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
    mask: torch.Tensor, dims: torch.Tensor, log_sigma2: torch.Tensor,
    counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datum observed dimension n = Σ_j m_j n_j and log|Λ| = Σ_j m_j n_j log σ_j².

    :param torch.Tensor mask: bool [B, M], True where modality j is present.
    :param torch.Tensor dims: [M], the modality dimensions n_j (floating).
    :param torch.Tensor log_sigma2: [M], log σ_j².
    :param counts: optional [B, M], the observed cells of modality j in each datum (missing
        cells, :func:`observed_cell_counts`), in place of n_j.
    :return: (n, log|Λ|), each of shape [B].
    """
    present = mask.to(dims.dtype)
    if counts is not None:
        present = present * counts.to(dims.dtype)
        return present.sum(-1), present @ log_sigma2
    return present @ dims, present @ (dims * log_sigma2)


def observed_cell_counts(cells, modalities, dims: torch.Tensor, batch: int) -> torch.Tensor | None:
    """[B, M] observed cells of each modality per datum (n_j where ``cells`` has no entry for
    modality j), or None when ``cells`` is empty.

    :param cells: modality -> bool [B, n_j], True where a cell is observed.
    """
    if not cells:
        return None
    return torch.stack([
        cells[m].to(dims.dtype).sum(-1) if m in cells else dims[j].expand(batch)
        for j, m in enumerate(modalities)], -1)
