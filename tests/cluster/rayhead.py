"""Start and stop a real Ray head on 127.0.0.1 for tests; find the processes that belong to it.

`ray start --head --block` runs in the foreground and owns every process of the cluster (GCS, raylet,
dashboard, agents, workers, job drivers); SIGTERM to it tears all of them down. `RayHead.shutdown` records that
process tree first and returns whichever of its processes is still alive afterwards, so stopping a test
cluster never needs `ray stop` (which kills every Ray cluster on the machine). Each head gets its own
`--temp-dir` and explicit free ports, so it cannot collide with, or be attached to by, other clusters.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent if (Path(sys.executable).parent / "ray").exists() else ROOT / ".venv" / "bin"
CLIENT_ENV_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process, read from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> set[int]:
    table = process_table()
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _) in table.items():
            if ppid == parent and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    table = process_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


def mentioning(text: str) -> set[int]:
    """Processes whose command line contains `text`."""
    hits = set()
    for pid in process_table():
        try:
            if text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                hits.add(pid)
        except OSError:
            continue
    return hits


@dataclass
class RayHead:
    address: str  # Jobs API (dashboard) URL
    token: str
    process: subprocess.Popen
    temp_dir: Path
    log_path: Path
    gcs_port: int
    tree: set[int] = field(default_factory=set)

    def snapshot_tree(self) -> set[int]:
        """Every process of this cluster right now (the `ray start` process and all its descendants)."""
        self.tree |= {self.process.pid} | descendants(self.process.pid)
        return self.tree

    def shutdown(self, timeout_s: float = 30.0) -> set[int]:
        """SIGTERM `ray start --block` and wait; SIGKILL only our own stragglers. Returns the pids of our
        cluster still alive after that (expected: none)."""
        if self.process.poll() is None:
            self.snapshot_tree()
            terminate(self.process, timeout_s)
        deadline = time.monotonic() + 10
        while alive(self.tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        return alive(self.tree)


def kill_leftovers(tree: set[int]) -> set[int]:
    """SIGTERM, then SIGKILL, the pids of `tree` still alive (processes a test started, by pid). Returns those
    alive afterwards (expected: none)."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in alive(tree):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
    return alive(tree)


def terminate(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM `process` and wait up to `timeout_s`; then SIGKILL it."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def discard(cluster, what: str) -> None:
    """Shut down a test cluster (RayHead or AutoscalingHead), delete its temp dir and log, and fail if any of
    its processes survived."""
    leftovers = cluster.shutdown()
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    cluster.log_path.unlink(missing_ok=True)
    assert not leftovers, f"processes of {what} survived its shutdown: {sorted(leftovers)}"


def _head_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_VARS}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")  # job entrypoints run `python` from PATH
    # on SIGTERM a 2.60 node drains for this long first (30 s by default, never done while Ray Data's detached
    # actors live), as long as `shutdown` waits before its SIGKILL, which then leaves agents behind
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    return env


def _free_ports() -> dict[str, int]:
    """Every port `ray start --head` would otherwise take from fixed defaults (6379, 10001, 52365, ...)."""
    return {name: free_port() for name in (
        "port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port", "node-manager-port",
        "object-manager-port")}


def _head_command(temp_dir: Path, ports: dict[str, int], num_cpus: int = 2,
                  labels: dict[str, str] | None = None) -> list[str]:
    return [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", "--include-dashboard=true",
        f"--num-cpus={num_cpus}", "--num-gpus=0", "--object-store-memory=120000000", f"--temp-dir={temp_dir}",
        "--disable-usage-stats", *_labels_args(labels), *[f"--{name}={port}" for name, port in ports.items()],
    ]


def _labels_args(labels: dict[str, str] | None) -> list[str]:
    return [f"--labels={','.join(f'{k}={v}' for k, v in labels.items())}"] if labels else []


