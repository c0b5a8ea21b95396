"""The Ray Train seam of every training job kind (pretrain, finetune): one `TorchTrainer` per stage, one
per-worker train function.

The driver side (`run_training`) decides what to run: it skips finished stages, starts stage k+1 only from the
*final* checkpoint of stage k (stage 0 from the model's `init`, or from a pretraining export when fine-tuning),
builds one Ray Data stream per modality and sizes the worker group. The worker side (`train_loop_per_worker`)
is the only code Ray Train runs; the step itself is `omnivl.train.loop`. What differs between job kinds is
read from the job (`TrainingJob.loss_weights`) or passed in (`init_export`).

Resume and fault tolerance use our own checkpoints (`omnivl.train.checkpoint`), not Ray's checkpoint manager:
a restarted worker group (a worker died) and a re-run of the same spec (the job was interrupted) both scan the
run directory for the newest checkpoint that loads. Data position policy: a resumed stage starts a new pass
over each source with a fresh shuffle (seeded by stage, epoch and resume point); optimizer steps, learning
rate, momentum encoders and queues continue exactly.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from omnivl import console, storage
from omnivl.cluster.progress import FeedSink, ProgressFeed
from omnivl.spec.jobs import JOBS, TrainingJob
from omnivl.train import checkpoint as ck
from omnivl.train.metrics import MetricsFile, eval_line, is_eval, plot_curves, progress_line, read_records
from omnivl.train.run_log import RunLog
from omnivl.tracking.session import TrainingTracking
from omnivl.train.schedule import lr_at, modality_at, modality_steps, split_batch, stage_weights, steps_for_stage

log = logging.getLogger(__name__)

EXPORT_DIR = "export"
# prompt_len: the leading tokens the LM loss skips (1 for captions and labels, the question for QA rows)
TRAIN_COLUMNS = ("pixels", "input_ids", "attention_mask", "label_id", "prompt_len")
METRICS_FILE = "metrics.jsonl"


# ----------------------------------------------------------------------------------------------- driver side


def run_training(job: TrainingJob, *, init_export: str | None = None) -> dict:
    """Run every stage not finished yet, then write the inference export. Returns a summary.

    `init_export`: the first stage starts from this export's weights (fine-tuning) instead of `job.model.init`."""
    run_dir = run_dir_of(job)
    console.say(f"{job.kind} {job.name!r}: run directory {run_dir}")
    stages = {}
    tracking = TrainingTracking(job.tracking, run_dir, name=job.name, kind=job.kind, params=job.to_dict())
    with tracking.running():  # the tracker runs: params now, curves per stage, export at the end
        for index in range(len(job.stages)):
            name = job.stages[index].name
            stages[name] = run_stage(job, index, run_dir, init_export)
            tracking.stage_done(name, stage_step_offset(job, run_dir, index), stages[name])
        export_uri = write_export(job, run_dir)
        tracking.finish(export_uri)
    summary = {"run_dir": run_dir, "export": export_uri, "metrics": storage.join(run_dir, METRICS_FILE),
               "stages": stages}
    console.say(f"checkpoints: {storage.join(run_dir, 'checkpoints')}\ncurves: {storage.join(run_dir, 'plots')}\n"
                f"metrics: {summary['metrics']}\nexport: {export_uri}")
    return summary


def run_dir_of(job: TrainingJob) -> str:
    return storage.absolute(job.output or storage.join("runs", job.name))


def stage_step_offset(job: TrainingJob, run_dir: str, index: int) -> int:
    """The total steps of the stages before `index` (their final checkpoints' steps): the trackers log step s
    of stage `index` at global step offset + s, one axis across stages (omnivl.tracking.names)."""
    refs = [ck.final_of(run_dir, j, job.stages[j].name) for j in range(index)]
    return sum(ref.step for ref in refs if ref is not None)


