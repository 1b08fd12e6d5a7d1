import pyro
import pytest
import torch

# The tests use small tensors: torch's intra-op threads cost far more than they save there
# (and fight each other when the machine is shared), so the suite runs single-threaded.
torch.set_num_threads(1)


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
