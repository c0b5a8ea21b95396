"""`omnivl bench train --parallelism ddp,fsdp`: what each parallelism costs per worker, measured in one run.

Each parallelism runs in its own group of `workers` processes (gloo on CPU, NCCL on GPUs, as Ray Train sets
them up), on the same model, batch sizes and pre-made batches, through the same `train_step` as training:
- steps/s and samples/s per worker, for image steps and video steps separately;
- bytes this worker holds of parameters, gradients and optimizer state (what FSDP shards), and peak memory
  (GPU: max allocated; CPU: the process's peak RSS, which includes the Python runtime, activations and the
  whole task each worker builds before it is sharded) and the RSS after the timed steps;
- on GPUs, model FLOPs utilization: the FLOPs of a step (counted by `torch.utils.flop_counter` on one step of
  each modality) per second, over the device's peak for the precision.
Batches are random pixels and tokens of the real shapes: this measures the model, not the data pipeline (the
data-wait part of `omnivl bench train --ray` does that with real decoding on Ray).
"""

from __future__ import annotations

import json
import resource
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Dense peak FLOP/s per GPU by (name fragment, precision), from the vendors' data sheets (no sparsity).
PEAK_FLOPS = {("H200", "bf16"): 989e12, ("H100", "bf16"): 989e12, ("A100", "bf16"): 312e12,
              ("H200", "fp16"): 989e12, ("H100", "fp16"): 989e12, ("A100", "fp16"): 312e12,
              ("L4", "bf16"): 121e12, ("A10", "bf16"): 125e12}
TEXT_LEN = 40


@dataclass
class ParallelBenchConfig:
    size: str = "small"
    workers: int = 2
    image_batch: int = 16  # global, split over the workers
    video_batch: int = 8
    image_size: int | None = None  # None: the size's
    num_frames: int | None = None
    precision: str = "auto"
    compile: bool = False
    steps: int = 6  # timed, alternating image and video
    warmup: int = 2
    threads: int = 1  # torch threads per worker (CPU)


def peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for (frag, p), v in PEAK_FLOPS.items() if frag in name and p == precision), None)


def synthetic_batch(modality: str, n: int, image_size: int, frames: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0 if modality == "image" else 1)
    shape = (n, 3, image_size, image_size) if modality == "image" else (n, frames, 3, image_size, image_size)
    ids = torch.randint(1000, 20000, (n, TEXT_LEN), generator=g)
    ids[:, 0] = 101
    batch = {"pixels": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g), "input_ids": ids,
             "attention_mask": torch.ones(n, TEXT_LEN, dtype=torch.long), "label_id": torch.arange(n)}
    return {k: v.to(device) for k, v in batch.items()}


def _step_flops(model, optimizer, batch, modality, precision, task) -> int:
    """FLOPs this rank computes in one training step of `modality` (forward, backward, optimizer)."""
    from torch.utils.flop_counter import FlopCounterMode

    from omnivl.train.loop import train_step

    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, [batch], modality, grad_clip=1.0, precision=precision, task=task)
    return int(counter.get_total_flops())


