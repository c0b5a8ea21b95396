"""Shared fixtures: a real S3 API server on loopback (moto in server mode) and an embedded Ray cluster.

The S3 environment is set before Ray starts so Ray's worker processes inherit the endpoint and credentials.
Everything started here is stopped here; nothing else on the machine is touched.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# Ray's local clusters enable token auth by default (2.59+). Tests that start their own cluster for the Jobs
# API handle auth explicitly; in-process `ray.init` needs nothing.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Start moto's S3 server on 127.0.0.1 and point the standard AWS env vars at it. Yields the endpoint."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket for one test; yields its s3:// URI."""
    import boto3

    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())  # parametrized ids hold brackets
    name = "t-" + test[:40].strip("-") + f"-{os.getpid()}"
    boto3.client("s3").create_bucket(Bucket=name)
    yield f"s3://{name}"


@pytest.fixture
def ray_local(s3_server):
    """An embedded Ray cluster (`address="local"`), started once and reused; shut down at session end."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 object_store_memory=1_500_000_000)
    yield ray


def pytest_sessionfinish(session, exitstatus):
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
