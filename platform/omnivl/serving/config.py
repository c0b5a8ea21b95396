"""Typed arguments of the serving app (also the `args:` of serve/*.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from omnivl.spec.base import Config


class BatchingConfig(Config):
    enabled: bool = True
    max_batch_size: int = Field(default=16, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)


class AutoscalingSpec(Config):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=8.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        return self


class LimitsConfig(Config):
    max_upload_bytes: int = Field(default=32 * 2**20, ge=1)
    max_text_chars: int = Field(default=512, ge=1)
    max_batch_items: int = Field(default=64, ge=1)
    max_new_tokens: int = Field(default=40, ge=1)
    allowed_uri_prefixes: list[str] = Field(default_factory=list)


class AuthConfig(Config):
    api_key: str | None = Field(default=None, description="bearer token; prefer api_key_env in real deployments")
    api_key_env: str | None = Field(default="OMNIVL_API_KEY", description="env var holding the bearer token")


class ServeAppConfig(Config):
    """Everything the serving app needs; a checkpoint is an export directory (local or s3://)."""

    checkpoints: dict[str, str] = Field(min_length=1, description="model id -> export URI; the first is default")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batching: BatchingConfig = BatchingConfig()
    autoscaling: AutoscalingSpec = AutoscalingSpec()
    max_ongoing_requests: int = Field(default=32, ge=1)
    cpus_per_replica: float = Field(default=1.0, gt=0)
    gpus_per_replica: float = Field(default=0.0, ge=0)
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    gallery_manifest: str | None = Field(default=None, description="manifest indexed at startup for /v1/search")

    @model_validator(mode="after")
    def _batches_can_fill(self):
        if self.batching.enabled and self.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= batching.max_batch_size "
                f"({self.batching.max_batch_size}), or batches can never fill"
            )
        return self
