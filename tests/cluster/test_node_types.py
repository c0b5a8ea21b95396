"""One definition of the node pools (infra/node_types.yaml): ray_cluster.yaml and the KubeRay RayCluster, RayJob
and RayService read back (as their autoscalers read them) have exactly its labels, resources, min/max workers
and idle timeouts, and the local autoscaling test builds its cluster from it. Offline: no cluster is started."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

from omnivl.cluster.node_types import (
    FAKE_HEAD_NODE_TYPE, LocalSize, NodeTypesError, cluster_pools, expected_pools, load_node_types,
    local_autoscaling_config, mismatches, shrink,
)

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_node_types(ROOT / "infra" / "node_types.yaml")
SOURCES = sorted(SPEC.clusters)
KUBERAY_SOURCES = [s for s in SOURCES if s.startswith("infra/kuberay/")]


def problems_of(path: Path, source: str) -> list[str]:
    return mismatches(expected_pools(SPEC, source), cluster_pools(path, source))


def mutated_copy(tmp_path: Path, source: str, edit) -> Path:
    """A copy of cluster file `source` with `edit(doc)` applied."""
    doc = yaml.safe_load((ROOT / source).read_text())
    edit(doc)
    out = tmp_path / Path(source).name
    out.write_text(yaml.safe_dump(doc))
    return out


def kuberay_spec(doc: dict) -> dict:
    kind = doc["kind"]
    return {"RayCluster": lambda: doc["spec"], "RayJob": lambda: doc["spec"]["rayClusterSpec"],
            "RayService": lambda: doc["spec"]["rayClusterConfig"]}[kind]()


def worker_group(doc: dict, pool: str) -> dict:
    return next(g for g in kuberay_spec(doc)["workerGroupSpecs"] if g.get("labels", {}).get("pool") == pool)


def first_pool(source: str) -> str:
    return SPEC.clusters[source][0]


# --- every cluster file agrees with the definition ------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_cluster_file_matches_node_types(source):
    assert problems_of(ROOT / source, source) == []


def test_every_cluster_file_is_listed():
    """A new cluster definition cannot slip past the check by not being listed."""
    kuberay = {str(p.relative_to(ROOT)) for p in (ROOT / "infra" / "kuberay").glob("*.yaml")
               if yaml.safe_load(p.read_text()).get("kind") in ("RayCluster", "RayJob", "RayService")}
    assert kuberay | {"ray_cluster.yaml"} == set(SOURCES)


def test_ray_cluster_head_start_command_carries_the_head_definition():
    """The cluster launcher runs the head's start command as written, so its labels and CPUs must be there."""
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    words = shlex.split(" ".join(config["head_start_ray_commands"]))
    labels = ",".join(f"{k}={v}" for k, v in SPEC.head.labels.items())
    assert f"--labels={labels}" in words
    assert f"--num-cpus={int(SPEC.head.resources['CPU'])}" in words


def test_the_code_places_work_on_the_defined_pools():
    from omnivl.cluster.data_pipeline import CPU_POOL

    assert CPU_POOL == SPEC.pools["cpu-decode"].labels
    spec = yaml.safe_load((ROOT / "jobs" / "pretrain_base_cluster.yaml").read_text())
    assert spec["scaling"]["worker_label"] == SPEC.pools["trainer"].labels


# --- the check fails on a difference --------------------------------------------------------------------------


@pytest.mark.parametrize("source", KUBERAY_SOURCES)
@pytest.mark.parametrize("field, edit", [
    ("labels", lambda g: g["labels"].update(pool="decode")),
    ("labels", lambda g: g["labels"].update(zone="a")),
    ("resources", lambda g: g["template"]["spec"]["containers"][0]["resources"]["limits"].update(cpu="31")),
    ("resources", lambda g: g["template"]["spec"]["containers"][0]["resources"]["limits"].update(
        {"nvidia.com/gpu": "1"})),
    ("max_workers", lambda g: g.update(maxReplicas=g["maxReplicas"] + 1)),
    ("min_workers", lambda g: g.update(minReplicas=g["minReplicas"] + 1)),
    ("idle_timeout_s", lambda g: g.update(idleTimeoutSeconds=30)),
], ids=["pool-label", "extra-label", "cpu", "gpu", "max", "min", "idle"])
def test_a_kuberay_difference_fails(tmp_path, source, field, edit):
    pool = first_pool(source)
    path = mutated_copy(tmp_path, source, lambda doc: edit(worker_group(doc, pool)))
    problems = problems_of(path, source)
    assert problems, f"a changed {field} in {source} went unnoticed"
    assert all(source in p for p in problems)
    assert any(f" {field} " in p or "no node type has pool=" in p for p in problems), problems


