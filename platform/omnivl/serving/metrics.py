"""Serving metrics: what is recorded and under which names. Kept in memory (for `GET /v1/stats` and tests)
and forwarded to an exporter; the Ray Serve app plugs in `ray.util.metrics` (Prometheus names get the `ray_`
prefix and counters `_total`, e.g. `ray_omnivl_serve_requests_total{endpoint="embed",status="200"}`).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Protocol

REQUESTS = "omnivl_serve_requests"            # counter  tags: endpoint, status, model
ERRORS = "omnivl_serve_errors"                # counter  tags: endpoint, kind
LATENCY_MS = "omnivl_serve_latency_ms"        # histogram tags: endpoint
BATCH_SIZE = "omnivl_serve_batch_size"        # histogram tags: op (requests per model call)
BATCH_ITEMS = "omnivl_serve_batch_items"      # histogram tags: op (items per model call)
LATENCY_BOUNDS_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128]


class Exporter(Protocol):
    def count(self, name: str, tags: dict[str, str]) -> None: ...
    def observe(self, name: str, value: float, tags: dict[str, str]) -> None: ...


class Metrics:
    """Thread-safe in-memory counts plus an optional exporter (Ray's metrics in the deployed app)."""

    def __init__(self, exporter: Exporter | None = None) -> None:
        self.exporter = exporter
        self._lock = threading.Lock()
        self.requests: Counter = Counter()          # (endpoint, status) -> n
        self.errors: Counter = Counter()            # (endpoint, kind) -> n
        self.batch_sizes: dict[str, Counter] = {}   # op -> {requests in the call: n calls}
        self.latency_ms: dict[str, list[float]] = {}

    def request(self, endpoint: str, status: int, model: str, latency_ms: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            lat = self.latency_ms.setdefault(endpoint, [])
            if len(lat) < 100_000:
                lat.append(latency_ms)
        if self.exporter:
            self.exporter.count(REQUESTS, {"endpoint": endpoint, "status": str(status), "model": model})
            self.exporter.observe(LATENCY_MS, latency_ms, {"endpoint": endpoint})

    def error(self, endpoint: str, kind: str) -> None:
        with self._lock:
            self.errors[(endpoint, kind)] += 1
        if self.exporter:
            self.exporter.count(ERRORS, {"endpoint": endpoint, "kind": kind})

    def batch(self, op: str, requests: int, items: int) -> None:
        with self._lock:
            self.batch_sizes.setdefault(op, Counter())[requests] += 1
        if self.exporter:
            self.exporter.observe(BATCH_SIZE, requests, {"op": op})
            self.exporter.observe(BATCH_ITEMS, items, {"op": op})

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "requests": [{"endpoint": e, "status": s, "count": n} for (e, s), n in sorted(self.requests.items())],
                "errors": [{"endpoint": e, "kind": k, "count": n} for (e, k), n in sorted(self.errors.items())],
                "batch_sizes": {op: {str(k): v for k, v in sorted(c.items())} for op, c in self.batch_sizes.items()},
                "max_batch_size": max((max(c) for c in self.batch_sizes.values() if c), default=0),
            }
