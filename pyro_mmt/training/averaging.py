"""Averaging the parameters over the last epochs of training (stochastic weight averaging).

One fit of a semi-supervised model depends on its random initialisation and on the order of
its mini-batches: pseudo-labels that go one way early are reinforced later. The average of
the parameters over the end-of-epoch states of the last part of training (Izmailov et al.,
"Averaging Weights Leads to Wider Optima and Better Generalization", UAI 2018) smooths the last
steps' noise at the cost of one copy of the parameters. :class:`ParameterAverage` is an
``nn.Module`` whose buffers hold the running mean, so a checkpoint of the training loop keeps
it and a resumed fit averages exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ParameterAverage"]


class ParameterAverage(nn.Module):
    """The running mean of a module's parameters over the epochs ``start + 1 .. epochs``.

    Call :meth:`update` with the module at the end of every epoch (e.g. from
    ``train(on_epoch_end=...)``) and :meth:`apply` once training is over: the module's
    parameters are then replaced by their mean (buffers, such as a learned class prior, keep
    their last value). It holds the mean only, not the module.

    :param nn.Module module: the module whose parameters will be averaged (for their names and
        shapes).
    :param int start: the number of epochs before averaging begins (0: every epoch).
    """

    def __init__(self, module: nn.Module, start: int):
        super().__init__()
        if isinstance(start, bool) or int(start) != start or start < 0:
            raise ValueError(f"start: expected an integer >= 0, found {start!r}")
        self.start = int(start)
        self.names = [name for name, _ in module.named_parameters()]
        for i, (_, param) in enumerate(module.named_parameters()):
            self.register_buffer(f"mean_{i}", torch.zeros_like(param.detach()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def _parameters_of(self, module: nn.Module) -> list[torch.Tensor]:
        named = list(module.named_parameters())
        if [name for name, _ in named] != self.names:
            raise ValueError("module: expected the module this average was made for (the same "
                             "parameter names), found another")
        return [param for _, param in named]

    @torch.no_grad()
    def update(self, module: nn.Module, epoch: int) -> None:
        """Add ``module``'s parameters after epoch ``epoch`` (counted from 1) to the mean, if
        ``epoch > start``."""
        if epoch <= self.start:
            return
        self.count += 1
        weight = 1.0 / float(self.count)
        for i, param in enumerate(self._parameters_of(module)):
            mean = getattr(self, f"mean_{i}")
            mean.add_(param.detach() - mean, alpha=weight)

    @torch.no_grad()
    def apply(self, module: nn.Module) -> int:
        """Copy the mean into ``module``'s parameters (nothing if no epoch was averaged);
        returns the number of epochs averaged."""
        if int(self.count) > 0:
            for i, param in enumerate(self._parameters_of(module)):
                param.copy_(getattr(self, f"mean_{i}"))
        return int(self.count)