@pytest.mark.parametrize("source", KUBERAY_SOURCES)
def test_a_kuberay_cluster_idle_timeout_difference_fails(tmp_path, source):
    path = mutated_copy(tmp_path, source, lambda doc: kuberay_spec(doc)["autoscalerOptions"].update(
        idleTimeoutSeconds=61))
    assert any("idle_timeout_s is 61.0" in p for p in problems_of(path, source))


@pytest.mark.parametrize("source", KUBERAY_SOURCES)
def test_a_kuberay_head_difference_fails(tmp_path, source):
    path = mutated_copy(tmp_path, source, lambda doc: kuberay_spec(doc)["headGroupSpec"]["rayStartParams"].update(
        {"num-cpus": "2"}))
    assert any("'headgroup'" in p and "resources" in p for p in problems_of(path, source))


@pytest.mark.parametrize("field, edit", [
    ("labels", lambda t: t["gpu_train"]["labels"].update(pool="gpu")),
    ("resources", lambda t: t["gpu_train"]["resources"].update(GPU=4)),
    ("resources", lambda t: t["cpu_decode"]["resources"].update(CPU=16)),
    ("max_workers", lambda t: t["cpu_decode"].update(max_workers=17)),
    ("min_workers", lambda t: t["gpu_train"].update(min_workers=1)),
    ("idle_timeout_s", lambda t: t["gpu_train"].update(idle_timeout_s=60)),
    ("labels", lambda t: t["head"]["labels"].update(pool="main")),
], ids=["pool-label", "gpu", "cpu", "max", "min", "idle", "head-label"])
def test_a_cluster_yaml_difference_fails(tmp_path, field, edit):
    path = mutated_copy(tmp_path, "ray_cluster.yaml", lambda doc: edit(doc["available_node_types"]))
    problems = problems_of(path, "ray_cluster.yaml")
    assert problems and any(f" {field} " in p or "no node type has pool=" in p for p in problems), problems


def test_a_cluster_yaml_idle_timeout_difference_fails(tmp_path):
    path = mutated_copy(tmp_path, "ray_cluster.yaml", lambda doc: doc.update(idle_timeout_minutes=5))
    assert any("idle_timeout_s is 300.0" in p for p in problems_of(path, "ray_cluster.yaml"))


def test_a_node_type_without_pool_label_is_named(tmp_path):
    path = mutated_copy(tmp_path, "ray_cluster.yaml",
                        lambda doc: doc["available_node_types"]["cpu_decode"].pop("labels"))
    with pytest.raises(NodeTypesError, match="'cpu_decode' has no 'pool' label"):
        cluster_pools(path, "ray_cluster.yaml")


def test_a_bad_definition_names_the_field(tmp_path):
    raw = yaml.safe_load((ROOT / "infra" / "node_types.yaml").read_text())
    bad = copy.deepcopy(raw)
    bad["pools"]["trainer"]["labels"]["pool"] = "gpu"
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(NodeTypesError, match=r"pools\.trainer\.labels\.pool must be 'trainer'"):
        load_node_types(tmp_path / "a.yaml")
    bad = copy.deepcopy(raw)
    bad["pools"]["serve"]["max_workers"] = 0
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(NodeTypesError, match=r"b\.yaml: pools\.serve\.max_workers"):
        load_node_types(tmp_path / "b.yaml")


# --- the local autoscaling cluster is built from the same definition -----------------------------------------


def test_local_config_keeps_labels_and_shrinks_sizes():
    sizes = {"cpu-decode": LocalSize({"CPU": 2}, 3, 10.0), "trainer": LocalSize({"CPU": 1, "GPU": 1}, 2, 10.0)}
    config = local_autoscaling_config(SPEC, sizes, gcs_address="127.0.0.1:1", object_store_bytes=10**8)
    types = config["available_node_types"]
    assert types[FAKE_HEAD_NODE_TYPE]["labels"] == SPEC.head.labels
    assert types[FAKE_HEAD_NODE_TYPE]["resources"] == SPEC.head.resources
    for pool, size in sizes.items():
        assert types[pool]["labels"] == SPEC.pools[pool].labels
        assert types[pool]["min_workers"] == SPEC.pools[pool].min_workers == 0
        assert types[pool]["max_workers"] == size.max_workers
        assert types[pool]["idle_timeout_s"] == size.idle_timeout_s
        assert {k: v for k, v in types[pool]["resources"].items() if k != "object_store_memory"} == size.resources


def test_shrink_refuses_to_drop_a_resource_kind():
    with pytest.raises(NodeTypesError, match="'trainer'.*must be the pool's own \\['CPU', 'GPU'\\]"):
        shrink(SPEC, {"trainer": LocalSize({"CPU": 1}, 2, 10.0)})
    with pytest.raises(NodeTypesError, match="unknown pool 'gpu'"):
        shrink(SPEC, {"gpu": LocalSize({"CPU": 1}, 2, 10.0)})
