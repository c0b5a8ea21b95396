"""What `omnivl run` / `omnivl submit` say while a job waits for nodes (omnivl.cluster.capacity), from cluster
status replies built as the GCS sends them (Ray's own protobuf messages); the live path is exercised by
test_autoscaling.py."""

from __future__ import annotations

import time

import pytest
from ray.core.generated import autoscaler_pb2 as pb
from ray.core.generated import common_pb2

from omnivl.cluster.capacity import parse_status, pool_label_selector
from omnivl.pipeline.capacity_wait import CapacityWatcher, LineFilter, describe_wait

TRAINER = {"pool": "trainer"}


def fill(request: pb.ResourceRequest, resources: dict, labels: dict) -> pb.ResourceRequest:
    request.resources_bundle.update(resources)
    if labels:
        selector = request.label_selectors.add()
        for key, value in labels.items():
            constraint = selector.label_constraints.add(label_key=key, operator=common_pb2.LABEL_OPERATOR_IN)
            constraint.label_values.append(value)
    return request


def status(*, pending=(), gangs=(), constraints=(), launching=(), infeasible=(), nodes=(),
           autoscaler=True) -> pb.GetClusterStatusReply:
    """A reply with: pending (resources, labels, count); gangs [(resources, labels), ...] whose selectors sit in
    bundle_selectors as Ray 2.60 puts them; constraints / infeasible (resources, labels, count); launching
    (node type, count); nodes (node type, labels, total resources, status name)."""
    reply = pb.GetClusterStatusReply()
    state, auto = reply.cluster_resource_state, reply.autoscaling_state
    auto.autoscaler_state_version = 3 if autoscaler else 0
    for resources, labels, count in pending:
        fill(state.pending_resource_requests.add(count=count).request, resources, labels)
    for bundles in gangs:
        selector = state.pending_gang_resource_requests.add().bundle_selectors.add()
        for resources, labels in bundles:
            fill(selector.resource_requests.add(), resources, labels)
    for resources, labels, count in constraints:
        fill(state.cluster_resource_constraints.add().resource_requests.add(count=count).request, resources, labels)
    for resources, labels, count in infeasible:
        fill(auto.infeasible_cluster_resource_constraints.add().resource_requests.add(count=count).request,
             resources, labels)
    for node_type, count in launching:
        auto.pending_instance_requests.add(ray_node_type_name=node_type, count=count)
    for i, (node_type, labels, total, state_name) in enumerate(nodes):
        node = state.node_states.add(node_id=bytes([i + 1]) * 28, ray_node_type_name=node_type,
                                     status=pb.NodeStatus.Value(state_name))
        node.labels.update(labels)
        node.total_resources.update(total)
    return reply


def line(reply, taken_at: float = 0.0) -> str | None:
    wait = describe_wait(parse_status(reply, taken_at))
    return wait.line if wait else None


def test_placement_group_bundles_are_counted_by_their_pool():
    reply = status(gangs=[[({"CPU": 1}, TRAINER)] * 2], launching=[("trainer", 2)])
    assert line(reply) == "waiting for 2 × pool=trainer (autoscaler requested)"


def test_a_coordinator_request_and_its_placement_group_are_the_same_nodes():
    reply = status(gangs=[[({"CPU": 1}, TRAINER)] * 2], constraints=[({"CPU": 1}, TRAINER, 2)],
                   launching=[("trainer", 1)])
    assert line(reply) == "waiting for 2 × pool=trainer (autoscaler requested)"


def test_a_request_counts_only_what_the_live_nodes_cannot_hold():
    nodes = [("trainer", TRAINER, {"CPU": 3}, "RUNNING"), ("trainer", TRAINER, {"CPU": 3}, "DEAD"),
             ("cpu-decode", {"pool": "cpu-decode"}, {"CPU": 8}, "IDLE")]
    reply = status(constraints=[({"CPU": 2}, TRAINER, 2)], nodes=nodes, launching=[("trainer", 1)])
    assert line(reply) == "waiting for 1 × pool=trainer (autoscaler requested)"
    held = status(constraints=[({"CPU": 2}, TRAINER, 1)], nodes=nodes)
    assert line(held) is None


def test_data_scale_up_wishes_and_zero_resource_tasks_are_not_waits():
    """Ray Data asks for more CPUs without a selector, and its read tasks reserve nothing."""
    reply = status(constraints=[({"CPU": 1}, {}, 8)], pending=[({}, {"pool": "cpu-decode"}, 2)])
    assert line(reply) is None


