"""The model's config as it appears in job specs: a named size plus optional initialization."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from omnivl.spec.base import Config


class InitConfig(Config):
    """Pretrained initialization (paper: ViT-B/16 ImageNet weights for the visual encoder, BERT for text)."""

    visual: str | None = Field(default=None, description="timm ViT checkpoint: file/dir, s3:// URI or timm:<name>")
    text: str | None = Field(default=None, description="Hugging Face BERT directory (local or s3://) or hub name")


class ModelConfig(Config):
    size: Literal["tiny", "small", "base"] = "tiny"
    image_size: int | None = Field(default=None, ge=8, description="override the size's input resolution")
    num_frames: int | None = Field(default=None, ge=1, description="override the size's frames per video")
    grad_checkpointing: bool = False
    init: InitConfig = InitConfig()
