"""OmniVL model code: single-device PyTorch, no Ray and no torch.distributed (DESIGN.md principle 1)."""

from omnivl.models.config import InitConfig, ModelConfig, TokenIds
from omnivl.models.omnivl import OmniVL, build_model, build_omnivl
from omnivl.models.sizes import SIZES, OmniVLArch, resolve_arch

__all__ = ["InitConfig", "ModelConfig", "OmniVL", "OmniVLArch", "SIZES", "TokenIds", "build_model", "build_omnivl",
           "resolve_arch"]
