"""Pure schedule arithmetic for training: learning rate, modality alternation, per-worker batch sizes.

Everything here is a function of the step (and the spec), never of the rank, so every worker takes the
same decisions (a rank that alternated differently would deadlock DDP's all-reduce).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from omnivl.train.config import OptimizerConfig, StageConfig


def lr_at(step: int, total_steps: int, opt: OptimizerConfig) -> float:
    """Linear warm-up to `opt.lr` over `warmup_steps`, then decay to `min_lr` by `total_steps`.

    `step` counts optimizer steps from 0. 'step' decay is the paper's: x0.85 per tenth of the run.
    """
    if opt.warmup_steps and step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    span = max(1, total_steps - opt.warmup_steps)
    progress = min(1.0, (step - opt.warmup_steps) / span)
    if opt.schedule == "cosine":
        return opt.min_lr + 0.5 * (opt.lr - opt.min_lr) * (1 + math.cos(math.pi * progress))
    if opt.schedule == "linear":
        return opt.lr + (opt.min_lr - opt.lr) * progress
    return max(opt.min_lr, opt.lr * 0.85 ** math.floor(progress * 10))


def modality_at(step: int, weights: dict[str, int]) -> str:
    """Which modality's batch step `step` uses: smooth weighted round-robin over the modalities with weight > 0.

    {image: 1, video: 1} alternates image, video, image, ...; {image: 2, video: 1} gives image, video, image,
    image, video, image, ... The pattern repeats every sum(weights) steps.
    """
    active = sorted((m, w) for m, w in weights.items() if w > 0)
    if not active:
        raise ValueError("no modality has a positive schedule weight")
    period = sum(w for _, w in active)
    phase = step % period
    current = {m: 0 for m, _ in active}
    choice = active[0][0]
    for _ in range(phase + 1):
        for m, w in active:
            current[m] += w
        choice = max(active, key=lambda mw: (current[mw[0]], mw[0] == "image"))[0]
        current[choice] -= period
    return choice


def modality_steps(steps: int, weights: dict[str, int]) -> dict[str, int]:
    """How many of the first `steps` steps use each modality (`modality_at`'s pattern, counted)."""
    active = {m: w for m, w in weights.items() if w > 0}
    period = sum(active.values())
    full, rest = divmod(steps, period)
    counts = {m: full * w for m, w in active.items()}
    for step in range(rest):
        counts[modality_at(step, weights)] += 1
    return counts


def stage_weights(stage: StageConfig, modalities: set[str]) -> dict[str, int]:
    """The alternation weights restricted to the modalities a stage actually has."""
    return {m: stage.schedule.get(m, 1) for m in sorted(modalities) if getattr(stage.batch_size, m) > 0}


@dataclass(frozen=True)
class WorkerBatch:
    """How a global batch is split: per worker, per micro-step (gradient accumulation). `global_size` is the
    batch the spec states; `effective` the rows a step trains on (fewer only under rounding 'down')."""

    global_size: int
    world_size: int
    grad_accum: int
    micro: int  # per worker, per forward/backward

    @property
    def effective(self) -> int:
        return self.micro * self.world_size * self.grad_accum


BatchRounding = Literal["exact", "down"]


def split_batch(global_size: int, world_size: int, grad_accum: int, rounding: BatchRounding = "exact") -> WorkerBatch:
    """Per-worker micro-batch for a global batch size, the same whatever the number of workers.

    `exact`: the global batch (and so the learning rate the spec states for it) stays as written; raises
    ValueError if it does not split evenly over `world_size x grad_accum`. `down`: the largest global batch
    <= the stated one that splits evenly (`WorkerBatch.effective`); the learning rate stays as stated, and a
    step trains on at most `world_size x grad_accum - 1` rows fewer. Raises ValueError if not even one row per
    worker and micro-step is left."""
    parts = world_size * grad_accum
    if global_size < parts:
        raise ValueError(f"global batch {global_size} is smaller than workers x grad_accum = "
                         f"{world_size} x {grad_accum}: a worker would get no rows")
    if global_size % parts and rounding == "exact":
        raise ValueError(
            f"global batch {global_size} is not divisible by workers x grad_accum = {world_size} x {grad_accum}"
        )
    return WorkerBatch(global_size, world_size, grad_accum, global_size // parts)


def unsplit_worker_counts(global_size: int, workers: tuple[int, int], grad_accum: int,
                          rounding: BatchRounding = "exact") -> list[int]:
    """The worker counts in the elastic range `workers` = (min, max) over which `split_batch` would raise for
    this global batch (Ray Train may start a run, or restart it after a failure, on any count in the range)."""
    lo, hi = workers
    return [n for n in range(max(1, lo), hi + 1) if not _splits(global_size, n * grad_accum, rounding)]


def _splits(global_size: int, parts: int, rounding: BatchRounding) -> bool:
    return global_size >= parts and (rounding == "down" or global_size % parts == 0)


def steps_for_stage(stage: StageConfig, rows: dict[str, int], weights: dict[str, int]) -> int:
    """Optimizer steps of a stage: `steps` if given, else `epochs` passes over the modality that needs most steps."""
    if stage.steps is not None:
        return stage.steps
    period = sum(weights.values())
    per_epoch = 0
    for m, w in weights.items():
        batches = rows.get(m, 0) / max(1, getattr(stage.batch_size, m))
        per_epoch = max(per_epoch, math.ceil(batches * period / w))
    return max(1, math.ceil(stage.epochs * per_epoch))
