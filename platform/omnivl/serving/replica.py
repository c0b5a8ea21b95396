"""A model replica of the serving app, as plain Python: checkpoints loaded on demand (with their galleries),
greedy dynamic batching per operation (`engine.Batcher`), torch in one worker thread, a warm-up before the
replica reports itself constructed. Ray Serve's side of it (multiplexing, the deployment) is
`omnivl.cluster.serve_app`."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import logging
import time

import numpy as np

from omnivl.serving import engine
from omnivl.serving.config import ServeAppConfig
from omnivl.serving.gallery import load_with_gallery
from omnivl.serving.metrics import Exporter, Metrics

log = logging.getLogger(__name__)


class ModelReplica:
    """One model replica: checkpoints (multiplexed), batched model calls, galleries. The Serve seam
    (`omnivl.cluster.serve_app.model_deployment`) subclasses it per app: it adds `get_model` with Serve's
    multiplexing decorator (whose setting comes from the config) and Ray's metrics exporter. Without Serve, a
    subclass whose `get_model` returns `load_model(model_id)` runs it in one process.

    Ready means warm: the constructor loads the default checkpoint (and its gallery) and runs one warm-up batch
    per operation on the model thread before it returns. Serve marks a replica RUNNING, and routes to it, only
    once its constructor has returned, so no request ever reaches a cold replica and the application's status
    (what `/readyz` reports, see `app_readiness`) turns RUNNING only when every replica of its target is warm.
    """

    def __init__(self, args: dict, exporter: Exporter | None = None) -> None:
        import torch

        start = time.perf_counter()
        self.cfg = ServeAppConfig.model_validate(args)
        torch.set_num_threads(self.cfg.torch_threads or max(1, int(self.cfg.cpus_per_replica)))
        self.device = engine.pick_device(self.cfg.device)
        self.metrics = Metrics(exporter)
        # Model calls run one at a time in this thread, so the replica's event loop keeps queueing requests
        # (and forming the next batch) while a batch computes.
        self.worker = cf.ThreadPoolExecutor(1, thread_name_prefix="model")
        self.batchers = {op: engine.Batcher(functools.partial(self.run, op), self.cfg.batching.max_batch_size)
                         for op in engine.OPS} if self.cfg.batching.enabled else {}
        lm = self.load(self.cfg.default_model)
        loaded = time.perf_counter()
        # on the worker thread: the thread that runs every later model call has per-thread set-up of its own
        op_s = self.worker.submit(engine.warm_up, lm, self.cfg.text_max_length).result()
        self.preloaded = {self.cfg.default_model: lm}
        self.cold_start = {"load_s": round(loaded - start, 3), "warmup_s": round(time.perf_counter() - loaded, 3),
                           "warmup_ops_s": {name: round(t, 4) for name, t in op_s.items()}}
        log.info("replica ready: checkpoint %s loaded in %.2fs, warm-up %.2fs (%s)", self.cfg.default_model,
                 self.cold_start["load_s"], self.cold_start["warmup_s"],
                 ", ".join(f"{name} {t * 1000:.0f} ms" for name, t in op_s.items()))

    def load(self, model_id: str) -> engine.LoadedModel:
        start = time.perf_counter()
        lm = load_with_gallery(self.cfg, model_id, self.device)
        log.info("loaded checkpoint %s from %s on %s (%s) in %.1fs", model_id, lm.uri, self.device, lm.precision,
                 time.perf_counter() - start)
        return lm

    async def load_model(self, model_id: str) -> engine.LoadedModel:
        if model_id not in self.cfg.checkpoints:
            raise KeyError(f"unknown checkpoint {model_id!r}")  # the ingress refuses these first (404)
        lm = self.preloaded.pop(model_id, None)
        if lm is None:
            lm = await asyncio.get_running_loop().run_in_executor(self.worker, self.load, model_id)
        return lm

    async def get_model(self, model_id: str) -> engine.LoadedModel:
        raise NotImplementedError("the Serve seam (or a test) provides get_model")

    async def run(self, op: str, items: list[tuple[str, object]]) -> list:
        """Run one batch of (checkpoint id, call) items: one model call per checkpoint, in the worker thread."""
        out: list = [None] * len(items)
        by_model: dict[str, list[int]] = {}
        for i, (mid, _) in enumerate(items):
            by_model.setdefault(mid, []).append(i)
        loop = asyncio.get_running_loop()
        for mid, idx in by_model.items():
            lm = await self.get_model(mid)
            calls = [items[i][1] for i in idx]
            results = await loop.run_in_executor(self.worker, engine.OPS[op], lm, calls)
            self.metrics.batch(op, len(calls), sum(len(c.pixels if hasattr(c, "pixels") else c.ids) for c in calls))
            for i, r in zip(idx, results):
                out[i] = r
        return out

    async def call(self, op: str, model_id: str, call) -> object:
        if self.batchers:
            return await self.batchers[op].submit((model_id, call))
        (result,) = await self.run(op, [(model_id, call)])
        return result

    async def visual(self, model_id: str, call: engine.VisualCall) -> np.ndarray:
        return await self.call("visual", model_id, call)

    async def text(self, model_id: str, call: engine.TextCall) -> np.ndarray:
        return await self.call("text", model_id, call)

    async def match(self, model_id: str, call: engine.MatchCall) -> np.ndarray:
        return await self.call("match", model_id, call)

    async def generate(self, model_id: str, call: engine.GenerateCall) -> list[list[int]]:
        return await self.call("generate", model_id, call)

    async def search(self, model_id: str, query_E: np.ndarray, k: int) -> list[dict]:
        lm = await self.get_model(model_id)
        if lm.gallery is None:
            return []
        return [{"score": s, "index": it.index, "uri": it.uri, "text": it.text, "modality": it.modality}
                for s, it in lm.gallery.search(query_E, k)]

    async def stats(self) -> dict:
        snap = self.metrics.snapshot()
        snap["batching"] = self.cfg.batching.to_dict()
        snap["cold_start"] = self.cold_start
        return snap
