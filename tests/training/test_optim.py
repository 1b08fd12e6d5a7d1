"""MultiTensorAdam: the parameters of pyro.optim.Adam (and ClippedAdam) after SVI steps, only
the parameters a step touched are updated, weights_only checkpoints, resume through train()."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_mmt.data import Standardiser, load_digits
from pyro_mmt.estimator import build_model, make_objective
from pyro_mmt.training.optim import MultiTensorAdam
from pyro_mmt.training.svi import load_weights, train


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)


@pytest.fixture(scope="module")
def batches():
    """Two labelled and two unlabelled batches of 8 digits (two 32-pixel halves)."""
    digits = Standardiser().fit_transform(load_digits()[:32]).to(torch.float64)
    return [digits.batch(np.arange(i, i + 8)) for i in (0, 8)], [
        digits.with_labels(np.full(32, -1)).batch(np.arange(i, i + 8)) for i in (16, 24)
    ]


def _svi_params(optimizer, batches, steps=4, seed=0):
    """Parameters after ``steps`` SVI steps of the project's model with GammaPowerELBO."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    m2 = build_model({"top": 32, "bottom": 32}, 10, latent_dim=2, hidden=(8,), alpha=1.0)
    svi = SVI(m2.model, m2.guide, optimizer, make_objective())
    labelled, unlabelled = batches
    for step in range(steps):
        batch = (labelled if step % 2 == 0 else unlabelled)[step // 2 % 2]
        svi.step(batch.x, batch.mask, batch.y)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_same_parameters_as_pyro_adam(batches):
    expected = _svi_params(pyro.optim.Adam({"lr": 1e-2}), batches)
    found = _svi_params(MultiTensorAdam({"lr": 1e-2}), batches)
    assert found.keys() == expected.keys() and len(found) == 28
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)


def test_foreach_and_single_tensor_updates_agree(batches):
    expected = _svi_params(pyro.optim.Adam({"lr": 1e-2}), batches)
    for args in ({"foreach": True}, {"foreach": False}, {"fused": False}):
        found = _svi_params(MultiTensorAdam({"lr": 1e-2, **args}), batches)
        for name in expected:
            torch.testing.assert_close(found[name], expected[name], msg=f"{args} {name}")


def test_clip_value_and_lrd_match_clipped_adam(batches):
    # lr 0.05 and clip 0.5: gradients of these models are clipped in the first steps
    # ClippedAdam adds eps to sqrt(v), torch's Adam to sqrt(v_hat): with a negligible eps the
    # two updates agree (the default eps = 1e-8 differs where gradients are of order eps)
    args = {"lr": 0.05, "lrd": 0.9, "eps": 1e-30}
    expected = _svi_params(pyro.optim.ClippedAdam({**args, "clip_norm": 0.5}), batches)
    found = _svi_params(MultiTensorAdam({**args, "clip_value": 0.5}), batches)
    unclipped = _svi_params(MultiTensorAdam(args), batches)
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=0, atol=1e-6, msg=name)
    assert any(not torch.allclose(unclipped[n], expected[n], atol=1e-6) for n in expected)


def test_the_parameters_pyro_adam_updates_are_the_ones_updated():
    """PyroOptim semantics: a parameter registered in a step but reached by no gradient still
    moves (momentum), one not registered in a step does not, and late ones join."""
    torch.manual_seed(0)
    pair, c = nn.ModuleList([nn.Linear(2, 1), nn.Linear(2, 1)]), nn.Linear(2, 1)
    x = torch.randn(5, 2)

    def model(step):
        pyro.module("pair", pair)  # both registered, one used per step
        net = pair[step % 2]
        if step == 0:
            pyro.module("c", c)  # registered in the first step only
            net = lambda v, net=net: pair[0](v) + c(v)
        with pyro.plate("data", 5):
            pyro.sample("obs", dist.Normal(net(x).squeeze(-1), 1.0), obs=torch.zeros(5))

    def guide(step):
        pass

    initial = {k: v.clone() for k, v in {**pair.state_dict(), **c.state_dict()}.items()}
    results = []
    for optimizer in (pyro.optim.Adam({"lr": 0.1}), MultiTensorAdam({"lr": 0.1})):
        pyro.clear_param_store()
        pair.load_state_dict({k: initial[k] for k in pair.state_dict()})
        c.load_state_dict({k: initial[k] for k in c.state_dict()})
        for p in [*pair.parameters(), *c.parameters()]:
            p.grad = None
        svi = SVI(model, guide, optimizer, Trace_ELBO())
        svi.step(0)
        c_after_first = c.weight.detach().clone()
        for step in (1, 2, 3):
            svi.step(step)
        torch.testing.assert_close(c.weight, c_after_first, rtol=0, atol=0)
        results.append({k: v.clone() for k, v in pair.state_dict().items()})
    assert not torch.equal(results[1]["1.weight"], initial["1.weight"])
    for name in results[0]:
        torch.testing.assert_close(results[1][name], results[0][name], msg=name)


