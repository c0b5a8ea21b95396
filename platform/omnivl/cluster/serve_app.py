"""The Ray Serve seam: two deployments and the app builder.

    HTTP ──► OmniVLIngress (FastAPI; auth, limits, media decoding in a thread pool, tokenization)
                 │  handle.options(multiplexed_model_id=<checkpoint>)   numpy tensors only
                 ▼
             OmniVLModel (@serve.multiplexed checkpoints; greedy dynamic batching per op (engine.Batcher); torch
                          in one worker thread; the /v1/search FAISS gallery of each loaded checkpoint)

Everything behind the seam is plain Python in `omnivl.serving` (tested without Ray): the replica itself is
`omnivl.serving.replica.ModelReplica`, the deployment options come from `serving.config`. Entry points:
`build_app(args)` (the `import_path` of serve/*.yaml: `serve run` / `serve deploy` / KubeRay), `run_job(job)` for
the `serve` job kind (`omnivl serve SPEC`), and `deploy(job)` for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve
from ray.serve.handle import DeploymentHandle

from omnivl import console
from omnivl.serving import engine
from omnivl.serving import schemas as S
from omnivl.serving.config import ServeAppConfig, model_deployment_options
from omnivl.serving.readiness import INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT, app_readiness
from omnivl.serving.metrics import (BATCH_BOUNDS, BATCH_ITEMS, BATCH_SIZE, ERRORS, LATENCY_BOUNDS_MS, LATENCY_MS,
                                    REQUESTS, Metrics)
from omnivl.serving.replica import ModelReplica

log = logging.getLogger(__name__)
APP_NAME = "omnivl"


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


def model_deployment(cfg: ServeAppConfig, replica: type[ModelReplica] = ModelReplica):
    """The model deployment class for `cfg` (the multiplexing setting is a decorator argument). Dynamic batching
    is `engine.Batcher`, not `@serve.batch`: Serve's batch queue waits `batch_wait_timeout_s` for company even
    when a request is alone (it halved throughput at concurrency 1), and forms each batch from one timer
    window even while the model is busy; the greedy batcher runs a lone call at once and batches whatever
    queued while the model computed."""

    class OmniVLModel(replica):
        def __init__(self, args: dict) -> None:
            super().__init__(args, RayExporter())

        @serve.multiplexed(max_num_models_per_replica=cfg.max_models_per_replica)
        async def get_model(self, model_id: str) -> engine.LoadedModel:
            return await self.load_model(model_id)

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


# Readiness comes from the Serve controller's status of the application rather than from a call to a model
# replica. A replica is RUNNING only once its constructor (load + warm-up) has returned, so "application RUNNING"
# means every model replica of the target count is warm; autoscaling adds replicas without leaving RUNNING, and
# Serve routes nothing to a replica that is still starting, so an upscale does not make the app unready. A call
# through the model handle, by contrast, reaches one replica only, queues behind real requests (probes would time
# out when the app is busiest) and waits indefinitely while no replica exists. `serve.status()` is the public
# API for it (one controller call, run off the event loop); a "ready" answer is reused for READY_CACHE_S so a
# probe storm costs the controller at most one call per second per ingress replica.
READY_CACHE_S = 1.0
READY_TIMEOUT_S = 120.0  # `omnivl serve`: from serve.run's return (app RUNNING) to the same rule saying ready
READY_POLL_S = 0.2


class ServeReadiness:
    """`/readyz` of the application this ingress replica belongs to: `app_readiness` of Serve's status."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.lock = asyncio.Lock()
        self.last: S.ReadyResponse | None = None
        self.checked = 0.0

    async def __call__(self) -> S.ReadyResponse:
        async with self.lock:
            if self.last is None or self.last.status != "ready" or time.monotonic() - self.checked > READY_CACHE_S:
                status = await asyncio.to_thread(serve.status)
                self.last = app_readiness(status.applications.get(self.app_name))
                self.checked = time.monotonic()
            return self.last


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
        self.readiness = ServeReadiness(serve.get_replica_context().app_name)

    def __serve_build_asgi_app__(self):
        from omnivl.serving.http import build_api

        return build_api(self.frontend, self.api_key, self.metrics, self.readiness)


# ---- builders ----------------------------------------------------------------------------------------------


def build_app(args: dict, replica: type[ModelReplica] = ModelReplica) -> serve.Application:
    """The application for `args` (a ServeAppConfig as a dict): the `import_path` target of serve/*.yaml.
    `replica`: the model replica class (tests substitute a subclass). Raises pydantic.ValidationError for bad
    args (before anything is deployed)."""
    cfg = ServeAppConfig.model_validate(args)
    plain = cfg.to_dict()
    model = model_deployment(cfg, replica).options(**model_deployment_options(cfg)).bind(plain)
    ingress = OmniVLIngress.options(num_replicas=cfg.ingress.num_replicas,
                                    max_ongoing_requests=cfg.ingress.max_ongoing_requests,
                                    ray_actor_options={"num_cpus": cfg.ingress.cpus})
    return ingress.bind(plain, model)


def deploy(job, name: str = APP_NAME) -> str:
    """Start Serve's HTTP proxy on job.host:job.port (on the current Ray), deploy the app and wait until it is
    ready (`wait_ready`); returns its URL. Raises SpecError naming every missing local checkpoint or gallery path
    before anything is deployed, RuntimeError if the deployment fails, TimeoutError if it never gets ready."""
    from omnivl.serving.config import missing_local_inputs
    from omnivl.spec.errors import SpecError

    issues = missing_local_inputs(job.app)
    if issues:
        raise SpecError(issues, job.name)
    serve.start(http_options={"host": job.host, "port": job.port})
    serve.run(build_app(job.app.to_dict()), name=name, route_prefix=job.route_prefix)
    wait_ready(name)
    return f"http://{job.host}:{job.port}{job.route_prefix.rstrip('/')}"


def wait_ready(name: str, timeout_s: float = READY_TIMEOUT_S) -> S.ReadyResponse:
    """Block until application `name` is ready by the rule `/readyz` answers with (`app_readiness`). serve.run
    returns once the application is RUNNING; this keeps "deployed" and "ready" from drifting apart should the
    two rules ever differ. Raises TimeoutError with the last reason."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = app_readiness(serve.status().applications.get(name))
        if state.status == "ready":
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"application {name!r} not ready after {timeout_s:g}s: {state.reason}")
        time.sleep(READY_POLL_S)


def run_job(job) -> dict:
    """Runner of the `serve` job kind: deploy, print the URL once every model replica is warm (with the cold
    start's duration), block until Ctrl-C (or SIGTERM, as a container stop sends), then remove the app."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    started, url, cold_start_s = time.monotonic(), None, None
    try:
        url = deploy(job)
        cold_start_s = round(time.monotonic() - started, 1)
        console.say(f"ready after a {cold_start_s}s cold start (deploy, checkpoint load, warm-up): serving "
                    f"{', '.join(job.app.checkpoints)} at {url}  (OpenAPI: {url}/docs, readiness: {url}/readyz); "
                    "Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.say("stopping")
    finally:
        serve.delete(APP_NAME)
    return {"url": url, "cold_start_s": cold_start_s, "served_s": round(time.monotonic() - started, 1)}


def _interrupt(signum, frame):
    raise KeyboardInterrupt
