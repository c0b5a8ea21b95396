"""Helpers shared by the serving tests (imported as a module; fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path

API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_args(checkpoints: dict, corpus: Path, **over) -> dict:
    args = {
        "checkpoints": checkpoints,
        "device": "cpu",
        "batching": {"enabled": True, "max_batch_size": 16},
        "max_ongoing_requests": 32,
        "cpus_per_replica": 1,
        "torch_threads": 1,
        "ingress": {"cpus": 0.5, "decode_threads": 2},
        "gallery_manifest": str(corpus / "image_text" / "train.jsonl"),
        "auth": {"api_key": API_KEY},
        "limits": {"max_upload_bytes": 200_000, "max_text_chars": 200, "max_new_tokens": 12,
                   "allowed_uri_prefixes": [str(corpus / "image_text") + "/"]},
    }
    args.update(over)
    return args


def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy after {timeout_s}s")


def auth(key: str = API_KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