def _wait_until_up(head: RayHead, timeout_s: float = 90.0) -> None:
    request = urllib.request.Request(f"{head.address}/api/version",
                                     headers={"Authorization": f"Bearer {head.token}"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.process.returncode}:\n{head.log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(request, timeout=2).read()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise RuntimeError(f"Ray head not up after {timeout_s}s:\n{head.log_path.read_text()[-3000:]}")


def start_head(*, num_cpus: int = 2, labels: dict[str, str] | None = None, env: dict[str, str] | None = None,
               own_address: bool = False) -> RayHead:
    """Start a token-auth Ray head on 127.0.0.1 (short temp dir: Ray's unix socket paths must stay short).
    `env`: extra environment of the head's processes (e.g. Ray config overrides `RAY_<name>`); `own_address`:
    set RAY_ADDRESS to this head's GCS in it (for a multi-node cluster: see `start_worker_node`)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ovl-ray-", dir="/tmp"))
    log_path = temp_dir.with_suffix(".log")
    token = secrets.token_hex(16)
    ports = _free_ports()
    head_env = {**_head_env(token), **(env or {})}
    if own_address:
        head_env["RAY_ADDRESS"] = f"127.0.0.1:{ports['port']}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(_head_command(temp_dir, ports, num_cpus, labels), env=head_env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(f"http://127.0.0.1:{ports['dashboard-port']}", token, process, temp_dir, log_path, ports["port"])
    try:
        _wait_until_up(head)
    except BaseException:
        head.shutdown()
        raise
    return head


# --- more nodes on this machine: `ray start --address` ------------------------------------------------------

WORKER_NODE_PORTS = ("node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
                     "dashboard-agent-grpc-port", "runtime-env-agent-port")


@dataclass
class RayNode:
    """A worker node joined to a `RayHead`: `ray start --address --block`, which owns the node's raylet, agents
    and workers (SIGTERM to it stops them)."""

    process: subprocess.Popen
    temp_dir: Path
    log_path: Path
    labels: dict[str, str]
    tree: set[int] = field(default_factory=set)

    def snapshot_tree(self) -> set[int]:
        """Every process of this node right now; remembered, since a process whose parent died is re-parented
        out of the tree."""
        if self.process.poll() is None:
            self.tree |= {self.process.pid} | descendants(self.process.pid)
        return self.tree

    def raylet_pid(self) -> int:
        """The pid of this node's raylet (a child of the `ray start` process)."""
        (pid,) = [p for p in descendants(self.process.pid) if _exe_name(p) == "raylet"]
        return pid

    def shutdown(self, timeout_s: float = 30.0) -> set[int]:
        """SIGTERM `ray start --block`, then SIGKILL whatever is left of the recorded tree, by pid. Returns the
        pids of this node still alive afterwards (expected: none)."""
        self.snapshot_tree()
        if self.process.poll() is None:
            terminate(self.process, timeout_s)
        return kill_leftovers(self.tree)


def _exe_name(pid: int) -> str:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""
    return Path(argv0).name


def start_worker_node(head: RayHead, *, num_cpus: int, labels: dict[str, str] | None = None,
                      env: dict[str, str] | None = None, timeout_s: float = 90.0) -> RayNode:
    """Join a worker node with `num_cpus` logical CPUs and `labels` to `head` (same token; its own temp dir and
    free ports, all on 127.0.0.1); returns once the head reports it alive. `env`: as for `start_head` (RAY_ADDRESS
    is set to the head's GCS, so Ray's state API inside this node's workers finds this cluster)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ovl-node-", dir="/tmp"))
    log_path = temp_dir.with_suffix(".log")
    gcs = f"127.0.0.1:{head.gcs_port}"
    command = [str(VENV_BIN / "ray"), "start", f"--address={gcs}", "--block", "--node-ip-address=127.0.0.1",
               f"--num-cpus={num_cpus}", "--num-gpus=0", "--object-store-memory=120000000",
               f"--temp-dir={temp_dir}", "--disable-usage-stats", *_labels_args(labels),
               *[f"--{name}={free_port()}" for name in WORKER_NODE_PORTS]]
    node_env = {**_head_env(head.token), **(env or {}), "RAY_ADDRESS": gcs}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=node_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    node = RayNode(process, temp_dir, log_path, dict(labels or {}))
    deadline = time.monotonic() + timeout_s
    try:
        while not any(n["state"] == "ALIVE" and _has_labels(n, node.labels) for n in list_nodes(head)):
            if process.poll() is not None:
                raise RuntimeError(f"ray start --address exited with {process.returncode}:\n"
                                   f"{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker node not up after {timeout_s}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
    except BaseException:
        node.shutdown()
        raise
    node.snapshot_tree()
    return node


def _has_labels(node: dict, labels: dict[str, str]) -> bool:
    have = node.get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def dashboard_get(head: RayHead, path: str) -> dict:
    """GET a dashboard REST path of `head` with its token; the decoded JSON."""
    import json

    request = urllib.request.Request(f"{head.address}{path}", headers={"Authorization": f"Bearer {head.token}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)


def list_nodes(head: RayHead) -> list[dict]:
    """Every node the cluster knows (alive and dead), from the state API: node_id, state, labels, ..."""
    return dashboard_get(head, "/api/v0/nodes?limit=1000&detail=1")["data"]["result"]["result"]