def stage_trackers(job: TrainingJob, run_dir: str, index: int) -> list:
    """Rank 0's tracker sink for stage `index`, continuing the tracker runs the driver opened ([] when off)."""
    tracking = TrainingTracking(job.tracking, run_dir, name=job.name, kind=job.kind)
    sink = tracking.stage_sink(stage_step_offset(job, run_dir, index))
    return [sink] if sink is not None else []


def starting_point(job: TrainingJob, index: int, run_dir: str) -> ck.CheckpointRef | None:
    """Stage `index` starts from the previous stage's final checkpoint; raises if that stage is unfinished."""
    if index == 0:
        return None
    prev = job.stages[index - 1]
    ref = ck.final_of(run_dir, index - 1, prev.name)
    if ref is None:
        raise RuntimeError(
            f"stage {job.stages[index].name!r} cannot start: stage {prev.name!r} has no final checkpoint in "
            f"{ck.stage_dir(run_dir, index - 1, prev.name)} (stage 2 never starts from an unfinished stage 1)"
        )
    return ref


def run_stage(job: TrainingJob, index: int, run_dir: str, init_export: str | None = None) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    stage = job.stages[index]
    final = ck.final_of(run_dir, index, stage.name)
    if final is not None:
        console.say(f"stage {stage.name!r}: finished already (final checkpoint {final.uri}), skipped")
        return {"status": "skipped", "final_checkpoint": final.uri, "steps": final.step}
    init = starting_point(job, index, run_dir)
    import ray.data

    # our progress lines replace Ray Data's bars, which interleave badly with the workers' output
    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets, rows, weights, total = stage_datasets(job, index, run_dir)
    init_export = init_export if index == 0 else None  # later stages start from the stage before
    console.say(f"stage {stage.name!r}: {total} steps, alternation {weights}, rows {rows}"
                + (f", initialized from {init.uri if init else init_export}" if init or init_export else ""))
    # the supervised warm-up's classes, read once here (a stage without label names fails before any worker starts)
    classes = stage_classes(job, index) if job.loss_weights(index).get("cls", 0) > 0 else None
    config = {"job": job.to_dict(), "stage_index": index, "run_dir": run_dir, "total_steps": total,
              "weights": weights, "init_from": init.uri if init else None, "init_export": init_export,
              "classes": classes, "held_out": held_out_ref(job, stage.name)}
    feed = ProgressFeed()  # rank 0's records and warnings, live on the driver's console
    config["progress"] = feed.channel
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=scaling_config(job),
        run_config=ray.train.RunConfig(
            name=f"{job.name}-{stage.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=ray_storage_path(run_dir),
            failure_config=ray.train.FailureConfig(max_failures=job.failure.max_failures),
        ),
        datasets=datasets,
    )
    start = time.monotonic()
    with feed:
        result = trainer.fit()
    out = dict(result.return_value or {})
    out["seconds"] = round(time.monotonic() - start, 1)
    console.current().stage_finished(stage.name, out["seconds"])
    out["curves"] = plot_stage(run_dir, stage.name)
    out["status"] = "ran"
    out["bad_input"] = stage_bad_input(job)
    return out


def held_out_ref(job: TrainingJob, stage: str):
    """An object ref to the held-out sets of `eval_during_training` (`omnivl.eval.live.HeldOut`), decoded here
    once per stage (at most `max_items` rows of each source) for rank 0; None when it is off."""
    cfg = job.eval_during_training
    if cfg is None:
        return None
    import ray

    from omnivl.eval.live import decode_held_out

    start = time.monotonic()
    sets = [decode_held_out(src.model_copy(update={"manifest": storage.absolute(src.manifest)}), job.data.decode,
                            cfg.max_items, cfg.batch_size) for src in cfg.sources]
    console.say(f"stage {stage!r}: eval during training every {cfg.every_steps} steps on "
                f"{', '.join(f'{h.name} ({h.rows} rows)' for h in sets)}; decoded in {time.monotonic() - start:.1f}s")
    return ray.put(sets)


