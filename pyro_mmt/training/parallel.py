"""Independent fits in parallel processes: the members of an ensemble (``n_init > 1``), seeds.

:func:`fit_members` trains one model per seed with :func:`~pyro_mmt.training.train`, one after
the other in this process (``jobs=1``) or in ``jobs`` worker processes (joblib's ``loky``
backend), each with one torch thread. A member is built and trained in its worker exactly as
it would be here (the seed set before the model is built, so the initial weights are the same;
the same objective, optimiser and batch order), and its trained ``state_dict`` and history come
back; so the results do not depend on ``jobs`` when this process also trains with one torch
thread (the estimator's default ``n_threads=1``): the same parameters, bit for bit, hence the
same predictions (``tests/training/test_parallel.py``).

Processes rather than threads: a training step is mostly short Python work under the GIL, and
torch's intra-op threads do not help networks this small (``docs/performance.md``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import pyro
import torch
from torch import nn

from pyro_mmt.data import MultimodalDataset

__all__ = ["FittedMember", "MemberHooks", "available_cores", "fit_members"]


@dataclass
class FittedMember:
    """One trained member: its ``seed``, the trained ``module`` (in this process, on the
    training device), its ``state_dict`` (CPU tensors) and the per-epoch ``history`` of
    :func:`~pyro_mmt.training.train`."""

    seed: int
    module: nn.Module
    state_dict: dict[str, torch.Tensor]
    history: pd.DataFrame


@dataclass
class MemberHooks:
    """What a member needs beside its module, made where it trains (by ``hooks(module)`` of
    :func:`fit_members`).

    :param on_epoch_end: :func:`~pyro_mmt.training.train`'s ``on_epoch_end`` (e.g. the update
        of a learned class prior, or of a running average of the parameters).
    :param modules: ``train``'s ``modules`` (the weights checkpointed and restored, e.g.
        ``{"model": m2, "average": average}``); None: the module behind ``model``/``guide``.
    :param finish: called once training is over, before the member's state is taken (e.g.
        replacing the parameters by their average).
    """

    on_epoch_end: Callable[[int], None] | None = None
    modules: dict[str, nn.Module] | None = None
    finish: Callable[[], None] | None = None


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def fit_members(
    build: Callable[[], nn.Module],
    data: MultimodalDataset,
    seeds: Sequence[int],
    *,
    objective: Callable[[], pyro.infer.ELBO],
    optimizer: Callable[[], pyro.optim.PyroOptim] | None = None,
    jobs: int = 1,
    threads: int = 1,
    hooks: Callable[[nn.Module], MemberHooks | Callable[[int], None] | None] | None = None,
    checkpoint_dirs: Sequence | None = None,
    descs: Sequence[str] | None = None,
    train_fn: Callable | None = None,
    **train_kwargs,
) -> list[FittedMember]:
    """Train one model per seed, in this process or in ``jobs`` parallel processes.

    For each seed: ``pyro.set_rng_seed(seed)``, ``module = build()``, ``h = hooks(module)``,
    then ``train_fn(module.model, module.guide, data, objective=objective(),
    optimizer=optimizer(), seed=seed, on_epoch_end=h.on_epoch_end, modules=h.modules, ...)``
    in a fresh param-store scope, and ``h.finish()``. With
    ``jobs > 1`` each member runs in a worker process (joblib ``loky``; the callables and
    ``data`` are pickled with cloudpickle, so lambdas and closures are fine) with ``threads``
    torch threads and this process's default dtype, without progress bars; the module is
    then rebuilt here with ``build()`` and the trained ``state_dict`` loaded into it.

    :param build: makes the untrained module (e.g. a :class:`~pyro_mmt.models.MultimodalM2`,
        on the training device); called right after the seed is set, so its initial weights
        depend on the seed only.
    :param data: the training data.
    :param seeds: one seed per member (the initial weights, the draws and the batch order).
    :param objective: makes the member's objective (a fresh one per member: an ELBO keeps a
        cache of checked trace signatures).
    :param optimizer: makes the member's optimiser (default
        :func:`~pyro_mmt.training.svi.default_optimizer`).
    :param int jobs: members trained at once: 1 (default) trains them one after the other in
        this process, with its thread settings; -1 uses one process per available core
        (:func:`available_cores`); never more processes than members.
    :param int threads: torch threads per worker process (default 1).
    :param hooks: ``hooks(module)`` returns the member's :class:`MemberHooks` (or just its
        ``on_epoch_end``, or None); it is called, and the hooks run, where the member trains.
    :param checkpoint_dirs: one checkpoint folder per member (or None).
    :param descs: one progress-bar label per member.
    :param train_fn: the training function (default :func:`~pyro_mmt.training.svi.train`;
        e.g. :func:`~pyro_mmt.training.distributed.train_distributed`, with ``jobs=1``); with
        ``jobs > 1`` it must be picklable (a module-level function).
    :param train_kwargs: passed on to :func:`~pyro_mmt.training.train` (``epochs``,
        ``batch_size``, ``labelled_batch_size``, ``device``, ``progress``, ``resume``, ...).
    :return: the members, in the order of ``seeds``.
    :raises TrainingDivergedError: (or :class:`~pyro_mmt.training.svi.TrainingInterrupted`)
        from a member, with its index in ``seeds`` as ``member``.
    :raises ValueError: for ``jobs`` that is not a positive integer or -1, or per-member lists
        of another length than ``seeds``.
    """
    seeds = [int(s) for s in seeds]
    if isinstance(jobs, bool) or not isinstance(jobs, int) or (jobs < 1 and jobs != -1):
        raise ValueError(f"jobs: expected a positive integer or -1 (one per core), found "
                         f"{jobs!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive integer, found {threads!r}")
    checkpoint_dirs = [None] * len(seeds) if checkpoint_dirs is None else list(checkpoint_dirs)
    descs = [None] * len(seeds) if descs is None else list(descs)
    for name, values in (("checkpoint_dirs", checkpoint_dirs), ("descs", descs)):
        if len(values) != len(seeds):
            raise ValueError(f"{name}: expected one per seed ({len(seeds)}), found "
                             f"{len(values)}")
    if optimizer is None:
        from pyro_mmt.training.svi import default_optimizer as optimizer
    jobs = min(available_cores() if jobs == -1 else jobs, max(len(seeds), 1))
    tasks = [
        dict(build=build, data=data, seed=seed, objective=objective, optimizer=optimizer,
             hooks=hooks, checkpoint_dir=folder, desc=desc, train_fn=train_fn,
             train_kwargs=train_kwargs)
        for seed, folder, desc in zip(seeds, checkpoint_dirs, descs, strict=True)
    ]
    if jobs == 1:
        members = []
        for index, task in enumerate(tasks):
            module, history = _fit(index, **task)
            members.append(FittedMember(task["seed"], module, _cpu_state(module), history))
        return members

    from joblib import Parallel, delayed

    dtype = torch.get_default_dtype()
    results = Parallel(n_jobs=jobs, backend="loky")(
        delayed(_fit_in_worker)(index, task, threads, dtype) for index, task in enumerate(tasks))
    members = []
    for task, (state, history) in zip(tasks, results, strict=True):
        pyro.set_rng_seed(task["seed"])  # the same module as the worker's (its weights replaced)
        module = build()
        device = next(iter(module.state_dict().values()), torch.empty(0)).device
        module.load_state_dict({k: v.to(device) for k, v in state.items()})
        members.append(FittedMember(task["seed"], module, state, history))
    return members


def _fit(index, build, data, seed, objective, optimizer, hooks, checkpoint_dir, desc, train_fn,
         train_kwargs) -> tuple[nn.Module, pd.DataFrame]:
    """Build and train member ``index`` (in this process). A
    :class:`~pyro_mmt.training.svi.TrainingDivergedError` or
    :class:`~pyro_mmt.training.svi.TrainingInterrupted` says which member it was (its
    ``member`` attribute, counted from 0)."""
    from pyro_mmt.training.svi import TrainingDivergedError, TrainingInterrupted, train

    train_fn = train if train_fn is None else train_fn

    pyro.set_rng_seed(seed)  # the initial weights too
    module = build()
    made = None if hooks is None else hooks(module)
    if not isinstance(made, MemberHooks):
        made = MemberHooks(on_epoch_end=made)
    kwargs = dict(train_kwargs)
    if desc is not None:
        kwargs["desc"] = desc
    try:
        with pyro.get_param_store().scope():
            history = train_fn(module.model, module.guide, data, objective=objective(),
                               optimizer=optimizer(), seed=seed, on_epoch_end=made.on_epoch_end,
                               modules=made.modules, checkpoint_dir=checkpoint_dir, **kwargs)
    except (TrainingDivergedError, TrainingInterrupted) as error:
        error.member = index
        raise
    if made.finish is not None:
        made.finish()
    return module, history


def _fit_in_worker(index: int, task: dict, threads: int, dtype: torch.dtype):
    """:func:`_fit` in a worker process: its threads and dtype set, no progress bars; the
    trained state on the CPU and the history come back."""
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    task = dict(task, train_kwargs=dict(task["train_kwargs"], progress=False))
    module, history = _fit(index, **task)
    return _cpu_state(module), history


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
