"""`model.init.text` as a Hugging Face hub id: resolved offline through the local cache under HF_HOME."""

from __future__ import annotations

import pytest
import torch

from hf_cache_fixtures import cache_snapshot, use_hf_home
from omnivl.hf_cache import hub_cache_dir, is_hub_id
from omnivl.models.config import InitConfig, ModelConfig
from omnivl.models.omnivl import build_model
from omnivl.models.sizes import resolve_arch


def _built_state(text: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)  # the parts init.text does not cover start from the same random weights
    return build_model(ModelConfig(init=InitConfig(text=text))).model.state_dict()


@pytest.mark.parametrize("repo_id", ["bert-tiny-random", "some-org/bert-tiny-random"])
def test_hub_id_loads_the_same_weights_as_the_directory(random_bert_dir, tmp_path, monkeypatch, repo_id):
    path, _ = random_bert_dir
    cache_snapshot(use_hf_home(monkeypatch, tmp_path / "hf"), repo_id, path)
    monkeypatch.chdir(tmp_path)  # no local directory of that name
    assert resolve_arch(ModelConfig(init=InitConfig(text=repo_id))).text.hidden == 64
    from_hub, from_dir = _built_state(repo_id), _built_state(str(path))
    assert from_hub.keys() == from_dir.keys()
    for key, value in from_dir.items():
        torch.testing.assert_close(from_hub[key], value, rtol=0, atol=0, msg=key)


def test_an_existing_local_directory_wins_over_the_hub_id(random_bert_dir, tmp_path, monkeypatch):
    path, _ = random_bert_dir
    use_hf_home(monkeypatch, tmp_path / "empty-hf")
    local = tmp_path / "some-org" / "bert"
    local.parent.mkdir()
    local.symlink_to(path)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("some-org/bert") and is_hub_id("some-org/other")
    assert resolve_arch(ModelConfig(init=InitConfig(text="some-org/bert"))).text.hidden == 64


def test_uncached_hub_id_names_the_field_and_where_it_was_expected(tmp_path, monkeypatch):
    hub = use_hf_home(monkeypatch, tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        resolve_arch(ModelConfig(size="base", init=InitConfig(text="bert-base-uncased")))
    message = str(err.value)
    assert message.startswith("model.init.text: 'bert-base-uncased' is not a local directory")
    assert f"{hub / 'models--bert-base-uncased'}/snapshots/<revision>/" in message
    assert "hf download bert-base-uncased" in message and "huggingface-cli download bert-base-uncased" in message


def test_hub_cache_follows_the_environment_at_call_time(tmp_path, monkeypatch):
    assert use_hf_home(monkeypatch, tmp_path / "home") == hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"
