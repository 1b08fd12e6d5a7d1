"""A model written the idiomatic way, with ``pyro.module``, trains at full speed inside
``train()``, and the fast path and Pyro's own give the same losses and parameters."""

import numpy as np
import pyro
import pyro.primitives
import pytest
import torch

import pyro_mmt.guides.poe_t as guide_module
import pyro_mmt.models.multimodal_m2 as model_module
from pyro_mmt.config import ModelConfig
from pyro_mmt.data import MultimodalDataset
from pyro_mmt.estimator import make_objective
from pyro_mmt.infer import register_module, use_fast_registration
from pyro_mmt.models import MultimodalM2
from pyro_mmt.training import train


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    y[rng.random(60) < 0.6] = -1
    y[:3] = [0, 1, 2]
    return MultimodalDataset({"a": rng.normal(size=(60, 3)), "b": rng.normal(size=(60, 2))}, y)


def _fit(data, monkeypatch, *, fast: bool):
    """Two epochs of a MultimodalM2 whose model and guide register with ``pyro.module``, as a
    statistician's own model would; the number of ``pyro.param`` calls, the history and the
    trained state."""
    def idiomatic(name, module):
        return pyro.module(name, module)

    monkeypatch.setattr(model_module, "register_module", idiomatic)
    monkeypatch.setattr(guide_module, "register_module", idiomatic)
    calls = []
    original = pyro.primitives.param

    def counted(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(pyro.primitives, "param", counted)
    previous = use_fast_registration(fast)
    try:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        m2 = MultimodalM2(ModelConfig(data.dims, data.num_classes, hidden=(8,), latent_dim=2,
                                      label_counts=data.class_counts()))
        history = train(m2.model, m2.guide, data, objective=make_objective(), epochs=2,
                        batch_size=16, progress=False)
    finally:
        use_fast_registration(previous)
    return len(calls), history, {k: v.clone() for k, v in m2.state_dict().items()}


def test_pyro_module_takes_the_fast_path_with_the_same_result(data, monkeypatch):
    fast_calls, fast_history, fast_state = _fit(data, monkeypatch, fast=True)
    slow_calls, slow_history, slow_state = _fit(data, monkeypatch, fast=False)
    assert fast_calls < slow_calls / 4, (fast_calls, slow_calls)
    np.testing.assert_array_equal(fast_history["loss"], slow_history["loss"])
    assert fast_state.keys() == slow_state.keys()
    for k, v in fast_state.items():
        assert torch.equal(v, slow_state[k]), k


def test_outside_a_training_run_register_module_is_pyro_module():
    """Without SVI's trace on the stack nothing is skipped: every parameter is registered."""
    net = torch.nn.Linear(2, 3)
    pyro.clear_param_store()
    assert register_module("net", net) is net
    assert set(pyro.get_param_store().keys()) == {"net$$$weight", "net$$$bias"}
    assert pyro.module is pyro.primitives.module  # train() restores it