def test_state_round_trip_with_weights_only(batches, tmp_path):
    labelled, unlabelled = batches

    def run(optimizer, steps, seed):
        svi = SVI(m2.model, m2.guide, optimizer, make_objective())
        pyro.set_rng_seed(seed)
        for step in range(steps):
            batch = (labelled, unlabelled)[step % 2][0]
            svi.step(batch.x, batch.mask, batch.y)

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    m2 = build_model({"top": 32, "bottom": 32}, 10, latent_dim=2, hidden=(8,), alpha=1.0)
    optimizer = MultiTensorAdam({"lr": 1e-2, "lrd": 0.99})
    run(optimizer, 3, seed=1)
    optimizer.save(tmp_path / "optim.pt")
    weights = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    state = load_weights(tmp_path / "optim.pt")  # weights_only=True
    assert set(state["params"]) == set(weights)
    run(optimizer, 3, seed=2)
    expected = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    # a fresh process: new modules with the saved weights, a new optimiser loading the state
    pyro.clear_param_store()
    m2 = build_model({"top": 32, "bottom": 32}, 10, latent_dim=2, hidden=(8,), alpha=1.0)
    for name, p in m2.named_parameters():
        with torch.no_grad():
            p.copy_(weights[f"m2$$${name}"])
    restored = MultiTensorAdam({"lr": 1e-2, "lrd": 0.99})
    restored.load(tmp_path / "optim.pt")
    run(restored, 3, seed=2)
    for name, value in pyro.get_param_store().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-12, msg=name)
    assert restored.get_state()["lr"] == pytest.approx(1e-2 * 0.99**6)


def test_train_resumes_with_it(tmp_path):
    digits = load_digits()[:48]
    y = digits.y.numpy().copy()
    y[16:] = -1
    data = Standardiser().fit_transform(digits.with_labels(y)).to(torch.float64)

    def fit(epochs, folder, resume=False, seed=0):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        m2 = build_model(data.dims, 10, latent_dim=2, hidden=(8,), alpha=1.0)
        history = train(m2.model, m2.guide, data, objective=make_objective(),
                        optimizer=MultiTensorAdam({"lr": 1e-2, "clip_value": 10.0}),
                        epochs=epochs, batch_size=16, seed=3, progress=False,
                        checkpoint_dir=tmp_path / folder, resume=resume)
        return history, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    straight, expected = fit(4, "straight")
    fit(2, "resumed")
    resumed, found = fit(4, "resumed", resume=True, seed=123)
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=0, atol=1e-6, msg=name)
    np.testing.assert_allclose(resumed["loss"], straight["loss"], rtol=1e-6)


def test_argument_errors():
    with pytest.raises(ValueError, match="unknown keys \\['momentum'\\]"):
        MultiTensorAdam({"lr": 1e-3, "momentum": 0.9})
    with pytest.raises(ValueError, match="clip_value"):
        MultiTensorAdam({"clip_value": -1.0})
    with pytest.raises(ValueError, match="lrd"):
        MultiTensorAdam({"lrd": 0.0})
    with pytest.raises(ValueError, match="MultiTensorAdam state"):
        MultiTensorAdam().set_state(pyro.optim.Adam({}).get_state())
