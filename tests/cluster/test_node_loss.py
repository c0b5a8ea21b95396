"""A node is cattle: an elastic pretrain job loses the node that holds one of its two train workers and finishes
on the other from its last checkpoint.

The cluster is real and started here, on 127.0.0.1, each node with its own temp dir and ports (rayhead.py):
- head: 3 CPUs, labels {pool: cpu-decode}: the driver, Ray Train's controller, the decode actor (0.25 CPU, by
  its label selector), Ray Data's tasks and one train worker (1.6 CPUs; a second one does not fit);
- worker node: 2 CPUs, labels {pool: trainer}: exactly the other train worker (decode actors and read tasks are
  held to cpu-decode; 0-CPU actors may land anywhere).
So the job (`scaling.num_workers: [1, 2]`, `cpus_per_worker: 1.6`) starts with one train worker per node. Once
its first checkpoint exists and training is past it, a watcher thread SIGKILLs the worker node's raylet (a
process this test started). The job runs through our CLI in a subprocess, as a user runs it
(`omnivl run SPEC --address GCS`), so nothing of Ray's state lives in the test process.

Checked: the raylet is gone and Ray reports its node DEAD; the first attempt had one train worker on each node
and only that one on the lost node; the job finished with the spec's step count; the steps after the restart
resumed from the newest checkpoint of the first attempt (no gap, no restart from step 0); the restarted group
had one worker (world size 1 in its step records and checkpoints, 2 in those of the first attempt).

Run:  python -m pytest tests/cluster/test_node_loss.py -q -s
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from rayhead import (CLIENT_ENV_VARS, RayHead, RayNode, alive, dashboard_get, discard, list_nodes, start_head,
                     start_worker_node)
from omnivl.train import checkpoint as ck

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STEPS, EVERY = 12, 3
STAGE = "image"
# 1.6 CPUs: a worker runs torch on int(1.6) = 1 thread (two workers with 2 threads each on a 2-core machine run
# a step ~5x slower), and no node here holds two of them
TRAIN_WORKER_CPUS = 1.6
DECODE_ACTOR_CPUS = 0.25
# head: one train worker, the decode actor, and a whole CPU for Ray Data's tasks (the stream's column
# projection runs as 1-CPU tasks after the decode actors); two train workers (3.2) do not fit
HEAD = {"num_cpus": 3, "labels": {"pool": "cpu-decode"}}
NODE = {"num_cpus": 2, "labels": {"pool": "trainer"}}  # exactly one train worker
# Failover in seconds rather than minutes (the cluster's processes get these; Ray's knobs, not ours):
# - the GCS declares a node dead after `failure_threshold` missed health checks (defaults: 5 x 3 s);
# - Ray Train sizes the restarted group from Ray Data's AutoscalingCoordinator, whose view of the nodes is
#   refreshed every 20 s, so its first retry asks for 2 workers again and waits for that placement group until
#   RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (default 60 s) before it retries with what is left. That timeout
#   covers only the placement group's wait, which takes well under a second when the resources are there.
# And a quick teardown: on SIGTERM a 2.60 node first drains for RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S (30 s, never
# done here: Ray Data's detached actors stay), which is as long as RayHead.shutdown waits before its SIGKILL; a
# `ray start` killed mid-shutdown leaves its DashboardAgent and RuntimeEnvAgent behind.
CLUSTER_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
               "RAY_health_check_failure_threshold": "3", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10",
               "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
JOB_TIMEOUT_S = 240.0
POLL_S = 0.1


@pytest.fixture
def cluster():
    head = start_head(env=CLUSTER_ENV, own_address=True, **HEAD)
    node = None
    try:
        node = start_worker_node(head, env=CLUSTER_ENV, **NODE)
        yield head, node
    finally:
        leftovers = node.shutdown() if node else set()
        if node:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
            node.log_path.unlink(missing_ok=True)
        discard(head, "the test cluster")
        assert not leftovers, f"processes of the worker node survived its shutdown: {sorted(leftovers)}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from omnivl.data.config import SynthConfig
    from omnivl.data.synth import generate

    root = tmp_path_factory.mktemp("corpus") / "c"
    generate(SynthConfig(image_text=64, image_label=0, video_text=0, video_label=0, image_qa=0, video_qa=0), str(root))
    return root


def pretrain_spec(corpus: Path, output: Path) -> dict:
    return {
        "kind": "pretrain", "name": "node-loss", "output": str(output), "seed": 0,
        "model": {"size": "tiny", "num_frames": 2},
        "data": {"decode": {"image_size": 64, "num_frames": 2, "text_max_length": 16, "randaugment": False,
                            "actors": {"min_size": 1, "max_size": 1, "batch_size": 16,
                                       "cpus_per_actor": DECODE_ACTOR_CPUS}},
                 "sources": [{"name": "image_text", "manifest": str(corpus / "image_text" / "train.jsonl"),
                              "modality": "image", "kind": "text"}]},
        "stages": [{"name": STAGE, "sources": ["image_text"], "steps": STEPS, "batch_size": {"image": 16},
                    "optimizer": {"lr": 3e-4, "warmup_steps": 2}}],
        "scaling": {"num_workers": [1, 2], "cpus_per_worker": TRAIN_WORKER_CPUS},
        # keep every checkpoint: the world size each was written with tells the two attempts apart
        "checkpoint": {"every_steps": EVERY, "keep_last": STEPS},
        # elastic Ray Train shrinks only on a retry (a group start that times out on a stale view of the
        # cluster is retried without counting)
        "failure": {"max_failures": 1},
    }


def step_records(run: Path) -> list[dict]:
    """The stage's step records in metrics.jsonl, in the order written (a line being written is skipped)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("stage") == STAGE and r.get("kind") != "eval":
            out.append(r)
    return out