def stage_bad_input(job: TrainingJob) -> dict:
    """Skipped/repaired media of this run so far, by reason; raises BadInputError (naming the worst files) if
    the skipped fraction is over `data.decode.max_bad_fraction`."""
    from omnivl.cluster.data_pipeline import enforce_bad_input_threshold

    report = enforce_bad_input_threshold(job.data.decode.max_bad_fraction)
    if report.get("rows_skipped"):
        console.warn(f"bad input: skipped {report['rows_skipped']} of {report['rows_seen']} rows "
                     f"({report['skipped_by_reason']})")
    return report


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


def stage_datasets(job: TrainingJob, index: int, run_dir: str) -> tuple[dict, dict[str, int], dict[str, int], int]:
    """(one Ray Data stream per modality of the stage, rows per epoch of each, alternation weights, total
    steps). Each stream covers the rows the stage's steps consume plus one epoch of slack (skipped bad rows),
    and starts where the stage's newest checkpoint left it (`ResumeRows`, evaluated when a stream starts)."""
    from omnivl.cluster.data_pipeline import StreamRange, build_dataset, plan_stream

    stage = job.stages[index]
    by_name = {s.name: s for s in job.data.sources}
    sources = [by_name[n] for n in stage.sources]
    seed = stage_data_seed(job.seed, index)
    plans = {m: plan_stream(sources, m, seed, job.data.shuffle.window_rows) for m in ("image", "video")
             if any(s.modality == m for s in sources) and getattr(stage.batch_size, m) > 0}
    rows = {m: plan.epoch_rows for m, plan in plans.items()}
    weights = stage_weights(stage, set(plans))
    total = steps_for_stage(stage, rows, weights)
    datasets = {}
    for m, plan in plans.items():
        per_step = getattr(stage.batch_size, m)
        end = modality_steps(total, weights)[m] * per_step + plan.epoch_rows
        start = ResumeRows(run_dir, index, stage.name, weights, m, per_step)
        ds = build_dataset(sources, job.data.decode, modality=m, train=True, seed=seed, plan=plan,
                           stream=StreamRange(start, end))
        datasets[m] = ds.select_columns(list(TRAIN_COLUMNS))  # `text` and `row_key` stay on the CPU side
    return datasets, rows, weights, total


STAGE_SEED_STRIDE = 1000  # stage k's data seed is seed + k * stride: stages draw unrelated orders


def stage_data_seed(seed: int, index: int) -> int:
    return seed + STAGE_SEED_STRIDE * index


class ResumeRows:
    """Picklable: the rows of `modality` a stage has consumed at its newest checkpoint (0 without one), i.e.
    where its training stream resumes. Every step of that modality takes `per_step` rows (the global batch)."""

    def __init__(self, run_dir: str, index: int, stage: str, weights: dict[str, int], modality: str,
                 per_step: int) -> None:
        self.run_dir, self.index, self.stage = run_dir, index, stage
        self.weights, self.modality, self.per_step = dict(weights), modality, per_step

    def __call__(self) -> int:
        refs = ck.list_checkpoints(self.run_dir, self.index, self.stage)
        step = refs[-1].step if refs else 0
        return modality_steps(step, self.weights)[self.modality] * self.per_step


def plot_stage(run_dir: str, stage: str) -> str | None:
    records = [r for r in dedupe(load_metrics(run_dir)) if r.get("stage") == stage]
    if not records:
        return None
    uri = storage.join(run_dir, "plots", f"{stage}.png")
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_curves(records, Path(tmp) / f"{stage}.png", f"stage {stage!r}")
        storage.write_bytes(uri, png.read_bytes())
    return uri


def load_metrics(run_dir: str) -> list[dict]:
    uri = storage.join(run_dir, METRICS_FILE)
    if not storage.exists(uri):
        return []
    with storage.local_copy(uri) as path:
        return read_records(path)


def dedupe(records: list[dict]) -> list[dict]:
    """After a restart, steps after the resumed checkpoint are logged twice: keep the last of each (step and
    evaluation records apart: an evaluation shares its step's number)."""
    latest = {}
    for r in records:
        latest[(r.get("kind"), r.get("stage"), r.get("step"))] = r
    return sorted(latest.values(), key=lambda r: (r.get("stage_index", 0), r.get("step", 0), is_eval(r)))


