"""`omnivl bench data`: decode throughput per CPU core of (a) the Ray Data pipeline, (b) the same decode
functions in a plain loop (this machine's ceiling), (c) a torch DataLoader using the same functions; all in
one run so the ratios a/b and a/c compare like with like. Also sparse sampling vs decoding every frame.

Rates are steady-state: the clock starts when the first batch arrives, so actor/worker start-up (a fixed
cost, seconds) is reported separately instead of being spread over a short benchmark.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from omnivl.data.config import ActorPoolConfig, DecodeConfig, SourceConfig
from omnivl.data.decode import RowDecoder
from omnivl.data.manifest import read_manifest, row_batches
from omnivl.data.synth import COLOURS, SHAPES, draw_shape, encode_h264
from omnivl.data.video import decode_clip


@dataclass
class BenchConfig:
    videos: int = 4            # distinct files; rows cycle over them
    clips: int = 64            # rows decoded per video measurement
    seconds: float = 10.0
    fps: int = 30
    width: int = 640
    height: int = 360
    gop: int = 30              # keyframe interval; real footage is usually 1-2 s
    images: int = 256
    image_width: int = 640
    image_height: int = 480
    workers: int = 2           # cores given to (a) and (c)
    image_size: int = 224
    num_frames: int = 8
    batch_size: int = 4        # clips per decode batch
    image_batch_size: int = 32


@dataclass
class Rate:
    items: int
    seconds: float
    startup_s: float
    cores: int

    @property
    def per_core(self) -> float:
        return self.items / self.seconds / self.cores if self.seconds > 0 else float("nan")


# --- media ------------------------------------------------------------------------------------------------

def _video_frames(cfg: BenchConfig, seed: int) -> np.ndarray:
    """Moving shapes over a drifting gradient with grain, so the encoder has real work and motion."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    n, h, w = int(cfg.seconds * cfg.fps), cfg.height, cfg.width
    ys, xs = np.mgrid[0:h, 0:w]
    grain = rng.integers(-8, 9, (h, w, 1))
    out = np.empty((n, h, w, 3), np.uint8)
    for f in range(n):
        base = np.stack([(xs + 2 * f) % 256, (ys + f) % 256, np.full_like(xs, 120)], axis=2)
        img = Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))
        for k in range(3):
            cx = (w * (0.2 + 0.3 * k) + 3 * f * (k + 1)) % w
            draw_shape(img, SHAPES[k], cx, h * (0.3 + 0.2 * k), h * 0.25, list(COLOURS.values())[k])
        out[f] = np.asarray(img)
    return out


def make_media(cfg: BenchConfig, root: Path) -> tuple[SourceConfig, SourceConfig]:
    """Write the benchmark videos and images with JSONL manifests; returns (video source, image source)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    vids = []
    for i in range(cfg.videos):
        p = root / f"v{i}.mp4"
        p.write_bytes(encode_h264(_video_frames(cfg, i), cfg.fps, gop=cfg.gop, crf=23))
        vids.append(p.name)
    rng = np.random.default_rng(0)
    imgs = []
    for i in range(min(cfg.images, 32)):
        a = rng.integers(0, 255, (cfg.image_height // 8, cfg.image_width // 8, 3), dtype=np.uint8)
        img = Image.fromarray(a).resize((cfg.image_width, cfg.image_height), Image.BICUBIC)
        img.save(root / f"i{i}.jpg", quality=90)
        imgs.append(f"i{i}.jpg")
    _manifest(root / "videos.jsonl", [vids[k % len(vids)] for k in range(cfg.clips)])
    _manifest(root / "images.jsonl", [imgs[k % len(imgs)] for k in range(cfg.images)])
    return (SourceConfig(name="bench_video", manifest=str(root / "videos.jsonl"), modality="video"),
            SourceConfig(name="bench_image", manifest=str(root / "images.jsonl"), modality="image"))


def _manifest(path: Path, files: list[str]) -> None:
    path.write_text("".join(json.dumps({"path": f, "text": f"sample {i}"}) + "\n" for i, f in enumerate(files)))


# --- the three ways to run the same functions -------------------------------------------------------------

def _batches(source: SourceConfig, batch_size: int) -> list[dict]:
    return list(row_batches(read_manifest(source), batch_size))


def _timed(batches_iter, cores: int, started: float) -> Rate:
    """Drain an iterator of output batches. The rate clock starts when `cores` batches have arrived (by then
    every worker has started and produced), and counts only the rows after them."""
    warm_at, warm_n, total, seen = None, 0, 0, 0
    for out in batches_iter:
        total += len(out["label_id"])
        seen += 1
        if seen == cores:
            warm_at, warm_n = time.perf_counter(), total
    end = time.perf_counter()
    if warm_at is None or total == warm_n:  # too few batches to time after warm-up: count start-up in
        return Rate(total, end - started, 0.0, cores)
    return Rate(total - warm_n, end - warm_at, warm_at - started, cores)


def bare_loop(source: SourceConfig, decode: DecodeConfig, modality: str) -> Rate:
    started = time.perf_counter()
    decoder = RowDecoder([source], decode, modality, train=True, seed=0)
    return _timed((decoder(b)[0] for b in _batches(source, decode.pool(modality).batch_size)), 1, started)


class _TorchBatches:
    """A map-style torch Dataset whose items are whole batches, each decoded by the worker's own RowDecoder."""

    def __init__(self, source, decode, modality):
        self.args, self.batches, self.decoder = (source, decode, modality), _batches(source, decode.pool(modality).batch_size), None

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        if self.decoder is None:
            source, decode, modality = self.args
            self.decoder = RowDecoder([source], decode, modality, train=True, seed=0)
        out = self.decoder(self.batches[i])[0]
        return {k: v for k, v in out.items() if k != "text"}


