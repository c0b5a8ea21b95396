"""The Ray Train seam of every training job kind (pretrain, finetune): one `TorchTrainer` per stage.

Driver side (`run_training`): skip finished stages, build each stage's Ray Data streams (one per modality) and
its typed `StagePlan` (`omnivl.train.stages`), run the trainer, plot, export. Worker side
(`train_loop_per_worker`): wire the process group's rank and device, the dataset shards, `ray.train.report` and
rank 0's record sinks into a `WorkerEnv`; everything else (parallelism, resume, RNG, the loop, checkpoints) is
the Ray-free `omnivl.train.runner`. Resume and fault tolerance use our own sharded checkpoints, not Ray's
checkpoint manager: a restarted worker group (a worker or node died, maybe now fewer workers) and a re-run of
the same spec both continue from the newest checkpoint that loads.
"""

from __future__ import annotations

import time
from pathlib import Path

from omnivl import console, storage
from omnivl.cluster.progress import FeedSink, ProgressFeed
from omnivl.spec.jobs import TrainingJob
from omnivl.train.metrics import MetricsFile, is_eval, local_metrics_path
from omnivl.train.runner import StagePlan, WorkerEnv, run_stage as run_stage_worker
from omnivl.train.stages import (
    METRICS_FILE, plot_stage, run_dir_of, stage_plan, stage_step_offset, write_export,
)
from omnivl.train import checkpoint as ck
from omnivl.tracking.session import TrainingTracking

# prompt_len: the leading tokens the LM loss skips (1 for captions and labels, the question for QA rows)
TRAIN_COLUMNS = ("pixels", "input_ids", "attention_mask", "label_id", "prompt_len")


def run_training(job: TrainingJob, *, init_export: str | None = None) -> dict:
    """Run every stage not finished yet, then write the inference export. Returns a summary.

    `init_export`: the first stage starts from this export's weights (fine-tuning) instead of `job.model.init`."""
    run_dir = run_dir_of(job)
    console.say(f"{job.kind} {job.name!r}: run directory {run_dir}")
    stages = {}
    tracking = TrainingTracking(job.tracking, run_dir, name=job.name, kind=job.kind, params=job.to_dict())
    with tracking.running():  # the tracker runs: params now, curves per stage, export at the end
        for index, stage in enumerate(job.stages):
            stages[stage.name] = run_stage(job, index, run_dir, init_export)
            tracking.stage_done(stage.name, stage_step_offset(job, run_dir, index), stages[stage.name])
        export_uri = write_export(job, run_dir)
        tracking.finish(export_uri)
    summary = {"run_dir": run_dir, "export": export_uri, "metrics": storage.join(run_dir, METRICS_FILE),
               "stages": stages}
    console.say(f"checkpoints: {storage.join(run_dir, 'checkpoints')}\ncurves: {storage.join(run_dir, 'plots')}\n"
                f"metrics: {summary['metrics']}\nexport: {export_uri}")
    return summary


def run_stage(job: TrainingJob, index: int, run_dir: str, init_export: str | None = None) -> dict:
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from omnivl.cluster.train_data import held_out_ref, stage_bad_input, stage_datasets

    stage = job.stages[index]
    final = ck.final_of(run_dir, index, stage.name)
    if final is not None:
        console.say(f"stage {stage.name!r}: finished already (final checkpoint {final.uri}), skipped")
        return {"status": "skipped", "final_checkpoint": final.uri, "steps": final.step}
    # our progress lines replace Ray Data's bars, which interleave badly with the workers' output
    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets, rows, weights, total = stage_datasets(job, index, run_dir, TRAIN_COLUMNS)
    plan = stage_plan(job, index, run_dir, total, weights, init_export)
    console.say(f"stage {stage.name!r}: {total} steps, alternation {weights}, rows {rows}, "
                f"{job.scaling.parallelism} on {job.scaling.num_workers} worker(s)"
                + (f", initialized from {plan.init_from or plan.init_export}" if plan.init_from or plan.init_export else ""))
    feed = ProgressFeed()  # rank 0's records and warnings, live on the driver's console
    config = {"plan": plan, "progress": feed.channel, "held_out": held_out_ref(job, stage.name),
              "tracker_offset": stage_step_offset(job, run_dir, index), "tracking": job.tracking}
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=config, scaling_config=scaling_config(job), datasets=datasets,
        run_config=ray.train.RunConfig(
            name=f"{job.name}-{stage.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=ray_storage_path(run_dir),
            failure_config=ray.train.FailureConfig(max_failures=job.failure.max_failures)))
    start = time.monotonic()
    with feed:
        result = trainer.fit()
    out = dict(result.return_value or {})
    out["seconds"] = round(time.monotonic() - start, 1)
    console.current().stage_finished(stage.name, out["seconds"])
    out.update(curves=plot_stage(run_dir, stage.name), status="ran", bad_input=stage_bad_input(job))
    return out


