"""Network pieces shared by the models and guides.

Every network that takes the label y does so through a class embedding *added* to the first
layer's pre-activation. Under parallel enumeration y has shape [K, 1] while the other input has
shape [B, ·]; the sum broadcasts to [K, B, ·], so one forward pass serves every class with no
Python loop and no copy of the input per class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LabelConditionedMLP", "mlp", "observed_dimension"]


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
