"""`<run_dir>/tracking.json`: which tracker runs a run directory logs to, so that a resumed, extended or
evaluated run continues the same MLflow run and W&B run instead of starting new ones.

    {"mlflow": {"tracking_uri": "http://mlflow:5000", "experiment_id": "3", "run_id": "9f0c..."},
     "wandb": {"id": "k2x8...", "project": "omnivl", "entity": null, "mode": "online"},
     "global_step": 1000,
     "stages": {"image": {"first_step": 1, "last_step": 400}, "joint": {"first_step": 401, "last_step": 1000}}}

Read and written through `omnivl.storage`, so `s3://` run directories work. URIs are stored without
credentials.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

from omnivl import storage

RECORD_FILE = "tracking.json"


def record_uri(run_dir: str) -> str:
    return storage.join(run_dir, RECORD_FILE)


def load_record(run_dir: str) -> dict:
    """The run directory's record; {} when it has none."""
    uri = record_uri(run_dir)
    if not storage.exists(uri):
        return {}
    return json.loads(storage.read_text(uri))


def save_record(run_dir: str, record: dict) -> None:
    storage.write_text(record_uri(run_dir), json.dumps(record, indent=2, sort_keys=True) + "\n")


def without_credentials(uri: str) -> str:
    """`uri` with any user:password@ part removed."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
