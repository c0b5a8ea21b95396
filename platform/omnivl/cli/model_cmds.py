"""`omnivl model ...`: model sizes and parameter counts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omnivl.models.config import ModelConfig
from omnivl.models.sizes import SIZES, resolve_arch

if TYPE_CHECKING:  # torch is imported only when a model command runs: `omnivl validate` stays fast
    import torch

    from omnivl.models.omnivl import OmniVL


def register(groups) -> None:
    p = groups["model"].add_parser("params", help="parameter counts per component of each named size")
    p.add_argument("--size", choices=[*SIZES, "all"], default="all")
    p.set_defaults(func=cmd_params)


def _count(module: torch.nn.Module, seen: set[int]) -> int:
    """Parameters of `module` not already counted (shared and tied tensors count once)."""
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def component_counts(model: OmniVL) -> dict[str, int]:
    """Unique parameters per component, in build order; the generation decoder counts only what it does not
    share with the alignment decoder (its self-attention and LM head bias/transform)."""
    seen: set[int] = set()
    video_only = sum(p.numel() for _, p in model.visual.temporal_parameters())
    counts = {
        "visual (shared image+video)": _count(model.visual, seen) - video_only,
        "visual (video-only: 3D tokenizer, temporal attn/embed)": video_only,
        "text encoder": _count(model.text, seen),
        "alignment decoder (+ match head)": _count(model.align_decoder, seen),
        "generation decoder (own: self-attn, LM head)": _count(model.gen_decoder, seen),
        "projections": _count(model.vision_proj, seen) + _count(model.text_proj, seen),
    }
    counts["total"] = sum(counts.values())
    return counts


def cmd_params(args) -> int:
    import torch

    from omnivl.models.omnivl import build_omnivl

    sizes = list(SIZES) if args.size == "all" else [args.size]
    for size in sizes:
        with torch.device("meta"):  # shapes only: base builds instantly and allocates nothing
            model = build_omnivl(resolve_arch(ModelConfig(size=size)))
        print(f"{size}:")
        for name, n in component_counts(model).items():
            print(f"  {name:<56} {n:>13,}  ({n / 1e6:.1f}M)")
    return 0
