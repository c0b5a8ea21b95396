"""`omnivl run SPEC`: run a job on the embedded local Ray or on an existing cluster.

The console shows the job's own progress (`omnivl.console`): pipeline steps, a bar per training stage, warnings
once each, and a short summary. Ray's log lines and the workers' output go to a log file in the run directory
(its path is printed once); `--verbose` shows them live instead.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omnivl import console, storage
from omnivl.cli.spec_cmds import add_overrides, describe
from omnivl.spec import JobSpec, PipelineJob, load_spec

SUMMARY_FILE = "summary.json"
LOGS_DIR = "logs"


def register(groups) -> None:
    p = groups["top"].add_parser("run", help="run a job spec (embedded local Ray unless --address/RAY_ADDRESS)")
    p.add_argument("spec", metavar="SPEC")
    add_overrides(p)
    p.add_argument("--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded Ray (default: OMNIVL_NUM_CPUS or 2x cores)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with the embedded Ray")
    p.add_argument("--force", action="store_true", help="pipelines: re-run steps even if already done")
    p.add_argument("--summary-out", help="also write the job's full JSON summary to this file")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's log lines and the workers' output live (default: a log file in the run directory)")
    p.set_defaults(func=cmd_run)

    b = groups["bench"].add_parser("robustness", help="run a pipeline spec on several synthetic corpus variants "
                                   "and seeds; write the table of held-out figures beside chance and their bars")
    b.add_argument("spec", metavar="SPEC", nargs="?", default="jobs/demo.yaml")
    b.add_argument("--variants", default="demo,wide,small-objects", help="comma-separated synth variants")
    b.add_argument("--seeds", default="0,1", help="comma-separated seeds (corpus, pretraining and fine-tuning)")
    b.add_argument("--out", default="runs/robustness", help="runs go to OUT/<variant>-s<seed>; the table to OUT")
    b.add_argument("--address", help="Ray cluster to run on (default: an embedded local Ray per run)")
    b.set_defaults(func=cmd_bench_robustness)


def local_run_dir(job: JobSpec) -> str:
    """Where the run's log file and JSON summary go: the job's output directory, or `runs/<name>` when that is
    not local (s3://) or not set."""
    where = getattr(job, "output_root", None) or job.output
    if not where or storage.is_s3(where):
        where = str(Path("runs", job.name))
    return storage.absolute(where)


def cmd_run(args) -> int:
    job = load_spec(args.spec, args.overrides)  # validate before asking for any resource
    run_dir = local_run_dir(job)
    log_path = str(Path(run_dir, LOGS_DIR, f"omnivl-run-{time.strftime('%Y%m%d-%H%M%S')}.log"))
    if args.verbose:
        return _run(args, job, run_dir, console.Console(None, live=False), None)
    with console.process_output_to(log_path) as terminal:
        return _run(args, job, run_dir, console.Console(terminal), log_path)


def _run(args, job: JobSpec, run_dir: str, out: console.Console, log_path: str | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from omnivl.cluster.capacity import watch_capacity
    from omnivl.cluster.runtime import ray_session
    from omnivl.runners import run_job

    with console.use(out):
        out.say(f"validated {args.spec}: {describe(job)}")
        if log_path:
            out.say(f"Ray and worker logs: {log_path} (--verbose shows them here)")
        start = time.monotonic()
        try:
            # watch_capacity: on an autoscaling cluster, say what the job waits for ("waiting for 2 × pool=trainer")
            with ray_session(args.address, args.num_cpus, args.dashboard) as where, watch_capacity(say=out.say):
                out.say(f"running on {where}")
                if isinstance(job, PipelineJob) and args.force:
                    from omnivl.pipeline.executor import run_pipeline

                    summary = {r.name: {"output": r.output, "status": r.status, "summary": r.summary}
                               for r in run_pipeline(job, run_job, force=True)}
                else:
                    summary = run_job(job)
        except BaseException as exc:
            out.say(f"failed {job.kind} {job.name!r} after {console.format_seconds(time.monotonic() - start)}: "
                    f"{type(exc).__name__}: {exc}" + (f"\nfull log: {log_path}" if log_path else ""))
            raise
        text = json.dumps(summary, indent=2, default=str)
        summary_path = Path(run_dir, SUMMARY_FILE)
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(text + "\n")
        if args.summary_out:
            Path(args.summary_out).write_text(text + "\n")
        out.say(f"finished {job.kind} {job.name!r} in {console.format_seconds(time.monotonic() - start)}")
        for line in console.summary_lines(job.kind, summary):
            out.say(line)
        out.say(f"full summary: {summary_path}")
    return 0


def cmd_bench_robustness(args) -> int:
    """Exit 1 when a run misses a bar (or failed), so the command can gate a release."""
    from omnivl.pipeline.robustness import run_table, verdicts

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_table(args.spec, variants, seeds, out, args.address)
    print((out / "robustness.md").read_text(), flush=True)
    print(f"table: {out / 'robustness.md'} (figures: {out / 'robustness.json'})")
    return 0 if all(all(verdicts(r).values()) for r in results.values()) else 1