def write_export(job: TrainingJob, run_dir: str) -> str:
    """Inference export (safetensors + config + tokenizer) from the last stage's final checkpoint."""
    from omnivl.models.export import save_export
    from omnivl.tasks import build_task

    uri = storage.join(run_dir, EXPORT_DIR)
    last = len(job.stages) - 1
    ref = ck.final_of(run_dir, last, job.stages[last].name)
    marker = storage.join(uri, "source.txt")
    if storage.exists(marker) and storage.read_text(marker) == ref.uri:
        return uri
    task = build_task(job.model, load_pretrained=False)
    load_task_state(task, ck.load(ref)["task"], with_head=False)
    save_export(task.model, job.model, uri)
    storage.write_text(marker, ref.uri)  # last: names the checkpoint this export was made from
    return uri


# ----------------------------------------------------------------------------------------------- worker side


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train runs this on every worker. Every rank takes identical schedule decisions and calls
    `ray.train.report` the same number of times (it is a barrier)."""
    import ray.train
    import ray.train.torch

    from omnivl.train.loop import Streams, build_optimizer, set_lr, train_step

    job = JOBS.get(config["job"]["kind"]).model_validate(config["job"])
    index, run_dir, total = config["stage_index"], config["run_dir"], config["total_steps"]
    weights: dict[str, int] = config["weights"]
    stage = job.stages[index]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(job.scaling.cpus_per_worker)))

    feed = FeedSink(config["progress"]) if rank == 0 and config.get("progress") is not None else None
    run_log = RunLog([MetricsFile(local_metrics_path(run_dir)), TrainGauges(stage.name)]
                     + ([feed] if feed else []) + stage_trackers(job, run_dir, index) if rank == 0 else [])
    state, start_step, resumed_from = resume_state(run_dir, index, stage.name, config["init_from"],
                                                   warn=run_log.warn if rank == 0 else None)
    task = initial_task(job, index, state, config["init_export"], world, config.get("classes")).to(device)
    model = ray.train.torch.prepare_model(
        task, parallel_strategy_kwargs={"find_unused_parameters": True, "forward_sync_buffers": False})
    optimizer = build_optimizer(task, stage.optimizer)
    if state is not None and state.get("stage_index") == index:
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state.get("rng"), rank)
    else:
        seed_everything(job.seed + 7919 * index + rank)
    if rank == 0 and resumed_from:
        print(f"[{stage.name}] resumed from {resumed_from} at step {start_step}", flush=True)
    if feed:
        feed.started(stage.name, total, start_step, resumed_from)

    micro = {m: split_batch(getattr(stage.batch_size, m), world, stage.grad_accum).micro for m in weights}
    streams = Streams(open_stream_fn(micro, run_log.warn))
    log_every = max(1, min(10, total // 20 or 1))
    # only rank 0 evaluates; the others wait for it at the next collective (DDP all-reduce, checkpoint, report)
    held_out = ray.get(config["held_out"]) if rank == 0 and config.get("held_out") is not None else None
    last = {}
    for step in range(start_step, total):
        modality = modality_at(step, weights)
        lr = lr_at(step, total, stage.optimizer)
        set_lr(optimizer, lr)
        batches, wait = [], 0.0
        for _ in range(stage.grad_accum):
            batch, waited = streams.next(modality)
            batches.append(batch)
            wait += waited
        stats = train_step(model, optimizer, batches, modality, grad_clip=stage.optimizer.grad_clip,
                           device=device)  # the task moves its momentum encoders inside forward
        maybe_inject_failure(job, run_dir, stage.name, step, rank, world)
        record = make_record(stage.name, index, step + 1, total, modality, lr, stats, wait)
        last = record
        if rank == 0:
            run_log.record(record)
            if (step + 1) % log_every == 0 or step + 1 == total:
                print(progress_line(record), flush=True)
            if held_out is not None:
                evaluate_held_out(job, task, held_out, run_log, index, step + 1, total)
        done = step + 1 == total
        if (step + 1) % job.checkpoint.every_steps == 0 or done:
            save_checkpoint(job, task, optimizer, streams, run_dir, index, step + 1, final=done, rank=rank,
                            world=world, total=total)
            ray.train.report({k: v for k, v in record.items() if isinstance(v, (int, float))})
    run_log.close()
    return {"steps": total, "final_checkpoint": ck.stage_dir(run_dir, index, stage.name),
            "last": {k: v for k, v in last.items() if k.startswith("loss") or k in ("step",)}}


def evaluate_held_out(job: TrainingJob, task, held_out: list, run_log: RunLog, index: int, step: int,
                      total: int) -> None:
    """Rank 0, after optimizer step `step` (1-based): if evaluation is due, score the current model on the
    held-out sets (`omnivl.eval.live`) and log the record (metrics.jsonl, console, trackers)."""
    from omnivl.eval import live

    cfg = job.eval_during_training
    if not live.due(step, total, cfg.every_steps):
        return
    metrics = live.evaluate(task.model, held_out, cfg.batch_size)
    record = live.eval_record(job.stages[index].name, index, step, total, metrics)
    run_log.record(record)
    print(eval_line(record), flush=True)


def initial_task(job: TrainingJob, index: int, state: dict | None, init_export: str | None, world: int,
                 classes: list[str] | None = None):
    """The task stage `index` starts this run with: from `state` (its own or the previous stage's checkpoint),
    else from a pretraining export's weights (fine-tuning), else from `job.model.init`. `classes`: those of the
    stage's supervised warm-up head (`stage_classes`), if it weights `cls`."""
    from omnivl.tasks import build_task

    torch.manual_seed(job.seed)  # identical initial weights on every rank
    task = build_task(job.model, weights=job.loss_weights(index), gather_fn=gather_fn(world),
                      load_pretrained=state is None and not init_export, classes=classes)
    if state is not None:
        # the `cls` warm-up head belongs to its stage: resuming keeps it, the next stage starts without it
        load_task_state(task, state["task"], with_head=state.get("stage_index") == index)
    elif init_export:
        from omnivl.models.export import load_export

        task.start_from(load_export(init_export).state_dict())
    return task


def stage_classes(job: TrainingJob, index: int) -> list[str]:
    """The class names of stage `index`'s label sources, as the data plane makes their ids (whitespace
    collapsed, and with left/right swapped, since a horizontal flip swaps them), sorted."""
    from omnivl.data.manifest import class_names
    from omnivl.data.text import swap_left_right

    by_name = {s.name: s for s in job.data.sources}
    names = set()
    for name in job.stages[index].sources:
        if by_name[name].kind == "label":
            names |= {n for c in class_names(by_name[name]) for n in (c, swap_left_right(c))}
    if not names:
        raise ValueError(f"stage {job.stages[index].name!r}: loss weight cls > 0 but its label sources have no labels")
    return sorted(names)


def load_task_state(task, state: dict, with_head: bool) -> None:
    """Load a task state dict; the `cls` warm-up head (`classifier.*`) only `with_head` (resuming its stage).
    Raises RuntimeError on any other missing or unexpected key, as a strict load would."""
    head = "classifier."
    if not with_head:
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    result = task.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (k.startswith(head) and not with_head)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"checkpoint does not fit the task: missing {missing}, unexpected {result.unexpected_keys}")


