"""Model-side tests run on tiny configs with few threads: the machine is shared."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _frugal_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
