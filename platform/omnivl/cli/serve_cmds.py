"""`omnivl serve SPEC` (deploy a checkpoint over HTTP until Ctrl-C) and `omnivl bench serve` (cold start, and
batching on vs off)."""

from __future__ import annotations

import json
import logging
import tempfile

from omnivl.cli.spec_cmds import add_overrides

BENCH_ENDPOINTS = ("embed", "embed-text", "match", "caption")
BENCH_SIZES = ("tiny", "small")


def register(groups) -> None:
    p = groups["top"].add_parser(
        "serve", help="serve a checkpoint over HTTP (a `serve` job spec, or a Ray Serve config file from serve/)")
    p.add_argument("spec", metavar="SPEC", help="jobs/serve_*.yaml, or serve/*.yaml (its first application)")
    add_overrides(p)
    p.add_argument("--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded Ray")
    p.set_defaults(func=cmd_serve)

    b = groups["bench"].add_parser(
        "serve", help="cold start (deploy -> ready, first requests vs warm p99), then HTTP throughput and p50/p99 "
                      "with dynamic batching on vs off")
    b.add_argument("--checkpoint", help="export directory (local or s3://); default: a random model of --size")
    b.add_argument("--size", choices=BENCH_SIZES, default="tiny",
                   help="model size built with random weights and exported for the run (without --checkpoint)")
    b.add_argument("--endpoint", choices=BENCH_ENDPOINTS, default="embed",
                   help="embed: one image per request; embed-text: one text; match: image+text; caption: image")
    b.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    b.add_argument("--concurrency", default="1,4,16", help="comma-separated client concurrencies")
    b.add_argument("--max-batch-size", type=int, default=16)
    b.add_argument("--cold-requests", type=int, default=100, help="requests right after ready (cold p99)")
    b.add_argument("--cold-concurrency", type=int, default=4, help="client concurrency of the cold-start figures")
    b.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded Ray")
    b.add_argument("--json", help="also write the figures to this file")
    b.set_defaults(func=cmd_bench)


def load_serve_job(path: str, overrides: list[str]):
    """A ServeJob from a job spec, or from a Ray Serve config file (first application; its http_options)."""
    from omnivl.spec import load_spec
    from omnivl.spec.errors import SpecError, SpecIssue
    from omnivl.spec.loader import read_yaml, validate_spec

    raw = read_yaml(path)
    if "applications" in raw:
        app = (raw.get("applications") or [{}])[0]
        http = raw.get("http_options") or {}
        raw = {"kind": "serve", "name": app.get("name", "omnivl"), "app": app.get("args", {}),
               "route_prefix": app.get("route_prefix", "/"),
               **{k: http[k] for k in ("host", "port") if k in http}}
        job = validate_spec(raw, overrides, source=path)
    else:
        job = load_spec(path, overrides)
    if job.kind != "serve":
        raise SpecError([SpecIssue("kind", f"omnivl serve needs a 'serve' job, got {job.kind!r}")], path)
    return job


def cmd_serve(args) -> int:
    job = load_serve_job(args.spec, args.overrides)  # validated before any Ray resource is asked for
    from omnivl.serving.config import missing_local_inputs
    from omnivl.spec.errors import SpecError

    issues = missing_local_inputs(job.app)
    if issues:  # named here, before Ray starts: not a traceback from inside a replica
        raise SpecError(issues, args.spec)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from omnivl.cluster.runtime import ray_session
    from omnivl.cluster.serve_app import run_job

    with ray_session(args.address, args.num_cpus) as where:
        print(f"deploying {job.name!r} on {where}", flush=True)
        summary = run_job(job)
    print(json.dumps(summary))
    return 0


def bench_bodies() -> dict[str, bytes]:
    """One request body per benchmark endpoint, built from a synthetic image."""
    import base64

    from omnivl.data.config import SynthConfig
    from omnivl.data.synth import make_item

    row, data, _ = make_item("image_text", "train", 0, SynthConfig())
    media = {"data_b64": base64.b64encode(data).decode()}
    bodies = {"embed": {"media": [media]}, "embed-text": {"texts": [row["text"]]},
              "match": {"pairs": [{"media": media, "text": row["text"]}]},
              "caption": {"media": media, "decoding": {"max_new_tokens": 8}}}
    return {k: json.dumps(v).encode() for k, v in bodies.items()}


def random_export(size: str, out: str) -> str:
    """Export a model of `size` with random weights (seed 0) to `out`; returns `out`."""
    import torch

    from omnivl.models.config import ModelConfig
    from omnivl.models.export import save_export
    from omnivl.models.omnivl import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(size=size)
    save_export(build_model(cfg, load_pretrained=False).model, cfg, out)
    return out


def cmd_bench(args) -> int:
    from omnivl.cluster.runtime import ray_session
    from omnivl.cluster.serve_bench import run_bench

    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    endpoint = args.endpoint
    with tempfile.TemporaryDirectory() as tmp, ray_session(None, args.num_cpus):
        checkpoint = args.checkpoint or random_export(args.size, f"{tmp}/{args.size}-export")
        path = "embed" if endpoint == "embed-text" else endpoint
        result = run_bench(checkpoint, bench_bodies()[endpoint], path, args.requests, concurrencies,
                           args.max_batch_size, cold_requests=args.cold_requests,
                           cold_concurrency=args.cold_concurrency)
    result["endpoint"] = endpoint
    result["checkpoint"] = args.checkpoint or f"random {args.size} (exported for the run)"
    for c, r in result["throughput_ratio_on_off"].items():
        print(f"throughput batching on/off at concurrency {c}: {r}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
