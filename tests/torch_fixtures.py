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


def save_random_export(path, seed: int = 0, size: str = "tiny", **model) -> str:
    """Export a randomly initialized model (`ModelConfig(size=size, **model)`, torch seed `seed`) to `path`: the
    checkpoint the evaluation, serving, embedding and Python API tests load. Returns the path as a string."""
    import torch

    from omnivl.models.config import ModelConfig
    from omnivl.models.export import save_export
    from omnivl.models.omnivl import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(size=size, **model)
    save_export(build_model(cfg, load_pretrained=False).model, cfg, str(path))
    return str(path)
