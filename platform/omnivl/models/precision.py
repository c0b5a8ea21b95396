"""Inference precision: the one place a precision name (`fp32 | bf16 | fp16`) becomes a torch autocast context,
for the embed job, the Python API and any other inference path."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: str | torch.device, precision: str):
    """The autocast context of `precision` on `device` (fp32: none; weights and outputs stay float32).
    Raises ValueError for an unknown precision name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
