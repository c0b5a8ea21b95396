"""Configs owned by training: stages, optimizer and schedule, scaling, checkpointing, failure handling."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from omnivl.spec.base import Config
from omnivl.spec.precision import fp16_on_gpu


class ModalityBatch(Config):
    """Global batch size per modality (the paper: 2880 images / 800 videos)."""

    image: int = Field(default=0, ge=0)
    video: int = Field(default=0, ge=0)


class OptimizerConfig(Config):
    """AdamW with linear warm-up, then decay (paper: warm-up to 3e-4 / 8e-5, weight decay 0.05)."""

    lr: float = Field(default=3e-4, gt=0)
    min_lr: float = Field(default=1e-6, ge=0)
    weight_decay: float = Field(default=0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=100, ge=0)
    schedule: Literal["cosine", "linear", "step"] = "cosine"
    grad_clip: float | None = Field(default=1.0, gt=0)


class LossWeights(Config):
    vlc: float = Field(default=1.0, ge=0, description="UniVLC contrastive loss")
    vlm: float = Field(default=1.0, ge=0, description="matching loss with hard negatives")
    lm: float = Field(default=1.0, ge=0, description="captioning (language modelling) loss")
    cls: float = Field(
        default=0.0, ge=0, description="supervised warm-up, not an OmniVL objective: cross-entropy of a linear head "
        "on the visual [CLS] over the class names of the stage's label sources (for runs from random weights, in "
        "place of the paper's supervised ImageNet initialization); the head is left out of exports")


class ImageAugment(Config):
    """Label-keeping augmentation of a stage's image batches, on the training worker: a random shift (and, with
    `hflip`, a mirror image; the data plane's `data.decode.hflip` already mirrors training rows). An aid for training from random weights on few labelled images (the shape warm-up memorized
    3000 images of small objects: 91 % train, 67 % held out; with flips and shifts 79 % held out,
    docs/robustness.md). Only for labels a mirror image or a small shift does not change, such as shapes:
    captions name positions and motion directions, which it would contradict, so caption and QA sources are
    refused. Video batches are left as they are."""

    hflip: bool = Field(default=False, description="mirror each image left-right with probability 1/2, without "
                        "swapping 'left'/'right' in its label; the data plane's `data.decode.hflip` (on by default) "
                        "already flips training rows and swaps those words, so this is rarely wanted")
    max_shift: float = Field(default=0.05, ge=0, lt=0.5,
                             description="shift each image by up to this fraction of its side in x and in y "
                             "(the edge pixels are repeated into the gap)")


class StageConfig(Config):
    """One pretraining stage. Stage order in the spec is execution order; a later stage starts from the
    final checkpoint of the one before it."""

    name: str = Field(min_length=1)
    sources: list[str] = Field(min_length=1, description="names of entries in `data.sources`")
    epochs: float | None = Field(default=None, gt=0, description="epochs over the largest source")
    steps: int | None = Field(default=None, gt=0, description="optimizer steps (takes precedence over epochs)")
    batch_size: ModalityBatch
    schedule: dict[Literal["image", "video"], int] = Field(
        default_factory=lambda: {"image": 1, "video": 1},
        description="alternation weights: e.g. {image: 1, video: 1} alternates batches 1:1",
    )
    grad_accum: int = Field(default=1, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    loss_weights: LossWeights = LossWeights()
    augment: ImageAugment | None = Field(
        default=None, description="label-keeping flips and shifts of the image batches (label sources only; an aid "
        "for training from random weights)")

    @model_validator(mode="after")
    def _has_length(self):
        if self.epochs is None and self.steps is None:
            raise ValueError("set `epochs` or `steps`")
        if self.batch_size.image == 0 and self.batch_size.video == 0:
            raise ValueError("batch_size needs image > 0 or video > 0")
        for modality, weight in self.schedule.items():
            if weight < 0:
                raise ValueError(f"schedule.{modality} must be >= 0, got {weight}")
        return self


Parallelism = Literal["ddp", "fsdp"]
# fp16 needs a GPU, as for inference (omnivl.spec.precision)
TrainPrecision = Annotated[Literal["auto", "fp32", "bf16", "fp16"],
                           fp16_on_gpu("use_gpu: true", lambda fields: fields.get("use_gpu") is True)]


class ScalingSpec(Config):
    """Ray Train workers (a fixed count, or an elastic [min, max] range) and how each runs the model."""

    num_workers: int | tuple[int, int] = 1
    use_gpu: bool = False
    parallelism: Parallelism = Field(
        default="ddp", description="ddp: every worker holds the whole model; fsdp: parameters, gradients and "
        "optimizer state sharded over the workers (FSDP2, one unit per transformer block)")
    precision: TrainPrecision = Field(
        default="auto", description="autocast dtype of forward/backward (weights and optimizer state stay fp32); "
        "auto: bf16 on GPUs, fp32 on CPUs; fp16 (GPUs only) adds a gradient scaler")
    compile: bool = Field(default=False, description="torch.compile each transformer block of the encoders and "
                          "decoders (the first steps of each modality take longer: they compile)")
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=1.0, ge=0)
    worker_label: dict[str, str] | None = Field(
        default=None, description="node labels the train workers must land on, e.g. {pool: trainer}"
    )

    @field_validator("num_workers")
    @classmethod
    def _valid_range(cls, n):
        lo, hi = (n, n) if isinstance(n, int) else n
        if lo < 0 or hi < lo:
            raise ValueError(f"must be >= 0 or a [min, max] range with 0 <= min <= max, got {n}")
        return n

    @property
    def worker_range(self) -> tuple[int, int]:
        n = self.num_workers
        return (n, n) if isinstance(n, int) else tuple(n)


class CheckpointSpec(Config):
    every_steps: int = Field(default=100, ge=1)
    keep_last: int = Field(default=2, ge=1)
    async_save: bool = Field(
        default=False, description="write checkpoints in the background: training continues once each rank's "
        "state is copied to host memory; the checkpoint is published (marker written) at the next one or the "
        "stage's end, and a stage's final checkpoint is always written before it ends")


class FailureSpec(Config):
    max_failures: int = Field(default=2, ge=-1)
    inject_failure_at_step: int | None = Field(
        default=None, ge=1, description="test hook: crash worker rank 1 once at this step"
    )
