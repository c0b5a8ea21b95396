"""Connecting to Ray: the embedded local cluster by default, an existing cluster when an address is given.

`ray.init()` with no address silently attaches to any leftover local cluster, so the embedded default always
passes `address="local"`; a real cluster is reached only through an explicit `--address` or `RAY_ADDRESS`
(which Ray also sets inside a submitted job).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

log = logging.getLogger(__name__)


def embedded_num_cpus() -> int:
    """Logical CPUs for the embedded cluster: `OMNIVL_NUM_CPUS`, else twice the cores (at least 4).

    Oversubscribed on purpose: train workers and decode actors each reserve a CPU but spend much of their time
    waiting on each other, and with only as many slots as cores a 2-worker job would leave none for decoding.
    """
    env = os.environ.get("OMNIVL_NUM_CPUS")
    if env:
        return int(env)
    return max(4, 2 * (os.cpu_count() or 1))


def resolve_address(address: str | None) -> str | None:
    """The cluster to attach to, or None for the embedded default."""
    return address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False) -> Iterator[str]:
    """Initialize Ray for the duration of a job; shuts down only a cluster this call started.

    Yields a human description of where the job runs.
    """
    import ray

    if ray.is_initialized():
        yield "the already-initialized Ray"
        return
    target = resolve_address(address)
    saved_auth_mode = os.environ.get("RAY_AUTH_MODE")  # ray.init sets it for the process; don't leak it
    if target:
        ray.init(address=target, log_to_driver=True)
        where = f"Ray cluster at {target}"
    else:
        cpus = num_cpus or embedded_num_cpus()
        ray.init(address="local", num_cpus=cpus, include_dashboard=dashboard, log_to_driver=True)
        where = f"embedded local Ray ({cpus} logical CPUs)"
    try:
        yield where
    finally:
        ray.shutdown()
        if saved_auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_auth_mode


def on_driver_node():
    """A scheduling strategy that keeps an actor on the driver's node: a small coordination actor (the data
    ledger, the progress channel) must not land on a worker node that an autoscaler or a failure can take away,
    or the job dies with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
