"""What a job waits for on an autoscaling cluster, as console lines (plain logic; the Ray seam that reads the
cluster status is omnivl.cluster.capacity).

A `Snapshot` is the cluster's pending demand and nodes at one moment. `describe_wait` says what the job waits
for and what the autoscaler does about it; `CapacityWatcher` turns a series of snapshots into one line each time
that changes, and `nodes ready after Ns` when the wait ends:

    waiting for 2 × pool=trainer (autoscaler requested)
    waiting for 1 × pool=cpu-decode (autoscaler requested)
    nodes ready after 14s

`LineFilter` picks those lines out of a job's streamed log (`omnivl submit` relays them).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Callable

POLL_S = 1.0  # a local node can be requested and up within 2 s
UNREQUESTED_GRACE_S = 5.0  # see CapacityWatcher
JOIN_TIMEOUT_S = 10.0  # how long stop() waits for a poll in flight
# Console lines of this module start like this (`omnivl submit` relays them from the job's log).
LINE_PATTERN = re.compile(r"^(waiting for \d+ × |nodes ready after )")
LIVE_NODE_STATUSES = ("RUNNING", "IDLE")

@dataclass(frozen=True)
class Demand:
    """`count` bundles of `resources` that must land on nodes matching `selector` (empty: any node)."""

    selector: tuple[tuple[str, str], ...]  # ((key, "=value" | " in (a,b)" | "!=value"), ...)
    resources: tuple[tuple[str, float], ...]
    count: int

    @property
    def what(self) -> str:
        """`pool=trainer`, or the resources when nothing selects the node (`CPU=1`)."""
        if self.selector:
            return ",".join(f"{k}{op}" for k, op in self.selector)
        return ",".join(f"{k}={v:g}" for k, v in self.resources) or "no resources"


@dataclass(frozen=True)
class NodeView:
    node_id: str
    node_type: str
    labels: dict[str, str]
    status: str  # RUNNING | IDLE | DRAINING | DEAD
    idle_s: float
    total: dict[str, float]


@dataclass(frozen=True)
class Snapshot:
    """The cluster's pending demand and nodes at `taken_at` (time.time() when they were asked for)."""

    taken_at: float
    autoscaler: bool  # an autoscaler (v2) reports its state to this cluster
    demands: tuple[Demand, ...]
    infeasible: tuple[Demand, ...]
    launching: tuple[tuple[str, int], ...]  # node type -> nodes requested or starting
    nodes: tuple[NodeView, ...]


def needs_room(demand: Demand) -> bool:
    """Zero-resource work (Ray Data's read tasks) waits with the rest but asks for no node of its own."""
    return bool(demand.resources)


