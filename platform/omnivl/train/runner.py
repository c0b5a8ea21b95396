"""What one training worker does for one stage, in plain PyTorch: build the task, make it parallel, resume,
train, checkpoint, report. Ray Train's per-worker function (`omnivl.cluster.training`) only wires in the
process group, the dataset shards and `report`, as a `WorkerEnv`.

Resume policy: a stage resumes from its newest checkpoint that loads (falling back past damaged ones), on any
number of workers: the global batch, the LR schedule, the optimizer state, the momentum encoders and the queues
continue exactly; each rank's random streams continue exactly when the worker count is unchanged and are
reseeded (`rng.resume_seed`) when it changed. A stage without a checkpoint starts from the previous stage's
final checkpoint (weights, momentum encoders and queues, a fresh optimizer), else from a fine-tuning export,
else from `model.init`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from omnivl import storage
from omnivl.models.config import ModelConfig
from omnivl.train import checkpoint as ck
from omnivl.train import rng
from omnivl.train.augment import augment_images
from omnivl.train.config import CheckpointSpec, FailureSpec, ScalingSpec, StageConfig
from omnivl.train.loop import Batch, Streams, build_optimizer, set_lr, train_step
from omnivl.train.metrics import eval_line, progress_line, upload_metrics
from omnivl.train.parallel import Precision, parallelize
from omnivl.train.run_log import RunLog
from omnivl.train.schedule import lr_at, modality_at, split_batch

HEAD = "classifier."  # the `cls` warm-up head: it belongs to its stage (kept on resume, dropped by the next stage)
LOG_EVERY_MAX = 10  # a progress line at least every this many steps
LOG_LINES_PER_STAGE = 20  # ... and about this many per stage for short stages


@dataclass(frozen=True)
class StagePlan:
    """Everything a worker needs to run stage `stage_index` of a job: typed, picklable, built on the driver."""

    job_name: str
    kind: str
    seed: int
    run_dir: str
    stage_index: int
    stage: StageConfig
    model: ModelConfig
    scaling: ScalingSpec
    checkpoint: CheckpointSpec
    failure: FailureSpec
    loss_weights: dict[str, float]
    batch_rounding: str
    total_steps: int
    weights: dict[str, int]  # modality alternation
    init_from: str | None = None  # the previous stage's final checkpoint
    init_export: str | None = None  # a pretraining export (fine-tuning's stage 0)
    classes: tuple[str, ...] | None = None  # the `cls` warm-up's class names
    eval_every: int | None = None  # held-out evaluation every N steps (rank 0), when the job has it
    eval_batch_size: int = 32

    @property
    def log_every(self) -> int:
        return max(1, min(LOG_EVERY_MAX, self.total_steps // LOG_LINES_PER_STAGE or 1))

    def micro_batch(self, modality: str, world: int) -> int:
        return split_batch(getattr(self.stage.batch_size, modality), world, self.stage.grad_accum,
                           rounding=self.batch_rounding).micro


@dataclass
class WorkerEnv:
    """What the cluster seam hands a worker: its place, its data, and where its records go."""

    rank: int
    world: int
    device: torch.device
    open_stream: Callable[[str, int, int], Iterator[Batch]]  # (modality, micro-batch size, passes so far)
    # every rank, once per stage, after its last step. Not per logged step: Ray Train's `report` waits for its
    # controller to take the previous one, which polls every 2 s (measured 2.0 s per call after the first: a
    # quarter of the demo's time at a report every 5-10 steps). Progress reaches the driver through the sinks.
    report: Callable[[dict], None] = lambda metrics: None
    sinks: list = field(default_factory=list)  # rank 0's record sinks
    held_out: list | None = None  # rank 0's held-out sets (`omnivl.eval.live.HeldOut`)
    on_start: Callable[[str, int, int, str | None], None] | None = None  # (stage, total, first step, resumed from)


@dataclass
class Resumed:
    step: int = 0
    uri: str | None = None


def run_stage(plan: StagePlan, env: WorkerEnv) -> dict:
    """Train stage `plan.stage_index` to its last step on this worker; every rank takes identical schedule
    decisions and makes the same collective calls. Returns the stage summary (rank 0's is the one kept)."""
    run_log = RunLog(env.sinks if env.rank == 0 else [])
    precision = Precision.of(plan.scaling.precision, env.device,
                             sharded=plan.scaling.parallelism == "fsdp" and env.world > 1)
    task = build_stage_task(plan, env.device, env.world)
    model = parallelize(task, plan.scaling.parallelism, env.world, env.device, precision, plan.scaling.compile)
    optimizer = build_optimizer(task, plan.stage.optimizer)
    resumed = resume(plan, env, task, optimizer, run_log.warn)
    if env.rank == 0 and resumed.uri:
        print(f"[{plan.stage.name}] resumed from {resumed.uri} at step {resumed.step} on {env.world} worker(s)",
              flush=True)
    if env.on_start:
        env.on_start(plan.stage.name, plan.total_steps, resumed.step, resumed.uri)
    micro = {m: plan.micro_batch(m, env.world) for m in plan.weights}
    streams = Streams(lambda m, passes: open_with_warning(env, m, micro[m], passes, run_log.warn))
    writer = ck.CheckpointWriter(plan.run_dir, plan.stage_index, plan.stage.name,
                                 async_save=plan.checkpoint.async_save, keep_last=plan.checkpoint.keep_last)
    evaluator = HeldOutEvaluator(plan, env, task) if plan.eval_every else None
    last: dict = {}
    for step in range(resumed.step, plan.total_steps):
        last = run_step(plan, env, model, task, optimizer, streams, precision, step)
        maybe_inject_failure(plan, env, step)
        if env.rank == 0:
            run_log.record(last)
        if env.rank == 0 and ((step + 1) % plan.log_every == 0 or step + 1 == plan.total_steps):
            print(progress_line(last), flush=True)
        if evaluator is not None:
            evaluator.maybe_run(step + 1, run_log)
        if (step + 1) % plan.checkpoint.every_steps == 0 or step + 1 == plan.total_steps:
            save_checkpoint(plan, env, writer, task, optimizer, streams, step + 1)
    writer.finish()
    run_log.close()
    if last:
        env.report(numeric(last))
    return {"steps": plan.total_steps, "final_checkpoint": ck.stage_dir(plan.run_dir, plan.stage_index, plan.stage.name),
            "world_size": env.world, "last": {k: v for k, v in last.items() if k.startswith("loss") or k == "step"}}


def run_step(plan: StagePlan, env: WorkerEnv, model, task, optimizer, streams: Streams, precision: Precision,
             step: int) -> dict:
    """One optimizer step (0-based `step`); returns its record."""
    modality = modality_at(step, plan.weights)
    lr = lr_at(step, plan.total_steps, plan.stage.optimizer)
    set_lr(optimizer, lr)
    batches, wait = [], 0.0
    for _ in range(plan.stage.grad_accum):
        batch, waited = streams.next(modality)
        if plan.stage.augment is not None and modality == "image":
            batch = {**batch, "pixels": augment_images(batch["pixels"], plan.stage.augment)}
        batches.append(batch)
        wait += waited
    stats = train_step(model, optimizer, batches, modality, grad_clip=plan.stage.optimizer.grad_clip,
                       precision=precision, task=task)
    return make_record(plan, step + 1, modality, lr, stats, wait, env.world)


def make_record(plan: StagePlan, step: int, modality: str, lr: float, stats, wait: float, world: int) -> dict:
    busy = max(stats.seconds + wait, 1e-9)
    record = {"stage": plan.stage.name, "stage_index": plan.stage_index, "step": step,
              "total_steps": plan.total_steps, "modality": modality, "lr": lr, "loss": stats.loss,
              "samples_per_s": stats.samples / busy, "data_wait_frac": wait / busy, "world_size": world,
              "time": time.time()}
    record.update({f"loss_{k}": v for k, v in stats.losses.items()})
    record.update(stats.metrics)
    return record


def numeric(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}


def open_with_warning(env: WorkerEnv, modality: str, micro: int, passes: int, warn) -> Iterator[Batch]:
    if passes:
        warn(f"the {modality} stream ran out (more rows skipped than one epoch of slack); "
             "reading it again from the newest checkpoint's position")
    return env.open_stream(modality, micro, passes)


# --------------------------------------------------------------------------------------------- the task


def build_stage_task(plan: StagePlan, device: torch.device, world: int):
    """The task with this stage's objectives, identical on every rank: from `model.init` (stage 0 of a
    pretraining), or a fine-tuning export's weights; a checkpoint, if any, is loaded after it is made parallel."""
    from omnivl.losses import identity_gather
    from omnivl.losses.distributed import all_gather_with_grad
    from omnivl.tasks import build_task

    torch.manual_seed(rng.init_seed(plan.seed))
    gather = all_gather_with_grad if world > 1 else identity_gather
    task = build_task(plan.model, weights=plan.loss_weights, gather_fn=gather,
                      load_pretrained=plan.init_from is None and plan.init_export is None,
                      classes=list(plan.classes) if plan.classes else None)
    if plan.init_export and plan.init_from is None:
        from omnivl.models.export import load_export

        task.start_from(load_export(plan.init_export).state_dict())
    task.momentum_in_forward = False  # the train step moves them (`train_step(task=...)`)
    return task.to(device)


def task_state(task, optimizer=None, *, with_head: bool = True) -> dict:
    """The checkpointed state as DCP state dicts (sharded under FSDP): the task (weights, momentum encoders,
    temperature, queues) and, when given, the optimizer; without the warm-up head unless `with_head`."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        model_sd, optim_sd = get_model_state_dict(task), None
    else:
        model_sd, optim_sd = get_state_dict(task, optimizer)
    if not with_head:
        model_sd = {k: v for k, v in model_sd.items() if not k.startswith(HEAD)}
    return {"task": model_sd} if optim_sd is None else {"task": model_sd, "optimizer": optim_sd}


def load_into(task, optimizer, ref: ck.CheckpointRef, *, with_head: bool) -> None:
    """Load a checkpoint's task state (and optimizer state, when `optimizer` is given) into this run's task,
    resharding onto its workers. Raises ValueError if the checkpoint is damaged or does not fit."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, set_model_state_dict, set_optimizer_state_dict,
    )

    state = task_state(task, optimizer, with_head=with_head)
    ck.load_state(ref, state)
    set_model_state_dict(task, state["task"], options=StateDictOptions(strict=with_head))
    if optimizer is not None:
        # not strict: parameters that never had a gradient have no state to load (see `ck.load_state`)
        set_optimizer_state_dict(task, optimizer, state["optimizer"], options=StateDictOptions(strict=False))


