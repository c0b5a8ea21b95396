"""Process-group workers (gloo, CPU) for the parallelism and sharded-checkpoint tests: the Ray-free runner and
train step, driven by `torch.multiprocessing` the way Ray Train drives them, with synthetic batches that are a
function of the global step only (so any worker count trains on the same global batches)."""

from __future__ import annotations

import socket
from typing import Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from omnivl.models.config import ModelConfig
from omnivl.train.config import CheckpointSpec, FailureSpec, OptimizerConfig, ScalingSpec, StageConfig
from omnivl.train.runner import StagePlan, WorkerEnv

GLOBAL_BATCH = {"image": 12, "video": 6}  # split over 1, 2 and 3 workers
TEXT_LEN = 12
IMAGE_SIZE = 32
FRAMES = 2
MODEL = ModelConfig(size="tiny", image_size=IMAGE_SIZE, num_frames=FRAMES, queue_size=48)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_batch(modality: str, index: int) -> dict[str, torch.Tensor]:
    """The `index`-th global batch of a modality: random pixels and tokens, unique labels (caption pairs)."""
    n = GLOBAL_BATCH[modality]
    g = torch.Generator().manual_seed(1000 * index + (0 if modality == "image" else 1))
    shape = (n, 3, IMAGE_SIZE, IMAGE_SIZE) if modality == "image" else (n, FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE)
    ids = torch.randint(1000, 2000, (n, TEXT_LEN), generator=g)
    ids[:, 0] = 101
    return {"pixels": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g), "input_ids": ids,
            "attention_mask": torch.ones(n, TEXT_LEN, dtype=torch.long),
            "label_id": torch.arange(n) + 10_000 * index + (0 if modality == "image" else 5_000),
            "prompt_len": torch.ones(n, dtype=torch.long)}


def rank_rows(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    n = next(iter(batch.values())).shape[0] // world
    return {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}


def stream(modality: str, rank: int, world: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
    index = start
    while True:
        yield rank_rows(global_batch(modality, index), rank, world)
        index += 1


def plan(run_dir: str, *, steps: int = 6, every: int = 2, parallelism: str = "fsdp", async_save: bool = False,
         precision: str = "fp32") -> StagePlan:
    stage = StageConfig(name="joint", sources=["x"], steps=steps, batch_size=GLOBAL_BATCH,
                        schedule={"image": 1, "video": 1},
                        optimizer=OptimizerConfig(lr=1e-3, warmup_steps=2))
    return StagePlan(job_name="t", kind="pretrain", seed=0, run_dir=run_dir, stage_index=0, stage=stage,
                     model=MODEL, scaling=ScalingSpec(parallelism=parallelism, precision=precision),
                     checkpoint=CheckpointSpec(every_steps=every, keep_last=10, async_save=async_save),
                     failure=FailureSpec(), loss_weights={"vlc": 1.0, "vlm": 1.0, "lm": 1.0, "cls": 0.0},
                     batch_rounding="exact", total_steps=steps, weights={"image": 1, "video": 1})


class Records:
    """A rank-0 sink keeping the step records."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def log(self, record: dict) -> None:
        self.records.append(record)


def env_for(p: StagePlan, rank: int, world: int, start_step: int = 0) -> tuple[WorkerEnv, Records]:
    from omnivl.train.schedule import modality_steps

    sink = Records()
    consumed = modality_steps(start_step, p.weights)

    def open_stream(modality: str, micro: int, passes: int):
        return stream(modality, rank, world, consumed[modality])

    return WorkerEnv(rank=rank, world=world, device=torch.device("cpu"), open_stream=open_stream,
                     sinks=[sink] if rank == 0 else []), sink


def spawn(fn, world: int, *args) -> None:
    """Run `fn(rank, world, *args)` in `world` gloo processes."""
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()
