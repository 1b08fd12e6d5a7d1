"""Data-parallel training on 2 CPU processes (gloo): the parameters stay identical across
ranks, and loss and parameters equal a single process's on the same global batches.

The ranks draw z with their own generators, so the single-process reference draws each
shard's z with that rank's seed and adds the shards' gradients before one update: that is what
a data-parallel step computes, and the check holds to rounding."""

import numpy as np
import pyro
import pytest
import torch
import torch.multiprocessing as mp
from pyro import poutine
from pyro.infer import SVI
from torch import distributed as dist

from pyro_mmt.data import Standardiser, load_digits
from pyro_mmt.decision import reference_log_shares
from pyro_mmt.estimator import build_model, make_objective
from pyro_mmt.training.distributed import (
    DistributedOptim,
    broadcast_parameters,
    partition,
    shard_rows,
    train_distributed,
)
from pyro_mmt.training.optim import MultiTensorAdam
from pyro_mmt.training.svi import classifier_logits

WORLD = 2
NUM_DATA = 100.0  # the group size the scale pretends (num_data in the training loop)
STEPS = 4


def _data():
    """24 standardised digits in float64: a labelled and an unlabelled global batch of 12."""
    digits = Standardiser().fit_transform(load_digits()[:24]).to(torch.float64)
    y = digits.y.numpy().copy()
    y[12:] = -1
    digits = digits.with_labels(y)
    return digits.batch(np.arange(12)), digits.batch(np.arange(12, 24))


def _build(seed=0):
    pyro.set_rng_seed(seed)
    m2 = build_model({"top": 32, "bottom": 32}, 10, latent_dim=2, hidden=(8,), alpha=1.0)
    return m2, {"model": m2}


def _shard(batch, rank):
    rows = torch.from_numpy(shard_rows(batch.size, rank, WORLD))
    y = None if batch.y is None else batch.y[rows]
    return {m: v[rows] for m, v in batch.x.items()}, batch.mask[rows], y


def _global_batch(step):
    labelled, unlabelled = _data()
    return labelled if step % 2 == 0 else unlabelled


def _params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _worker(rank, init_method, out):
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        # SVI steps on this rank's half of each global batch
        m2, modules = _build(seed=rank)  # different weights: the broadcast fixes them
        broadcast_parameters(modules)
        svi = SVI(m2.model, m2.guide, DistributedOptim(MultiTensorAdam({"lr": 1e-2})),
                  make_objective())
        losses = []
        for step in range(STEPS):
            batch = _global_batch(step)
            pyro.set_rng_seed(1000 + 10 * step + rank)
            with poutine.scale(scale=NUM_DATA / batch.size):
                loss = torch.tensor(svi.step(*_shard(batch, rank)))
            dist.all_reduce(loss)
            losses.append(loss.item())
        result = {"losses": losses, "params": _params()}

        # the training loop on this rank's partition of 48 digits
        pyro.clear_param_store()
        digits = load_digits()[:48]
        y = digits.y.numpy().copy()
        y[16:] = -1
        data = Standardiser().fit_transform(digits.with_labels(y)).to(torch.float64)
        m2, modules = _build(seed=rank)
        history = train_distributed(m2.model, m2.guide, data, objective=make_objective(),
                                    epochs=2, batch_size=16, seed=3, progress=False)
        result["train_params"] = _params()
        result["train_loss"] = history["loss"].tolist()
        # the decision rule's reference shares: from every unlabelled row, not this shard's
        result["shares"] = m2.q.decision_log_shares.clone()
        logits = classifier_logits(m2, data.unlabelled()).double()
        result["shares_by_hand"] = reference_log_shares(torch.log_softmax(logits, -1))
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _single_process_reference():
    """The same global batches in one process: each shard's loss and gradient with its rank's
    draws, gradients added, one update per global batch."""
    m2, _ = _build(seed=0)
    optim, elbo = MultiTensorAdam({"lr": 1e-2}), make_objective()
    losses = []
    for step in range(STEPS):
        batch = _global_batch(step)
        total = 0.0
        with poutine.trace(param_only=True) as capture:
            for rank in range(WORLD):
                pyro.set_rng_seed(1000 + 10 * step + rank)
                with poutine.scale(scale=NUM_DATA / batch.size):
                    total += elbo.loss_and_grads(m2.model, m2.guide, *_shard(batch, rank))
        optim({site["value"].unconstrained() for site in capture.trace.nodes.values()})
        losses.append(total)
    return losses, _params()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    torch.set_default_dtype(torch.float64)
    mp.spawn(_worker, args=(f"file://{tmp_path / 'rendezvous'}", tmp_path), nprocs=WORLD,
             join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    # identical parameters on every rank, bit for bit
    for key in ("params", "train_params"):
        assert ranks[0][key].keys() == ranks[1][key].keys()
        for name in ranks[0][key]:
            torch.testing.assert_close(ranks[1][key][name], ranks[0][key][name], rtol=0, atol=0)
    assert ranks[0]["train_loss"] == ranks[1]["train_loss"]
    # one decision rule, learned from the whole data set on every rank
    for rank in ranks:
        torch.testing.assert_close(rank["shares"].double(), ranks[0]["shares_by_hand"])
    assert np.isfinite(ranks[0]["train_loss"]).all() and len(ranks[0]["train_loss"]) == 2

    # the loss and the parameters of one process on the same global batches
    losses, params = _single_process_reference()
    np.testing.assert_allclose(ranks[0]["losses"], losses, rtol=1e-10)
    assert params.keys() == ranks[0]["params"].keys()
    for name, value in params.items():
        torch.testing.assert_close(ranks[0]["params"][name], value, rtol=1e-9, atol=1e-12,
                                   msg=name)


def test_partition_gives_equal_shares_of_every_row():
    digits = load_digits()[:11]
    y = digits.y.numpy().copy()
    y[3:] = -1  # 3 labelled, 8 unlabelled rows
    data = digits.with_labels(y)
    shares = [partition(data, r, 3, seed=5) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4]
    assert [int(s.is_labelled.sum()) for s in shares] == [1, 1, 1]
    rows = torch.cat([torch.cat([s.x["top"] for s in shares])])
    assert {tuple(r.tolist()) for r in rows} == {tuple(r.tolist()) for r in data.x["top"]}
    again = partition(data, 1, 3, seed=5)
    torch.testing.assert_close(again.x["top"], shares[1].x["top"])
    assert shard_rows(7, 1, 3).tolist() == [1, 4]
    with pytest.raises(ValueError, match="rank"):
        partition(data, 3, 3)


def test_one_process_is_a_plain_optimiser():
    """Without a process group DistributedOptim is its wrapped optimiser."""
    with pytest.raises(ValueError, match="PyroOptim"):
        DistributedOptim(torch.optim.Adam)
    torch.set_default_dtype(torch.float64)
    labelled, _ = _data()
    expected = {}
    for wrap in (False, True):
        pyro.clear_param_store()
        m2, _ = _build()
        optim = MultiTensorAdam({"lr": 1e-2})
        svi = SVI(m2.model, m2.guide, DistributedOptim(optim) if wrap else optim,
                  make_objective())
        pyro.set_rng_seed(0)
        svi.step(labelled.x, labelled.mask, labelled.y)
        if not wrap:
            expected = _params()
    for name, value in _params().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
