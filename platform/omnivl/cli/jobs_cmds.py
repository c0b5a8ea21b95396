"""`omnivl submit | status | logs | stop`: the Ray Jobs API from the command line (thin; the work is in
`omnivl.cluster.jobs_client`).

Exit codes: 0 done (submitted job SUCCEEDED, or the query worked); 1 the submitted job ended FAILED or
STOPPED; 2 invalid spec (nothing was sent); 3 the cluster could not be used (address, auth, unknown job id).
"""

from __future__ import annotations

import argparse
import sys

EXIT_JOB_FAILED = 1
EXIT_CLUSTER = 3


def register(groups) -> None:
    top = groups["top"]
    p = top.add_parser("submit", help="validate a spec and submit it to a Ray cluster through the Jobs API")
    p.add_argument("spec", help="job spec YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a spec field (validated like the file), e.g. stages[0].epochs=2")
    p.add_argument("--submission-id", default=None, help="job id to use (an idempotency key)")
    p.add_argument("--env-var", dest="env_vars", action="append", default=[], metavar="NAME",
                   help="pass this shell's NAME=value to the job's driver and workers (runtime_env), e.g. "
                        "MLFLOW_TRACKING_URI, MLFLOW_TRACKING_TOKEN, WANDB_API_KEY; repeatable; never put in the spec")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    mode.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    _connection_args(p)
    p.set_defaults(func=cmd_submit)

    p = top.add_parser("status", help="status of a submitted job")
    p.add_argument("job_id")
    _connection_args(p)
    p.set_defaults(func=cmd_status)

    p = top.add_parser("logs", help="logs of a submitted job")
    p.add_argument("job_id")
    p.add_argument("--follow", action="store_true", help="keep streaming until the job ends")
    _connection_args(p)
    p.set_defaults(func=cmd_logs)

    p = top.add_parser("stop", help="stop a running job")
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true", help="return once the job has actually stopped")
    _connection_args(p)
    p.set_defaults(func=cmd_stop)


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Jobs API URL http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, then RAY_ADDRESS); "
                        "an explicit --address always wins over the environment")
    p.add_argument("--auth", choices=("auto", "token", "disabled"), default=None,
                   help="token auth: auto sends a token when one is found (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
                        "~/.ray/auth_token); token requires one; disabled sends none "
                        "(default: RAY_AUTH_MODE if token/disabled, else auto)")


def _guarded(fn):
    """Run a command body; a JobsError becomes `error: ...` on stderr and exit code 3."""
    def wrapper(args) -> int:
        from omnivl.cluster.jobs_client import JobsError

        try:
            return fn(args)
        except (JobsError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CLUSTER
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _client(args):
    from omnivl.cluster.jobs_client import JobsClient

    return JobsClient(args.address, args.auth)


def _print_status(info) -> None:
    exit_code = "" if info.driver_exit_code is None else f" (driver exit code {info.driver_exit_code})"
    print(f"{info.job_id}: {info.status}{exit_code}" + (f" - {info.message}" if info.message else ""),
          file=sys.stderr)


def _outcome(info) -> int:
    return 0 if info.status == "SUCCEEDED" else EXIT_JOB_FAILED


@_guarded
def cmd_submit(args) -> int:
    """Validate first (SpecError or a missing --env-var -> exit 2, nothing sent), submit, print the job id, then
    wait or follow."""
    from omnivl.cluster.jobs_client import env_from_shell, relative_outputs
    from omnivl.spec import load_spec

    job = load_spec(args.spec, args.overrides)
    try:
        env_vars = env_from_shell(args.env_vars)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for setting in relative_outputs(job):
        print(f"warning: {setting} is a relative path; on the cluster it lands in the job's temporary working "
              "directory. Use an absolute path on shared storage or an s3:// URI (--set ...).", file=sys.stderr)
    client = _client(args)
    job_id = client.submit_spec(args.spec, args.overrides, submission_id=args.submission_id, env_vars=env_vars)
    print(job_id, flush=True)
    if args.no_wait:
        return 0
    if args.follow:
        info = client.follow_logs(job_id, lambda text: print(text, end="", flush=True))
        _print_status(info)
        return _outcome(info)
    from omnivl.cluster.capacity import relay_capacity_lines

    with relay_capacity_lines(client, job_id):  # "waiting for 2 × pool=trainer (autoscaler requested)"
        return _outcome(client.wait(job_id, on_change=_print_status))


@_guarded
def cmd_status(args) -> int:
    info = _client(args).info(args.job_id)
    print(info.status)
    _print_status(info)
    return 0


@_guarded
def cmd_logs(args) -> int:
    client = _client(args)
    if args.follow:
        client.follow_logs(args.job_id, lambda text: print(text, end="", flush=True))
    else:
        print(client.logs(args.job_id), end="")
    return 0


@_guarded
def cmd_stop(args) -> int:
    client = _client(args)
    if not client.stop(args.job_id):
        print(f"{args.job_id} had already finished ({client.info(args.job_id).status})", file=sys.stderr)
        return 0
    print(f"stop requested for {args.job_id}", file=sys.stderr)
    if args.wait:
        _print_status(client.wait(args.job_id))
    return 0
