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
