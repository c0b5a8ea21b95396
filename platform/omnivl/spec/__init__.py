"""Typed job specs: load YAML, apply `--set` overrides, validate before any cluster resource is requested."""

from omnivl.spec.errors import SpecError, SpecIssue
from omnivl.spec.jobs import JOBS, EvaluateJob, JobSpec, PipelineJob, PretrainJob, ServeJob, SynthJob
from omnivl.spec.loader import load_spec, schema, validate_spec

__all__ = [
    "JOBS", "EvaluateJob", "JobSpec", "PipelineJob", "PretrainJob", "ServeJob", "SpecError", "SpecIssue",
    "SynthJob", "load_spec", "schema", "validate_spec",
]
