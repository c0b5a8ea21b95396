"""The `evaluate` job's body, without Ray: check the spec against the checkpoint, read each evaluated source's
manifest once (`EvalSource`), run its tasks (`omnivl.eval.tasks`), write `metrics.json`, `report.md`, figures
and predictions, and log the headline numbers to the trackers. The media passes come from `make_pass`:
`omnivl.cluster.evaluate.run_job` gives Ray actor pools, `LocalPass` runs them in this process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from omnivl import console, storage
from omnivl.eval import report
from omnivl.eval.config import source_issues
from omnivl.eval.driver import DriverModel
from omnivl.eval.media import MediaPass
from omnivl.eval.results import headline
from omnivl.eval.source import EvalSource
from omnivl.eval.tasks import EvalContext, evaluate_source, tasks_for
from omnivl.models.export import read_export_config, resolve_export
from omnivl.tracking.session import log_evaluation

if TYPE_CHECKING:
    from omnivl.spec.jobs import EvaluateJob

CHECKED_MODEL_FIELDS = ("size", "image_size", "num_frames", "embed_dim", "tubelet")


def run_evaluation(job: EvaluateJob, make_pass: Callable[[str], MediaPass], driver_device: str = "cpu") -> dict:
    """Runs `job` with the media passes `make_pass(export)` gives; returns {report: uri, metrics: headline}.
    Raises ValueError for a spec that does not fit its sources or its checkpoint (before any work)."""
    issues = source_issues(job.eval, job.data.sources)
    if issues:  # the loader reports these too; jobs built in code (finetune's held-out eval) land here
        raise ValueError("; ".join(str(i) for i in issues))
    export = resolve_export(storage.absolute(job.checkpoint))
    check_model_matches(job, export)
    out_uri = storage.absolute(job.output or storage.join("runs", job.name))
    media = make_pass(export)
    with storage.staged_output(out_uri) as out:
        ctx = EvalContext(job.eval, job.data.decode, export, out, media,
                          DriverModel(export, job.data.decode, driver_device, job.eval.precision))
        metrics = evaluate_sources(job, ctx)
        write_outputs(metrics, out, f"Evaluation {job.name}")
    console.say(f"report: {storage.join(out_uri, 'report.md')}")
    summary = headline(metrics)
    # into the trackers of the training run that made `export`, when it has them (omnivl.tracking.session)
    log_evaluation(job.tracking, export=export, out_uri=out_uri, name=job.name, params=job.to_dict(),
                   summary=summary)
    return {"report": storage.join(out_uri, "report.md"), "metrics": summary}


def evaluate_sources(job: EvaluateJob, ctx: EvalContext) -> dict:
    """The content of `metrics.json`: per evaluated source its entry (`SourceResult.to_json`), and the
    bad-input counts of every decode."""
    metrics = {"checkpoint": ctx.export, "tasks": list(job.eval.tasks), "sources": {}}
    for src in job.data.sources:
        tasks = tasks_for(src, job.eval)
        if tasks:
            source = EvalSource.read(src.model_copy(update={"manifest": storage.absolute(src.manifest)}))
            metrics["sources"][src.name] = evaluate_source(source, tasks, ctx).to_json()
    metrics["bad_input"] = ctx.media.bad_input()
    return metrics


def write_outputs(metrics: dict, out: Path, title: str) -> None:
    report.write_json(metrics, out)
    (out / "report.md").write_text(report.markdown(metrics, title))


def check_model_matches(job, export: str) -> None:
    """The spec's `model` (of any job with one) must describe the checkpoint; raises ValueError naming the first
    mismatching field."""
    cfg, _ = read_export_config(export)
    for field in CHECKED_MODEL_FIELDS:
        want, have = getattr(job.model, field), getattr(cfg, field)
        if want is not None and want != have:
            raise ValueError(f"model.{field}: the spec says {want!r} but checkpoint {export} was trained with {have!r}")
