"""The `embed` job over Ray: pending shards (`omnivl.embed.shards.plan`) flow through a Ray Data actor pool of
`embed.concurrency` model actors; each actor reads its shard's chunk, decodes it (evaluation transforms, in
threads that run ahead of the model), embeds it and writes the Parquet shard itself. The driver holds one small
record per shard, never rows or embeddings, so its memory does not grow with the corpus.

    pending shards ──► EmbedActor × concurrency (CPU or GPU) ──► <output>/<source>/part-NNNNN.parquet
                             └── {rows, skipped by reason, seconds} ──► driver: progress, bad-input report
"""

from __future__ import annotations

import json
import time

import numpy as np

from omnivl import console, storage
from omnivl.data import badinput as bad
from omnivl.data.config import DecodeConfig
from omnivl.embed import shards
from omnivl.embed.config import EmbedSettings
from omnivl.spec.jobs import EmbedJob


class EmbedActor:
    """One model replica of the pool; `__call__` takes a batch of shard tasks (JSON) and writes their shards."""

    def __init__(self, export: str, decode: dict, settings: dict) -> None:
        import torch

        from omnivl.models.export import load_export

        cfg = EmbedSettings.model_validate(settings)
        device = "cuda" if cfg.use_gpu else "cpu"
        if not cfg.use_gpu:
            torch.set_num_threads(max(1, int(cfg.cpus_per_actor)))
        self.embedder = shards.ShardEmbedder(load_export(export, device), DecodeConfig.model_validate(decode), cfg,
                                             device)

    def __call__(self, batch: dict) -> dict:
        out = []
        for text in batch["task"]:
            task = shards.ShardTask(**json.loads(str(text)))
            table, result = self.embedder(task)
            shards.write_shard(table, task.output)
            out.append(json.dumps(result.to_dict()))
        return {"result": np.asarray(out, dtype=object)}


def job_decode(job: EmbedJob, export: str) -> DecodeConfig:
    """The job's decode settings with the checkpoint's geometry (the model dictates image size and frames)."""
    from omnivl.models.export import read_export_config

    _, arch = read_export_config(export)
    return job.data.decode.model_copy(update={"image_size": arch.visual.image_size,
                                              "num_frames": arch.visual.num_frames})


def run_job(job: EmbedJob) -> dict:
    import ray.data

    from omnivl.cluster.data_pipeline import ray_mapper
    from omnivl.models.export import resolve_export

    export = resolve_export(storage.absolute(job.checkpoint))
    out = storage.absolute(job.output or storage.join("runs", job.name))
    decode, settings = job_decode(job, export), job.embed
    shards.claim_output(out, shards.identity(export, job.data.sources, decode, settings))
    pending, finished = shards.plan(job.data.sources, out, ray_mapper)
    results = [shards.finished_result(t) for t in finished]
    total = len(pending) + len(finished)
    console.say(f"embed {job.name}: {total} shards of {', '.join(s.name for s in job.data.sources)}; "
                f"{len(finished)} finished earlier, {len(pending)} to do with {settings.concurrency} "
                f"{'GPU' if settings.use_gpu else 'CPU'} actor(s), {settings.precision}")
    started = time.monotonic()
    if pending:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items([{"task": json.dumps(t.to_dict())} for t in pending],
                                 override_num_blocks=len(pending))
        ds = ds.map_batches(EmbedActor, batch_size=1, batch_format="numpy",
                            fn_constructor_kwargs={"export": export, "decode": decode.to_dict(),
                                                   "settings": settings.to_dict()},
                            num_gpus=1 if settings.use_gpu else 0, num_cpus=settings.cpus_per_actor,
                            compute=ray.data.ActorPoolStrategy(size=min(settings.concurrency, len(pending))))
        progress = Progress(len(pending), started)
        for row in ds.iter_rows():
            result = shards.ShardResult(**json.loads(row["result"]))
            results.append(result)
            progress.shard_done(result)
    summary = summarize(job, export, out, results, time.monotonic() - started)
    storage.write_text(storage.join(out, shards.SUMMARY_FILE), json.dumps(summary, indent=2))
    report = summary["bad_input"]
    if report["rows_skipped"]:
        console.warn(f"embed {job.name}: {report['rows_skipped']} of {report['rows_seen']} rows could not be "
                     f"embedded and were skipped ({report['skipped_by_reason']}); worst files: "
                     f"{', '.join(report['worst_files'][:3])}")
    bad.BadInputLedger.from_dict(summary["ledger"]).check(decode.max_bad_fraction)
    return {k: v for k, v in summary.items() if k != "ledger"}


class Progress:
    """Plain progress lines at the console's cadence (and at the last shard)."""

    def __init__(self, total: int, started: float) -> None:
        self.total, self.started, self.done, self.rows, self.last = total, started, 0, 0, 0.0

    def shard_done(self, result: shards.ShardResult) -> None:
        self.done += 1
        self.rows += result.rows_in
        now = time.monotonic()
        if now - self.last < console.PLAIN_CADENCE_S and self.done < self.total:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        eta = elapsed / self.done * (self.total - self.done)
        console.say(f"[embed {self.done}/{self.total} shards] {self.rows:,} rows · {self.rows / elapsed:.0f} rows/s"
                    f" · ETA {console.format_seconds(eta)}")


def summarize(job: EmbedJob, export: str, out: str, results: list[shards.ShardResult], seconds: float) -> dict:
    ledger = bad.BadInputLedger()
    per_source: dict[str, dict] = {}
    for r in results:
        ledger.merge(r.ledger)
        s = per_source.setdefault(r.source, {"shards": 0, "rows_in": 0, "rows_out": 0, "skipped_shards": 0})
        s["shards"] += 1
        s["rows_in"] += r.rows_in
        s["rows_out"] += r.rows_out
        s["skipped_shards"] += int(r.skipped)
    computed = [r for r in results if not r.skipped]
    rows_done = sum(r.rows_in for r in computed)
    cpu = sum(r.cpu_seconds for r in computed)
    return {"output": out, "checkpoint": export, "sources": per_source,
            "rows": sum(s["rows_out"] for s in per_source.values()),
            "shards_written": len(computed), "shards_skipped": len(results) - len(computed),
            "seconds": round(seconds, 1), "rows_per_s": round(rows_done / seconds, 1) if computed and seconds else None,
            "rows_per_cpu_s": round(rows_done / cpu, 1) if computed and cpu else None,
            "precision": job.embed.precision, "bad_input": ledger.summary(), "ledger": ledger.to_dict()}
