"""`omnivl bench embed`: the `embed` job against a bare single-process loop over the same rows, by manifest size.

For each size (rows cycling over a few real JPEGs, distinct captions, Parquet row groups = shards):
  bare     read the manifest, decode (evaluation transforms) and `encode_visual` in one process, one torch
           thread: this machine's ceiling per core
  embed×1  `kind: embed` with one model actor (Ray Data actor pool, shards written to Parquet)
  embed×2  the same with two actors
Per core is rows per CPU-second of the process(es) doing the work (`time.process_time`, all threads), so a
decode thread running beside the model is counted, not hidden. Wall-clock rows/s includes the job's fixed
costs (planning, actor start-up, writing shards): the table over sizes shows them amortizing.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROW_GROUP = 1024  # rows per manifest chunk = rows per output shard


@dataclass
class EmbedBenchConfig:
    rows: str = "2000,8000"  # comma-separated manifest sizes
    images: int = 32  # distinct files the rows cycle over
    size: str = "tiny"  # model size (random weights: speed does not depend on them)
    batch_size: int = 64
    cpus: int = 2  # the embedded Ray's CPUs


def _corpus(root: Path, cfg: EmbedBenchConfig, size: int) -> tuple[str, Path]:
    """(export, manifest dir): a random-weight export of `cfg.size` and the synthetic images at its geometry."""
    import torch

    from omnivl.data.config import SynthConfig
    from omnivl.data.synth import generate
    from omnivl.models.config import ModelConfig
    from omnivl.models.export import save_export
    from omnivl.models.omnivl import build_model

    torch.manual_seed(0)
    mcfg = ModelConfig(size=cfg.size)
    built = build_model(mcfg, load_pretrained=False)
    save_export(built.model, mcfg, str(root / "export"))
    generate(SynthConfig(image_size=size, image_text=cfg.images, image_label=0, video_text=0, video_label=0,
                         image_qa=0, video_qa=0, val_fraction=0.0, test_fraction=0.0), str(root / "corpus"))
    return str(root / "export"), root / "corpus" / "image_text"


def _manifest(corpus: Path, rows: int, path: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = [json.loads(x) for x in (corpus / "train.jsonl").read_text().splitlines()]
    pq.write_table(pa.table({"path": [str(corpus / base[i % len(base)]["path"]) for i in range(rows)],
                             "text": [f"{base[i % len(base)]['text']} #{i}" for i in range(rows)]}),
                   path, row_group_size=ROW_GROUP)
    return str(path)


def bare_loop(manifest: str, export: str, batch_size: int) -> dict:
    """Read, decode and embed every row in this process with one torch thread."""
    import torch

    from omnivl.data.config import DecodeConfig, SourceConfig
    from omnivl.data.decode import RowDecoder
    from omnivl.data.manifest import read_manifest, row_batches
    from omnivl.models.export import load_export, read_export_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, arch = read_export_config(export)
        model = load_export(export)
        src = SourceConfig(name="bench", manifest=manifest, modality="image")
        decoder = RowDecoder([src], DecodeConfig(image_size=arch.visual.image_size), "image", train=False)
        wall, cpu, n = time.perf_counter(), time.process_time(), 0
        for cols in row_batches(read_manifest(src), batch_size):
            decoded, _ = decoder(cols)
            with torch.inference_mode():
                model.encode_visual(torch.from_numpy(decoded["pixels"]), "image")
            n += len(decoded["row_key"])
        return {"rows": n, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    finally:
        torch.set_num_threads(threads)


def embed_job(manifest: str, export: str, out: str, actors: int, batch_size: int) -> dict:
    from omnivl.runners import run_job
    from omnivl.spec import validate_spec

    spec = {"kind": "embed", "name": "bench", "output": out, "checkpoint": export,
            "data": {"sources": [{"name": "bench", "manifest": manifest, "modality": "image"}]},
            "embed": {"concurrency": actors, "batch_size": batch_size}}
    wall = time.perf_counter()
    summary = run_job(validate_spec(spec))
    return {"rows": summary["rows"], "wall_s": time.perf_counter() - wall,
            "cpu_s": summary["rows"] / summary["rows_per_cpu_s"]}


def run(cfg: EmbedBenchConfig, log=print) -> dict:
    import ray

    from omnivl.models.config import ModelConfig
    from omnivl.models.sizes import resolve_arch

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", num_cpus=cfg.cpus, include_dashboard=False, log_to_driver=False)
    table = []
    try:
        with tempfile.TemporaryDirectory(prefix="omnivl-bench-embed-") as tmp:
            root = Path(tmp)
            export, corpus = _corpus(root, cfg, resolve_arch(ModelConfig(size=cfg.size)).visual.image_size)
            for rows in (int(x) for x in cfg.rows.split(",")):
                manifest = _manifest(corpus, rows, root / f"m{rows}.parquet")
                runs = {"bare": bare_loop(manifest, export, cfg.batch_size)}
                for actors in (1, 2):
                    runs[f"embed x{actors}"] = embed_job(manifest, export, str(root / f"out{rows}-{actors}"), actors,
                                                         cfg.batch_size)
                base = runs["bare"]
                for name, r in runs.items():
                    row = {"rows": rows, "run": name, "wall_rows_per_s": round(r["rows"] / r["wall_s"], 1),
                           "rows_per_cpu_s": round(r["rows"] / r["cpu_s"], 1),
                           "per_core_vs_bare": round((r["rows"] / r["cpu_s"]) / (base["rows"] / base["cpu_s"]), 2),
                           "wall_vs_embed_x1": None}
                    table.append(row)
                one = runs["embed x1"]
                for row in table[-3:]:
                    r = runs[row["run"]]
                    row["wall_vs_embed_x1"] = round((r["rows"] / r["wall_s"]) / (one["rows"] / one["wall_s"]), 2)
                for row in table[-3:]:
                    log(f"{row['rows']:>7} rows  {row['run']:<9} {row['wall_rows_per_s']:>8.1f} rows/s wall  "
                        f"{row['rows_per_cpu_s']:>8.1f} rows/CPU-s  per core vs bare {row['per_core_vs_bare']:.2f}x"
                        f"  wall vs embed x1 {row['wall_vs_embed_x1']:.2f}x")
    finally:
        if started_ray:
            ray.shutdown()
    return {"config": vars(cfg), "table": table}