def current_rss() -> int:
    """This process's resident memory now (after the timed steps), in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(rank: int, world: int, cfg: ParallelBenchConfig, parallelism: str, device: torch.device) -> dict:
    """One worker's figures for `parallelism` (the process group is up)."""
    from omnivl.losses.distributed import all_gather_with_grad
    from omnivl.models.config import ModelConfig
    from omnivl.models.sizes import resolve_arch
    from omnivl.tasks import build_task
    from omnivl.train.config import OptimizerConfig
    from omnivl.train.loop import build_optimizer, train_step
    from omnivl.train.parallel import Precision, parallelize, state_bytes

    model_cfg = ModelConfig(size=cfg.size, image_size=cfg.image_size, num_frames=cfg.num_frames)
    arch = resolve_arch(model_cfg)
    torch.manual_seed(0)
    task = build_task(model_cfg, load_pretrained=False, gather_fn=all_gather_with_grad).to(device)
    task.momentum_in_forward = False
    precision = Precision.of(cfg.precision, device)
    model = parallelize(task, parallelism, world, device, precision, cfg.compile)
    optimizer = build_optimizer(task, OptimizerConfig())
    per_rank = {"image": cfg.image_batch // world, "video": cfg.video_batch // world}
    batches = {m: synthetic_batch(m, n, arch.visual.image_size, arch.visual.num_frames, device)
               for m, n in per_rank.items()}
    flops = {m: _step_flops(model, optimizer, batches[m], m, precision, task) for m in batches}
    for i in range(cfg.warmup):
        m = "image" if i % 2 == 0 else "video"
        train_step(model, optimizer, [batches[m]], m, grad_clip=1.0, precision=precision, task=task)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = {"image": 0.0, "video": 0.0}
    counts = {"image": 0, "video": 0}
    for i in range(cfg.steps):
        m = "image" if i % 2 == 0 else "video"
        _sync(device)
        start = time.perf_counter()
        train_step(model, optimizer, [batches[m]], m, grad_clip=1.0, precision=precision, task=task)
        _sync(device)
        seconds[m] += time.perf_counter() - start
        counts[m] += 1
    peak = peak_flops(device, precision.name)
    out = {"rank": rank, "state_bytes": state_bytes(task, optimizer), "precision": precision.name,
           "peak_memory_bytes": (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                                 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
           "rss_bytes": current_rss()}
    for m in seconds:
        per_step = seconds[m] / max(counts[m], 1)
        out[m] = {"steps_per_s": 1 / per_step, "samples_per_s": per_rank[m] / per_step,
                  "flops_per_step": flops[m], "mfu": flops[m] / per_step / peak if peak else None}
    return out


def _worker(rank: int, world: int, port: int, cfg: ParallelBenchConfig, parallelism: str, out_dir: str) -> None:
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(cfg.threads)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, device_id=device if cuda else None)
    try:
        result = measure(rank, world, cfg, parallelism, device)
        Path(out_dir, f"{parallelism}-{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_parallelism(cfg: ParallelBenchConfig, parallelism: str, out_dir: str) -> list[dict]:
    """Every worker's figures for one parallelism, in rank order."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(cfg.workers, _free_port(), cfg, parallelism, out_dir), nprocs=cfg.workers, join=True)
    return [json.loads(Path(out_dir, f"{parallelism}-{r}.json").read_text()) for r in range(cfg.workers)]


def run(cfg: ParallelBenchConfig, parallelisms: list[str], out_dir: str, log=print) -> dict:
    """Measure each parallelism in turn; logs a table and returns {parallelism: [per-worker figures]}."""
    log(f"parallelism: {cfg.size} model, {cfg.workers} workers, global batch image {cfg.image_batch} / video "
        f"{cfg.video_batch}, precision {cfg.precision}, compile {cfg.compile}, {cfg.steps} timed steps")
    figures = {p: run_parallelism(cfg, p, out_dir) for p in parallelisms}
    for line in table(figures):
        log(line)
    return {"config": asdict(cfg), "workers": figures, "ratios": ratios(figures)}


def _mib(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def table(figures: dict[str, list[dict]]) -> list[str]:
    lines = [f"  {'':<5} {'state MiB/worker':>17} {'(params':>8} {'grads':>8} {'optim)':>8} {'peak MiB':>9} "
             f"{'RSS MiB':>9} {'img steps/s':>11} {'vid steps/s':>11} {'img MFU':>8} {'vid MFU':>8}"]
    for p, workers in figures.items():
        w = max(workers, key=lambda r: r["state_bytes"]["total"])  # the worker holding most
        sb = w["state_bytes"]
        mfu = lambda m: f"{100 * w[m]['mfu']:7.1f}%" if w[m]["mfu"] is not None else "     n/a"
        lines.append(f"  {p:<5} {_mib(sb['total']):>17} {_mib(sb['params']):>8} {_mib(sb['grads']):>8} "
                     f"{_mib(sb['optimizer']):>8} {_mib(max(r['peak_memory_bytes'] for r in workers))} "
                     f"{_mib(max(r['rss_bytes'] for r in workers))} "
                     f"{w['image']['steps_per_s']:11.2f} {w['video']['steps_per_s']:11.2f} {mfu('image')} {mfu('video')}")
    return lines


def ratios(figures: dict[str, list[dict]]) -> dict[str, float]:
    """FSDP over DDP, when both ran: state bytes per worker (target <= 0.6) and steps/s."""
    if not {"ddp", "fsdp"} <= set(figures):
        return {}
    most = {p: max(r["state_bytes"]["total"] for r in w) for p, w in figures.items()}
    speed = {p: {m: min(r[m]["steps_per_s"] for r in w) for m in ("image", "video")} for p, w in figures.items()}
    return {"state_bytes_fsdp_over_ddp": most["fsdp"] / most["ddp"],
            "image_steps_fsdp_over_ddp": speed["fsdp"]["image"] / speed["ddp"]["image"],
            "video_steps_fsdp_over_ddp": speed["fsdp"]["video"] / speed["ddp"]["video"]}
