"""An Adam for Pyro's SVI that updates all parameters with one multi-tensor optimiser.

:class:`pyro.optim.PyroOptim` (behind ``pyro.optim.Adam`` and ``pyro.optim.ClippedAdam``) keeps
one ``torch.optim`` optimiser *per parameter tensor* and steps them one by one in Python: with
the ~80 tensors of a multimodal model that loop costs several milliseconds per step, as much as
the arithmetic of a small batch (``docs/performance.md``). :class:`MultiTensorAdam` holds ONE
:class:`torch.optim.Adam` over every parameter SVI has seen, so an update is one fused kernel
(or a handful of ``foreach`` kernels) over all tensors at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pyro
import torch
from pyro.optim import PyroOptim

__all__ = ["MultiTensorAdam"]

#: Version tag of the state that :meth:`MultiTensorAdam.get_state` returns.
STATE_FORMAT = "pyro_mmt.training.optim.MultiTensorAdam/1"

_ADAM_KEYS = {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "fused"}


class MultiTensorAdam(PyroOptim):
    r"""Adam over all of SVI's parameters in one :class:`torch.optim.Adam` (fused or
    ``foreach`` multi-tensor updates), usable wherever Pyro takes an optimiser: ``SVI(model, guide,
    MultiTensorAdam({"lr": 1e-3}), loss)``.

    It behaves like ``pyro.optim.Adam(optim_args)``: each SVI step updates exactly the
    parameters that step touched, and parameters that appear later (a module first used in a
    later step) join the optimiser when they do. Options beyond ``torch.optim.Adam``'s:

    - ``clip_value``: clamp each gradient element to [−c, c] before the update, as
      :class:`pyro.optim.ClippedAdam` does with its (misnamed) ``clip_norm``;
    - ``lrd``: multiply the learning rate by ``lrd`` before every step (ClippedAdam's decay).

    With ``clip_value`` and ``lrd`` it matches ``ClippedAdam`` except for where ε enters the
    denominator (torch's Adam adds ε to :math:`\sqrt{\hat v}`, ClippedAdam to :math:`\sqrt{v}`),
    a difference of order ε.

    After each step the gradients are set to ``None`` (``zero_grad(set_to_none=True)``), so the
    next backward pass writes them afresh instead of adding into zeros.

    The state (:meth:`get_state`) is keyed by Pyro parameter name and holds only tensors,
    numbers and strings, so checkpoints load with ``torch.load(weights_only=True)``;
    :meth:`set_state` before the first step restores it (states of parameters not yet seen wait
    until SVI reports them, as in :class:`~pyro.optim.PyroOptim`).

    :param dict optim_args: ``lr`` (default 1e-3), ``betas``, ``eps``, ``weight_decay``,
        ``amsgrad``, ``foreach`` or ``fused`` as in :class:`torch.optim.Adam` (default: the
        fused kernel on CPU and CUDA, which is 2–4x faster than ``foreach`` on the CPU for
        these models, else ``foreach``), plus ``clip_value`` (default None) and ``lrd``
        (default 1.0).
    """

    def __init__(self, optim_args: dict | None = None):
        args = dict(optim_args or {})
        unknown = sorted(set(args) - _ADAM_KEYS - {"clip_value", "lrd"})
        if unknown:
            raise ValueError(
                f"optim_args: unknown keys {unknown}; expected some of "
                f"{sorted(_ADAM_KEYS | {'clip_value', 'lrd'})}"
            )
        clip_value = args.pop("clip_value", None)
        if clip_value is not None and not (float(clip_value) > 0 and math.isfinite(clip_value)):
            raise ValueError(f"clip_value: expected a finite value > 0 or None, found {clip_value}")
        lrd = float(args.pop("lrd", 1.0))
        if not lrd > 0:
            raise ValueError(f"lrd: expected a learning-rate decay > 0, found {lrd}")
        args.setdefault("lr", 1e-3)
        if "fused" not in args and "foreach" not in args:
            args["fused"] = None  # decided when the parameters are known (see _adam_args)
        super().__init__(torch.optim.Adam, args)
        self.clip_value = None if clip_value is None else float(clip_value)
        self.lrd = lrd
        self.optimizer: torch.optim.Adam | None = None
        self._names: dict[torch.Tensor, str] = {}  # parameter -> Pyro name, in group order
        self._waiting: dict[str, dict] = {}  # states from set_state for parameters not seen yet
        self._lr: float | None = None  # a learning rate restored before the optimiser exists

    # ------------------------------------------------------------------------------ steps
    def __call__(self, params: Iterable[torch.Tensor], *args, **kwargs) -> None:
        """One Adam step on ``params`` (the unconstrained parameters of this SVI step)."""
        params = params if isinstance(params, set | frozenset) else set(params)
        new = [p for p in params if p not in self._names]
        if new:
            self._add(new)
        group = self.optimizer.param_groups[0]
        state = self.optimizer.state
        for p in params:
            # as PyroOptim, whose zeroed gradients stay tensors: a parameter updated before
            # and registered again this step is updated even if no gradient reached it
            if p.grad is None and p in state:
                p.grad = torch.zeros_like(p)
        if len(params) != len(self._names):
            # as PyroOptim: parameters this step did not register are not updated
            for p in group["params"]:
                if p.grad is not None and p not in params:
                    p.grad = None
        if self.clip_value is not None and any(p.grad is not None for p in group["params"]):
            torch.nn.utils.clip_grad_value_(group["params"], self.clip_value, foreach=True)
        if self.lrd != 1.0:
            group["lr"] *= self.lrd
        self.optimizer.step(*args, **kwargs)
        self.optimizer.zero_grad(set_to_none=True)

    def _add(self, params: list[torch.Tensor]) -> None:
        store = pyro.get_param_store()
        named = sorted(((store.param_name(p), p) for p in params), key=lambda np_: np_[0])
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam([p for _, p in named], **self._adam_args(params))
            if self._lr is not None:
                self.optimizer.param_groups[0]["lr"] = self._lr
        else:
            self.optimizer.param_groups[0]["params"].extend(p for _, p in named)
        for name, p in named:
            self._names[p] = name
            state = self._waiting.pop(name, None)
            if state is not None:
                self._restore(p, state)

    def _adam_args(self, params: list[torch.Tensor]) -> dict:
        """torch.optim.Adam's arguments; by default the fused kernel (one pass over each
        tensor) where torch has it for the parameters' device, else the foreach kernels."""
        args = dict(self.pt_optim_args)
        if "fused" in args and args["fused"] is None:
            devices = {p.device.type for p in params}
            fusable = devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)
            args["fused"] = fusable
            if not fusable:
                args["foreach"] = True
        return args

    def _restore(self, p: torch.Tensor, state: dict) -> None:
        # torch's Adam keeps "step" on the CPU unless it is fused (then on the parameter's device)
        step_device = p.device if self.optimizer.defaults.get("fused") else "cpu"
        self.optimizer.state[p] = {
            k: v.detach().to(step_device if k == "step" else p.device).clone()
            for k, v in state.items()
        }

    # ------------------------------------------------------------------------------ state
    def get_state(self) -> dict:
        """``{"format", "lr", "params": {name: {"step", "exp_avg", "exp_avg_sq"}}}``, plus the
        states still waiting for their parameters; tensors, numbers and strings only."""
        params = dict(self._waiting)
        lr = self._lr if self.optimizer is None else self.optimizer.param_groups[0]["lr"]
        if self.optimizer is not None:
            for p, name in self._names.items():
                state = self.optimizer.state.get(p)
                if state:
                    params[name] = {k: v.detach().clone() for k, v in state.items()}
        return {"format": STATE_FORMAT, "lr": lr, "params": params}

    def set_state(self, state_dict: dict) -> None:
        """Restore a state from :meth:`get_state` (before the first step, or at any time for
        parameters already known)."""
        if not isinstance(state_dict, dict) or state_dict.get("format") != STATE_FORMAT:
            found = state_dict.get("format") if isinstance(state_dict, dict) else type(state_dict)
            raise ValueError(
                f"state_dict: expected a MultiTensorAdam state ({STATE_FORMAT!r}), found "
                f"{found!r} (a pyro.optim.PyroOptim state cannot be converted)"
            )
        if state_dict["lr"] is not None:
            self._lr = float(state_dict["lr"])
            if self.optimizer is not None:
                self.optimizer.param_groups[0]["lr"] = self._lr
        by_name = {name: p for p, name in self._names.items()}
        for name, state in state_dict["params"].items():
            p = by_name.get(name)
            if p is None:
                self._waiting[name] = state
            else:
                self._restore(p, state)

    def save(self, filename: str) -> None:
        """Write :meth:`get_state` to ``filename`` (``torch.save``)."""
        torch.save(self.get_state(), filename)

    def load(self, filename: str, map_location=None) -> None:
        """Read a state written by :meth:`save` with ``torch.load(weights_only=True)``."""
        self.set_state(torch.load(filename, map_location=map_location, weights_only=True))