def test_unlabelled_work_is_named_by_its_resources():
    reply = status(pending=[({"CPU": 0.5}, {}, 1), ({"CPU": 1}, {}, 2)], launching=[("cpu-decode", 2)])
    assert line(reply) == "waiting for 1 × CPU=0.5, 2 × CPU=1 (autoscaler requested)"


def test_infeasible_demand_is_named():
    reply = status(constraints=[({"CPU": 1}, TRAINER, 2)], infeasible=[({"CPU": 1}, TRAINER, 2)],
                   nodes=[("trainer", TRAINER, {"CPU": 1}, "RUNNING")])
    assert line(reply) == ("waiting for 1 × pool=trainer (infeasible: no node type of this cluster, within "
                           "max_workers, can hold pool=trainer)")


def test_watcher_says_each_change_once_and_when_nodes_are_ready():
    said: list[str] = []
    watcher = CapacityWatcher(fetch=None, say=said.append, grace_s=5.0)
    unrequested = status(pending=[({"CPU": 1}, TRAINER, 2)])
    requested = status(pending=[({"CPU": 1}, TRAINER, 2)], launching=[("trainer", 2)])
    one_left = status(pending=[({"CPU": 1}, TRAINER, 1)], launching=[("trainer", 1)])
    for t, reply in [(0, unrequested), (1, unrequested), (2, requested), (3, requested), (4, one_left),
                     (9, status()), (20, unrequested), (24, unrequested), (26, unrequested)]:
        watcher.observe(parse_status(reply, float(t)))
    assert said == [
        "waiting for 2 × pool=trainer (autoscaler requested)",  # not the 2 s before the autoscaler acted
        "waiting for 1 × pool=trainer (autoscaler requested)",
        "nodes ready after 9s",
        "waiting for 2 × pool=trainer (no node requested: the pool is at max_workers or the autoscaler cannot "
        "add one)",  # once it lasted the grace period
    ]


def test_a_wait_served_between_two_polls_is_still_reported():
    """The demand was seen once, before the autoscaler had requested anything; at the next poll a node of the pool
    was up and the demand gone. The job did wait for the autoscaler: the console says so. A wait that ends
    without any new node (the work fitted somewhere after all) stays unsaid."""
    said: list[str] = []
    watcher = CapacityWatcher(fetch=None, say=said.append, grace_s=5.0)
    head = ("", {}, {"CPU": 2}, "RUNNING")
    decode = ("cpu-decode", {"pool": "cpu-decode"}, {"CPU": 1}, "RUNNING")
    wanted = [({"CPU": 1}, {"pool": "cpu-decode"}, 1)]
    for t, reply in [(0, status(nodes=[head])), (2, status(pending=wanted, nodes=[head])),
                     (4, status(nodes=[head, decode])),
                     (6, status(pending=[({"CPU": 1}, {}, 1)], nodes=[head, decode])),
                     (8, status(nodes=[head, decode]))]:
        watcher.observe(parse_status(reply, float(t)))
    assert said == ["waiting for 1 × pool=cpu-decode (autoscaler requested)", "nodes ready after 2s"]


def test_watcher_is_silent_without_an_autoscaler():
    said: list[str] = []
    calls = []

    def fetch():
        calls.append(1)
        return parse_status(status(pending=[({"CPU": 1}, TRAINER, 2)], autoscaler=False), time.time())

    watcher = CapacityWatcher(fetch, said.append, poll_s=0.05).start()
    time.sleep(0.5)
    watcher.stop()
    assert said == [] and len(calls) == 1  # it looked once and stopped


def test_line_filter_relays_only_whole_capacity_lines():
    said: list[str] = []
    relay = LineFilter(said.append)
    for chunk in ["stage 'image': 6 steps\nwaiting for 2 × pool=tr", "ainer (autoscaler requested)\n(RayTrain",
                  "Worker) waiting for 2 × x\nnodes ready after 4s\nwaiting for nothing"]:
        relay(chunk)
    assert said == ["waiting for 2 × pool=trainer (autoscaler requested)", "nodes ready after 4s"]


@pytest.mark.ray
def test_pool_selector_is_dropped_on_a_fixed_cluster_without_the_pool(ray_local):
    """The embedded Ray has no autoscaler and no `pool` labels: label-placed work runs anywhere rather than
    waiting forever; a selector some node satisfies is kept."""
    import ray

    assert pool_label_selector({"pool": "cpu-decode"}) is None
    assert pool_label_selector(None) is None
    node_id = ray.get_runtime_context().get_node_id()
    assert pool_label_selector({"ray.io/node-id": node_id}) == {"ray.io/node-id": node_id}
