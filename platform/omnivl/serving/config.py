"""Typed arguments of the serving app (also the `args:` of serve/*.yaml)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from omnivl.spec.base import Config
from omnivl.spec.precision import Precision, fp16_on_gpu, precision_field

# What gives a model replica a GPU: a share of one from Ray, and a device setting that takes it.
REPLICA_GPU = "gpus_per_replica > 0 and device auto or cuda"
ReplicaPrecision = Annotated[Precision, fp16_on_gpu(
    REPLICA_GPU, lambda fields: fields.get("gpus_per_replica", 0) > 0 and fields.get("device") in ("auto", "cuda"))]


class BatchingConfig(Config):
    """Dynamic batching (`omnivl.serving.engine.Batcher`): a request that finds the model idle runs at once;
    requests that arrive while a batch computes run together next, up to `max_batch_size`. No timer: nothing
    waits for company (so there is no `batch_wait_timeout_s`)."""

    enabled: bool = True
    max_batch_size: int = Field(default=16, ge=1)


class AutoscalingSpec(Config):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=8.0, gt=0)
    # None: Ray Serve's defaults (30 s, 600 s, 30 s), which suit production traffic; tests and bursty
    # services shorten them.
    upscale_delay_s: float | None = Field(default=None, ge=0, description="load must stay above target this "
                                          "long before replicas are added")
    downscale_delay_s: float | None = Field(default=None, ge=0, description="load must stay below target this "
                                            "long before replicas are removed")
    look_back_period_s: float | None = Field(default=None, gt=0, description="window the ongoing requests "
                                             "are averaged over")

    @model_validator(mode="after")
    def _ordered(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        return self


class LimitsConfig(Config):
    """Per-request bounds; a request beyond one gets a 4xx naming the limit (never a 500)."""

    max_upload_bytes: int = Field(default=32 * 2**20, ge=1, description="whole request body (JSON or multipart)")
    max_text_chars: int = Field(default=512, ge=1, description="any one text (caption, label, question, query)")
    max_batch_items: int = Field(default=64, ge=1, description="texts + media of one request")
    max_new_tokens: int = Field(default=40, ge=1)
    max_num_beams: int = Field(default=5, ge=1)
    max_labels: int = Field(default=100, ge=2, description="candidate labels x templates of one /v1/classify")
    max_top_k: int = Field(default=100, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1, description="width*height of an image or a video frame")
    decode_timeout_s: float = Field(default=20.0, gt=0, description="one media item's decode; then 422 decode_timeout")
    allowed_uri_prefixes: list[str] = Field(
        default_factory=list, description="media URIs a request may name (local paths or s3://); empty: none"
    )


class AuthConfig(Config):
    api_key: str | None = Field(default=None, description="bearer token; prefer api_key_env in real deployments")
    api_key_env: str | None = Field(default="OMNIVL_API_KEY", description="env var holding the bearer token")


class IngressConfig(Config):
    """The HTTP ingress deployment: parses, authenticates and decodes media (off the model replicas)."""

    num_replicas: int = Field(default=1, ge=1)
    cpus: float = Field(default=0.5, gt=0)
    max_ongoing_requests: int = Field(default=256, ge=1)
    decode_threads: int = Field(default=2, ge=1, description="thread pool that decodes media in each ingress replica")


class ServeAppConfig(Config):
    """Everything the serving app needs; a checkpoint is an export directory (local or s3://)."""

    checkpoints: dict[str, str] = Field(min_length=1, description="model id -> export URI; the first is default")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batching: BatchingConfig = BatchingConfig()
    autoscaling: AutoscalingSpec = AutoscalingSpec()
    max_ongoing_requests: int = Field(default=32, ge=1)
    cpus_per_replica: float = Field(default=1.0, gt=0)
    gpus_per_replica: float = Field(default=0.0, ge=0)
    precision: ReplicaPrecision = precision_field(REPLICA_GPU)  # after device and gpus_per_replica: it reads them
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    gallery_manifest: str | None = Field(default=None, description="manifest indexed at startup for /v1/search")
    gallery_modality: Literal["auto", "image", "video"] = Field(default="auto", description="auto: from file extensions")
    gallery_max_items: int = Field(default=10_000, ge=1, description="index at most this many manifest rows")
    gallery_index: str | None = Field(default=None, description="an `index` job's output (prebuilt FAISS index + "
                                      "metadata) that /v1/search serves; nothing is embedded at startup")
    ingress: IngressConfig = IngressConfig()
    max_models_per_replica: int = Field(default=2, ge=1, description="multiplexing: checkpoints held per model replica")
    tokenizer: str = Field(default="bundled:bert-base-uncased", description="the exports' WordPiece vocabulary")
    text_max_length: int = Field(default=32, ge=4, description="tokens per text (longer texts are truncated)")
    torch_threads: int | None = Field(default=None, ge=1, description="intra-op threads per model replica; None: cpus")

    @model_validator(mode="after")
    def _batches_can_fill(self):
        if self.batching.enabled and self.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= batching.max_batch_size "
                f"({self.batching.max_batch_size}), or batches can never fill"
            )
        return self

    @model_validator(mode="after")
    def _one_gallery(self):
        if self.gallery_manifest and self.gallery_index:
            raise ValueError("set gallery_manifest (embedded at startup) or gallery_index (prebuilt), not both")
        return self

    @property
    def default_model(self) -> str:
        return next(iter(self.checkpoints))


