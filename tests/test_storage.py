"""`omnivl.storage` against the loopback S3 server: a missing bucket is an error naming the URI, never created."""

from __future__ import annotations

import boto3
import pytest
import torch

from omnivl import storage
from omnivl.train import checkpoint as ck


def _buckets() -> set[str]:
    return {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}


def test_a_typo_in_a_bucket_name_is_an_error_not_a_new_bucket(s3_bucket, tmp_path):
    typo = s3_bucket + "-typo"
    name = typo[len("s3://"):]
    with pytest.raises(storage.MissingBucketError, match=rf"{typo}/out/metrics.json: S3 bucket '{name}' does not exist"):
        storage.write_bytes(f"{typo}/out/metrics.json", b"{}")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("x")
    with pytest.raises(storage.MissingBucketError, match=typo):
        storage.upload_dir(tmp_path / "d", f"{typo}/d")
    with pytest.raises(storage.MissingBucketError, match=typo):  # a checkpoint fails before any object is written
        ck.CheckpointWriter(f"{typo}/run", 0, "image").save(1, {"task": {"w": torch.zeros(1)}}, {"step": 1},
                                                            final=False)
    assert name not in _buckets()
    # the real bucket still takes writes
    storage.write_bytes(f"{s3_bucket}/out/metrics.json", b"{}")
    assert storage.read_text(f"{s3_bucket}/out/metrics.json") == "{}"
