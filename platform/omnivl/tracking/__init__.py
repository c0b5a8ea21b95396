"""Experiment tracking (TensorBoard, MLflow, Weights & Biases) for training and evaluate jobs; plain Python.

`config` (the spec's `tracking:` section) imports no client library, so specs validate offline; the rest
imports them when a tracker is opened. Exports resolve lazily (PEP 562) for the same reason.
"""

import importlib

_EXPORTS = {
    "TrackingConfig": "omnivl.tracking.config", "MlflowConfig": "omnivl.tracking.config",
    "WandbConfig": "omnivl.tracking.config",
    "Tracker": "omnivl.tracking.tracker",
    "TrainingTracking": "omnivl.tracking.session", "log_evaluation": "omnivl.tracking.session",
    "training_run_of": "omnivl.tracking.session",
    "flatten_params": "omnivl.tracking.names", "global_step": "omnivl.tracking.names",
    "metric_key": "omnivl.tracking.names",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'omnivl.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