EXPORT_FILES = ("config.json", "model.safetensors")  # what `omnivl.models.export.load_export` reads


def missing_local_inputs(cfg: ServeAppConfig, prefix: str = "app") -> list:
    """The local checkpoint and gallery paths of `cfg` that are not there, as SpecIssues naming the field and
    the path (s3:// is checked by the replicas that read it). Checked before anything is deployed, so a wrong
    path is one clear line instead of a traceback from inside a replica."""
    from pathlib import Path

    from omnivl import storage
    from omnivl.embed.config import INDEX_FILES
    from omnivl.spec.errors import SpecIssue

    issues = []
    for model_id, uri in cfg.checkpoints.items():
        if storage.is_s3(uri):
            continue
        missing = [name for name in EXPORT_FILES if not (Path(uri) / name).is_file()]
        if missing:
            what = "does not exist" if not Path(uri).exists() else f"has no {' / '.join(missing)}"
            issues.append(SpecIssue(f"{prefix}.checkpoints.{model_id}",
                                    f"{storage.absolute(uri)} {what} (an export: the `export/` directory a "
                                    f"pretrain or finetune run writes)"))
    gallery = cfg.gallery_manifest
    if gallery and not storage.is_s3(gallery) and not Path(gallery).exists():
        issues.append(SpecIssue(f"{prefix}.gallery_manifest", f"{storage.absolute(gallery)} does not exist"))
    index = cfg.gallery_index
    if index and not storage.is_s3(index):
        missing = [n for n in INDEX_FILES if not (Path(index) / n).is_file()]
        if missing:
            what = "does not exist" if not Path(index).exists() else f"has no {' / '.join(missing)}"
            issues.append(SpecIssue(f"{prefix}.gallery_index", f"{storage.absolute(index)} {what} (the output "
                                    f"directory of an `index` job)"))
    return issues


# AutoscalingSpec fields passed to Serve's autoscaling_config as they are, when set
SERVE_AUTOSCALING_DELAYS = {"upscale_delay_s", "downscale_delay_s", "look_back_period_s"}


def model_deployment_options(cfg: ServeAppConfig) -> dict:
    """Ray Serve deployment options of the model deployment (replicas or autoscaling, resources), as data."""
    opts = {"max_ongoing_requests": cfg.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica}}
    a = cfg.autoscaling
    if a.min_replicas == a.max_replicas:
        opts["num_replicas"] = a.max_replicas
    else:
        opts["autoscaling_config"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                      "initial_replicas": max(1, a.min_replicas),
                                      "target_ongoing_requests": a.target_ongoing_requests,
                                      **a.model_dump(include=SERVE_AUTOSCALING_DELAYS, exclude_none=True)}
    return opts
