"""The node pools of OmniVL's Ray clusters (`infra/node_types.yaml`), and every cluster definition read back as
pools so they can be compared with it.

`infra/node_types.yaml` is the one definition of the head and of the worker pools (`cpu-decode`, `trainer`,
`serve`): labels, resources, min/max workers, idle timeout. The cluster files (`ray_cluster.yaml`, the KubeRay
`RayCluster` / `RayJob` / `RayService`) repeat those values in their own formats; `cluster_pools` reads a file
the way Ray's autoscaler does (`prepare_config` for the cluster launcher, KubeRay's own CR translation for the
manifests) and `mismatches` lists every difference, so a test can fail on one. `local_autoscaling_config`
builds a fake-provider autoscaler config from the same pools, with sizes shrunk to fit one machine.

A node type is matched to a pool by its `pool` label. Resources are compared for the names the definition
states plus CPU and GPU (a GPU the definition does not state is a difference); memory is not compared.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from omnivl.spec.base import Config

ROOT = Path(__file__).resolve().parents[3]
NODE_TYPES_FILE = ROOT / "infra" / "node_types.yaml"
POOL_LABEL = "pool"
HEAD_POOL = "head"
# Resources that are always compared, stated or not: an unexpected GPU (or a missing one) changes placement.
ALWAYS_COMPARED = ("CPU", "GPU")
SECONDS_PER_MINUTE = 60.0
KUBERAY_KINDS = {"RayCluster": ("spec",), "RayJob": ("spec", "rayClusterSpec"),
                 "RayService": ("spec", "rayClusterConfig")}
# What Ray's fake multi-node provider calls the head node type (it tags the head with this name).
FAKE_HEAD_NODE_TYPE = "ray.head.default"


class NodeTypesError(ValueError):
    """`infra/node_types.yaml` (or a cluster file read against it) is malformed; the message names the field."""


class HeadSpec(Config):
    labels: dict[str, str]
    resources: dict[str, float]


class PoolSpec(Config):
    labels: dict[str, str]
    resources: dict[str, float] = Field(description="logical resources of one node of the pool")
    min_workers: int = Field(ge=0)
    max_workers: int = Field(ge=1)
    idle_timeout_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers ({self.max_workers}) must be >= min_workers ({self.min_workers})")
        return self


class NodeTypesSpec(Config):
    head: HeadSpec
    pools: dict[str, PoolSpec]
    clusters: dict[str, list[str]] = Field(description="cluster file (relative to the repo root) -> its pools")

    @model_validator(mode="after")
    def _consistent(self):
        head_pool = self.head.labels.get(POOL_LABEL)
        if head_pool != HEAD_POOL:
            raise ValueError(f"head.labels.{POOL_LABEL} must be {HEAD_POOL!r}, got {head_pool!r}")
        for name, pool in self.pools.items():
            if pool.labels.get(POOL_LABEL) != name:
                raise ValueError(f"pools.{name}.labels.{POOL_LABEL} must be {name!r} (a pool is named by its "
                                 f"{POOL_LABEL} label), got {pool.labels.get(POOL_LABEL)!r}")
        for path, names in self.clusters.items():
            unknown = sorted(set(names) - set(self.pools))
            if unknown:
                raise ValueError(f"clusters.{path}: unknown pools {unknown}; defined: {sorted(self.pools)}")
        return self


@dataclass(frozen=True)
class NodeType:
    """One node type of one cluster definition, as its autoscaler sees it."""

    name: str  # the name in that file (ray_cluster.yaml `gpu_train`, KubeRay groupName `trainer`, ...)
    labels: dict[str, str]
    resources: dict[str, float]
    min_workers: int = 0
    max_workers: int = 0
    idle_timeout_s: float | None = None  # None: the head, which is never removed
    head: bool = False

    @property
    def pool(self) -> str | None:
        return self.labels.get(POOL_LABEL)


@dataclass(frozen=True)
class ClusterPools:
    """A cluster definition read as pools: its head and its worker node types keyed by `pool` label."""

    source: str
    head: NodeType
    workers: dict[str, NodeType] = field(default_factory=dict)


# --- the definition -----------------------------------------------------------------------------------------


def load_node_types(path: Path = NODE_TYPES_FILE) -> NodeTypesSpec:
    """The validated definition; raises NodeTypesError naming the file and the field at fault."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise NodeTypesError(f"{path}: cannot read: {exc}") from None
    try:
        return NodeTypesSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise NodeTypesError(f"{path}: {problems}") from None