def room_for(demand: Demand, nodes: tuple[NodeView, ...]) -> int:
    """How many of the demand's bundles (resources not empty) the live nodes matching its selector could hold,
    by their total size."""
    return sum(min(int(node.total.get(k, 0.0) // v) for k, v in demand.resources) for node in nodes
               if node.status in LIVE_NODE_STATUSES and _matches(demand.selector, node.labels))


def _matches(selector: tuple[tuple[str, str], ...], labels: dict[str, str]) -> bool:
    for key, op in selector:
        value = labels.get(key)
        if op.startswith("="):
            ok = value == op[1:]
        elif op.startswith("!="):
            ok = value != op[2:]
        else:
            values = op[op.index("(") + 1:-1].split(",")
            ok = (value in values) != op.startswith(" not")
        if not ok:
            return False
    return True

def merged(*sources: list[Demand]) -> tuple[Demand, ...]:
    """Demands summed by (selector, resources) within a source, and the largest of the sources' sums."""
    counts: dict[tuple, int] = {}
    for demands in sources:
        within: dict[tuple, int] = {}
        for d in demands:
            within[(d.selector, d.resources)] = within.get((d.selector, d.resources), 0) + d.count
        for key, n in within.items():
            counts[key] = max(counts.get(key, 0), n)
    return tuple(Demand(sel, res, n) for (sel, res), n in sorted(counts.items()))


# --- what the user sees -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wait:
    """What a snapshot says the job waits for: `line` for people, and whether the autoscaler is on it."""

    line: str
    requested: bool  # the autoscaler has requested or is starting nodes
    infeasible: bool  # no node type of the cluster can take some of the demand


def describe_wait(snap: Snapshot, served: bool = False) -> Wait | None:
    """What the job waits for and what the autoscaler does about it; None if nothing waits. `served`: nodes for
    the demand are known to have come up since (the autoscaler acted between two snapshots)."""
    if not snap.demands:
        return None
    by_what: dict[str, int] = {}
    for d in snap.demands:
        by_what[d.what] = by_what.get(d.what, 0) + d.count
    waiting = ", ".join(f"{n} × {what}" for what, n in by_what.items())
    infeasible = sorted({d.what for d in snap.infeasible})
    if infeasible:
        why = f"infeasible: no node type of this cluster, within max_workers, can hold {' / '.join(infeasible)}"
    elif snap.launching or served:
        why = "autoscaler requested"
    else:
        why = "no node requested: the pool is at max_workers or the autoscaler cannot add one"
    return Wait(f"waiting for {waiting} ({why})", bool(snap.launching) or served, bool(infeasible))


def nodes_added_for(demands: tuple[Demand, ...], before: Snapshot, now: Snapshot) -> bool:
    """Whether a live node that some demand's selector matches is in `now` but was not in `before`."""
    known = {n.node_id for n in before.nodes}
    return any(n.node_id not in known and n.status in LIVE_NODE_STATUSES and _matches(d.selector, n.labels)
               for n in now.nodes for d in demands)


class CapacityWatcher:
    """Turns snapshots into console lines: one when the wait changes, and `nodes ready after Ns` when it ends.

    A wait the autoscaler has not acted on is only reported once it lasted `grace_s`: the autoscaler normally
    requests nodes within a loop or two, and a line saying it did not would be wrong by then. A wait that ended
    before it was reported is still reported, with its end, if nodes for it came up meanwhile: a local node (or
    a warm VM) can be requested and up between two polls, and the job did wait for it.
    `start()` polls `fetch()` every `poll_s` in a daemon thread, and stops silently if the first snapshot
    shows no autoscaler (nothing to say on a fixed-size cluster)."""

    def __init__(self, fetch: Callable[[], Snapshot], say: Callable[[str], object], poll_s: float = POLL_S,
                 grace_s: float = UNREQUESTED_GRACE_S) -> None:
        self.fetch, self.say, self.poll_s, self.grace_s = fetch, say, poll_s, grace_s
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="omnivl-capacity")
        self._last: str | None = None
        self._waiting_since: float | None = None
        self._unrequested_since: float | None = None
        self._unreported: Snapshot | None = None  # the first snapshot of a wait not yet reported

    def start(self) -> "CapacityWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll_s + JOIN_TIMEOUT_S)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                snap = self.fetch()
            except Exception:  # the cluster going away ends the job anyway; never fail the job from here
                snap = None
            if snap is not None:
                if first and not snap.autoscaler:
                    return
                first = False
                self.observe(snap)
            self._stop.wait(self.poll_s)

    def observe(self, snap: Snapshot) -> None:
        wait = describe_wait(snap)
        if wait is None:
            first = self._unreported
            served_unsaid = self._last is None and first is not None and nodes_added_for(first.demands, first, snap)
            if served_unsaid:
                self._emit(describe_wait(first, served=True).line)
            if self._last is not None or served_unsaid:
                self._emit(f"nodes ready after {snap.taken_at - self._waiting_since:.0f}s")
            self._last = self._waiting_since = self._unrequested_since = self._unreported = None
            return
        if self._waiting_since is None:
            self._waiting_since = snap.taken_at
            self._unreported = snap
        if wait.requested or wait.infeasible:
            self._unrequested_since = None
        else:
            if self._unrequested_since is None:
                self._unrequested_since = snap.taken_at
            if snap.taken_at - self._unrequested_since < self.grace_s:
                return
        if wait.line != self._last:
            self._emit(wait.line)
            self._last = wait.line
            self._unreported = None

    def _emit(self, line: str) -> None:
        self.lines.append(line)
        self.say(line)


class LineFilter:
    """Collects streamed text and passes on the complete lines that `pattern` matches (capacity lines)."""

    def __init__(self, say: Callable[[str], object], pattern: re.Pattern = LINE_PATTERN) -> None:
        self.say, self.pattern, self._partial = say, pattern, ""

    def __call__(self, text: str) -> None:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if self.pattern.match(line):
                self.say(line)


