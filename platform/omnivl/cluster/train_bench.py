"""`omnivl bench train`: how much the Ray Train loop costs over a bare PyTorch loop, and how long training
waits for data when batches come from the real decode pipeline.

(1) overhead: the same model, batch sizes and pre-decoded tensors, the same `train_step`, alternating image
    and video batches; steps/s of a plain single-process loop vs. the same loop inside a 1-worker
    `TorchTrainer` (tensors handed over through the object store), measured in one run after warm-up.
(2) data wait: a short two-stage `pretrain` job on the synthetic corpus with Ray Data decoding; the fraction
    of step time spent waiting for the next batch, and samples/s per worker, from its metrics file.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class TrainBenchConfig:
    steps: int = 30
    warmup: int = 5
    image_batch: int = 16
    video_batch: int = 8
    image_size: int = 64
    num_frames: int = 4
    size: str = "tiny"
    threads: int = 1
    pipeline_steps: int = 40


def predecoded_batches(cfg: TrainBenchConfig, corpus: Path) -> dict[str, dict[str, torch.Tensor]]:
    """One image batch and one video batch decoded once from the corpus (the loop reuses them)."""
    from omnivl.data.config import DecodeConfig
    from omnivl.data.decode import RowDecoder
    from omnivl.data.manifest import read_manifest, row_batches
    from omnivl.data.synth import corpus_sources

    decode = DecodeConfig(image_size=cfg.image_size, num_frames=cfg.num_frames, text_max_length=24)
    out = {}
    for src in corpus_sources(str(corpus), "train"):
        if src.kind != "text":
            continue
        n = cfg.image_batch if src.modality == "image" else cfg.video_batch
        cols = next(row_batches(read_manifest(src)[:n], n))
        decoded, _ = RowDecoder([src], decode, src.modality, train=True)(cols)
        out[src.modality] = {k: torch.from_numpy(decoded[k]) for k in ("pixels", "input_ids", "attention_mask", "label_id")}
    return out


def timed_loop(task, batches: dict, steps: int, warmup: int, model=None) -> float:
    """Steps/s of `train_step` over alternating modalities, after `warmup` untimed steps."""
    from omnivl.train.config import OptimizerConfig
    from omnivl.train.loop import build_optimizer, train_step

    model = model or task
    from omnivl.train.parallel import Precision

    opt = build_optimizer(task, OptimizerConfig())
    precision = Precision.of("auto", torch.device("cpu"))
    task.momentum_in_forward = False
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        modality = "image" if step % 2 == 0 else "video"
        train_step(model, opt, [batches[modality]], modality, grad_clip=1.0, precision=precision, task=task)
    return steps / (time.perf_counter() - start)


def bare(cfg: TrainBenchConfig, batches: dict) -> float:
    from omnivl.models.config import ModelConfig
    from omnivl.tasks import build_task

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    task = build_task(ModelConfig(size=cfg.size, image_size=cfg.image_size, num_frames=cfg.num_frames))
    return timed_loop(task, batches, cfg.steps, cfg.warmup)


def _ray_worker(config: dict) -> float:
    import ray
    import ray.train.torch

    from omnivl.models.config import ModelConfig
    from omnivl.tasks import build_task

    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    batches = ray.get(config["batches"])
    from omnivl.train.parallel import Precision, parallelize

    task = build_task(ModelConfig.model_validate(config["model"]))
    device = ray.train.torch.get_device()
    model = parallelize(task.to(device), "ddp", ray.train.get_context().get_world_size(), device,
                        Precision.of("auto", device))
    return timed_loop(task, batches, config["steps"], config["warmup"], model=model)


def in_ray_train(cfg: TrainBenchConfig, batches: dict) -> float:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from omnivl.models.config import ModelConfig

    model = ModelConfig(size=cfg.size, image_size=cfg.image_size, num_frames=cfg.num_frames).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"batches": ray.put(batches), "model": model, "steps": cfg.steps,
                               "warmup": cfg.warmup, "threads": cfg.threads},
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": cfg.threads}),
            run_config=RunConfig(name="bench-train", storage_path=tmp),
        )
        return float(trainer.fit().return_value)


def data_wait(cfg: TrainBenchConfig, corpus: Path, workdir: Path) -> dict:
    """A short two-stage job with real decoding; returns the mean data-wait fraction and samples/s."""
    from omnivl.cluster.pretrain import load_metrics, run_job
    from omnivl.spec import validate_spec

    sources = [{"name": n, "manifest": str(corpus / n / "train.jsonl"), "modality": m, "kind": k}
               for n, m, k in (("image_text", "image", "text"), ("video_text", "video", "text"))]
    half = cfg.pipeline_steps // 2
    job = validate_spec({
        "kind": "pretrain", "name": "bench", "output": str(workdir / "run"),
        "model": {"size": cfg.size, "image_size": cfg.image_size, "num_frames": cfg.num_frames},
        "data": {"sources": sources, "decode": {"image_size": cfg.image_size, "num_frames": cfg.num_frames,
                                                "text_max_length": 24, "randaugment": False}},
        "stages": [{"name": "image", "sources": ["image_text"], "steps": half,
                    "batch_size": {"image": cfg.image_batch}},
                   {"name": "joint", "sources": ["image_text", "video_text"], "steps": half,
                    "batch_size": {"image": cfg.image_batch, "video": cfg.video_batch}}],
        "checkpoint": {"every_steps": cfg.pipeline_steps},
    })
    run_job(job)
    from omnivl.train.metrics import step_records

    records = [r for r in step_records(load_metrics(job.output)) if r["step"] > cfg.warmup]  # skip start-up
    out = {}
    for stage in ("image", "joint"):
        rs = [r for r in records if r["stage"] == stage]
        out[stage] = {"data_wait_frac": float(np.mean([r["data_wait_frac"] for r in rs])),
                      "samples_per_s": float(np.mean([r["samples_per_s"] for r in rs]))}
    return out


def run(cfg: TrainBenchConfig, log=print) -> dict:
    """Runs both measurements (Ray must be initialized) and returns the figures."""
    from omnivl.data.config import SynthConfig
    from omnivl.data.synth import generate

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        generate(SynthConfig(seed=0, image_text=80, image_label=0, video_text=60, video_label=0), str(corpus))
        batches = predecoded_batches(cfg, corpus)
        log(f"overhead: {cfg.steps} timed steps ({cfg.warmup} warm-up), {cfg.size} model, batches "
            f"image {cfg.image_batch} / video {cfg.video_batch}, {cfg.threads} thread(s)")
        bare_sps = bare(cfg, batches)
        log(f"  bare PyTorch loop      {bare_sps:6.2f} steps/s")
        ray_sps = in_ray_train(cfg, batches)
        log(f"  Ray Train (1 worker)   {ray_sps:6.2f} steps/s")
        log(f"  ratio Ray Train / bare {ray_sps / bare_sps:6.3f}")
        log(f"data wait: {cfg.pipeline_steps}-step two-stage job with Ray Data decoding")
        wait = data_wait(cfg, corpus, Path(tmp))
        for stage, m in wait.items():
            log(f"  {stage:<6} data-wait {100 * m['data_wait_frac']:5.1f}%   {m['samples_per_s']:6.1f} samples/s/worker")
    return {"bare_steps_per_s": bare_sps, "ray_train_steps_per_s": ray_sps, "ratio": ray_sps / bare_sps,
            "data_wait": wait, "cuda": torch.cuda.is_available()}
