"""The training stages' data on Ray: one Ray Data stream per modality, resuming where the stage's newest
checkpoint left it; the held-out sets of evaluation during training; the bad-input report of a stage."""

from __future__ import annotations

import time

from omnivl import console, storage
from omnivl.spec.jobs import TrainingJob
from omnivl.train import checkpoint as ck
from omnivl.train.schedule import modality_steps, stage_weights, steps_for_stage


def stage_datasets(job: TrainingJob, index: int, run_dir: str,
                   columns: tuple[str, ...]) -> tuple[dict, dict[str, int], dict[str, int], int]:
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
        datasets[m] = ds.select_columns(list(columns))  # `text` and `row_key` stay on the CPU side
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