def open_stream_fn(micro: dict[str, int], warn):
    """Each modality's shard of its stage stream, in micro-batches. The stream is shuffled where it is read
    (`omnivl.data.stream`), so no shuffle buffer of decoded pixels is needed here. `warn`: the RunLog's."""
    import ray.train

    def open_stream(modality: str, passes: int):
        if passes:
            warn(f"the {modality} stream ran out (more rows skipped than one epoch of slack); "
                 "reading it again from the newest checkpoint's position")
        shard = ray.train.get_dataset_shard(modality)
        return iter(shard.iter_torch_batches(batch_size=micro[modality], drop_last=True))

    return open_stream


def resume_state(run_dir: str, index: int, stage: str, init_from: str | None, warn=None):
    """(state, first step, where from): this stage's newest good checkpoint, else the previous stage's final
    checkpoint (weights, momentum encoders and queues only: a stage starts a fresh optimizer), else nothing."""
    found = ck.latest_good(run_dir, index, stage, warn)
    if found is not None:
        ref, state = found
        return state, ref.step, ref.uri
    if init_from:
        ref = ck.CheckpointRef(init_from, index - 1, "", 0, True)
        state = ck.load(ref)
        return {"task": state["task"], "stage_index": index - 1}, 0, None
    return None, 0, None


