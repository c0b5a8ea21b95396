"""Configs owned by evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from omnivl.spec.base import Config

# Captioning, QA and linear-probe evaluation are planned (issue 6); a spec asking for them fails validation.
EvalTask = Literal["retrieval", "zero_shot"]


class EvalConfig(Config):
    tasks: list[EvalTask] = Field(default_factory=lambda: ["retrieval"], min_length=1)
    rerank_k: int = Field(default=16, ge=0, description="re-rank the top-k contrastive candidates with the matching head")
    batch_size: int = Field(default=32, ge=1)
    use_gpu: bool = False
