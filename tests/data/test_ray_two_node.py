"""Decode actors land only on CPU-labelled nodes of a (simulated) two-worker cluster."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from omnivl.cluster import data_pipeline as dp
from omnivl.data.config import ActorPoolConfig, DecodeConfig, SourceConfig

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def two_node_cluster(s3_server):
    """Head with no CPUs, one {"pool": "cpu-decode"} node and one {"pool": "trainer"} node. Any existing
    connection (the shared embedded cluster) is closed first; only this cluster is shut down after."""
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cpu = cluster.add_node(num_cpus=2, labels={"pool": "cpu-decode"})
    trainer = cluster.add_node(num_cpus=2, labels={"pool": "trainer"})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield {"cpu": cpu.node_id, "trainer": trainer.node_id}
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_decode_runs_only_on_cpu_nodes(two_node_cluster, small_corpus):
    assert dp.decode_label_selector({"pool": "cpu-decode"}) == {"pool": "cpu-decode"}
    sources = [SourceConfig(name="vt", manifest=str(small_corpus / "video_text" / "train.jsonl"), modality="video")]
    cfg = DecodeConfig(image_size=32, num_frames=4, actors=ActorPoolConfig(min_size=2, max_size=2, batch_size=2))
    ds = dp.build_dataset(sources, cfg, modality="video", train=True, ledger="t-two-node")
    rows = sum(len(b["label_id"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
    report = dp.bad_input_report(ledger="t-two-node")
    assert rows == report["rows_seen"] > 0
    assert report["decode_nodes"] == [two_node_cluster["cpu"]]


def test_trainer_label_is_honoured_too(two_node_cluster, small_corpus):
    sources = [SourceConfig(name="it", manifest=str(small_corpus / "image_text" / "train.jsonl"), modality="image")]
    cfg = DecodeConfig(image_size=32, actors=ActorPoolConfig(min_size=1, max_size=1, batch_size=4))
    ds = dp.build_dataset(sources, cfg, modality="image", train=False, label_selector={"pool": "trainer"},
                          ledger="t-two-node-b")
    assert np.concatenate([b["label_id"] for b in ds.iter_batches(batch_format="numpy")]).size > 0
    assert dp.bad_input_report(ledger="t-two-node-b")["decode_nodes"] == [two_node_cluster["trainer"]]
