"""The Ray Serve seam: two deployments and the app builder.

    HTTP ──► OmniVLIngress (FastAPI; auth, limits, media decoding in a thread pool, tokenization)
                 │  handle.options(multiplexed_model_id=<checkpoint>)   numpy tensors only
                 ▼
             OmniVLModel (@serve.multiplexed checkpoints; @serve.batch per op; torch in one worker thread;
                          the /v1/search FAISS gallery of each loaded checkpoint)

Everything behind the seam is plain Python in `omnivl.serving` (tested without Ray). Entry points:
`build_app(args)` (the `import_path` of serve/*.yaml: `serve run` / `serve deploy` / KubeRay), `run_job(job)` for
the `serve` job kind (`omnivl serve SPEC`), and `deploy(job)` for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import time

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from omnivl import console
from omnivl.serving import engine
from omnivl.serving.config import ServeAppConfig
from omnivl.serving.metrics import (BATCH_BOUNDS, BATCH_ITEMS, BATCH_SIZE, ERRORS, LATENCY_BOUNDS_MS, LATENCY_MS,
                                    REQUESTS, Metrics)

log = logging.getLogger(__name__)
APP_NAME = "omnivl"
MODEL_DEPLOYMENT = "OmniVLModel"
INGRESS_DEPLOYMENT = "OmniVLIngress"


class RayExporter:
    """`omnivl.serving.metrics` names -> `ray.util.metrics` (scraped from each node's metrics port)."""

    def __init__(self) -> None:
        from ray.util import metrics as m

        self.counters = {
            REQUESTS: m.Counter(REQUESTS, "HTTP requests by endpoint, status and checkpoint",
                                tag_keys=("endpoint", "status", "model")),
            ERRORS: m.Counter(ERRORS, "refused or failed requests by endpoint and error kind",
                              tag_keys=("endpoint", "kind")),
        }
        self.histograms = {
            LATENCY_MS: m.Histogram(LATENCY_MS, "request latency in the ingress (ms)", LATENCY_BOUNDS_MS,
                                    tag_keys=("endpoint",)),
            BATCH_SIZE: m.Histogram(BATCH_SIZE, "requests per model call (dynamic batching)", BATCH_BOUNDS,
                                    tag_keys=("op",)),
            BATCH_ITEMS: m.Histogram(BATCH_ITEMS, "items per model call", BATCH_BOUNDS, tag_keys=("op",)),
        }

    def count(self, name: str, tags: dict[str, str]) -> None:
        self.counters[name].inc(1, tags=tags)

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        self.histograms[name].observe(value, tags=tags)


# ---- model deployment --------------------------------------------------------------------------------------


class ModelReplica:
    """One model replica: checkpoints (multiplexed), batched model calls, galleries. Subclassed per app by
    `model_deployment`, which adds the decorators whose settings come from the config."""

    def __init__(self, args: dict) -> None:
        import torch

        self.cfg = ServeAppConfig.model_validate(args)
        torch.set_num_threads(self.cfg.torch_threads or max(1, int(self.cfg.cpus_per_replica)))
        self.device = engine.pick_device(self.cfg.device)
        self.metrics = Metrics(RayExporter())
        # Model calls run one at a time in this thread, so the replica's event loop keeps queueing requests
        # (and forming the next batch) while a batch computes.
        self.worker = cf.ThreadPoolExecutor(1, thread_name_prefix="model")
        self.preloaded = {self.cfg.default_model: self.load(self.cfg.default_model)}

    def load(self, model_id: str) -> engine.LoadedModel:
        from omnivl.serving.gallery import build_gallery

        start = time.perf_counter()
        lm = engine.load_checkpoint(model_id, self.cfg.checkpoints[model_id], self.device)
        if self.cfg.gallery_manifest:
            g = lm.geometry
            lm.gallery = build_gallery(
                lambda px, mod: engine.run_visual(lm, [engine.VisualCall(px, mod)])[0],
                self.cfg.gallery_manifest, self.cfg.gallery_modality, g.image_size, g.num_frames,
                self.cfg.gallery_max_items, self.cfg.tokenizer, self.cfg.limits.max_image_pixels)
        log.info("loaded checkpoint %s from %s on %s in %.1fs", model_id, lm.uri, self.device,
                 time.perf_counter() - start)
        return lm

    async def load_model(self, model_id: str) -> engine.LoadedModel:
        if model_id not in self.cfg.checkpoints:
            raise KeyError(f"unknown checkpoint {model_id!r}")  # the ingress refuses these first (404)
        lm = self.preloaded.pop(model_id, None)
        if lm is None:
            lm = await asyncio.get_running_loop().run_in_executor(self.worker, self.load, model_id)
        return lm

    async def run(self, op: str, fn, items: list[tuple[str, object]]) -> list:
        """Run one batch of (checkpoint id, call) items: one model call per checkpoint, in the worker thread."""
        out: list = [None] * len(items)
        by_model: dict[str, list[int]] = {}
        for i, (mid, _) in enumerate(items):
            by_model.setdefault(mid, []).append(i)
        loop = asyncio.get_running_loop()
        for mid, idx in by_model.items():
            lm = await self.get_model(mid)
            calls = [items[i][1] for i in idx]
            results = await loop.run_in_executor(self.worker, fn, lm, calls)
            self.metrics.batch(op, len(calls), sum(len(c.pixels if hasattr(c, "pixels") else c.ids) for c in calls))
            for i, r in zip(idx, results):
                out[i] = r
        return out

    async def call(self, op: str, model_id: str, call) -> object:
        if self.cfg.batching.enabled:
            return await getattr(self, f"batched_{op}")((model_id, call))
        (result,) = await self.run(op, OPS[op], [(model_id, call)])
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
        return snap


OPS = {"visual": engine.run_visual, "text": engine.run_text, "match": engine.run_match,
       "generate": engine.run_generate}


def model_deployment(cfg: ServeAppConfig):
    """The model deployment class for `cfg` (multiplexing and batching settings are decorator arguments)."""
    batch = serve.batch(max_batch_size=cfg.batching.max_batch_size, batch_wait_timeout_s=cfg.batching.batch_wait_timeout_s)

    class OmniVLModel(ModelReplica):
        @serve.multiplexed(max_num_models_per_replica=cfg.max_models_per_replica)
        async def get_model(self, model_id: str) -> engine.LoadedModel:
            return await self.load_model(model_id)

        @batch
        async def batched_visual(self, items: list) -> list:
            return await self.run("visual", engine.run_visual, items)

        @batch
        async def batched_text(self, items: list) -> list:
            return await self.run("text", engine.run_text, items)

        @batch
        async def batched_match(self, items: list) -> list:
            return await self.run("match", engine.run_match, items)

        @batch
        async def batched_generate(self, items: list) -> list:
            return await self.run("generate", engine.run_generate, items)

    return serve.deployment(OmniVLModel, name=MODEL_DEPLOYMENT)


# ---- ingress deployment ------------------------------------------------------------------------------------


class RayBackend:
    """`omnivl.serving.frontend.Backend` over the model deployment's handle (routed by checkpoint id)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    def _to(self, model_id: str):
        return self.handle.options(multiplexed_model_id=model_id)

    async def visual(self, model_id, call):
        return await self._to(model_id).visual.remote(model_id, call)

    async def text(self, model_id, call):
        return await self._to(model_id).text.remote(model_id, call)

    async def match(self, model_id, call):
        return await self._to(model_id).match.remote(model_id, call)

    async def generate(self, model_id, call):
        return await self._to(model_id).generate.remote(model_id, call)

    async def search(self, model_id, query_E, k):
        return await self._to(model_id).search.remote(model_id, query_E, k)

    async def stats(self):
        return await self.handle.stats.remote()


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress()
class OmniVLIngress:
    def __init__(self, args: dict, model: DeploymentHandle) -> None:
        from omnivl.serving.auth import resolve_api_key
        from omnivl.serving.frontend import Frontend, model_summary

        cfg = ServeAppConfig.model_validate(args)
        self.metrics = Metrics(RayExporter())
        self.api_key = resolve_api_key(cfg.auth)
        if self.api_key is None:
            log.warning("serving WITHOUT auth: no auth.api_key%s", f" and env var {cfg.auth.api_key_env} is unset"
                        if cfg.auth.api_key_env else "")
        models = {mid: model_summary(uri) for mid, uri in cfg.checkpoints.items()}
        self.frontend = Frontend(cfg, RayBackend(model), models)

    def __serve_build_asgi_app__(self):
        from omnivl.serving.http import build_api

        return build_api(self.frontend, self.api_key, self.metrics)


# ---- builders ----------------------------------------------------------------------------------------------


# AutoscalingSpec fields passed to Serve's autoscaling_config as they are, when set
SERVE_AUTOSCALING_DELAYS = {"upscale_delay_s", "downscale_delay_s", "look_back_period_s"}


def _model_options(cfg: ServeAppConfig) -> dict:
    opts = {"max_ongoing_requests": cfg.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica}}
    a = cfg.autoscaling
    if a.min_replicas == a.max_replicas:
        opts["num_replicas"] = a.max_replicas
    else:
        opts["autoscaling_config"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                      "initial_replicas": max(1, a.min_replicas),
                                      "target_ongoing_requests": a.target_ongoing_requests,
                                      **a.model_dump(include=SERVE_AUTOSCALING_DELAYS, exclude_none=True)}
    return opts


def build_app(args: dict) -> serve.Application:
    """The application for `args` (a ServeAppConfig as a dict): the `import_path` target of serve/*.yaml.
    Raises pydantic.ValidationError for bad args (before anything is deployed)."""
    cfg = ServeAppConfig.model_validate(args)
    plain = cfg.to_dict()
    model = model_deployment(cfg).options(**_model_options(cfg)).bind(plain)
    ingress = OmniVLIngress.options(num_replicas=cfg.ingress.num_replicas,
                                    max_ongoing_requests=cfg.ingress.max_ongoing_requests,
                                    ray_actor_options={"num_cpus": cfg.ingress.cpus})
    return ingress.bind(plain, model)


def deploy(job, name: str = APP_NAME) -> str:
    """Start Serve's HTTP proxy on job.host:job.port (on the current Ray) and deploy the app; returns its URL.
    Raises SpecError naming every missing local checkpoint or gallery path before anything is deployed."""
    from omnivl.serving.config import missing_local_inputs
    from omnivl.spec.errors import SpecError

    issues = missing_local_inputs(job.app)
    if issues:
        raise SpecError(issues, job.name)
    serve.start(http_options={"host": job.host, "port": job.port})
    serve.run(build_app(job.app.to_dict()), name=name, route_prefix=job.route_prefix)
    return f"http://{job.host}:{job.port}{job.route_prefix.rstrip('/')}"


def run_job(job) -> dict:
    """Runner of the `serve` job kind: deploy, print the URL, block until Ctrl-C (or SIGTERM, as a container
    stop sends), then remove the app."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    started, url = time.monotonic(), None
    try:
        url = deploy(job)
        console.say(f"serving {', '.join(job.app.checkpoints)} at {url}  (OpenAPI: {url}/docs, health: "
                    f"{url}/healthz); Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.say("stopping")
    finally:
        serve.delete(APP_NAME)
    return {"url": url, "served_s": round(time.monotonic() - started, 1)}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# ---- benchmark ---------------------------------------------------------------------------------------------


def bench_args(checkpoint: str, batching: bool, max_batch_size: int, wait_s: float, max_concurrency: int) -> dict:
    """The app the benchmark deploys: one replica, one torch thread, no auth; only batching differs."""
    return {"checkpoints": {"bench": checkpoint}, "device": "auto",
            "batching": {"enabled": batching, "max_batch_size": max_batch_size, "batch_wait_timeout_s": wait_s},
            "max_ongoing_requests": max(max_batch_size, 2 * max_concurrency), "torch_threads": 1,
            "auth": {"api_key": None, "api_key_env": None}}


def run_bench(checkpoint: str, bodies: dict[str, bytes], endpoint: str, requests: int, concurrencies: list[int],
              max_batch_size: int = 16, wait_s: float = 0.01, warmup: int = 32, port: int = 0) -> dict:
    """Throughput and p50/p99 at each concurrency with batching on, then off, on the current Ray (same run).
    Deploys on 127.0.0.1 only and removes what it deployed. Returns {"rows": [...], "ratio_at": {c: on/off}}."""
    from omnivl.serving.loadgen import run_load

    port = port or _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/v1/{endpoint}"
    headers = {"Content-Type": "application/json"}
    rows = []
    for batching in (True, False):
        serve.run(build_app(bench_args(checkpoint, batching, max_batch_size, wait_s, max(concurrencies))),
                  name="omnivl-bench", route_prefix="/")
        try:
            run_load(url, bodies[endpoint], headers, warmup, max(concurrencies))
            for c in concurrencies:
                res = run_load(url, bodies[endpoint], headers, requests, c)
                rows.append({"batching": "on" if batching else "off", **res.summary()})
                print(_row_text(rows[-1]), flush=True)
        finally:
            serve.delete("omnivl-bench")
    ratio = {}
    for c in concurrencies:
        on, off = (next(r for r in rows if r["batching"] == b and r["concurrency"] == c) for b in ("on", "off"))
        ratio[c] = round(on["throughput_rps"] / off["throughput_rps"], 2) if off["throughput_rps"] else None
    return {"endpoint": endpoint, "requests_per_level": requests, "max_batch_size": max_batch_size, "rows": rows,
            "throughput_ratio_on_off": ratio}


def _row_text(r: dict) -> str:
    return (f"batching={r['batching']:3} c={r['concurrency']:3} ok={r['ok']:5} 5xx={r['server_errors']} "
            f"dropped={r['dropped']} {r['throughput_rps']:8.1f} req/s  p50={r['p50_ms']:7.1f} ms  "
            f"p99={r['p99_ms']:7.1f} ms")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
