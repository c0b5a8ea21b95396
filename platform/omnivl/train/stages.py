"""The driver's plain side of a training job: where a run lives, which stage starts from what, the typed plan
each stage's workers get, its curves, and the inference export. No Ray here (the seam is
`omnivl.cluster.training`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from omnivl import storage
from omnivl.spec.jobs import TrainingJob
from omnivl.train import checkpoint as ck
from omnivl.train.metrics import METRICS_FILE, is_eval, plot_curves, read_records
from omnivl.train.runner import StagePlan, export_task

EXPORT_DIR = "export"


def run_dir_of(job: TrainingJob) -> str:
    return storage.absolute(job.output or storage.join("runs", job.name))


def stage_step_offset(job: TrainingJob, run_dir: str, index: int) -> int:
    """The total steps of the stages before `index` (their final checkpoints' steps): the trackers log step s
    of stage `index` at global step offset + s, one axis across stages (omnivl.tracking.names)."""
    refs = [ck.final_of(run_dir, j, job.stages[j].name) for j in range(index)]
    return sum(ref.step for ref in refs if ref is not None)


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


def stage_plan(job: TrainingJob, index: int, run_dir: str, total: int, weights: dict[str, int],
               init_export: str | None = None) -> StagePlan:
    """The typed plan of stage `index` (the supervised warm-up's classes are read here, once: a stage without
    label names fails before any worker starts)."""
    init = starting_point(job, index, run_dir)
    classes = stage_classes(job, index) if job.loss_weights(index).get("cls", 0) > 0 else None
    live = job.eval_during_training
    return StagePlan(
        job_name=job.name, kind=job.kind, seed=job.seed, run_dir=run_dir, stage_index=index,
        stage=job.stages[index], model=job.model, scaling=job.scaling, checkpoint=job.checkpoint,
        failure=job.failure, loss_weights=job.loss_weights(index), batch_rounding=job.batch_rounding,
        total_steps=total, weights=dict(weights), init_from=init.uri if init else None,
        init_export=init_export if index == 0 else None,  # later stages start from the stage before
        classes=tuple(classes) if classes else None,
        eval_every=live.every_steps if live else None, eval_batch_size=live.batch_size if live else 32)


# ------------------------------------------------------------------------------------ metrics and curves


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


def plot_stage(run_dir: str, stage: str) -> str | None:
    records = [r for r in dedupe(load_metrics(run_dir)) if r.get("stage") == stage]
    if not records:
        return None
    uri = storage.join(run_dir, "plots", f"{stage}.png")
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_curves(records, Path(tmp) / f"{stage}.png", f"stage {stage!r}")
        storage.write_bytes(uri, png.read_bytes())
    return uri


# ------------------------------------------------------------------------------------------------ export


def write_export(job: TrainingJob, run_dir: str) -> str:
    """Inference export (one safetensors file + config + tokenizer) from the last stage's final checkpoint,
    whatever the number of workers or the parallelism that wrote it."""
    from omnivl.models.export import save_export

    uri = storage.join(run_dir, EXPORT_DIR)
    last = len(job.stages) - 1
    ref = ck.final_of(run_dir, last, job.stages[last].name)
    marker = storage.join(uri, "source.txt")
    if storage.exists(marker) and storage.read_text(marker) == ref.uri:
        return uri
    save_export(export_task(job.model, ref).model, job.model, uri)
    storage.write_text(marker, ref.uri)  # last: names the checkpoint this export was made from
    return uri
