"""The cluster definitions: ray_cluster.yaml passes Ray's own schema check, every YAML under infra/ parses,
and the KubeRay manifests describe the same topology (head with no work, autoscaling `pool: cpu-decode` CPU
workers and `pool: trainer` GPU workers, metrics on 8080) with the labels the code places work by."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DECODE_LABELS = {"pool": "cpu-decode"}
TRAIN_LABELS = {"pool": "trainer"}
METRICS_PORT = 8080


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def cluster_yaml() -> dict:
    return load(ROOT / "ray_cluster.yaml")


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return load(INFRA / "kuberay" / "raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return load(INFRA / "kuberay" / "rayjob.yaml")


# --- ray_cluster.yaml (autoscaler, AWS) ------------------------------------------------------------------


def test_ray_cluster_yaml_passes_rays_schema_check(cluster_yaml):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster_yaml))  # raises jsonschema.ValidationError


def test_ray_schema_check_catches_a_bad_label(cluster_yaml):
    """The check is not vacuous: a non-string label value is rejected."""
    import copy

    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(cluster_yaml)
    bad["available_node_types"]["cpu_decode"]["labels"] = {"pool": 1}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_ray_cluster_topology(cluster_yaml):
    types = cluster_yaml["available_node_types"]
    head = types[cluster_yaml["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = {name: t for name, t in types.items() if name != cluster_yaml["head_node_type"]}
    by_labels = {tuple(sorted(t["labels"].items())): t for t in workers.values()}
    assert set(by_labels) == {tuple(DECODE_LABELS.items()), tuple(TRAIN_LABELS.items())}
    for t in workers.values():
        assert t["min_workers"] == 0 < t["max_workers"]  # autoscaling from zero
    train = by_labels[tuple(TRAIN_LABELS.items())]
    assert train["node_config"]["InstanceType"].split(".")[0] in {"p3", "p4d", "p4de", "p5", "g5", "g6"}


def test_ray_cluster_commands(cluster_yaml):
    head_start = " ".join(cluster_yaml["head_start_ray_commands"])
    worker_start = " ".join(cluster_yaml["worker_start_ray_commands"])
    for cmd in (head_start, worker_start):
        assert f"--metrics-export-port={METRICS_PORT}" in cmd
    assert "--num-cpus=0" in head_start and "RAY_enable_autoscaler_v2=1" in head_start
    setup = " ".join(cluster_yaml["setup_commands"])
    mount = next(remote for remote, local in cluster_yaml["file_mounts"].items() if local == ".")
    assert "pip install" in setup and mount in setup  # installs the project synced from the repo root
    assert {".venv", "runs", "data"} <= set(cluster_yaml["rsync_exclude"])
    assert cluster_yaml["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311-gpu")


def test_labels_match_the_code():
    """The data pipeline places decode actors with this selector; keep the cluster files in step with it."""
    pipeline = pytest.importorskip("omnivl.cluster.data_pipeline")
    assert pipeline.CPU_POOL == DECODE_LABELS
    spec = load(ROOT / "jobs" / "pretrain_base_cluster.yaml")
    assert spec["scaling"]["worker_label"] == TRAIN_LABELS


# --- infra/ ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(p.relative_to(INFRA) for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml")),
                         ids=str)
def test_every_infra_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all((INFRA / path).read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


def test_kuberay_kinds_and_groups(raycluster, rayjob):
    assert (raycluster["apiVersion"], raycluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    monitor = load(INFRA / "prometheus" / "podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"]["ray.io/cluster"] == raycluster["metadata"]["name"]
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"metrics"}


def test_raycluster_topology_matches_ray_cluster_yaml(raycluster, cluster_yaml):
    spec = raycluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"  # label-based autoscaling needs v2
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"

    vm_labels = sorted(tuple(t["labels"].items()) for t in cluster_yaml["available_node_types"].values())
    k8s_groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    assert sorted(tuple(g["labels"].items()) for g in k8s_groups) == vm_labels

    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 < group["maxReplicas"]
    trainer = next(g for g in spec["workerGroupSpecs"] if g["labels"] == TRAIN_LABELS)
    (container,) = trainer["template"]["spec"]["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) > 0

    for group in k8s_groups:
        assert group["rayStartParams"]["metrics-export-port"] == str(METRICS_PORT)
        for container in group["template"]["spec"]["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["metrics"] == METRICS_PORT


def test_rayjob_runs_a_spec_on_the_same_topology(rayjob, raycluster):
    spec = rayjob["spec"]
    assert spec["rayClusterSpec"] == raycluster["spec"]
    assert spec["entrypoint"].startswith("python -m omnivl run /home/ray/omnivl/jobs/")
    assert (ROOT / "jobs" / spec["entrypoint"].rsplit("/", 1)[1]).is_file()
    assert spec["shutdownAfterJobFinishes"] is True
    yaml.safe_load(spec["runtimeEnvYAML"])


def test_prometheus_scrapes_rays_file_sd():
    config = load(INFRA / "prometheus" / "prometheus.yml")
    files = [f for job in config["scrape_configs"] for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert "/tmp/ray/prom_metrics_service_discovery.json" in files


def test_dockerfile_builds_on_the_pinned_ray_image():
    text = (INFRA / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-py311-gpu" in text
    assert "FROM ${RAY_IMAGE}" in text and "pip install" in text
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "runs", "data", ".git"} <= set(ignored)
    # Everything the Dockerfile copies exists.
    for line in text.splitlines():
        if line.startswith("COPY"):
            for src in line.split()[2:-1]:
                assert (ROOT / src).exists(), src
