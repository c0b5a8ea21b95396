"""The Ray seam of what a job waits for on an autoscaling cluster (the plain logic is
omnivl.pipeline.capacity_wait).

A job on a cluster that scales from zero first waits for nodes: the train workers' placement group waits for
`pool: trainer` nodes, decode actors for `pool: cpu-decode` nodes. `watch_capacity()` polls the cluster's
pending demand (the GCS's cluster status, the same data `ray status` shows under autoscaler v2) in a
background thread and prints one line each time it changes.

Demand counts bundles: pending tasks and actors, placement-group bundles, and label-selected resource requests
(Ray Train's, made through its autoscaling coordinator before it places an elastic worker group) that the live
nodes cannot hold. The watcher only speaks on a cluster that an autoscaler (v2) manages; on the embedded local
Ray, contention for CPUs is not a wait for nodes.

`pool_label_selector` is the placement rule that makes scale-from-zero possible for label-placed work: keep
the label selector if a node with those labels is alive *or an autoscaler can add one*, so the demand reaches
the autoscaler instead of landing on whatever node exists.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator

from omnivl.pipeline.capacity_wait import (
    POLL_S, CapacityWatcher, Demand, LineFilter, NodeView, Snapshot, merged, needs_room, room_for,
)

GCS_TIMEOUT_S = 10
LABEL_OPERATOR_NOT_IN = 2  # ray.rpc.LabelSelectorOperator (1 is IN)

# --- reading the cluster status -----------------------------------------------------------------------------


def snapshot(gcs_address: str) -> Snapshot:
    """The cluster status now (one GCS call). Raises whatever the GCS client raises if it is unreachable."""
    from ray._raylet import GcsClient
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    asked_at = time.time()  # the status is computed after this, so durations it reports end no earlier
    reply = GetClusterStatusReply()
    reply.ParseFromString(GcsClient(gcs_address).get_cluster_status(timeout_s=GCS_TIMEOUT_S))
    return parse_status(reply, asked_at)


def parse_status(reply, taken_at: float) -> Snapshot:
    """Snapshot of a GetClusterStatusReply (ray.core.generated.autoscaler_pb2)."""
    from ray.core.generated.autoscaler_pb2 import NodeStatus

    state, auto = reply.cluster_resource_state, reply.autoscaling_state
    nodes = tuple(NodeView(n.node_id.hex(), n.ray_node_type_name, dict(n.labels), NodeStatus.Name(n.status),
                           n.idle_duration_ms / 1000.0, dict(n.total_resources)) for n in state.node_states)
    # A coordinator's request and the placement group it is for describe the same nodes: take the larger.
    demands = merged(_pending(state), _short_of_constraints(state, nodes))
    waiting = {d.what for d in demands}
    infeasible = [d for d in _infeasible(auto) if d.what in waiting]
    return Snapshot(taken_at, auto.autoscaler_state_version > 0, demands, merged(infeasible), _launching(auto),
                    nodes)


def _pending(state) -> list[Demand]:
    """Tasks, actors and placement-group bundles that no node can take now."""
    pending = [_demand(r.request, r.count) for r in state.pending_resource_requests]
    pending += [_demand(req, 1) for gang in state.pending_gang_resource_requests for req in _gang_bundles(gang)]
    return [d for d in pending if needs_room(d)]


def _short_of_constraints(state, nodes: tuple[NodeView, ...]) -> list[Demand]:
    """Bundles of label-selected resource requests (Ray Train's, through its autoscaling coordinator) that the
    live nodes could not hold even if idle. Requests without a selector are Ray Data asking for more CPUs to
    go faster: not a wait."""
    short = []
    for constraint in state.cluster_resource_constraints:
        for r in constraint.resource_requests:
            wanted = _demand(r.request, r.count)
            if not (wanted.selector and needs_room(wanted)):
                continue
            missing = wanted.count - room_for(wanted, nodes)
            if missing > 0:
                short.append(Demand(wanted.selector, wanted.resources, missing))
    return short


def _infeasible(auto) -> list[Demand]:
    """What the autoscaler says no node type (within max_workers) can hold."""
    infeasible = [_demand(r, 1) for r in auto.infeasible_resource_requests]
    infeasible += [_demand(req, 1) for gang in auto.infeasible_gang_resource_requests for req in _gang_bundles(gang)]
    infeasible += [_demand(r.request, r.count) for c in auto.infeasible_cluster_resource_constraints
                   for r in c.resource_requests]
    return infeasible


def _launching(auto) -> tuple[tuple[str, int], ...]:
    """Node type -> nodes the autoscaler has requested or is starting."""
    launching: dict[str, int] = {}
    for r in auto.pending_instance_requests:
        launching[r.ray_node_type_name] = launching.get(r.ray_node_type_name, 0) + r.count
    for p in auto.pending_instances:
        launching[p.ray_node_type_name] = launching.get(p.ray_node_type_name, 0) + 1
    return tuple(sorted(launching.items()))


def _demand(request, count: int) -> Demand:
    selector = []
    for s in request.label_selectors:
        for c in s.label_constraints:
            values = sorted(c.label_values)
            if c.operator == LABEL_OPERATOR_NOT_IN:
                op = f"!={values[0]}" if len(values) == 1 else f" not in ({','.join(values)})"
            else:
                op = f"={values[0]}" if len(values) == 1 else f" in ({','.join(values)})"
            selector.append((c.label_key, op))
    resources = tuple(sorted((k, float(v)) for k, v in request.resources_bundle.items() if v > 0))
    return Demand(tuple(sorted(set(selector))), resources, count)



def _gang_bundles(gang) -> list:
    """The bundles of a pending placement group, with their label selectors (which Ray 2.60 puts in the
    first `bundle_selectors` entry; later entries are fallbacks)."""
    if len(gang.bundle_selectors):
        return list(gang.bundle_selectors[0].resource_requests)
    return list(gang.requests)


@contextlib.contextmanager
def watch_capacity(say: Callable[[str], object] | None = None, poll_s: float = POLL_S) -> Iterator[None]:
    """While the block runs, print what the job waits for on an autoscaling cluster (see module doc). A no-op
    when Ray is not initialized here or is reached through Ray Client (no GCS address)."""
    import ray

    address = _gcs_address() if ray.is_initialized() else None
    if not address:
        yield
        return
    watcher = CapacityWatcher(lambda: snapshot(address), say or (lambda line: print(line, flush=True)), poll_s)
    watcher.start()
    try:
        yield
    finally:
        watcher.stop()


def _gcs_address() -> str | None:
    import ray

    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # Ray Client sessions have no GCS address
        return None


# --- placement by label on clusters that scale from zero ----------------------------------------------------


def autoscaler_running(gcs_address: str) -> bool:
    """Whether an autoscaler (v2) manages the cluster, i.e. nodes can be added for pending demand."""
    return snapshot(gcs_address).autoscaler


def pool_label_selector(wanted: dict[str, str] | None) -> dict[str, str] | None:
    """`wanted` if some alive node carries all its labels, or if an autoscaler manages the cluster (it adds
    a node of the pool for the demand; if no node type has these labels, the demand is reported infeasible and
    `watch_capacity` says so). None otherwise, so a cluster without such nodes and without an autoscaler (the
    embedded local Ray) still runs the work instead of waiting forever. Ray must be initialized."""
    import ray

    if not wanted:
        return None
    for node in ray.nodes():
        labels = node.get("Labels") or {}
        if node.get("Alive") and all(labels.get(k) == v for k, v in wanted.items()):
            return dict(wanted)
    address = _gcs_address()
    return dict(wanted) if address and autoscaler_running(address) else None


# --- `omnivl submit`: the job's capacity lines, relayed from its log --------------------------------------


@contextlib.contextmanager
def relay_capacity_lines(client, job_id: str, say: Callable[[str], object] | None = None) -> Iterator[None]:
    """While the block runs (e.g. `client.wait(job_id)`), tail the job's log in a daemon thread and pass on
    its capacity lines (what `watch_capacity` printed in the job's driver), to stderr by default. `client` is
    an `omnivl.cluster.jobs_client.JobsClient`; a failure to tail is ignored (the wait reports job errors)."""
    import sys

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))

    def tail() -> None:
        try:
            client.follow_logs(job_id, LineFilter(say))
        except Exception:  # the log stream is a courtesy; the status wait is what decides the outcome
            pass

    threading.Thread(target=tail, daemon=True, name="omnivl-capacity-relay").start()
    yield

