"""`omnivl bench train`: Ray Train loop overhead vs. a bare PyTorch loop, and data-wait with real decoding."""

from __future__ import annotations

import json


def register(groups) -> None:
    p = groups["bench"].add_parser("train", help="Ray Train vs bare-loop steps/s (same run) and data-wait fraction")
    p.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    p.add_argument("--threads", type=int, default=1, help="torch threads in both loops")
    p.add_argument("--pipeline-steps", type=int, default=40, help="steps of the real-decoding job")
    p.add_argument("--json", dest="json_out", help="also write the figures to this file")
    p.set_defaults(func=cmd_bench_train)


def cmd_bench_train(args) -> int:
    from omnivl.cluster.runtime import ray_session
    from omnivl.cluster.train_bench import TrainBenchConfig, run

    cfg = TrainBenchConfig(steps=args.steps, size=args.size, threads=args.threads, pipeline_steps=args.pipeline_steps)
    with ray_session() as where:
        print(f"bench train on {where}", flush=True)
        figures = run(cfg)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(figures, f, indent=2)
    return 0