def torch_loader(source: SourceConfig, decode: DecodeConfig, modality: str, workers: int) -> Rate:
    import torch

    started = time.perf_counter()
    loader = torch.utils.data.DataLoader(_TorchBatches(source, decode, modality), batch_size=None,
                                         num_workers=workers, prefetch_factor=2, persistent_workers=False)
    return _timed(loader, workers, started)


def ray_pipeline(source: SourceConfig, decode: DecodeConfig, modality: str, workers: int) -> Rate:
    from omnivl.cluster.data_pipeline import build_dataset

    started = time.perf_counter()
    ds = build_dataset([source], decode, modality=modality, train=True, seed=0, label_selector={},
                       ledger="omnivl-bench-ledger")
    return _timed(ds.iter_batches(batch_size=None, batch_format="numpy"), workers, started)


def sparse_vs_full(source: SourceConfig, decode: DecodeConfig, clips: int) -> tuple[Rate, Rate]:
    """Clips/s of decoding only the T sampled frames vs decoding every frame and then picking."""
    files = [r.uri for r in read_manifest(source)][:clips]
    rates = []
    for sample_only in (True, False):
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for f in files:
            data = Path(f).read_bytes()
            decode_clip(data, decode.num_frames, decode.image_size, True, rng, decode.decode_threads,
                        sample_only=sample_only)
        rates.append(Rate(len(files), time.perf_counter() - start, 0.0, 1))
    return rates[0], rates[1]


# --- driver -----------------------------------------------------------------------------------------------

def run(cfg: BenchConfig, workdir: str | None = None, log=print) -> dict:
    """Generate media, run the measurements, print the table; returns all figures."""
    import ray

    started_ray = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False)
        started_ray = True
    decode = DecodeConfig(image_size=cfg.image_size, num_frames=cfg.num_frames, randaugment=True,
                          actors=ActorPoolConfig(min_size=cfg.workers, max_size=cfg.workers,
                                                 cpus_per_actor=1, batch_size=cfg.batch_size),
                          image_actors=ActorPoolConfig(min_size=cfg.workers, max_size=cfg.workers,
                                                       cpus_per_actor=1, batch_size=cfg.image_batch_size))
    try:
        with tempfile.TemporaryDirectory(prefix="omnivl-bench-", dir=workdir) as tmp:
            t = time.perf_counter()
            video_src, image_src = make_media(cfg, Path(tmp))
            log(f"generated {cfg.videos} videos ({cfg.seconds:g}s, {cfg.fps} fps, {cfg.width}x{cfg.height} H.264, "
                f"GOP {cfg.gop}) and {min(cfg.images, 32)} JPEGs {cfg.image_width}x{cfg.image_height} "
                f"in {time.perf_counter() - t:.1f}s")
            results = {m: _measure(src, decode, m, cfg.workers)
                       for m, src in (("video", video_src), ("image", image_src))}
            sparse, full = sparse_vs_full(video_src, decode, min(cfg.clips, 12))
    finally:
        if started_ray:
            ray.shutdown()
    report = _report(cfg, results, sparse, full)
    for line in report["lines"]:
        log(line)
    return report


def _measure(source, decode, modality, workers) -> dict[str, Rate]:
    return {"bare": bare_loop(source, decode, modality), "dataloader": torch_loader(source, decode, modality, workers),
            "ray": ray_pipeline(source, decode, modality, workers)}


def _report(cfg: BenchConfig, results: dict, sparse: Rate, full: Rate) -> dict:
    unit = {"video": "clips", "image": "images"}
    lines = [f"cpu cores on machine: {os.cpu_count()}; workers for (a) and (c): {cfg.workers}; "
             f"output {cfg.image_size}px, T={cfg.num_frames}, train-mode transforms",
             f"{'per CPU core':22} {'(a) ray data':>13} {'(b) bare loop':>14} {'(c) dataloader':>15} {'a/b':>6} "
             f"{'a/c':>6}  startup a / c (s)"]
    figures = {}
    for modality, r in results.items():
        a, b, c = r["ray"].per_core, r["bare"].per_core, r["dataloader"].per_core
        figures[modality] = {k: {**asdict(v), "per_core": v.per_core} for k, v in r.items()}
        figures[modality].update(a_over_b=_ratio(a, b), a_over_c=_ratio(a, c))
        label = f"{modality} ({unit[modality]}/s/core)"
        lines.append(f"{label:22} {a:13.1f} {b:14.1f} {c:15.1f} {_ratio(a, b):6.2f} {_ratio(a, c):6.2f}"
                     f"  {r['ray'].startup_s:.1f} / {r['dataloader'].startup_s:.1f}")
    speedup = _ratio(sparse.per_core, full.per_core)
    lines.append(f"video decode, sampled frames only: {sparse.per_core:.1f} clips/s; every frame then pick: "
                 f"{full.per_core:.1f} clips/s; speedup {speedup:.2f}x")
    figures["sparse_vs_full"] = {"sampled_clips_per_s": sparse.per_core, "full_clips_per_s": full.per_core,
                                 "speedup": speedup}
    return {"config": asdict(cfg), "figures": figures, "lines": lines}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")
