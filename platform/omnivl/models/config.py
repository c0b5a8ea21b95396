"""The model's config as it appears in job specs: a named size plus optional initialization and objective knobs.

Fields left at `None` take the named size's value (see `omnivl.models.sizes`). Added fields all have defaults, so
existing job specs stay valid.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from omnivl.spec.base import Config


class InitConfig(Config):
    """Pretrained initialization (paper: ViT-B/16 ImageNet weights for the visual encoder, BERT for text)."""

    visual: str | None = Field(default=None, description="timm ViT checkpoint: file/dir, s3:// URI or timm:<name>")
    text: str | None = Field(
        default=None,
        description="Hugging Face BERT directory (local or s3://), a hub id (e.g. bert-base-uncased) found in the "
        "local Hugging Face cache under HF_HOME (never downloaded), or 'bundled' for the packaged MiniLM-L6; "
        "its config.json fixes the text encoder's and decoders' architecture",
    )


class TokenIds(Config):
    """Special token ids of the bert-base-uncased WordPiece vocabulary, shared with the data plane's tokenizer."""

    pad: int = 0
    cls: int = 101
    eos: int = Field(default=102, description="[SEP], used as [EOS] by the generation decoder")
    enc: int = Field(default=1, description="[unused0]: replaces [CLS] at position 0 for the alignment decoder")
    dec: int = Field(default=2, description="[unused1]: replaces [CLS] at position 0 for the generation decoder")


class ModelConfig(Config):
    size: Literal["tiny", "small", "base"] = "tiny"
    image_size: int | None = Field(default=None, ge=8, description="override the size's input resolution")
    num_frames: int | None = Field(default=None, ge=1, description="override the size's frames per video")
    grad_checkpointing: bool = False
    init: InitConfig = InitConfig()
    tubelet: int | None = Field(
        default=None, ge=1, description="frames per 3D patch of the video tokenizer; None: the size's (tiny 2, "
        "small/base 1)")
    patch: int | None = Field(default=None, ge=1, description="pixels per side of a patch; None: the size's (16)")
    visual_pool: Literal["cls", "max"] = Field(
        default="cls",
        description="the visual representation the contrastive loss, zero-shot and probes read: 'cls' (the final "
        "[CLS] token; the paper's) or 'max' (channel-wise maximum over the patch tokens; for training from random "
        "weights on small objects, where [CLS] starts as the mean of mostly background patches)")
    visual_stem: Literal["patch", "conv"] = Field(
        default="patch",
        description="the visual tokenizer: 'patch' (a linear map of each patch's pixels; ViT's and the paper's) or "
        "'conv' (three 3x3 convolutions on every frame first, one at full resolution and two of stride 2, then the "
        "patch projection; for training from random weights on objects smaller than a patch, whose shape is no "
        "linear function of the pixels). A timm checkpoint cannot initialize the conv stem's tokenizer")
    text_pool: Literal["cls", "mean"] = Field(
        default="cls",
        description="the text representation: 'cls' (position 0; the paper's, and what a pretrained BERT has "
        "learnt) or 'mean' (over the unpadded tokens; for a text encoder from random weights, whose [CLS] output "
        "starts nearly the same for every text)")
    decoder_visual_prefix: bool = Field(
        default=False,
        description="the generation decoder adds a learnt projection of the item's contrastive embedding, plus a "
        "learnt vector for its modality (image or video), to the input of every text position, besides "
        "cross-attending to the visual tokens; for training from random weights, where cross-attention starts as "
        "the mean over mostly background tokens and the captioner learns to write one caption for every item "
        "(measured: docs/robustness.md)")
    embed_dim: int | None = Field(default=None, ge=8, description="shared contrastive space; None: the size's")
    queue_size: int | None = Field(default=None, ge=0, description="UniVLC memory bank entries; None: the size's")
    share_queues: bool = Field(
        default=True, description="image and video features share one memory bank (False: one bank per modality)"
    )
    class_caption_pairs: Literal["negative", "ignore"] = Field(
        default="negative",
        description="UniVLC/matching: a pair of a class-labelled item and a caption item is a negative (the paper) "
        "or is left out ('ignore'; for label sets so small that captions often describe one of their classes)",
    )
    lm_on_class_labels: bool = Field(
        default=False,
        description="train the generation decoder (LM loss) on class-label rows too; by default it learns from "
        "captions and QA answers only, since a class-name prompt ('a photo of a circle.') is not a caption of the item",
    )
    lm_detach_visual: bool = Field(
        default=False,
        description="the LM loss (captions, QA answers) does not back-propagate into the visual encoder and its "
        "projection: the generation decoder learns to read the features the contrastive and matching losses train. "
        "For training from random weights, where the gradients of a decoder that does not yet read the picture "
        "keep moving the visual features and the captioner writes one caption for every item (measured: "
        "docs/robustness.md); BLIP and the paper train end to end from a pretrained ViT")
    momentum: float = Field(default=0.995, ge=0, le=1, description="EMA coefficient of the momentum encoders")
    temp_init: float = Field(default=0.07, gt=0, description="initial contrastive temperature (learnable)")
    temp_min: float = Field(default=0.001, gt=0)
    temp_max: float = Field(default=0.5, gt=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1, description="LM loss label smoothing")
    tokens: TokenIds = TokenIds()
