import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _pyro_state():
    """Each test starts from a clean param store, validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    default = torch.get_default_dtype()
    yield
    torch.set_default_dtype(default)
    pyro.clear_param_store()
