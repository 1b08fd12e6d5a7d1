"""Members fitted in parallel processes equal members fitted one after the other (issue 14)."""

import pickle

import numpy as np
import pyro
import pytest
import torch

from pyro_mmt.estimator import build_model, make_objective
from pyro_mmt.training.parallel import available_cores, fit_members
from pyro_mmt.training.svi import TrainingDivergedError, TrainingInterrupted, predict_proba


def make_builder(data, **settings):
    def build():
        return build_model(data.dims, data.num_classes, latent_dim=2, hidden=(8,), alpha=1.0,
                           **settings)
    return build


def fit(data, jobs, **kwargs):
    return fit_members(make_builder(data, class_prior="learned"), data, [0, 1000], jobs=jobs,
                       objective=make_objective, epochs=2, batch_size=16, progress=False,
                       hooks=lambda m2: (lambda epoch: m2.update_class_prior(
                           m2.classifier_logits(data.x, data.mask))), **kwargs)


def test_parallel_members_equal_serial_members(data):
    """Two workers give the very parameters (and learned class prior), histories and
    predictions of the serial fit (both one torch thread)."""
    assert torch.get_num_threads() == 1
    serial = fit(data, jobs=1)
    parallel = fit(data, jobs=2)
    assert [m.seed for m in parallel] == [0, 1000]
    for a, b in zip(serial, parallel, strict=True):
        assert a.state_dict.keys() == b.state_dict.keys()
        assert "class_log_prior" in b.state_dict  # updated by the callback in the worker
        for name, value in a.state_dict.items():
            assert torch.equal(value, b.state_dict[name]), name
        for name, value in a.module.state_dict().items():
            assert torch.equal(value, b.module.state_dict()[name]), name
        columns = [c for c in a.history.columns if c != "seconds"]
        assert a.history[columns].equals(b.history[columns])
        np.testing.assert_array_equal(predict_proba(a.module, data),
                                      predict_proba(b.module, data))
    assert not torch.equal(serial[0].state_dict["q.classifier.experts.top.0.weight"],
                           serial[1].state_dict["q.classifier.experts.top.0.weight"])


def test_fit_members_checks_its_arguments(data):
    build = make_builder(data)
    for jobs in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="jobs"):
            fit_members(build, data, [0], jobs=jobs, objective=make_objective)
    with pytest.raises(ValueError, match="checkpoint_dirs"):
        fit_members(build, data, [0, 1], objective=make_objective, checkpoint_dirs=[None])
    with pytest.raises(ValueError, match="threads"):
        fit_members(build, data, [0], objective=make_objective, threads=0)
    assert available_cores() >= 1


def test_a_member_that_fails_says_which_it_is(data):
    """An interruption or a divergence of member i carries ``member = i``, also after a trip
    through pickle (how an error comes back from a worker process)."""
    def stopper(m2):
        def stop(epoch):
            if m2.config.latent_dim == 2 and stop.calls == 1:
                raise KeyboardInterrupt
            stop.calls += 1
        stop.calls = 0
        return stop

    seeds = iter([0, 1])

    def interrupt_second(m2):
        return stopper(m2) if next(seeds) == 1 else None

    with pytest.raises(TrainingInterrupted) as info:
        fit_members(make_builder(data), data, [0, 1], objective=make_objective, epochs=3,
                    batch_size=16, progress=False, hooks=interrupt_second)
    assert info.value.member == 1
    assert pickle.loads(pickle.dumps(info.value)).member == 1
    error = TrainingDivergedError(2, 3, float("nan"), None)
    error.member = 4
    assert pickle.loads(pickle.dumps(error)).member == 4
    pyro.clear_param_store()


def test_member_hooks_run_where_the_member_trains(data, tmp_path):
    """MemberHooks: extra checkpointed modules (a running average of the parameters) and a
    finishing step (the average applied) give the same members with and without workers; the
    checkpoints hold the extra module."""
    from pyro_mmt.training.averaging import ParameterAverage
    from pyro_mmt.training.parallel import MemberHooks

    def hooks(m2):
        average = ParameterAverage(m2, start=1)
        return MemberHooks(on_epoch_end=lambda epoch: average.update(m2, epoch),
                           modules={"model": m2, "average": average},
                           finish=lambda: average.apply(m2))

    runs = []
    for jobs in (1, 2):
        folders = [tmp_path / f"j{jobs}_{i}" for i in range(2)]
        members = fit_members(make_builder(data), data, [0, 1000], jobs=jobs,
                              objective=make_objective, epochs=3, batch_size=16,
                              progress=False, hooks=hooks, checkpoint_dirs=folders)
        runs.append(members)
        for member, folder in zip(members, folders, strict=True):
            saved = torch.load(folder / "checkpoint.pt", weights_only=True)["modules"]
            assert set(saved) == {"model", "average"} and int(saved["average"]["count"]) == 2
            # the member's weights are the average of epochs 2 and 3 (finish ran), not the
            # weights of the last epoch that the checkpoint's model holds
            first = saved["average"]["mean_0"]
            name = next(n for n, _ in member.module.named_parameters())
            assert torch.equal(member.state_dict[name], first)
            assert not torch.equal(saved["model"][name], first)
    for a, b in zip(*runs, strict=True):
        for name, value in a.state_dict.items():
            assert torch.equal(value, b.state_dict[name]), name


def test_train_fn_is_the_training_function(data):
    """``train_fn`` replaces train (e.g. train_distributed, or a wrapper), with train's
    arguments."""
    from pyro_mmt.training.svi import train

    seen = []

    def wrapped(*args, **kwargs):
        seen.append(kwargs["seed"])
        return train(*args, **kwargs)

    members = fit_members(make_builder(data), data, [3, 4], objective=make_objective,
                          epochs=1, batch_size=16, progress=False, train_fn=wrapped)
    assert seen == [3, 4] and [m.seed for m in members] == [3, 4]
