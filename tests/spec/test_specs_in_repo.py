"""Every spec the repo ships loads and validates, and every serve config passes Ray Serve's own schema."""

from pathlib import Path

import pytest
import yaml

from omnivl.serving.config import ServeAppConfig
from omnivl.spec import PipelineJob, load_spec

ROOT = Path(__file__).resolve().parents[2]
JOB_SPECS = sorted((ROOT / "jobs").glob("*.yaml"))
SERVE_CONFIGS = sorted((ROOT / "serve").glob("*.yaml"))


def test_repo_ships_specs():
    assert (ROOT / "jobs" / "demo.yaml") in JOB_SPECS
    assert SERVE_CONFIGS


@pytest.mark.parametrize("path", JOB_SPECS, ids=lambda p: p.name)
def test_job_spec_validates(path):
    job = load_spec(path)
    if isinstance(job, PipelineJob):
        assert len(job.step_jobs) == len(job.steps)


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_validates(path):
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(doc)  # Ray Serve's own schema (what `serve deploy` checks)
    for app in doc["applications"]:
        assert app["import_path"].startswith("omnivl.")
        ServeAppConfig.model_validate(app["args"])


def test_demo_is_a_pipeline_that_starts_with_the_corpus():
    job = load_spec(ROOT / "jobs" / "demo.yaml")
    assert isinstance(job, PipelineJob)
    assert job.step_jobs[0].kind == "synth"


def test_the_recipe_is_the_same_in_the_demo_and_in_pretrain_tiny():
    """The e2e test trains jobs/pretrain_tiny.yaml; the demo and `omnivl bench robustness` run jobs/demo.yaml."""
    demo = load_spec(ROOT / "jobs" / "demo.yaml")
    pretrain = next(j for j in demo.step_jobs if j.kind == "pretrain")
    tiny = load_spec(ROOT / "jobs" / "pretrain_tiny.yaml")
    assert pretrain.model.to_dict() == tiny.model.to_dict()
    assert [s.to_dict() for s in pretrain.stages] == [s.to_dict() for s in tiny.stages]
    assert [s.name for s in pretrain.data.sources] == [s.name for s in tiny.data.sources]
    assert pretrain.data.decode.to_dict() == tiny.data.decode.to_dict()
