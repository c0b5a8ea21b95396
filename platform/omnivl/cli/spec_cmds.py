"""`omnivl validate`, `omnivl spec schema|show|plan`: everything about specs that needs no cluster."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from omnivl.spec import PipelineJob, SpecError, load_spec, schema


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field, e.g. --set stages[0].epochs=2 (repeatable; value parsed as YAML)")


def register(groups) -> None:
    p = groups["top"].add_parser("validate", help="validate job specs offline; exit 1 if any is invalid")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    add_overrides(p)
    p.set_defaults(func=cmd_validate)

    p = groups["spec"].add_parser("schema", help="print the JSON schema of the job specs")
    p.add_argument("--kind", help="only this job kind")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_schema)

    p = groups["spec"].add_parser("show", help="print a spec as validated, with every default filled in")
    p.add_argument("spec", metavar="SPEC")
    add_overrides(p)
    p.set_defaults(func=cmd_show)

    p = groups["spec"].add_parser("plan", help="for a pipeline: each step's output address and whether it is done")
    p.add_argument("spec", metavar="SPEC")
    add_overrides(p)
    p.set_defaults(func=cmd_plan)


def describe(job) -> str:
    if isinstance(job, PipelineJob):
        steps = " -> ".join(f"{s.name}[{j.kind}]" for s, j in zip(job.steps, job.step_jobs))
        return f"pipeline {job.name!r}: {steps}"
    return f"{job.kind} {job.name!r}"


def cmd_validate(args) -> int:
    bad = 0
    for path in args.specs:
        try:
            job = load_spec(path, args.overrides)
        except SpecError as exc:
            bad += 1
            print(f"INVALID {exc}", file=sys.stderr)
            continue
        print(f"ok      {path}: {describe(job)}")
    return 1 if bad else 0


def cmd_schema(args) -> int:
    doc = schema()
    if args.kind:
        if args.kind not in doc:
            raise SpecError([], f"--kind {args.kind!r}: unknown; allowed: {', '.join(doc)}")
        doc = doc[args.kind]
    text = json.dumps(doc, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def cmd_show(args) -> int:
    job = load_spec(args.spec, args.overrides)
    doc = job.to_dict()
    if isinstance(job, PipelineJob):
        for step, sj in zip(doc["steps"], job.step_jobs):
            step["job"] = sj.to_dict()
    print(yaml.safe_dump(doc, sort_keys=False), end="")
    return 0


def cmd_plan(args) -> int:
    from omnivl.pipeline.executor import plan

    job = load_spec(args.spec, args.overrides)
    if not isinstance(job, PipelineJob):
        print(f"{args.spec} is a {job.kind} job, not a pipeline: nothing to plan")
        return 0
    for p in plan(job):
        state = "done" if p.done else "to run"
        deps = f" (needs {', '.join(p.inputs)})" if p.inputs else ""
        print(f"{p.name:<16} {state:<7} {p.output}{deps}")
    return 0
