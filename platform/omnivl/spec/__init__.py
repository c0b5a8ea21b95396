"""Typed job specs: load YAML, apply `--set` overrides, validate before any cluster resource is requested.

Exports resolve lazily (PEP 562) so that component configs can import `omnivl.spec.base` without pulling
in the job kinds that compose them (which would be an import cycle).
"""

import importlib

_EXPORTS = {
    "SpecError": "omnivl.spec.errors", "SpecIssue": "omnivl.spec.errors",
    "JOBS": "omnivl.spec.jobs", "EvaluateJob": "omnivl.spec.jobs", "FinetuneJob": "omnivl.spec.jobs", "JobSpec": "omnivl.spec.jobs",
    "ImportJob": "omnivl.spec.jobs",
    "PipelineJob": "omnivl.spec.jobs", "PretrainJob": "omnivl.spec.jobs", "ServeJob": "omnivl.spec.jobs",
    "SynthJob": "omnivl.spec.jobs", "TrainingJob": "omnivl.spec.jobs",
    "load_spec": "omnivl.spec.loader", "schema": "omnivl.spec.loader", "validate_spec": "omnivl.spec.loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'omnivl.spec' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
