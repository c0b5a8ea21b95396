"""Model-side tests run on tiny configs with one thread and a fixed seed: the machine is shared."""

import pytest


@pytest.fixture(autouse=True)
def _frugal_torch():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
