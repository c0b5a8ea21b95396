"""Run a pipeline's steps in order, skipping those already done.

A step's output lives at `{output_root}/{step}-{hash}` where the hash covers the step's validated config
(with `${steps.X}` references left unexpanded) and the hashes of the steps it references. So an unchanged
re-run finds every `_SUCCESS.json` and does nothing, and a changed step gets a new address, as does every
step that consumes it, while the others are reused (marin's ExecutorStep). `{output_root}/latest/{step}` links
to the newest finished output of each step, a stable name for whatever consumes it next (serving).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omnivl import console, storage
from omnivl.pipeline.refs import find_refs, substitute
from omnivl.spec.jobs import JobSpec, PipelineJob
from omnivl.spec.loader import build_job

MARKER = "_SUCCESS.json"
# Job kinds that run a service until stopped instead of making an output: never marked done, so every run of
# the pipeline starts them again (a `serve` step last serves what the steps before it made).
SERVICE_KINDS = ("serve",)
LATEST_DIR = "latest"
HASH_CHARS = 12

Runner = Callable[[JobSpec], dict]


@dataclass
class StepPlan:
    index: int
    name: str
    hash: str
    output: str
    inputs: list[str]
    raw_job: dict
    done: bool = False


@dataclass
class StepResult:
    name: str
    output: str
    status: str  # "ran" | "skipped"
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)


def step_hash(job: JobSpec, input_hashes: dict[str, str]) -> str:
    config = job.to_dict()
    config.pop("output", None)
    payload = json.dumps({"config": config, "inputs": dict(sorted(input_hashes.items()))}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:HASH_CHARS]


def plan(pipeline: PipelineJob) -> list[StepPlan]:
    """Addresses of every step, and whether it is already done. Touches storage only to look for markers."""
    hashes: dict[str, str] = {}
    plans = []
    for i, (step, job) in enumerate(zip(pipeline.steps, pipeline.step_jobs)):
        inputs = sorted(find_refs(step.job))
        h = step_hash(job, {n: hashes[n] for n in inputs})
        hashes[step.name] = h
        output = storage.join(storage.absolute(pipeline.output_root), f"{step.name}-{h}")
        done = job.kind not in SERVICE_KINDS and storage.exists(storage.join(output, MARKER))
        plans.append(StepPlan(i, step.name, h, output, inputs, step.job, done))
    return plans


def run_pipeline(pipeline: PipelineJob, runner: Runner, log: Callable[[str], None] | None = None,
                 force: bool = False) -> list[StepResult]:
    """Run each step not yet done (all of them with `force`). A failing step raises; earlier outputs stay."""
    log = log or console.say
    plans = plan(pipeline)
    outputs = {p.name: p.output for p in plans}
    results = []
    n = len(plans)
    for p in plans:
        tag = f"[{p.index + 1}/{n}] {p.name}"
        console.current().pipeline_progress(pipeline.name, p.index, n, p.name)
        if p.done and not force:
            log(f"{tag}: done already, skipped -> {p.output}")
            point_latest(p)
            results.append(StepResult(p.name, p.output, "skipped", summary=_read_marker(p.output)))
            continue
        log(f"{tag}: running ({p.raw_job['kind']}) -> {p.output}")
        job = build_job(substitute(p.raw_job, outputs), prefix=("steps", p.index, "job"), allow_pipeline=False)
        job = job.model_copy(update={"output": p.output, "name": p.name})
        start = time.monotonic()
        summary = runner(job) or {}
        seconds = time.monotonic() - start
        if p.raw_job["kind"] not in SERVICE_KINDS:
            _write_marker(p, summary, seconds)
        log(f"{tag}: finished in {seconds:.1f}s")
        point_latest(p)
        results.append(StepResult(p.name, p.output, "ran", seconds, summary))
    console.current().pipeline_progress(pipeline.name, n, n, None)
    return results


def point_latest(p: StepPlan) -> None:
    """`{output_root}/latest/{step}` -> `../{step}-{hash}`: a stable name for the newest finished output of each
    step (`jobs/serve_demo.yaml` serves `runs/demo/latest/pretrain/export`). Local output roots only: object
    stores have no links."""
    if storage.is_s3(p.output):
        return
    out = Path(p.output)
    latest = out.parent / LATEST_DIR
    latest.mkdir(exist_ok=True)
    tmp = latest / f".{p.name}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("..") / out.name, target_is_directory=True)
    os.replace(tmp, latest / p.name)  # atomic: a reader sees the old or the new target, never none


def _write_marker(p: StepPlan, summary: dict, seconds: float) -> None:
    marker = {"step": p.name, "hash": p.hash, "inputs": p.inputs, "job": p.raw_job,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(seconds, 2),
              "summary": summary}
    storage.write_text(storage.join(p.output, MARKER), json.dumps(marker, indent=2, default=str))


def _read_marker(output: str) -> dict:
    try:
        return json.loads(storage.read_text(storage.join(output, MARKER))).get("summary", {})
    except (OSError, ValueError):
        return {}
