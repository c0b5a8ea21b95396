"""A real Ray autoscaler driving fake nodes on this machine, started and stopped by the test alone.

What `ray.cluster_utils.AutoscalingCluster` does, without its two problems on a shared machine:
- its `start()` and `shutdown()` run `ray stop --force`, which kills every Ray process of every user here;
- its config starts from `fake_multi_node/example.yaml`, which the Ray 2.60 wheel does not ship (the monitor
  then dies with FileNotFoundError); `omnivl.cluster.node_types.local_autoscaling_config` loads the same
  `FakeMultiNodeProvider` as an `external` provider instead.

So the head is `ray start --head --block --autoscaling-config=...` with the environment AutoscalingCluster sets
(`RAY_FAKE_CLUSTER=1`, autoscaler v2, the fake head node id, a 1 s autoscaler loop), its own `--temp-dir` and
free ports (the provider is told the GCS address, so 6379 is not assumed). The autoscaler (the head's `monitor`
process) starts worker nodes as raylets on this machine, with the node type's resources and labels, and
terminates them when idle. `shutdown` SIGTERMs the `ray start` process (which stops the head's processes) and
then, by pid, whatever is left of the process tree recorded while the cluster ran (the fake nodes are children
of the monitor).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rayhead import CLIENT_ENV_VARS, VENV_BIN, descendants, free_port, kill_leftovers, terminate

AUTOSCALER_LOOP_S = "1"  # what AutoscalingCluster uses: the autoscaler reconciles every second
START_TIMEOUT_S = 90.0
HEAD_PORTS = ("dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port", "node-manager-port",
              "object-manager-port")
TREE_POLL_S = 0.5


@dataclass
class LocalAutoscalingCluster:
    gcs_address: str
    dashboard_url: str
    temp_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen
    tree: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def session_logs(self) -> Path:
        return self.temp_dir / "session_latest" / "logs"

    def record_tree(self) -> None:
        """Remember every process of this cluster (fake nodes come and go, so this runs in a thread)."""
        if self.process.poll() is None:
            self.tree |= {self.process.pid} | descendants(self.process.pid)

    def _record_forever(self) -> None:
        while not self._stop.wait(TREE_POLL_S):
            self.record_tree()

    def set_workers(self, node_type: str, *, min_workers: int, max_workers: int) -> None:
        """Change a node type's min/max workers in the autoscaling config; the autoscaler re-reads the file on
        each loop, as it would a cluster file changed under `ray up`."""
        config = json.loads(self.config_path.read_text())
        config["available_node_types"][node_type].update(min_workers=min_workers, max_workers=max_workers)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config))
        tmp.replace(self.config_path)  # atomic: the autoscaler never reads half a file

    def shutdown(self, timeout_s: float = 30.0) -> set[int]:
        """Stop the head (SIGTERM to `ray start --block`), then our own leftover fake-node processes, by pid.
        Returns the pids of this cluster still alive afterwards (expected: none)."""
        self._stop.set()
        self.record_tree()
        if self.process.poll() is None:
            terminate(self.process, timeout_s)
        return kill_leftovers(self.tree)


def node_ip() -> str:
    """The address the fake nodes register with (the provider starts them on the default node IP)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def head_env(gcs_address: str) -> dict[str, str]:
    """The environment of AutoscalingCluster.start(autoscaler_v2=True), without Ray client settings of ours.
    Auth is off: this cluster binds only this machine's address, lives for one test module, and its clients
    (the test, `omnivl run --address`, `omnivl submit --auth disabled`) are all local. RAY_ADDRESS names this
    cluster to its own processes: Ray's state API inside workers (Ray Train's PlacementGroupCleaner) otherwise
    looks for "the" local cluster and fails when other clusters run on the same machine.
    RAY_SERVE_WORKER_PROXY_HTTP_PORT: every node runs a Serve HTTP proxy, and here all nodes share one host, so
    with Serve's SO_REUSEPORT the kernel would spread connections to the head's port over the proxies of the
    worker nodes too, and a node the autoscaler removes would take its connections with it. Worker-node
    proxies get a port of their own (Ray's knob for colocated proxies); requests go to the head's proxy, as
    they would go to one ingress address in the cloud."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_VARS}
    env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S=AUTOSCALER_LOOP_S, RAY_enable_autoscaler_v2="1",
               RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID, RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
               RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_ADDRESS=gcs_address,
               RAY_SERVE_WORKER_PROXY_HTTP_PORT=str(free_port()),
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")  # job entrypoints run `python` from PATH
    return env


def head_command(config_path: Path, temp_dir: Path, gcs_port: int, ports: dict[str, int], head_cpus: int,
                 head_labels: dict[str, str], object_store_bytes: int) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in head_labels.items())
    return [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={gcs_port}",
            f"--autoscaling-config={config_path}", f"--num-cpus={head_cpus}", "--num-gpus=0",
            f"--labels={labels}", f"--object-store-memory={object_store_bytes}", f"--temp-dir={temp_dir}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
            *[f"--{name}={port}" for name, port in ports.items()]]


def start(build_config, head_cpus: int, head_labels: dict[str, str], object_store_bytes: int
          ) -> LocalAutoscalingCluster:
    """Start the head with the autoscaling config `build_config(gcs_address)`; returns once the Jobs API
    answers. A short temp dir: Ray's unix socket paths must stay short."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ovl-as-", dir="/tmp"))
    gcs_port = free_port()
    gcs_address = f"{node_ip()}:{gcs_port}"
    config_path = temp_dir / "autoscaling.json"
    config_path.write_text(json.dumps(build_config(gcs_address)))
    ports = {name: free_port() for name in HEAD_PORTS}
    log_path = temp_dir.with_suffix(".log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            head_command(config_path, temp_dir, gcs_port, ports, head_cpus, head_labels, object_store_bytes),
            env=head_env(gcs_address), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = LocalAutoscalingCluster(gcs_address, f"http://127.0.0.1:{ports['dashboard-port']}", temp_dir,
                                      config_path, log_path, process)
    threading.Thread(target=cluster._record_forever, daemon=True, name="autoscaling-cluster-tree").start()
    try:
        _wait_until_up(cluster)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def _wait_until_up(cluster: LocalAutoscalingCluster) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if cluster.process.poll() is not None:
            raise RuntimeError(f"ray start exited with {cluster.process.returncode}:\n"
                               f"{cluster.log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{cluster.dashboard_url}/api/version", timeout=2).read()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise RuntimeError(f"autoscaling head not up after {START_TIMEOUT_S}s:\n{cluster.log_path.read_text()[-3000:]}")


# --- watching the cluster: what came up and went away, and when -------------------------------------------


@dataclass
class NodeLife:
    node_id: str
    pool: str | None
    node_type: str
    up_at: float  # first seen RUNNING or IDLE (time.time())
    idle_since: float | None = None  # start of the idle period that was current when last seen
    gone_at: float | None = None  # first seen DEAD, or no longer reported


@dataclass
class Recorder:
    """Polls the cluster status every `poll_s` in a thread: node lives by pool, and when demand for a pool was
    first seen after a `mark()`. Times are time.time()."""

    gcs_address: str
    poll_s: float = 0.5
    nodes: dict[str, NodeLife] = field(default_factory=dict)
    demand_at: dict[str, float] = field(default_factory=dict)  # Demand.what ('pool=trainer', 'CPU=1') -> first seen
    launch_at: dict[str, float] = field(default_factory=dict)  # node type -> first pending launch since mark()
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "Recorder":
        threading.Thread(target=self._run, daemon=True, name="autoscaling-recorder").start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def mark(self) -> float:
        """Start a new phase: demand and launch times are recorded afresh."""
        self.demand_at.clear()
        self.launch_at.clear()
        return time.time()

    def _run(self) -> None:
        from omnivl.cluster.capacity import snapshot

        while not self._stop.wait(self.poll_s):
            try:
                self.observe(snapshot(self.gcs_address))
            except Exception:  # a slow GCS under load; the next poll catches up
                self.errors += 1

    def observe(self, snap) -> None:
        for d in snap.demands:
            self.demand_at.setdefault(d.what, snap.taken_at)
        for node_type, _ in snap.launching:
            self.launch_at.setdefault(node_type, snap.taken_at)
        seen = set()
        for n in snap.nodes:
            seen.add(n.node_id)
            life = self.nodes.get(n.node_id)
            if n.status in ("RUNNING", "IDLE") and life is None:
                life = self.nodes[n.node_id] = NodeLife(n.node_id, n.labels.get("pool"), n.node_type, snap.taken_at)
            if life is None:
                continue
            if n.status == "IDLE":
                life.idle_since = snap.taken_at - n.idle_s
            elif n.status == "RUNNING":
                life.idle_since = None
            elif n.status == "DEAD" and life.gone_at is None:
                life.gone_at = snap.taken_at
        for life in self.nodes.values():
            if life.node_id not in seen and life.gone_at is None:
                life.gone_at = snap.taken_at

    def live(self, pool: str) -> list[NodeLife]:
        return [n for n in self.nodes.values() if n.pool == pool and n.gone_at is None]

    def nodes_by_suffix(self, suffix: str) -> NodeLife:
        (life,) = [n for n in self.nodes.values() if n.node_id.endswith(suffix)]
        return life

    def pool_of(self, node_id: str) -> str | None:
        life = self.nodes.get(node_id)
        return life.pool if life else None

    def wait_for(self, condition, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout_s:.0f}s; nodes: {self.describe()}")
            time.sleep(self.poll_s)

    def describe(self) -> str:
        return "; ".join(f"{n.pool}:{n.node_id[-5:]} up={n.up_at:.0f} idle={n.idle_since} gone={n.gone_at}"
                         for n in self.nodes.values())
