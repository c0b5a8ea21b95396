"""Tasks: a model + its losses + the batch keys they read."""

from omnivl.tasks.pretrain import BATCH_KEYS, MomentumEncoders, PretrainTask, TaskOutput, build_task

__all__ = ["BATCH_KEYS", "MomentumEncoders", "PretrainTask", "TaskOutput", "build_task"]
