"""The Ray seam of the live console: rank 0's step records and warnings reach the driver's console
(`omnivl.console`) through a small actor, not through worker prints forwarded by Ray.

The driver creates one `ProgressFeed` per training stage. Its actor (0 CPUs) holds events until the driver's
poll thread drains them, every `POLL_S`. The worker side is a `RunLog` sink (`FeedSink`): `log(record)` and
`warn(text)` are fire-and-forget actor calls, so a slow driver never slows a step. Works the same on the
embedded Ray and on a cluster (the actor goes wherever it fits; the driver may be on another node).
"""

from __future__ import annotations

import threading

from omnivl import console

POLL_S = 0.5
MAX_QUEUED_EVENTS = 10_000  # bound on events held for a driver that stopped draining (oldest dropped)


def _channel_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1)
    class ProgressChannel:
        def __init__(self) -> None:
            self.events: list[dict] = []

        def push(self, event: dict) -> None:
            self.events.append(event)
            del self.events[:-MAX_QUEUED_EVENTS]

        def drain(self) -> list[dict]:
            events, self.events = self.events, []
            return events

    return ProgressChannel


class FeedSink:
    """Rank 0's side (a `omnivl.train.run_log` sink): sends records, warnings and the stage start."""

    def __init__(self, channel) -> None:
        self.channel = channel

    def started(self, stage: str, total: int, start_step: int, resumed_from: str | None) -> None:
        self.channel.push.remote({"kind": "start", "stage": stage, "total": total, "start_step": start_step,
                                  "resumed_from": resumed_from})

    def log(self, record: dict) -> None:
        self.channel.push.remote({"kind": "record", "record": record})

    def warn(self, text: str) -> None:
        self.channel.push.remote({"kind": "warning", "text": text})


class ProgressFeed:
    """Driver side, for one stage: `with ProgressFeed() as feed:` pass `feed.channel` to the workers; events go
    to the active console until the block ends (one last drain then)."""

    def __init__(self) -> None:
        from omnivl.cluster.runtime import on_driver_node

        self.channel = _channel_class().options(scheduling_strategy=on_driver_node()).remote()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="omnivl-progress")

    def __enter__(self) -> "ProgressFeed":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._drain()
        import ray

        ray.kill(self.channel)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._drain()

    def _drain(self) -> None:
        import ray

        try:
            events = ray.get(self.channel.drain.remote(), timeout=30)
        except Exception:  # the console is a courtesy: a lost poll is retried, never fails the job
            return
        for event in events:
            dispatch(event)


def dispatch(event: dict) -> None:
    out = console.current()
    kind = event.get("kind")
    if kind == "start":
        out.stage_started(event["stage"], event["total"], event["start_step"], event.get("resumed_from"))
    elif kind == "record":
        record = event["record"]
        if record.get("kind") == "eval":
            from omnivl.train.metrics import eval_line

            out.say(event.get("line") or eval_line(record))
        else:
            out.step_record(record)
    elif kind == "warning":
        out.warn(event["text"])
