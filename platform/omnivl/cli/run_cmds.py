"""`omnivl run SPEC`: run a job on the embedded local Ray or on an existing cluster."""

from __future__ import annotations

import json
import logging
import time

from omnivl.cli.spec_cmds import add_overrides, describe
from omnivl.spec import PipelineJob, load_spec


def register(groups) -> None:
    p = groups["top"].add_parser("run", help="run a job spec (embedded local Ray unless --address/RAY_ADDRESS)")
    p.add_argument("spec", metavar="SPEC")
    add_overrides(p)
    p.add_argument("--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded Ray (default: OMNIVL_NUM_CPUS or 2x cores)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with the embedded Ray")
    p.add_argument("--force", action="store_true", help="pipelines: re-run steps even if already done")
    p.add_argument("--summary-out", help="also write the job's JSON summary to this file")
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    job = load_spec(args.spec, args.overrides)  # validate before asking for any resource
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"validated {args.spec}: {describe(job)}", flush=True)

    from omnivl.cluster.runtime import ray_session
    from omnivl.runners import run_job

    start = time.monotonic()
    with ray_session(args.address, args.num_cpus, args.dashboard) as where:
        print(f"running on {where}", flush=True)
        if isinstance(job, PipelineJob) and args.force:
            from omnivl.pipeline.executor import run_pipeline

            summary = {r.name: {"output": r.output, "status": r.status} for r in run_pipeline(job, run_job, force=True)}
        else:
            summary = run_job(job)
    print(f"finished {job.kind} {job.name!r} in {time.monotonic() - start:.1f}s", flush=True)
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.summary_out:
        with open(args.summary_out, "w") as f:
            f.write(text + "\n")
    return 0
