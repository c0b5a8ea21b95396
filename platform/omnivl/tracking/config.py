"""The `tracking:` section of training and evaluate specs: where metrics go besides `metrics.jsonl`.

    tracking:
      tensorboard: true                  # event files in <run_dir>/tensorboard/ (default on)
      mlflow: {tracking_uri: http://mlflow:5000, experiment: omnivl, run_name: null}   # off unless given
      wandb: {project: omnivl, mode: offline, entity: null}                            # off unless given

Secrets never go in a spec: MLflow reads MLFLOW_TRACKING_TOKEN / MLFLOW_TRACKING_USERNAME / _PASSWORD and W&B
WANDB_API_KEY from the environment (`omnivl submit --env-var NAME` passes them to a cluster job). This module
imports neither client library, so specs validate offline.
"""

from __future__ import annotations

import os
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from omnivl.spec.base import Config

MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
# The stores MLflow's client knows: a tracking server over HTTP(S), a local file store, a database, Databricks.
_URI_RE = re.compile(r"^(https?://[^/\s]+.*|file:.+|sqlite:///.+|(postgresql|mysql|mssql)(\+\w+)?://.+|databricks(-uc)?(://.*)?)$")


def check_tracking_uri(uri: str) -> str:
    """Returns `uri`; raises ValueError if MLflow cannot use it, or if it carries credentials."""
    if not _URI_RE.match(uri):
        raise ValueError(f"{uri!r} is not an MLflow tracking URI; allowed: http(s)://HOST[:PORT], file:PATH, "
                         "sqlite:///PATH, postgresql://..., mysql://..., databricks")
    if "://" in uri and urlsplit(uri).password is not None:
        raise ValueError("carries a password; put credentials in MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
                         "or MLFLOW_TRACKING_TOKEN (omnivl submit --env-var NAME), never in the spec")
    return uri


class MlflowConfig(Config):
    """An MLflow run per training run; `mlflow: {}` takes the server from MLFLOW_TRACKING_URI."""

    tracking_uri: str | None = Field(default=None, description="http(s)://HOST:PORT, file:PATH, sqlite:///PATH, ... "
                                                               "(default: the MLFLOW_TRACKING_URI env var)")
    experiment: str | None = Field(default=None, min_length=1, description="experiment name (default: the job's name)")
    run_name: str | None = Field(default=None, min_length=1, description="run name (default: the job's name)")

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return None if v is None else check_tracking_uri(v)

    def resolved_uri(self, environ=os.environ) -> str | None:
        """The spec's URI, else MLFLOW_TRACKING_URI; None when neither is set."""
        return self.tracking_uri or environ.get(MLFLOW_URI_ENV) or None


class WandbConfig(Config):
    """A Weights & Biases run per training run. Unset fields come from WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE
    (W&B's own env vars); the API key only ever from WANDB_API_KEY (or `wandb login`)."""

    project: str | None = Field(default=None, min_length=1, pattern=r"^[^/\\#?%:]+$",
                                description="default: WANDB_PROJECT, else the job's name")
    entity: str | None = Field(default=None, min_length=1, description="team or user (default: WANDB_ENTITY)")
    mode: Literal["online", "offline"] | None = Field(
        default=None, description="offline writes the run under <run_dir>/wandb/ for `wandb sync` (default: "
                                  "WANDB_MODE, else online)")

    def resolved(self, job_name: str, environ=os.environ) -> dict:
        """project, entity and mode after the env-var fallbacks."""
        mode = self.mode or environ.get("WANDB_MODE") or "online"
        return {"project": self.project or environ.get("WANDB_PROJECT") or job_name,
                "entity": self.entity or environ.get("WANDB_ENTITY") or None,
                "mode": "offline" if mode in ("offline", "dryrun") else "online"}


class TrackingConfig(Config):
    """Experiment trackers a run logs to, from rank 0 only. TensorBoard is on by default; MLflow and W&B are off
    unless their block is given (an empty block `{}` turns one on with env-var settings)."""

    tensorboard: bool = Field(default=True, description="event files in <run_dir>/tensorboard/")
    mlflow: MlflowConfig | None = None
    wandb: WandbConfig | None = None

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.mlflow is not None or self.wandb is not None
