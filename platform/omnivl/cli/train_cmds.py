"""`omnivl bench train`: DDP vs FSDP per worker (memory, steps/s, MFU on GPUs), and with `--ray` the Ray Train
loop's overhead over a bare PyTorch loop and the data-wait fraction with real decoding."""

from __future__ import annotations

import json
import tempfile


def register(groups) -> None:
    p = groups["bench"].add_parser("train", help="DDP vs FSDP per worker: state and peak memory, steps/s, MFU "
                                   "(GPU); --ray: Ray Train overhead and data-wait with real decoding")
    p.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    p.add_argument("--parallelism", default="ddp,fsdp", help="comma-separated: ddp, fsdp")
    p.add_argument("--workers", type=int, default=2, help="processes per parallelism (one GPU each when there are GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--image-size", type=int, help="default: the size's (224 for small and base)")
    p.add_argument("--frames", type=int, help="frames per video; default: the size's (8 for base)")
    p.add_argument("--image-batch", type=int, default=16, help="global image batch")
    p.add_argument("--video-batch", type=int, default=8, help="global video batch")
    p.add_argument("--steps", type=int, default=6, help="timed steps per parallelism, alternating image/video")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (CPU)")
    p.add_argument("--ray", action="store_true", help="also: Ray Train vs bare loop, and data-wait with Ray Data")
    p.add_argument("--pipeline-steps", type=int, default=40, help="--ray: steps of the real-decoding job")
    p.add_argument("--json", dest="json_out", help="also write the figures to this file")
    p.set_defaults(func=cmd_bench_train)


def cmd_bench_train(args) -> int:
    from omnivl.train.parallel_bench import ParallelBenchConfig, run

    cfg = ParallelBenchConfig(size=args.size, workers=args.workers, image_batch=args.image_batch,
                              video_batch=args.video_batch, image_size=args.image_size, num_frames=args.frames,
                              precision=args.precision, compile=args.compile, steps=args.steps,
                              threads=args.threads)
    parallelisms = [p.strip() for p in args.parallelism.split(",") if p.strip()]
    unknown = set(parallelisms) - {"ddp", "fsdp"}
    if unknown:
        raise SystemExit(f"--parallelism: unknown {sorted(unknown)}; choose from ddp, fsdp")
    with tempfile.TemporaryDirectory(prefix="omnivl-bench-train-") as tmp:
        figures = {"parallelism": run(cfg, parallelisms, tmp)}
    for name, value in figures["parallelism"]["ratios"].items():
        print(f"  {name:<28} {value:6.3f}", flush=True)
    if args.ray:
        figures["ray"] = _ray_figures(args)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


def _ray_figures(args) -> dict:
    from omnivl.cluster.runtime import ray_session
    from omnivl.cluster.train_bench import TrainBenchConfig, run

    cfg = TrainBenchConfig(size="tiny", threads=args.threads, pipeline_steps=args.pipeline_steps)
    with ray_session() as where:
        print(f"bench train --ray on {where}", flush=True)
        return run(cfg)