def actors(head: RayHead) -> list[dict]:
    """Every actor of the cluster (alive and dead): class_name, state, node_id, pid, ..."""
    return dashboard_get(head, "/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]


def train_workers(head: RayHead) -> list[dict]:
    return [a for a in actors(head) if a.get("class_name") == "RayTrainWorker"]


def node_id_of(head: RayHead, labels: dict[str, str]) -> str:
    (node,) = [n for n in list_nodes(head) if all((n.get("labels") or {}).get(k) == v for k, v in labels.items())]
    return node["node_id"]


class NodeKiller(threading.Thread):
    """Once the stage's first checkpoint exists and a later step is logged, SIGKILL the node's raylet; remember
    what the cluster and the run looked like at that moment."""

    def __init__(self, head: RayHead, node: RayNode, node_id: str, run: Path) -> None:
        super().__init__(daemon=True, name="node-killer")
        self.head, self.node, self.node_id, self.run_dir = head, node, node_id, run
        self.done = threading.Event()
        self.stop = threading.Event()
        self.raylet_pid: int | None = None
        self.killed_at: float | None = None
        self.step_at_kill: int | None = None
        self.checkpoints_at_kill: list[int] = []
        self.workers_at_kill: list[dict] = []
        self.lost_actors: list[str] = []  # what else went down with the node (for the failure message)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            live = None
            while not self.stop.is_set():
                refs = ck.list_checkpoints(str(self.run_dir), 0, STAGE)
                if refs and live is None:  # the actors as they are now, read before the moment to kill comes
                    live = [a for a in actors(self.head) if a["state"] == "ALIVE"]
                    continue
                steps = [r["step"] for r in step_records(self.run_dir)]
                if refs and steps and steps[-1] > refs[0].step:
                    self.kill(steps[-1], live)
                    return
                time.sleep(POLL_S)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.done.set()

    def kill(self, step: int, live: list[dict]) -> None:
        self.workers_at_kill = [a for a in live if a["class_name"] == "RayTrainWorker"]
        self.lost_actors = sorted(a["class_name"] for a in live if a["node_id"] == self.node_id)
        self.raylet_pid = self.node.raylet_pid()
        self.node.snapshot_tree()  # the node's workers, re-parented once the raylet is gone
        os.kill(self.raylet_pid, signal.SIGKILL)
        self.killed_at = time.time()
        # what was on disk when the node died (a checkpoint is complete once its marker exists)
        self.step_at_kill = max([step] + [r["step"] for r in step_records(self.run_dir)])
        self.checkpoints_at_kill = [r.step for r in ck.list_checkpoints(str(self.run_dir), 0, STAGE)]


def client_env(head: RayHead) -> dict[str, str]:
    """Our environment without Ray address/auth settings, plus this cluster's token."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_VARS}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head.token)
    return env


def split_at_restart(steps: list[int]) -> tuple[list[int], list[int]]:
    """(steps of the first attempt, steps after the one restart): the log goes back once, where it resumed."""
    backs = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert len(backs) == 1, f"expected exactly one restart in the logged steps {steps}"
    return steps[:backs[0]], steps[backs[0]:]


def test_elastic_pretrain_loses_a_node_and_finishes_on_the_other(cluster, corpus, tmp_path):
    head, node = cluster
    head_id, lost_id = node_id_of(head, HEAD["labels"]), node_id_of(head, NODE["labels"])
    run = tmp_path / "run"
    spec = tmp_path / "pretrain.yaml"
    spec.write_text(yaml.safe_dump(pretrain_spec(corpus, run)))
    out_path, summary_path = tmp_path / "omnivl-run.out", tmp_path / "summary.json"

    killer = NodeKiller(head, node, lost_id, run)
    killer.start()
    start = time.monotonic()
    with open(out_path, "w") as out:
        job = subprocess.Popen(
            [sys.executable, "-m", "omnivl", "run", str(spec), "--address", f"127.0.0.1:{head.gcs_port}",
             "--summary-out", str(summary_path), "--verbose"],
            env=client_env(head), stdout=out, stderr=subprocess.STDOUT)
        try:
            code = job.wait(JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait(30)
            code = None
        finally:
            killer.stop.set()
    seconds = time.monotonic() - start
    output = out_path.read_text()
    killer.done.wait(10)
    assert killer.error is None, f"the watcher failed: {killer.error!r}"
    assert killer.killed_at is not None, ("the node was never killed: no checkpoint, or no step after it, before "
                                          f"the job ended\n{output[-5000:]}")
    print(f"\njob took {seconds:.0f}s; node killed at step {killer.step_at_kill} (checkpoints then: "
          f"{killer.checkpoints_at_kill}; actors lost with it: {killer.lost_actors})")
    # Anything but the train worker that the job needs and that was lost with the node shows up here: the job
    # then fails on a restarted group (e.g. "ActorDiedError ... class_name: DataLedger ... its node has died").
    assert code == 0, (f"omnivl run exited with {code} after {seconds:.0f}s; actors lost with the node: "
                       f"{killer.lost_actors}\n{output[-8000:]}")

    # the node really died: its raylet is gone, and Ray says so
    assert not alive({killer.raylet_pid})
    states = {n["node_id"]: n["state"] for n in list_nodes(head)}
    assert states == {head_id: "ALIVE", lost_id: "DEAD"}, states

    # the first attempt had one train worker on each node; the lost node never got another one
    at_kill = sorted(w["node_id"] for w in killer.workers_at_kill)
    assert at_kill == sorted([head_id, lost_id]), f"train workers when the node was killed: {killer.workers_at_kill}"
    on_lost = [w for w in train_workers(head) if w["node_id"] == lost_id]
    assert len(on_lost) == 1 and on_lost[0]["state"] == "DEAD", on_lost

    # the kill landed mid-run, past the first checkpoint
    assert EVERY < killer.step_at_kill < STEPS and killer.checkpoints_at_kill, killer.__dict__

    # the job finished with the spec's step count
    summary = json.loads(summary_path.read_text())
    assert summary["stages"][STAGE]["status"] == "ran" and summary["stages"][STAGE]["steps"] == STEPS
    refs = ck.list_checkpoints(str(run), 0, STAGE)
    assert refs[-1].step == STEPS and refs[-1].final

    # steps: 1..k by the first attempt, then resumed right after the newest checkpoint of the first attempt (it
    # may be one the surviving rank finished after the kill, before it noticed), up to STEPS
    records = step_records(run)
    steps = [r["step"] for r in records]
    first, second = split_at_restart(steps)
    assert first == list(range(1, len(first) + 1)), steps
    resumed_from = second[0] - 1
    assert second == list(range(resumed_from + 1, STEPS + 1)), steps
    assert resumed_from >= max(killer.checkpoints_at_kill) > 0, (steps, killer.checkpoints_at_kill)
    worlds = {r.step: ck.load_train_state(r)["world_size"] for r in refs}
    assert resumed_from == max(s for s, w in worlds.items() if w == 2), (steps, worlds)
    resumed_line = f"resumed from {ck.step_uri(str(run), 0, STAGE, resumed_from)} at step {resumed_from} on 1 worker"
    assert resumed_line in output, output[-5000:]

    # two workers before the restart, one after it: in every step record and every checkpoint
    assert [r["world_size"] for r in records] == [2] * len(first) + [1] * len(second), steps
    assert worlds == {s: 2 if s <= resumed_from else 1 for s in range(EVERY, STEPS + 1, EVERY)}, worlds
