"""Where a training run's step records and warnings go, on rank 0: one `RunLog` fans each out to its sinks.

Sinks are the run directory's `metrics.jsonl`, the Prometheus gauges, the driver's console and the experiment
trackers. A sink has `log(record)` and may have `warn(text)` and `close()`. Ranks other than 0 get a `RunLog`
without sinks: their warnings still go to their own output (Ray's worker logs).
"""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    def log(self, record: dict) -> None: ...


class RunLog:
    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self.sinks: list[Sink] = list(sinks or [])

    def record(self, record: dict) -> None:
        """One step's record (`omnivl.train.runner.make_record`), or an evaluation record."""
        for sink in self.sinks:
            sink.log(record)

    def warn(self, text: str) -> None:
        """A warning the user must see once on the console (bad input, a checkpoint fallback, a restart)."""
        print(f"warning: {text}", flush=True)
        for sink in self.sinks:
            warn = getattr(sink, "warn", None)
            if warn is not None:
                warn(text)

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()
