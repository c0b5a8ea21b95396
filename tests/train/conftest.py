import pytest


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The default synthetic corpus, generated once per test session."""
    from omnivl.data.config import SynthConfig
    from omnivl.data.synth import generate

    out = tmp_path_factory.mktemp("corpus")
    generate(SynthConfig(seed=0), str(out))
    return out