def expected_pools(spec: NodeTypesSpec, source: str) -> ClusterPools:
    """What the cluster file `source` (a key of `spec.clusters`) must contain."""
    if source not in spec.clusters:
        raise NodeTypesError(f"{source} is not listed under `clusters:` of {NODE_TYPES_FILE.name}")
    head = NodeType(HEAD_POOL, dict(spec.head.labels), dict(spec.head.resources), head=True)
    workers = {name: _node_type(name, spec.pools[name]) for name in spec.clusters[source]}
    return ClusterPools(source, head, workers)


def _node_type(name: str, pool: PoolSpec) -> NodeType:
    return NodeType(name, dict(pool.labels), dict(pool.resources), pool.min_workers, pool.max_workers,
                    pool.idle_timeout_s)


# --- cluster files read back --------------------------------------------------------------------------------


def cluster_pools(path: Path, source: str) -> ClusterPools:
    """The cluster definition at `path` (`source`: its name in messages) read as its autoscaler reads it:
    a KubeRay manifest (by `kind:`) or a cluster-launcher YAML. Raises NodeTypesError naming the node type
    that has no `pool` label, or two node types with the same one."""
    raw = yaml.safe_load(Path(path).read_text())
    if raw.get("kind") in KUBERAY_KINDS:
        return pools_of_autoscaler_config(kuberay_autoscaling_config(raw), source)
    from ray.autoscaler._private.util import prepare_config  # private, as in Ray's own `ray up`

    return pools_of_autoscaler_config(prepare_config(raw), source)