def resume(plan: StagePlan, env: WorkerEnv, task, optimizer, warn) -> Resumed:
    """Load where this stage continues from, and set every rank's random streams."""
    def load_own(ref: ck.CheckpointRef) -> dict:
        load_into(task, optimizer, ref, with_head=True)
        return ck.load_train_state(ref)

    found = ck.latest_good(plan.run_dir, plan.stage_index, plan.stage.name, load_own, warn)
    if found is not None:
        ref, train_state = found
        rng.restore_rng(train_state.get("rng"), world=env.world, seed=plan.seed, stage_index=plan.stage_index,
                        step=ref.step, rank=env.rank)
        return Resumed(ref.step, ref.uri)
    if plan.init_from:
        ref = ck.CheckpointRef(plan.init_from, plan.stage_index - 1, "", 0, True)
        load_into(task, None, ref, with_head=False)  # weights, momentum encoders, queues: a fresh optimizer
    rng.seed_everything(rng.worker_seed(plan.seed, plan.stage_index, env.rank))
    return Resumed()


def save_checkpoint(plan: StagePlan, env: WorkerEnv, writer: ck.CheckpointWriter, task, optimizer,
                    streams: Streams, step: int) -> None:
    """Every rank writes its shard; rank 0 adds the small train state (every rank's RNG, gathered first)."""
    rngs = rng.gather_rng(env.world)
    train_state = {"step": step, "stage_index": plan.stage_index, "stage": plan.stage.name,
                   "total_steps": plan.total_steps, "world_size": env.world, "rng": rngs,
                   "data": {"passes": dict(streams.passes), "consumed": dict(streams.consumed)}}
    final = step == plan.total_steps
    ref = writer.save(step, task_state(task, optimizer), train_state, final=final)
    if env.rank == 0:
        upload_metrics(plan.run_dir)
        print(f"[{plan.stage.name}] checkpoint {'(final) ' if final else ''}{ref.uri}", flush=True)


def export_task(model_cfg: ModelConfig, ref: ck.CheckpointRef):
    """A plain single-process task holding a (possibly sharded) checkpoint's weights, without the warm-up head:
    what the inference export is written from."""
    from omnivl.tasks import build_task

    task = build_task(model_cfg, load_pretrained=False)
    load_into(task, None, ref, with_head=False)
    return task


# ------------------------------------------------------------------------------- evaluation, failure hook


class HeldOutEvaluator:
    """Held-out evaluation every `plan.eval_every` steps, on rank 0. Under FSDP no rank holds the whole model,
    so at each evaluation every rank takes part in gathering the full weights into a plain copy on rank 0."""

    def __init__(self, plan: StagePlan, env: WorkerEnv, task) -> None:
        self.plan, self.env, self.task = plan, env, task
        self.sharded = plan.scaling.parallelism == "fsdp" and env.world > 1
        self._copy = None

    def maybe_run(self, step: int, run_log: RunLog) -> None:
        from omnivl.eval import live

        if not live.due(step, self.plan.total_steps, self.plan.eval_every):
            return
        model = self._gathered_model() if self.sharded else self.task.model
        if self.env.rank != 0 or self.env.held_out is None:
            return
        metrics = live.evaluate(model, self.env.held_out, self.plan.eval_batch_size)
        record = live.eval_record(self.plan.stage.name, self.plan.stage_index, step, self.plan.total_steps, metrics)
        run_log.record(record)
        print(eval_line(record), flush=True)

    def _gathered_model(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.task.model, options=StateDictOptions(full_state_dict=True,
                                                                              cpu_offload=True))
        if self.env.rank != 0:
            return None
        if self._copy is None:
            from omnivl.models.omnivl import build_model

            self._copy = build_model(self.plan.model, load_pretrained=False).model
        self._copy.load_state_dict(full)
        return self._copy


def maybe_inject_failure(plan: StagePlan, env: WorkerEnv, step: int) -> None:
    """Test hook (`failure.inject_failure_at_step`): the last rank's process dies once, at that step."""
    at = plan.failure.inject_failure_at_step
    if at is None or step + 1 != at or env.rank != env.world - 1:
        return
    marker = storage.join(plan.run_dir, f".fault-injected-{plan.stage.name}")
    if storage.exists(marker):
        return
    storage.write_text(marker, f"worker rank {env.rank} killed at step {at}\n")
    print(f"[fault injection] rank {env.rank} exits at step {at}", flush=True)
    os._exit(1)
