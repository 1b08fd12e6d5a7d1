r"""Data-parallel training with :mod:`torch.distributed`: one process per CPU socket or GPU.

Every process holds the same model (e.g. one :class:`~pyro_mmt.models.MultimodalM2`, which owns
its guide's networks too) and Pyro param store, takes its share of each global mini-batch and
runs an ordinary SVI step on it; :class:`DistributedOptim` sums the gradients of
the step's Pyro parameters over the processes (one all-reduce of one flat buffer) before the
optimiser's update, so all processes apply the same update and their parameters stay identical.

Why gradients are *summed*: the loss is a sum over data, :math:`\sum_i s\,L(x_i)` with the
subsampling scale :math:`s = N / B` (``poutine.scale``). When a global batch of B rows is split
into shards, the gradient of the global loss is the sum of the shards' gradients, each shard's
loss scaled by the same :math:`s`. :func:`train_distributed` arranges exactly that: rank r
trains on a partition of the data with ``num_data / batch_size`` equal to the global
:math:`N / B`. (DistributedDataParallel averages instead, and would need every process's loss
multiplied by the number of processes.)

Why not ``DistributedDataParallel`` around the networks: DDP reduces gradients from hooks that
it arms in the wrapped module's ``forward``, and expects each wrapped module to run once per
backward pass. In this model the classifier runs in the guide and again in the model's
classification term, and the decoders and encoders are called from the ``model``/``guide``
methods, not ``forward``. Reducing the gradients of the parameters SVI reports, after the backward
pass, works for any model and guide, keeps Pyro's param store and ``SVI`` unchanged, and costs
one collective per step (these networks have about a million parameters: a few ms on gloo).

Launch with ``torchrun --nproc_per_node=P script.py`` (``examples/distributed.py``): torchrun
sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``, and :func:`init_from_env`
starts the process group (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.optim import PyroOptim
from torch import distributed as dist

from pyro_mmt.data import MultimodalDataset

__all__ = [
    "DistributedOptim",
    "broadcast_parameters",
    "init_from_env",
    "partition",
    "shard_rows",
    "train_distributed",
]


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Start the default process group from torchrun's environment variables (when it is not
    started yet) and return ``(rank, world_size)``; ``(0, 1)`` outside torchrun.

    :param backend: ``"gloo"`` or ``"nccl"``; default nccl when CUDA is available, else gloo.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


class DistributedOptim(PyroOptim):
    """A Pyro optimiser whose gradients are summed over the processes before each update.

    ``SVI(model, guide, DistributedOptim(MultiTensorAdam({"lr": 1e-3})), loss)``: at each step
    SVI hands over the parameters the step registered; their gradients are flattened into one
    buffer (in the order of their Pyro names, the same on every process), all-reduced with
    ``SUM`` and written back, then the wrapped optimiser updates them. A parameter without a
    gradient on some process counts as zero there.

    :param PyroOptim optim: the optimiser that makes the update.
    :param group: the process group (default: the default group).
    """

    def __init__(self, optim: PyroOptim, group=None):
        if not isinstance(optim, PyroOptim):
            raise ValueError(f"optim: expected a pyro.optim.PyroOptim, found {type(optim).__name__}")
        self.optim = optim
        self.group = group

    def __call__(self, params: Iterable[torch.Tensor], *args, **kwargs) -> None:
        store = pyro.get_param_store()
        params = sorted(params, key=store.param_name)
        if params and dist.is_initialized() and dist.get_world_size(self.group) > 1:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            offset = 0
            for p in params:
                n = p.numel()
                p.grad = flat[offset:offset + n].view_as(p)
                offset += n
        self.optim(params, *args, **kwargs)

    def get_state(self) -> dict:
        return self.optim.get_state()

    def set_state(self, state_dict: dict) -> None:
        self.optim.set_state(state_dict)

    def save(self, filename: str) -> None:
        self.optim.save(filename)

    def load(self, filename: str, map_location=None) -> None:
        self.optim.load(filename, map_location=map_location)


def broadcast_parameters(modules: Mapping[str, torch.nn.Module] | Iterable[torch.nn.Module],
                         src: int = 0, group=None) -> None:
    """Copy every parameter and buffer of ``modules`` from process ``src`` to the others, so
    that all processes start from the same weights."""
    if not (dist.is_initialized() and dist.get_world_size(group) > 1):
        return
    modules = modules.values() if isinstance(modules, Mapping) else modules
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=src, group=group)


def shard_rows(num_rows: int, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s rows of a global batch of ``num_rows`` rows: ``rank, rank + P, ...``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < {world_size}, found {rank}")
    return np.arange(rank, num_rows, world_size)


def partition(dataset: MultimodalDataset, rank: int, world_size: int,
              seed: int = 0) -> MultimodalDataset:
    """Rank ``rank``'s share of ``dataset``: its labelled and its unlabelled rows are each
    shuffled (the same permutation on every process, from ``seed``), padded by repeating
    their first rows to a multiple of ``world_size`` (as ``DistributedSampler`` pads) and
    dealt out. Every share has the same numbers of labelled and of unlabelled rows, so every
    process makes the same number of steps per epoch."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < {world_size}, found {rank}")
    rng = np.random.default_rng(seed)
    labelled = dataset.is_labelled.numpy()
    share = []
    for rows in (np.flatnonzero(labelled), np.flatnonzero(~labelled)):
        if rows.size == 0:
            continue
        rows = rng.permutation(rows)
        padded = np.resize(rows, -(-rows.size // world_size) * world_size)
        share.append(padded[rank::world_size])
    return dataset[np.concatenate(share)]


def train_distributed(model: Callable, guide: Callable, dataset: MultimodalDataset, *,
                      objective: pyro.infer.ELBO, optimizer: PyroOptim | None = None,
                      batch_size: int = 128, labelled_batch_size: int | None = None,
                      seed: int = 0, checkpoint_dir=None, modules=None, progress: bool = True,
                      group=None, **train_kwargs) -> pd.DataFrame:
    """:func:`pyro_mmt.training.svi.train` on ``P`` processes (data parallel); call it in every
    process of a started process group (:func:`init_from_env`).

    Rank r trains on :func:`partition` (``dataset``, r, P) with batches of ``batch_size / P``
    rows, so that a step of all processes together is one step on a global batch of
    ``batch_size`` rows, with the same loss scale as a single process would use; the optimiser
    is wrapped in :class:`DistributedOptim`, and the weights of rank 0 are broadcast first.
    Rank r seeds Pyro and its batch order with ``seed + r`` (independent draws of z).

    Each rank writes its own checkpoints to ``checkpoint_dir/rank<r>`` (the weights are the
    same; the random state is the rank's), so ``resume=True`` resumes every rank exactly. The
    returned history is the same on every rank: the loss columns are averaged over ranks.
    A decision rule learned after training (the default predicted reference shares, or
    ``decision_shift="auto"``) is learned on every rank from the whole ``dataset`` (every
    rank has the same weights, so the same rule), not from the rank's shard, unless
    ``choose_decision_shift=False``. A divergence (``TrainingDivergedError``) raised on one
    rank leaves the others waiting at their next all-reduce until the process group's timeout.

    :param optimizer: a Pyro optimiser; default :class:`~pyro_mmt.training.optim.MultiTensorAdam` with
        ``lr`` 1e-3 and gradients clamped to ±10 (as ``ClippedAdam``).
    :param batch_size: the global batch size (a multiple of P is best).
    :param modules: name -> ``nn.Module`` broadcast from rank 0 and checkpointed; default the
        module(s) behind bound ``model``/``guide`` methods (``{"model": m2}`` for
        ``m2.model``/``m2.guide``).
    :param train_kwargs: passed on to :func:`~pyro_mmt.training.svi.train` (``epochs``,
        ``validation``, ``patience``, ``resume``, ``device``, ``on_epoch_end``, ``desc``, ...).
    """
    from pyro_mmt.training.optim import MultiTensorAdam
    from pyro_mmt.training.svi import calibrate_decision_shift, default_modules, train

    rank = dist.get_rank(group) if dist.is_initialized() else 0
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    if modules is None:
        modules = default_modules(model, guide)
    broadcast_parameters(modules, group=group)
    optimizer = optimizer or MultiTensorAdam({"lr": 1e-3, "clip_value": 10.0})
    local = partition(dataset, rank, world, seed)
    local_batch = -(-int(batch_size) // world)
    local_labelled = None if labelled_batch_size is None else -(-int(labelled_batch_size) // world)
    if checkpoint_dir is not None:
        checkpoint_dir = os.path.join(os.fspath(checkpoint_dir), f"rank{rank}")
    # the decision rule from every unlabelled row, after training (not from this shard)
    choose = train_kwargs.pop("choose_decision_shift", True)
    history = train(model, guide, local, objective=objective,
                    optimizer=DistributedOptim(optimizer, group=group), batch_size=local_batch,
                    labelled_batch_size=local_labelled, seed=seed + rank,
                    checkpoint_dir=checkpoint_dir, modules=modules,
                    progress=progress and rank == 0, choose_decision_shift=False,
                    **train_kwargs)
    owner = getattr(guide, "__self__", None)
    if choose and owner is not None:
        calibrate_decision_shift(owner, dataset, device=train_kwargs.get("device", "cpu"))
    if world > 1 and len(history):
        columns = [c for c in ("loss", "loss_labelled", "loss_unlabelled") if c in history]
        values = torch.tensor(history[columns].to_numpy(dtype=np.float64))
        dist.all_reduce(values, op=dist.ReduceOp.SUM, group=group)
        history[columns] = (values / world).numpy()
    return history