def kuberay_autoscaling_config(manifest: dict) -> dict:
    """The autoscaler config that KubeRay's in-tree autoscaler derives from this RayCluster, RayJob or
    RayService (Ray's own translation, so labels, resources and idle timeouts are read exactly as in the
    cloud)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    spec: Any = manifest
    for key in KUBERAY_KINDS[manifest["kind"]]:
        spec = spec[key]
    metadata = {"namespace": "default", **manifest.get("metadata", {})}
    return _derive_autoscaling_config_from_ray_cr({"metadata": metadata, "spec": copy.deepcopy(spec)})


def pools_of_autoscaler_config(config: dict, source: str) -> ClusterPools:
    """Node types of a (filled-out) autoscaler config, the workers keyed by their `pool` label."""
    cluster_idle_s = config.get("idle_timeout_minutes")
    cluster_idle_s = None if cluster_idle_s is None else cluster_idle_s * SECONDS_PER_MINUTE
    head, workers = None, {}
    for name, node_type in config["available_node_types"].items():
        labels = {str(k): str(v) for k, v in (node_type.get("labels") or {}).items()}
        resources = {k: float(v) for k, v in (node_type.get("resources") or {}).items()}
        if name == config["head_node_type"]:
            head = NodeType(name, labels, resources, head=True)
            continue
        pool = labels.get(POOL_LABEL)
        if pool is None:
            raise NodeTypesError(f"{source}: node type {name!r} has no {POOL_LABEL!r} label (labels: {labels})")
        if pool in workers:
            raise NodeTypesError(f"{source}: node types {workers[pool].name!r} and {name!r} both have "
                                 f"{POOL_LABEL}={pool}")
        idle = node_type.get("idle_timeout_s", cluster_idle_s)
        workers[pool] = NodeType(name, labels, resources, int(node_type.get("min_workers", 0)),
                                 int(node_type.get("max_workers", 0)), None if idle is None else float(idle))
    if head is None:
        raise NodeTypesError(f"{source}: head_node_type {config['head_node_type']!r} is not a node type")
    return ClusterPools(source, head, workers)


# --- comparison ---------------------------------------------------------------------------------------------


def mismatches(expected: ClusterPools, actual: ClusterPools) -> list[str]:
    """Every difference between what `node_types.yaml` says and what the cluster file has; empty if none.
    Each message names the file, the node type, the field, both values."""
    problems = _compare(expected.head, actual.head, actual.source, ("labels", "resources"))
    for pool in sorted(set(expected.workers) - set(actual.workers)):
        problems.append(f"{actual.source}: no node type has {POOL_LABEL}={pool} (node_types.yaml defines it)")
    for pool in sorted(set(actual.workers) - set(expected.workers)):
        problems.append(f"{actual.source}: node type {actual.workers[pool].name!r} has {POOL_LABEL}={pool}, "
                        f"which node_types.yaml does not list for this file")
    for pool in sorted(set(expected.workers) & set(actual.workers)):
        problems += _compare(expected.workers[pool], actual.workers[pool], actual.source,
                             ("labels", "resources", "min_workers", "max_workers", "idle_timeout_s"))
    return problems


def _compare(want: NodeType, got: NodeType, source: str, fields: tuple[str, ...]) -> list[str]:
    problems = []
    for name in fields:
        a, b = getattr(want, name), getattr(got, name)
        if name == "resources":
            a, b = _compared_resources(a, b)
        if a != b:
            problems.append(f"{source}: node type {got.name!r} ({POOL_LABEL}={want.pool}): {name} is {b}, "
                            f"node_types.yaml says {a}")
    return problems


def _compared_resources(want: dict[str, float], got: dict[str, float]) -> tuple[dict, dict]:
    names = sorted(set(want) | set(ALWAYS_COMPARED))
    return ({n: float(want.get(n, 0)) for n in names}, {n: float(got.get(n, 0)) for n in names})


# --- the local autoscaling cluster --------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalSize:
    """One pool shrunk to fit a test machine: per-node resources (the same names as the pool's, smaller
    values), at most `max_workers` nodes, and this idle timeout."""

    resources: dict[str, float]
    max_workers: int
    idle_timeout_s: float


def shrink(spec: NodeTypesSpec, sizes: dict[str, LocalSize]) -> dict[str, PoolSpec]:
    """The pools of `sizes` with their labels and min_workers kept and their sizes replaced. Raises
    NodeTypesError if a size names an unknown pool, or drops or adds a resource the pool has (a trainer
    without a GPU would no longer be a trainer to the autoscaler's GPU-aware scheduling)."""
    out = {}
    for name, size in sizes.items():
        if name not in spec.pools:
            raise NodeTypesError(f"local size for unknown pool {name!r}; defined: {sorted(spec.pools)}")
        pool = spec.pools[name]
        stated = {k for k, v in pool.resources.items() if v > 0}
        if set(size.resources) != stated:
            raise NodeTypesError(f"local size of pool {name!r}: resources {sorted(size.resources)} must be the "
                                 f"pool's own {sorted(stated)}")
        out[name] = pool.model_copy(update={"resources": dict(size.resources), "idle_timeout_s": size.idle_timeout_s,
                                            "max_workers": min(size.max_workers, pool.max_workers)})
    return out


def local_autoscaling_config(spec: NodeTypesSpec, sizes: dict[str, LocalSize], *, gcs_address: str,
                             object_store_bytes: int, upscaling_speed: float = 1.0) -> dict:
    """An autoscaler config for Ray's fake multi-node provider (worker nodes are raylets started on this
    machine by the autoscaler) with the head and the shrunk pools of `sizes`.

    The provider is loaded as an `external` module: Ray 2.60's wheel lacks the defaults file
    (`fake_multi_node/example.yaml`) that the `fake_multinode` provider type reads. `gcs_address` lets the
    fake nodes join a head on any port (the provider otherwise assumes 6379)."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    node_types = {FAKE_HEAD_NODE_TYPE: {"resources": dict(spec.head.resources), "labels": dict(spec.head.labels),
                                        "node_config": {}, "min_workers": 0, "max_workers": 0}}
    for name, pool in shrink(spec, sizes).items():
        node_types[name] = {"resources": {**pool.resources, "object_store_memory": object_store_bytes},
                            "labels": dict(pool.labels), "node_config": {}, "min_workers": pool.min_workers,
                            "max_workers": pool.max_workers, "idle_timeout_s": pool.idle_timeout_s}
    return {
        "cluster_name": "omnivl-local-autoscaling",
        "max_workers": sum(t["max_workers"] for t in node_types.values()),
        "provider": {"type": "external",
                     "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
                     "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True,
                     "launch_multiple": True, "head_node_id": FAKE_HEAD_NODE_ID, "gcs_address": gcs_address},
        "available_node_types": node_types,
        "head_node_type": FAKE_HEAD_NODE_TYPE,
        "upscaling_speed": upscaling_speed,
        "idle_timeout_minutes": min(s.idle_timeout_s for s in sizes.values()) / SECONDS_PER_MINUTE,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }
