"""The `pipeline` job kind's runner."""

from __future__ import annotations

from omnivl.pipeline.executor import run_pipeline
from omnivl.spec.jobs import PipelineJob


def run_job(job: PipelineJob) -> dict:
    from omnivl.runners import run_job as run_step

    results = run_pipeline(job, run_step)
    return {r.name: {"output": r.output, "status": r.status, "summary": r.summary} for r in results}
