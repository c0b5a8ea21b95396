"""`omnivl bench serve`: cold start (deploy -> ready, the first requests vs warm) and HTTP throughput with dynamic
batching on vs off, both apps deployed side by side on the current Ray (127.0.0.1 only). The load generator is
`omnivl.serving.loadgen`; the app is `omnivl.cluster.serve_app.build_app`."""

from __future__ import annotations

import functools
import time

from ray import serve

from omnivl.cluster.serve_app import READY_POLL_S, build_app

BENCH_APP = "omnivl-bench"
HTTP_READY_TIMEOUT_S = 60.0  # benchmark: serve.run's return (app RUNNING) -> /readyz 200 over HTTP
COLD_REQUESTS = 100  # "the first N requests after ready" of the cold-start figures
COLD_CONCURRENCY = 4
BENCH_ROUNDS = 4  # interleaved on/off rounds per concurrency level


def bench_args(checkpoint: str, batching: bool, max_batch_size: int, max_concurrency: int) -> dict:
    """The app the benchmark deploys: one replica, one torch thread, no auth; only batching differs."""
    return {"checkpoints": {"bench": checkpoint}, "device": "auto",
            "batching": {"enabled": batching, "max_batch_size": max_batch_size},
            "max_ongoing_requests": max(max_batch_size, 2 * max_concurrency), "torch_threads": 1,
            "auth": {"api_key": None, "api_key_env": None}}


def run_bench(checkpoint: str, body: bytes, endpoint: str, requests: int, concurrencies: list[int],
              max_batch_size: int = 16, warmup: int = 32, cold_requests: int = COLD_REQUESTS,
              cold_concurrency: int = COLD_CONCURRENCY, port: int = 0, rounds: int = BENCH_ROUNDS) -> dict:
    """Batching on vs off on the current Ray (127.0.0.1 only; removes what it deployed).

    Cold start, per mode as it is deployed: serve.run start -> /readyz 200 over HTTP, the replica's load and
    warm-up, and p99 of the first `cold_requests` requests after ready vs p99 of as many right after (warm).
    Throughput: both apps stay deployed side by side (/on, /off) and each concurrency level runs in `rounds`
    interleaved rounds, alternating which mode goes first, so a slow spell of this shared machine lands on both
    modes instead of on whichever ran second. Returns {"cold": [...], "rows": [...], "throughput_ratio_on_off":
    {c: on/off}}."""
    from omnivl.serving.loadgen import LoadResult, run_load

    port = port or _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    modes = {"on": True, "off": False}
    loads = {m: functools.partial(run_load, f"{base}/{m}/v1/{endpoint}", body, {"Content-Type": "application/json"})
             for m in modes}
    rows, cold = [], []
    try:
        for mode, batching in modes.items():
            started = time.monotonic()
            serve.run(build_app(bench_args(checkpoint, batching, max_batch_size, max(concurrencies))),
                      name=f"{BENCH_APP}-{mode}", route_prefix=f"/{mode}")
            wait_http_ready(f"{base}/{mode}")
            ready_s = time.monotonic() - started
            first, warm = loads[mode](cold_requests, cold_concurrency), loads[mode](cold_requests, cold_concurrency)
            cold.append(_cold_row(mode, ready_s, first, warm, _get_json(f"{base}/{mode}/v1/stats")["model"]["cold_start"]))
            print(_cold_text(cold[-1]), flush=True)
            loads[mode](warmup, max(concurrencies))
        for c in concurrencies:
            parts: dict[str, list] = {m: [] for m in modes}
            for r in range(rounds):
                for mode in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
                    parts[mode].append(loads[mode](max(1, requests // rounds), c))
            for mode in modes:
                rows.append({"batching": mode, **LoadResult.combine(parts[mode]).summary()})
                print(_row_text(rows[-1]), flush=True)
    finally:
        for mode in modes:
            serve.delete(f"{BENCH_APP}-{mode}")
    ratio = {}
    for c in concurrencies:
        on, off = (next(r for r in rows if r["batching"] == b and r["concurrency"] == c) for b in ("on", "off"))
        ratio[c] = round(on["throughput_rps"] / off["throughput_rps"], 2) if off["throughput_rps"] else None
    return {"endpoint": endpoint, "requests_per_level": requests, "rounds": rounds, "max_batch_size": max_batch_size,
            "cold": cold, "rows": rows, "throughput_ratio_on_off": ratio}


def wait_http_ready(base_url: str, timeout_s: float = HTTP_READY_TIMEOUT_S) -> None:
    """Poll GET {base_url}/readyz until it answers 200 (connection errors, 404 and 503 mean not yet)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(READY_POLL_S)
    raise TimeoutError(f"{base_url}/readyz not 200 after {timeout_s:g}s")


def _get_json(url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _cold_row(mode: str, ready_s: float, first, warm, replica: dict) -> dict:
    p99_first, p99_warm = first.percentile(99), warm.percentile(99)
    return {"batching": mode, "deploy_to_ready_s": round(ready_s, 2), "replica_load_s": replica["load_s"],
            "replica_warmup_s": replica["warmup_s"], "requests": first.requests, "concurrency": first.concurrency,
            "first_ok": first.ok, "first_p99_ms": round(p99_first, 1), "warm_p99_ms": round(p99_warm, 1),
            "p99_first_over_warm": round(p99_first / p99_warm, 2) if p99_warm else None}


def _cold_text(r: dict) -> str:
    return (f"batching={r['batching']:3} cold start: deploy->ready {r['deploy_to_ready_s']:6.2f} s (replica load "
            f"{r['replica_load_s']:.2f} s, warm-up {r['replica_warmup_s']:.2f} s); first {r['requests']} at "
            f"c={r['concurrency']}: ok={r['first_ok']} p99={r['first_p99_ms']:.1f} ms vs warm "
            f"p99={r['warm_p99_ms']:.1f} ms ({r['p99_first_over_warm']}x)")


def _row_text(r: dict) -> str:
    return (f"batching={r['batching']:3} c={r['concurrency']:3} ok={r['ok']:5} 5xx={r['server_errors']} "
            f"dropped={r['dropped']} {r['throughput_rps']:8.1f} req/s  p50={r['p50_ms']:7.1f} ms  "
            f"p99={r['p99_ms']:7.1f} ms")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
