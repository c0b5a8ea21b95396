"""OmniVL platform: pretrain, evaluate and serve one vision-language model for images and videos on Ray.

Layers (dependencies point one way): library (spec, data, models, losses, tasks, eval) -> Ray seams
(`omnivl.cluster`) -> entry points (`omnivl.cli`), and the in-process Python API `omnivl.load` (docs/python.md).

Importing this package stays light: no torch, no Ray (`omnivl validate` and the CLI start fast on it). `load`
imports its implementation, `omnivl.api`, when it is called.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from omnivl.api import Model

__version__ = "0.1.0"
__all__ = ["load", "__version__"]

DEFAULT_BATCH_SIZE = 32  # items per forward pass: evaluation's `eval.batch_size` default


def load(path: str | os.PathLike, *, device: Literal["auto", "cpu", "cuda"] = "auto",
         precision: Literal["fp32", "bf16", "fp16"] = "fp32", batch_size: int = DEFAULT_BATCH_SIZE,
         text_max_length: int | None = None, tokenizer: str | None = None) -> Model:
    """A model to embed, caption, answer, classify and match images and videos with, in this process.

    `path`: an export directory (config.json + model.safetensors + tokenizer files), a training run directory
    holding `export/`, either local or s3://. `device`: "auto" takes the GPU when torch sees one. `precision`:
    "bf16" / "fp16" autocast the forward passes (weights stay fp32). `batch_size`: items per forward pass.
    `text_max_length` (tokens per text) and `tokenizer` default to evaluation's (`DecodeConfig`).
    Raises FileNotFoundError naming the path, ValueError / TypeError naming a bad argument, RuntimeError for
    "cuda" without a GPU. See docs/python.md."""
    from omnivl.api import load_model

    return load_model(path, device=device, precision=precision, batch_size=batch_size,
                      text_max_length=text_max_length, tokenizer=tokenizer)