def scaling_config(job: TrainingJob):
    from ray.train import ScalingConfig

    s = job.scaling
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    kwargs = {"num_workers": s.num_workers if isinstance(s.num_workers, int) else tuple(s.num_workers),
              "use_gpu": s.use_gpu, "resources_per_worker": resources}
    if s.worker_label:
        kwargs["label_selector"] = dict(s.worker_label)
    return ScalingConfig(**kwargs)


def ray_storage_path(run_dir: str) -> str:
    """Where Ray Train keeps its own bookkeeping (no model state goes there)."""
    if storage.is_s3(run_dir):
        return storage.join(run_dir, "ray")
    return str(Path(run_dir, "ray").absolute())


# ----------------------------------------------------------------------------------------------- worker side


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train runs this on every worker: wire the worker's place, data and outputs into the runner."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    plan: StagePlan = config["plan"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(max(1, int(plan.scaling.cpus_per_worker)))

    def open_stream(modality: str, micro: int, passes: int):
        # the stream is shuffled where it is read (`omnivl.data.stream`): no shuffle buffer of pixels here
        shard = ray.train.get_dataset_shard(modality)
        return iter(shard.iter_torch_batches(batch_size=micro, drop_last=True))

    feed = FeedSink(config["progress"]) if rank == 0 and config.get("progress") is not None else None
    env = WorkerEnv(rank=rank, world=ctx.get_world_size(), device=ray.train.torch.get_device(),
                    open_stream=open_stream, report=ray.train.report,
                    sinks=rank0_sinks(plan, config, feed) if rank == 0 else [],
                    held_out=ray.get(config["held_out"]) if rank == 0 and config.get("held_out") is not None else None,
                    on_start=feed.started if feed else None)
    return run_stage_worker(plan, env)


def rank0_sinks(plan: StagePlan, config: dict, feed: FeedSink | None) -> list:
    """Where rank 0's records go: metrics.jsonl, Prometheus gauges, the driver's console, the trackers."""
    tracking = TrainingTracking(config["tracking"], plan.run_dir, name=plan.job_name, kind=plan.kind)
    tracker = tracking.stage_sink(config["tracker_offset"])
    return ([MetricsFile(local_metrics_path(plan.run_dir)), TrainGauges(plan.stage.name)]
            + ([feed] if feed else []) + ([tracker] if tracker is not None else []))


class TrainGauges:
    """Prometheus metrics through Ray's metrics system (exported by each node's metrics agent)."""

    KEYS = ("loss", "loss_vlc", "loss_vlm", "loss_lm", "lr", "temperature", "samples_per_s", "data_wait_frac",
            "queue_fill")

    def __init__(self, stage: str) -> None:
        from ray.util.metrics import Gauge

        self.stage = stage
        self.gauges = {k: Gauge(f"omnivl_train_{k}", description=f"OmniVL training {k}", tag_keys=("stage", "modality"))
                       for k in self.KEYS}

    def log(self, record: dict) -> None:
        if is_eval(record):  # evaluation records carry none of these gauges
            return
        tags = {"stage": self.stage, "modality": record["modality"]}
        for k, g in self.gauges.items():
            if k in record and record[k] is not None:
                g.set(float(record[k]), tags=tags)
