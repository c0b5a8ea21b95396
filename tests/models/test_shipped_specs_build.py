"""Every model a shipped spec describes builds as written (shapes only, on the meta device), with a parameter
count that fits its named size: jobs/*.yaml (each step of a pipeline) and serve/*.yaml.

The base spec's `init.text: bert-base-uncased` resolves through a Hugging Face cache made here (HF_HOME in
tmp) holding that model's config.json; nothing is downloaded and no weights are read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import BaseModel

from hf_cache_fixtures import cache_snapshot, use_hf_home
from omnivl.cli.model_cmds import component_counts
from omnivl.models.config import ModelConfig
from omnivl.models.omnivl import build_omnivl
from omnivl.models.sizes import resolve_arch
from omnivl.serving.config import ServeAppConfig
from omnivl.spec import PipelineJob, load_spec
from omnivl.tasks import build_task

ROOT = Path(__file__).resolve().parents[2]

# bert-base-uncased's published config.json (architecture fields), written here rather than downloaded.
BERT_BASE_UNCASED = {
    "architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu", "vocab_size": 30522,
    "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
    "position_embedding_type": "absolute", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
}
# How far a spec's model may stray from its named size's count (image size and frame overrides move the
# position tables a little; a text checkpoint of another geometry moves it a lot).
TOLERANCE = 0.10


def _model_configs(node, path: str):
    """(dotted path, ModelConfig) of every model config inside a validated spec object."""
    if isinstance(node, ModelConfig):
        yield path, node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _model_configs(getattr(node, name), f"{path}.{name}")
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            yield from _model_configs(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from _model_configs(item, f"{path}.{key}")


def _shipped_models() -> list[tuple[str, ModelConfig]]:
    found = []
    for spec in sorted((ROOT / "jobs").glob("*.yaml")):
        job = load_spec(spec)
        jobs = ([(f"steps[{i}].job", j) for i, j in enumerate(job.step_jobs)] if isinstance(job, PipelineJob)
                else [("", job)])
        for prefix, j in jobs:
            found += [(f"{spec.name}:{path.lstrip('.')}", cfg) for path, cfg in _model_configs(j, prefix)]
    for spec in sorted((ROOT / "serve").glob("*.yaml")):
        for i, app in enumerate(yaml.safe_load(spec.read_text())["applications"]):
            args = ServeAppConfig.model_validate(app["args"])
            found += [(f"{spec.name}:applications[{i}].args{path}", cfg) for path, cfg in _model_configs(args, "")]
    return found


SHIPPED = _shipped_models()


def _named_size_total(size: str) -> int:
    with torch.device("meta"):
        return component_counts(build_omnivl(resolve_arch(ModelConfig(size=size))))["total"]


@pytest.fixture(autouse=True)
def bert_base_uncased_cache(tmp_path, monkeypatch):
    hub = use_hf_home(monkeypatch, tmp_path / "hf")
    cache_snapshot(hub, "bert-base-uncased", {"config.json": json.dumps(BERT_BASE_UNCASED)})
    monkeypatch.chdir(tmp_path)  # hub ids are not shadowed by directories of the checkout


def test_the_shipped_specs_describe_models_of_each_scale():
    sizes = {cfg.size for _, cfg in SHIPPED}
    assert {"tiny", "base"} <= sizes, SHIPPED
    assert any(cfg.init.text == "bert-base-uncased" for _, cfg in SHIPPED)


@pytest.mark.parametrize("where, cfg", SHIPPED, ids=[w for w, _ in SHIPPED])
def test_shipped_model_builds_with_a_count_that_fits_its_size(where, cfg):
    with torch.device("meta"):  # shapes only: nothing is allocated, no checkpoint is read
        task = build_task(cfg, load_pretrained=False)
    total = component_counts(task.model)["total"]
    expected = _named_size_total(cfg.size)
    assert abs(total - expected) <= TOLERANCE * expected, f"{where}: {total:,} parameters; {cfg.size} has {expected:,}"
    if cfg.init.text == "bert-base-uncased":  # the text geometry came from the cached config.json
        text = resolve_arch(cfg).text
        assert (text.hidden, text.layers, text.heads, text.intermediate, text.vocab) == (768, 12, 12, 3072, 30522)
