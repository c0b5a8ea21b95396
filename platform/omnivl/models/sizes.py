"""Named sizes as small functions returning architectures, and the resolution of a `ModelConfig` into one.

`tiny` trains on a CPU in minutes; `small` is ViT-S/16 with a MiniLM-L6-shaped BERT (so the bundled MiniLM
checkpoint initializes it); `base` is the paper's ViT-B/16 + BERT-base.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from omnivl.models.config import ModelConfig


@dataclass(frozen=True)
class VisualArch:
    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch: int = 16
    image_size: int = 224
    num_frames: int = 8
    tubelet: int = 1
    eps: float = 1e-6
    grad_checkpointing: bool = False
    pool: str = "cls"  # the representation: "cls" (the [CLS] token, ViT's) or "max" (channel-wise max of patches)
    stem: str = "patch"  # the tokenizer: "patch" (one linear map per patch, ViT's) or "conv" (a conv stem first)


@dataclass(frozen=True)
class TextArch:
    """BERT geometry; the decoders use the same geometry (BLIP does) plus cross-attention to the visual width."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int = 30522
    max_position: int = 512
    type_vocab: int = 2
    eps: float = 1e-12
    dropout: float = 0.0
    grad_checkpointing: bool = False
    pool: str = "cls"  # the representation: "cls" (position 0, BERT's) or "mean" (over the unpadded positions)
    visual_prefix: bool = False  # the generation decoder adds the item's embedding and modality to its input


@dataclass(frozen=True)
class OmniVLArch:
    visual: VisualArch
    text: TextArch
    embed_dim: int
    queue_size: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OmniVLArch":
        return cls(visual=VisualArch(**d["visual"]), text=TextArch(**d["text"]),
                   embed_dim=d["embed_dim"], queue_size=d["queue_size"])


def tiny() -> OmniVLArch:
    return OmniVLArch(
        # tubelet 2: each video token spans two frames, so the 3D tokenizer itself sees motion. With one frame per
        # token this 2-layer encoder learns motion direction several times more slowly (measured: issue 5's note).
        visual=VisualArch(width=192, depth=2, heads=3, mlp_dim=768, image_size=64, num_frames=4, tubelet=2),
        text=TextArch(hidden=128, layers=2, heads=2, intermediate=512, max_position=128),
        embed_dim=64,
        queue_size=1024,
    )


def small() -> OmniVLArch:
    return OmniVLArch(
        visual=VisualArch(width=384, depth=12, heads=6, mlp_dim=1536, image_size=224, num_frames=8),
        text=TextArch(hidden=384, layers=6, heads=12, intermediate=1536),
        embed_dim=256,
        queue_size=16384,
    )


def base() -> OmniVLArch:
    return OmniVLArch(
        visual=VisualArch(width=768, depth=12, heads=12, mlp_dim=3072, image_size=224, num_frames=8),
        text=TextArch(hidden=768, layers=12, heads=12, intermediate=3072),
        embed_dim=256,
        queue_size=57600,
    )


SIZES = {"tiny": tiny, "small": small, "base": base}


def text_arch_from_hf_config(config: dict) -> TextArch:
    """The BERT geometry stated by a Hugging Face `config.json` (raises ValueError for non-BERT configs)."""
    if config.get("model_type", "bert") != "bert" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"expected a BERT config with absolute positions, got {config.get('model_type')!r}")
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"only hidden_act 'gelu' is supported, got {config.get('hidden_act')!r}")
    return TextArch(
        hidden=config["hidden_size"], layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
        intermediate=config["intermediate_size"], vocab=config["vocab_size"],
        max_position=config["max_position_embeddings"], type_vocab=config.get("type_vocab_size", 2),
        eps=config.get("layer_norm_eps", 1e-12),
    )


def resolve_arch(cfg: ModelConfig) -> OmniVLArch:
    """The architecture `cfg` describes: its size, its overrides, and the text geometry of `init.text` if set."""
    arch = SIZES[cfg.size]()
    visual = dataclasses.replace(
        arch.visual,
        image_size=cfg.image_size or arch.visual.image_size,
        num_frames=cfg.num_frames or arch.visual.num_frames,
        tubelet=cfg.tubelet or arch.visual.tubelet,
        patch=cfg.patch or arch.visual.patch,
        grad_checkpointing=cfg.grad_checkpointing,
        pool=cfg.visual_pool,
        stem=cfg.visual_stem,
    )
    text = arch.text
    if cfg.init.text:
        from omnivl.models.checkpoints import read_hf_config

        text = text_arch_from_hf_config(read_hf_config(cfg.init.text))
    text = dataclasses.replace(text, grad_checkpointing=cfg.grad_checkpointing, pool=cfg.text_pool,
                               visual_prefix=cfg.decoder_visual_prefix)
    return OmniVLArch(
        visual=visual,
        text=text,
        embed_dim=cfg.embed_dim or arch.embed_dim,
        queue_size=arch.queue_size if cfg.queue_size is None else cfg.queue_size,
    )


def arch_json(arch: OmniVLArch) -> str:
    return json.dumps(arch.to_dict(), indent=2, sort_keys=True)
