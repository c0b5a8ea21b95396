"""Cold start of the Ray Serve app over real HTTP: `/readyz` is 503 while the model replica is still loading its
checkpoint, 200 once it has loaded and warmed up, and the first requests after ready are served without a stall."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time

import pytest
import requests

from serve_helpers import app_args, auth, b64, free_port

pytestmark = pytest.mark.ray
T = 30  # seconds per request (the machine is shared)
DEPLOY_TIMEOUT_S = 300
HELD_POLLS = 5  # /readyz answers checked while the load is held
FIRST_REQUESTS = 100
CONCURRENCY = 4
MAX_FIRST_OVER_WARM_P99 = 3.0


def gated_replica(gate: str) -> type:
    """A real model replica whose checkpoint load waits until the file `gate` exists: a slow load the test can
    hold open and then release (defined in a function so Ray ships it to the replica by value)."""
    from omnivl.serving.replica import ModelReplica

    class GatedReplica(ModelReplica):
        def load(self, model_id):
            while not os.path.exists(gate):
                time.sleep(0.05)
            return super().load(model_id)

    return GatedReplica


def first_answer(url: str, timeout_s: float) -> requests.Response:
    """The first answer from our app at `url` (before the ingress runs, the proxy has no route: a plain 404)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, timeout=T)
            if r.status_code != 404 and r.headers.get("content-type", "").startswith("application/json"):
                return r
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"no answer from {url} in {timeout_s}s")


def wait_status(url: str, status: int, timeout_s: float) -> requests.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = requests.get(url, timeout=T)
        if r.status_code == status:
            return r
        time.sleep(0.2)
    raise TimeoutError(f"{url} never answered {status} in {timeout_s}s (last: {r.status_code} {r.text})")


def test_readyz_is_503_until_the_model_is_warm_and_the_first_requests_after_ready_do_not_stall(
        ray_local, _serve_module, checkpoints, corpus, media, tmp_path):
    from ray import serve

    from omnivl.cluster.serve_app import MODEL_DEPLOYMENT, build_app
    from omnivl.serving.loadgen import run_load

    gate = tmp_path / "load-may-finish"
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = _serve_module["url"] = f"http://127.0.0.1:{port}"
    app = build_app(app_args({"a": checkpoints["a"]}, corpus), replica=gated_replica(str(gate)))
    with cf.ThreadPoolExecutor(1) as pool:  # serve.run returns only once the app runs: deploy in the background
        deploying = pool.submit(serve.run, app, name="omnivl-cold", route_prefix="/")

        try:  # the ingress is up and live, the model replica is still loading: not ready, and says why (no auth)
            r = first_answer(f"{url}/readyz", DEPLOY_TIMEOUT_S)
            assert r.status_code == 503, r.text
            assert r.json()["status"] == "not_ready" and MODEL_DEPLOYMENT in r.json()["reason"], r.json()
            assert requests.get(f"{url}/healthz", timeout=T).status_code == 200
            for _ in range(HELD_POLLS):
                assert requests.get(f"{url}/readyz", timeout=T).status_code == 503
                time.sleep(0.2)
            assert not deploying.done()
        finally:
            gate.touch()  # let the load finish, also when an assertion failed (serve.run would wait forever)
        ready = wait_status(f"{url}/readyz", 200, DEPLOY_TIMEOUT_S).json()
        deploying.result(timeout=DEPLOY_TIMEOUT_S)
    assert ready["status"] == "ready" and ready["replicas"][MODEL_DEPLOYMENT] == {"RUNNING": 1}, ready
    cold = requests.get(f"{url}/v1/stats", headers=auth(), timeout=T).json()["model"]["cold_start"]
    assert set(cold["warmup_ops_s"]) == {"visual_image", "visual_video", "text", "match", "generate"}, cold

    body = json.dumps({"texts": ["a red circle"], "media": [{"data_b64": b64(media["image"])}]}).encode()
    headers = {**auth(), "Content-Type": "application/json"}
    first = run_load(f"{url}/v1/embed", body, headers, FIRST_REQUESTS, CONCURRENCY)
    warm = run_load(f"{url}/v1/embed", body, headers, FIRST_REQUESTS, CONCURRENCY)
    print({"cold_start": cold, "first": first.summary(), "warm": warm.summary()})
    assert first.ok == FIRST_REQUESTS and warm.ok == FIRST_REQUESTS, (first.status, warm.status)
    p99 = {"first": first.percentile(99), "warm": warm.percentile(99)}
    assert p99["first"] <= MAX_FIRST_OVER_WARM_P99 * p99["warm"], p99  # a load or warm-up stall shows here
