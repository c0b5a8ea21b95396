"""The `pretrain` job kind: decoupled joint pretraining, stage after stage, on Ray Train.

All the machinery (per-stage TorchTrainer, the per-worker runner, checkpoints and resume, metrics, export) is
`omnivl.cluster.training` and `omnivl.train`, shared with fine-tuning; pretraining trains each stage with the
objective weights its spec states and starts from `model.init`.
"""

from __future__ import annotations

from omnivl.cluster.training import run_training
from omnivl.train.stages import EXPORT_DIR, METRICS_FILE, dedupe, load_metrics, starting_point  # noqa: F401
# (the names of a pretraining run's layout that tests and benchmarks read)
from omnivl.spec.jobs import PretrainJob


def run_job(job: PretrainJob) -> dict:
    """Run every stage not finished yet, then write the inference export. Returns a summary."""
    return run_training(job)
