"""A bounded HTTP load generator (asyncio + aiohttp): exactly `requests` POSTs with at most `concurrency` in
flight, each with a timeout; it stops by itself. Meant for loopback only (tests and `omnivl bench serve`)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    status: dict[int, int] = field(default_factory=dict)
    dropped: int = 0  # no HTTP answer at all (connection error, timeout)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> int:
        return self.status.get(200, 0)

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.status.items() if s >= 500)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @classmethod
    def combine(cls, parts: list["LoadResult"]) -> "LoadResult":
        """Rounds of one load level run at different times, as one result (their seconds add up)."""
        status: Counter = Counter()
        for r in parts:
            status.update(r.status)
        return cls(parts[0].concurrency, sum(r.requests for r in parts), sum(r.seconds for r in parts),
                   dict(status), sum(r.dropped for r in parts), [x for r in parts for x in r.latencies_ms])

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        d.update(ok=self.ok, server_errors=self.server_errors, throughput_rps=round(self.throughput, 2),
                 p50_ms=round(self.percentile(50), 1), p99_ms=round(self.percentile(99), 1))
        return d


async def _load(url: str, body: bytes, headers: dict, requests: int, concurrency: int,
                timeout_s: float) -> LoadResult:
    import aiohttp

    status: Counter = Counter()
    latencies: list[float] = []
    dropped = 0
    next_index = iter(range(requests))
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:

        async def worker() -> None:
            nonlocal dropped
            for _ in next_index:  # shared iterator: the total is bounded whatever the interleaving
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        status[resp.status] += 1
                        if resp.status == 200:
                            latencies.append((time.perf_counter() - t0) * 1000)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    dropped += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return LoadResult(concurrency, requests, seconds, dict(status), dropped, latencies)


def run_load(url: str, body: bytes, headers: dict, requests: int, concurrency: int,
             timeout_s: float = 60.0) -> LoadResult:
    """POST `body` to `url` `requests` times with `concurrency` clients; returns counts and latencies."""
    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError(f"the load generator only targets loopback addresses, got {url!r}")
    return asyncio.run(_load(url, body, headers, requests, concurrency, timeout_s))
