"""Export format that serving and evaluation load: a directory (local or s3://) holding

- `model.safetensors`: the online model's tensors (tied/shared tensors stored once),
- `config.json`: `{"model_config": ModelConfig, "arch": resolved OmniVLArch}` (the arch is stored because
  `init.text` may have fixed the text geometry from a directory that is absent at load time),
- the tokenizer files of the bundled bert-base-uncased vocabulary.

Safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from omnivl import storage
from omnivl.models.checkpoints import bundled_bert_dir
from omnivl.models.config import ModelConfig
from omnivl.models.omnivl import OmniVL, build_omnivl
from omnivl.models.sizes import OmniVLArch, resolve_arch

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
FORMAT_VERSION = 1


def save_export(model: OmniVL, cfg: ModelConfig, uri: str, arch: OmniVLArch | None = None) -> None:
    """Write the export directory to `uri` (replaced if it exists). `arch` defaults to `resolve_arch(cfg)`."""
    from safetensors.torch import save_model

    arch = arch or resolve_arch(cfg)
    with storage.staged_output(uri) as out:
        save_model(model, str(out / "model.safetensors"))
        meta = {"format_version": FORMAT_VERSION, "model_config": cfg.to_dict(), "arch": arch.to_dict()}
        (out / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        for name in TOKENIZER_FILES:
            src = bundled_bert_dir() / name
            if src.exists():
                shutil.copyfile(src, out / name)


def read_export_config(uri: str) -> tuple[ModelConfig, OmniVLArch]:
    meta = json.loads(storage.read_text(storage.join(uri, "config.json")))
    return ModelConfig.model_validate(meta["model_config"]), OmniVLArch.from_dict(meta["arch"])


def load_export(uri: str, device: str | torch.device = "cpu") -> OmniVL:
    """The model saved by `save_export` at `uri` (local dir or s3://), in eval mode on `device`.
    Raises FileNotFoundError if files are missing and RuntimeError if tensors do not match the stored arch."""
    from safetensors.torch import load_model

    cfg, arch = read_export_config(uri)
    model = build_omnivl(arch, cfg.tokens)
    with storage.local_copy(storage.join(uri, "model.safetensors")) as weights:
        load_model(model, str(Path(weights)), strict=True)
    return model.to(device).eval()


def resolve_export(uri: str) -> str:
    """An export directory, or a training run directory holding one under `export/` (local or s3://).
    Raises FileNotFoundError naming both places looked at."""
    if storage.exists(storage.join(uri, "config.json")):
        return uri
    nested = storage.join(uri, "export")
    if storage.exists(storage.join(nested, "config.json")):
        return nested
    raise FileNotFoundError(f"checkpoint: no export (config.json + model.safetensors) at {uri} or {nested}")
