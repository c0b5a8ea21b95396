"""The `pretrain` job kind: decoupled joint pretraining, stage after stage, on Ray Train.

All the machinery (per-stage TorchTrainer, the per-worker loop, checkpoints and resume, metrics, export) is
`omnivl.cluster.training`, shared with fine-tuning; pretraining trains each stage with the objective weights
its spec states and starts from `model.init`.
"""

from __future__ import annotations

from omnivl.cluster.training import (  # noqa: F401  (the names tests and benchmarks use)
    EXPORT_DIR, METRICS_FILE, TRAIN_COLUMNS, dedupe, load_metrics, run_training, starting_point,
    train_loop_per_worker,
)
from omnivl.spec.jobs import PretrainJob


def run_job(job: PretrainJob) -> dict:
    """Run every stage not finished yet, then write the inference export. Returns a summary."""
    return run_training(job)
