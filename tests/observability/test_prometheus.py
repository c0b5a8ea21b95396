"""A real Prometheus (the `prometheus` binary, Debian's package) scraping the embedded Ray's metrics endpoint
while a short pretraining run and a short serving session happen. Every PromQL expression of the dashboards in
infra/grafana/dashboards/ (and every OmniVL metric named in infra/prometheus/prometheus.yml) must return data.

The test starts one Prometheus on 127.0.0.1 (a free port, its own TSDB under tmp, a 1 s scrape of the targets
the shipped prometheus.yml's file-SD section reads) and stops only that process. `make test` installs Debian's
`prometheus` package when the binary is missing."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from grafana_queries import PROMETHEUS_YML, Query, all_queries, config_metric_names

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1200)]
EXPORT_MS = 2000        # Ray's metrics export interval in this cluster (default 10 s)
WAIT_FOR_DATA_S = 90.0  # exports + scrapes lag the activity by a few seconds; the machine is shared


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the cluster, Prometheus, and what they watch -----------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """A fresh embedded Ray for this module: counters left by earlier modules must not answer for this run."""
    import ray

    if ray.is_initialized():
        ray.shutdown()  # the shared one (conftest's ray_local) is started again by the next test that needs it
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=1_500_000_000, _system_config={"metrics_report_interval_ms": EXPORT_MS})
    yield ray
    ray.shutdown()


def metrics_targets(ray) -> list[str]:
    return [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes()
            if n.get("Alive") and n.get("MetricsExportPort")]


def prometheus_config(targets_file: Path) -> dict:
    """The shipped config, pointed at this test's target list and scraping every second."""
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "ray"]
    (sd,) = job["file_sd_configs"]
    sd.update(files=[str(targets_file)], refresh_interval="1s")
    return cfg


