"""`omnivl bench manifest`: what a training stream costs the driver as the manifest grows.

For each size, a Parquet manifest of that many rows (synthetic captions, paths cycling over a few real JPEGs)
is written first, untimed; then a fresh Python process, as a user's driver would be, starts an embedded Ray,
builds the training stream with `build_dataset(train=True)` and takes its first batch. It reports the time
to the first batch (from after `ray.init`) and the driver process's peak RSS. The smallest size is the
baseline of the growth columns, measured in the same run. Peak RSS is the driver process's own (not Ray's
daemons or workers), counted from just before `ray.init`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH_BATCH = 16
WRITE_SLICE_ROWS = 1_000_000  # rows per write call: the generator's memory stays bounded too
KIB = 1024


@dataclass
class ManifestBenchConfig:
    rows: str = "10000,1000000,10000000"  # comma-separated manifest sizes
    media_files: int = 8  # distinct real JPEGs the rows cycle over
    image_size: int = 64
    workdir: str = ""  # where manifests are written (default: a temp dir, removed after)


def write_manifest(path: Path, rows: int, media: list[str]) -> None:
    """A Parquet manifest of `rows` rows (row groups of the importers' size) without holding them all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from omnivl.data.manifest_index import INDEX_CHUNK_ROWS

    media_arr = np.asarray(media, dtype=object)
    schema = pa.schema([("path", pa.string()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, WRITE_SLICE_ROWS):
            idx = np.arange(start, min(rows, start + WRITE_SLICE_ROWS))
            table = pa.table({"path": pa.array(media_arr[idx % len(media)], pa.string()),
                              "text": pa.array([f"synthetic caption number {i}" for i in idx])}, schema=schema)
            writer.write_table(table, row_group_size=INDEX_CHUNK_ROWS)


def write_media(directory: Path, count: int) -> list[str]:
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = directory / f"img_{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def measure(manifest: str, image_size: int) -> dict:
    """In this process (a fresh one): embedded Ray, the training stream of `manifest`, its first batch."""
    import ray

    from omnivl.cluster.data_pipeline import build_dataset
    from omnivl.data.config import ActorPoolConfig, DecodeConfig, SourceConfig

    _reset_peak_rss()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rss_after_init = _peak_rss_mib()
    start = time.perf_counter()
    src = SourceConfig(name="bench", manifest=manifest, modality="image")
    decode = DecodeConfig(image_size=image_size, actors=ActorPoolConfig(min_size=1, max_size=1, batch_size=BENCH_BATCH))
    ds = build_dataset([src], decode, modality="image", train=True, seed=0, label_selector={})
    planned = time.perf_counter() - start
    batch = next(iter(ds.iter_batches(batch_size=BENCH_BATCH, batch_format="numpy")))
    first = time.perf_counter() - start
    ray.shutdown()
    return {"plan_s": round(planned, 2), "first_batch_s": round(first, 2), "batch_rows": len(batch["row_key"]),
            "peak_rss_mib": round(_peak_rss_mib(), 1), "rss_after_ray_init_mib": round(rss_after_init, 1)}


def _reset_peak_rss() -> None:
    """Start the peak RSS from now. A child keeps the high-water mark of the parent it was forked from (here
    the bench process, which just wrote a 10M-row manifest), so without this the peak would be the parent's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak resident set size (Linux >= 4.0)
    except OSError:
        pass


def _peak_rss_mib() -> float:
    """VmHWM of this process (since `_reset_peak_rss`); ru_maxrss where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / KIB  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB  # Linux: KiB


def run(cfg: ManifestBenchConfig) -> list[dict]:
    sizes = [int(x) for x in cfg.rows.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="omnivl-manifest-bench-") as tmp:
        work = Path(cfg.workdir or tmp)
        media = write_media(work / "media", cfg.media_files)
        results = []
        for n in sizes:
            manifest = work / f"manifest-{n}.parquet"
            t0 = time.perf_counter()
            write_manifest(manifest, n, media)
            wrote = time.perf_counter() - t0
            result = {"rows": n, "write_s": round(wrote, 1), **_measure_in_subprocess(str(manifest), cfg.image_size)}
            results.append(result)
            print(json.dumps(result), flush=True)
            manifest.unlink()
    print_table(results)
    return results


def _measure_in_subprocess(manifest: str, image_size: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "omnivl.cluster.manifest_bench", "--measure", manifest,
                          "--image-size", str(image_size)], capture_output=True, text=True,
                         env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    if out.returncode != 0:
        raise RuntimeError(f"measuring {manifest} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(results: list[dict]) -> None:
    base = results[0]
    print(f"\n| rows | time to first batch | driver peak RSS | vs {base['rows']:,} rows |")
    print("|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['rows']:,} | {r['first_batch_s']:.1f} s | {r['peak_rss_mib']:.0f} MiB | "
              f"{r['first_batch_s'] / base['first_batch_s']:.2f}x time, "
              f"{r['peak_rss_mib'] - base['peak_rss_mib']:+.0f} MiB |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--measure", required=True)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.measure, args.image_size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