def gather_fn(world: int):
    """The contrastive loss's cross-worker hook: all-gather with gradient when there is more than one worker."""
    from omnivl.losses import identity_gather
    from omnivl.losses.distributed import all_gather_with_grad

    return all_gather_with_grad if world > 1 else identity_gather


def maybe_inject_failure(job: TrainingJob, run_dir: str, stage: str, step: int, rank: int, world: int) -> None:
    """Test hook (`failure.inject_failure_at_step`): the last rank's process dies once, at that step."""
    at = job.failure.inject_failure_at_step
    if at is None or step + 1 != at or rank != world - 1:
        return
    marker = storage.join(run_dir, f".fault-injected-{stage}")
    if storage.exists(marker):
        return
    storage.write_text(marker, f"worker rank {rank} killed at step {at}\n")
    print(f"[fault injection] rank {rank} exits at step {at}", flush=True)
    os._exit(1)


def make_record(stage: str, index: int, step: int, total: int, modality: str, lr: float, stats, wait: float) -> dict:
    record = {"stage": stage, "stage_index": index, "step": step, "total_steps": total, "modality": modality,
              "lr": lr, "loss": stats.loss, "samples_per_s": stats.samples / max(stats.seconds + wait, 1e-9),
              "data_wait_frac": wait / max(stats.seconds + wait, 1e-9), "time": time.time()}
    record.update({f"loss_{k}": v for k, v in stats.losses.items()})
    record.update(stats.metrics)
    return record


def local_metrics_path(run_dir: str) -> Path:
    if storage.is_s3(run_dir):
        return Path(tempfile.gettempdir(), "omnivl-metrics", run_dir.replace("/", "_"), METRICS_FILE)
    return Path(run_dir, METRICS_FILE)


def save_checkpoint(job, task, optimizer, streams, run_dir, index, step, *, final, rank, world, total) -> None:
    """Rank 0 writes; every rank contributes its RNG state first (all ranks call this at the same step)."""
    rng = gather_rng(world)
    if rank == 0:
        stage = job.stages[index].name
        state = {"task": task.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "stage_index": index, "stage": stage, "total_steps": total, "world_size": world, "rng": rng,
                 "data": {"passes": dict(streams.passes), "consumed": dict(streams.consumed)}}
        ref = ck.save(run_dir, index, stage, step, state, final=final)
        ck.prune(run_dir, index, stage, job.checkpoint.keep_last)
        if storage.is_s3(run_dir):
            storage.write_bytes(storage.join(run_dir, METRICS_FILE), local_metrics_path(run_dir).read_bytes())
        print(f"[{stage}] checkpoint {'(final) ' if final else ''}{ref.uri}", flush=True)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": repr(random.getstate())}


def gather_rng(world: int) -> list[dict]:
    if world == 1:
        return [rng_state()]
    import torch.distributed as dist

    out: list = [None] * world
    dist.all_gather_object(out, rng_state())
    return out


def restore_rng(states: list[dict] | None, rank: int) -> None:
    """Continue each rank's random streams exactly when the worker count is unchanged; reseed otherwise."""
    if not states or rank >= len(states):
        seed_everything(1234 + rank)
        return
    s = states[rank]
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))
    import ast

    random.setstate(ast.literal_eval(s["python"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