@pytest.fixture(scope="module")
def prometheus(ray_cluster, tmp_path_factory):
    """URL of a Prometheus started here, scraping the embedded Ray; stopped (only it) at module end."""
    binary = shutil.which("prometheus")
    assert binary, "the prometheus binary is missing: `make test` installs Debian's package (apt-get install prometheus)"
    root = tmp_path_factory.mktemp("prometheus")
    targets = metrics_targets(ray_cluster)
    assert targets, "the embedded Ray has no metrics export port"
    # the same shape as Ray's own /tmp/ray/prom_metrics_service_discovery.json
    (root / "targets.json").write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
    (root / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(root / "targets.json")))
    port = free_port()
    log = open(root / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_scrape(url, proc, root / "prometheus.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def wait_for_scrape(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> None:
    """Until Prometheus is ready and has scraped every target successfully."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            active = requests.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            last = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in active]
            if active and all(t["health"] == "up" for t in active):
                return
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Prometheus did not scrape the Ray metrics endpoint: {last}\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small synthetic corpus with one bad row of each kind the data-plane panels count: a video row naming a
    missing file (skipped) and an image row whose caption is over the decoder's max_caption_chars (repaired)."""
    from omnivl.data.config import SynthConfig
    from omnivl.data.synth import generate

    root = tmp_path_factory.mktemp("corpus") / "c"
    generate(SynthConfig(image_text=18, image_label=0, video_text=6, video_label=0, video_frames=8), str(root))
    with open(root / "video_text" / "train.jsonl", "a") as f:
        f.write(json.dumps({"path": "missing-clip.mp4", "text": "a clip that is not there"}) + "\n")
    manifest = root / "image_text" / "train.jsonl"
    first = json.loads(manifest.read_text().splitlines()[0])
    with open(manifest, "a") as f:
        f.write(json.dumps({**first, "text": "a red circle " * 200}) + "\n")  # 2600 characters
    return root


def pretrain_spec(corpus: Path, out: Path):
    """One joint stage (images and videos alternating), a few steps, one CPU worker."""
    from omnivl.spec import validate_spec

    src = lambda name, modality: {"name": name, "manifest": str(corpus / name / "train.jsonl"),  # noqa: E731
                                  "modality": modality, "kind": "text"}
    return validate_spec({
        "kind": "pretrain", "name": "obs", "output": str(out), "seed": 0,
        "model": {"size": "tiny", "num_frames": 2},
        "data": {"decode": {"image_size": 64, "num_frames": 2, "text_max_length": 16, "randaugment": False,
                            "max_bad_fraction": 0.5,
                            "actors": {"min_size": 1, "max_size": 1, "batch_size": 4}},
                 "sources": [src("image_text", "image"), src("video_text", "video")]},
        "stages": [{"name": "joint", "sources": ["image_text", "video_text"], "steps": 6,
                    "batch_size": {"image": 4, "video": 2}, "optimizer": {"lr": 3e-4, "warmup_steps": 2}}],
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every_steps": 100, "keep_last": 1},
        "failure": {"max_failures": 0},
    })


def serve_traffic(export: str, corpus: Path, rounds: int = 8) -> dict:
    """Deploy the export with Ray Serve and send real HTTP requests, a few seconds apart (so the counters rise
    across several exports and the rate-based panels have something to show), some of them bad."""
    import base64

    from ray import serve

    from omnivl.cluster.serve_app import build_app
    from serving.serve_helpers import app_args, auth, wait_healthy

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(app_args({"a": export}, corpus)), name="omnivl-obs", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout_s=120)
    image = next((corpus / "image_text").rglob("*.jpg"), None) or next((corpus / "image_text").rglob("*.png"))
    good = {"texts": ["a red circle"], "media": [{"data_b64": base64.b64encode(image.read_bytes()).decode()}]}
    codes: dict[int, int] = {}
    for i in range(rounds):
        for body, headers in ((good, auth()), ({"texts": ["no key"]}, {}),
                              ({"media": [{"data_b64": "bm90IGFuIGltYWdl"}]}, auth())):
            status = requests.post(f"{url}/v1/embed", json=body, headers=headers, timeout=60).status_code
            codes[status] = codes.get(status, 0) + 1
        time.sleep(EXPORT_MS / 1000)
    return codes


@pytest.fixture(scope="module")
def watched(ray_cluster, prometheus, corpus, tmp_path_factory) -> dict:
    """Runs the training job and then the serving session while Prometheus scrapes; returns the time window."""
    from ray import serve

    from omnivl.cluster.pretrain import run_job

    start = time.time()
    summary = run_job(pretrain_spec(corpus, tmp_path_factory.mktemp("run")))
    try:
        codes = serve_traffic(summary["export"], corpus)
    finally:
        serve.shutdown()
    return {"start": start - 5, "summary": summary, "codes": codes}


# ---- asking Prometheus ---------------------------------------------------------------------------------------


def query_range(url: str, promql: str, start: float, end: float) -> list[dict]:
    """The series of a range query (what Grafana asks for a panel). Raises on a PromQL error."""
    r = requests.get(f"{url}/api/v1/query_range", timeout=30,
                     params={"query": promql, "start": start, "end": end, "step": "2s"})
    body = r.json()
    if body.get("status") != "success":
        raise AssertionError(f"Prometheus rejected {promql!r}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]


def finite_series(result: list[dict]) -> list[dict]:
    return [s for s in result if any(math.isfinite(float(v)) for _, v in s["values"])]


def answer(url: str, q: Query, start: float) -> str:
    """'' if `q` returns a finite value in the window and its series carry the labels its legend shows, else why
    not."""
    series = finite_series(query_range(url, q.promql, start, time.time()))
    if not series:
        return "no data"
    missing = [lb for lb in q.legend_labels if not any(lb in s["metric"] for s in series)]
    return f"series lack the legend's labels {missing}" if missing else ""


def answers(url: str, qs: list[Query], start: float) -> dict[str, str]:
    """Why each query still has no data, polled until all have or WAIT_FOR_DATA_S passes."""
    deadline, failing = time.monotonic() + WAIT_FOR_DATA_S, {}
    while True:
        failing = {q.name: why for q in qs if (why := answer(url, q, start))}
        if not failing or time.monotonic() > deadline:
            return failing
        qs = [q for q in qs if q.name in failing]
        time.sleep(2)


# ---- tests ---------------------------------------------------------------------------------------------------


def test_the_run_and_the_session_happened(watched):
    assert {s["status"] for s in watched["summary"]["stages"].values()} == {"ran"}
    assert watched["codes"].get(200) and watched["codes"].get(401), watched["codes"]
    assert any(c >= 400 and c not in (401, 500) for c in watched["codes"]), watched["codes"]


@pytest.mark.parametrize("dashboard", ["omnivl-training", "omnivl-data", "omnivl-serving"])
def test_every_dashboard_query_returns_data(prometheus, watched, dashboard):
    qs = [q for q in all_queries() if q.dashboard == dashboard]
    assert qs, f"no queries in {dashboard}.json"
    failing = answers(prometheus, qs, watched["start"])
    assert not failing, "\n".join(f"{name}\n    -> {why}" for name, why in failing.items())


def test_every_metric_named_in_prometheus_yml_is_exported(prometheus, watched):
    names = config_metric_names()
    assert "ray_omnivl_data_frames_decoded_total" in names and "ray_omnivl_train_loss" in names
    qs = [Query("prometheus.yml", "comment", n, f"count({n})", ()) for n in names]
    failing = answers(prometheus, qs, watched["start"])
    assert not failing, failing


def test_by_reason_and_by_kind_carry_the_bad_inputs_of_the_run(prometheus, watched):
    """The skip and the bad requests of this run are what the 'by reason' / 'by kind' panels show."""
    end = time.time()
    skipped = query_range(prometheus, "sum by (reason, modality) (ray_omnivl_data_rows_skipped_total)",
                          watched["start"], end)
    assert {(s["metric"]["reason"], s["metric"]["modality"]) for s in skipped} == {("missing_file", "video")}
    repaired = query_range(prometheus, "sum by (reason, modality) (ray_omnivl_data_rows_repaired_total)",
                           watched["start"], end)
    assert {(s["metric"]["reason"], s["metric"]["modality"]) for s in repaired} == {("caption_truncated", "image")}
    kinds = {s["metric"]["kind"] for s in query_range(prometheus, "sum by (kind) (ray_omnivl_serve_errors_total)",
                                                      watched["start"], end)}
    assert "unauthorized" in kinds and len(kinds) >= 2, kinds


def test_a_misspelled_metric_or_label_returns_nothing(prometheus, watched):
    """The check above can fail: a typo in a metric name, or a filter on a label no series has, has no data."""
    for promql in ('max by (stage, modality) (ray_omnivl_train_losss{stage=~".+"})',
                   'max by (stage, modality) (ray_omnivl_train_loss{stgae=~".+"})',
                   'sum by (reason) (rate(ray_omnivl_data_rows_skiped_total[1m]))'):
        q = Query("typo", "typo", promql, promql, ())
        assert answer(prometheus, q, watched["start"]) == "no data", promql
