"""Which code runs each job kind. Imported lazily so `omnivl validate` never imports torch or Ray."""

from __future__ import annotations

import importlib

from omnivl.spec.jobs import JobSpec

RUNNERS = {
    "synth": "omnivl.data.synth:run_job",
    "import": "omnivl.data.importers:run_job",
    "pretrain": "omnivl.cluster.pretrain:run_job",
    "finetune": "omnivl.cluster.finetune:run_job",
    "evaluate": "omnivl.cluster.evaluate:run_job",
    "embed": "omnivl.cluster.embed:run_job",
    "index": "omnivl.embed.index:run_job",
    "serve": "omnivl.cluster.serve_app:run_job",
    "pipeline": "omnivl.pipeline.run:run_job",
}


def run_job(job: JobSpec) -> dict:
    """Run one job (Ray must already be initialized for kinds that use it); returns its summary."""
    target = RUNNERS.get(job.kind)
    if target is None:
        raise ValueError(f"no runner for job kind {job.kind!r}")
    module_name, fn_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("omnivl"):
            raise NotImplementedError(f"job kind {job.kind!r} is not available in this version ({exc.name} missing)") from None
        raise
    return getattr(module, fn_name)(job) or {}
