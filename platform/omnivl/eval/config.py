"""Configs owned by evaluation, and the checks that tie an `eval` block to the job's data sources."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from omnivl.spec.base import Config
from omnivl.spec.errors import SpecIssue

EvalTask = Literal["retrieval", "zero_shot", "linear_probe", "captioning", "qa"]
# The source kinds each task evaluates (a source of another kind is simply not evaluated by that task).
TASK_KINDS: dict[str, tuple[str, ...]] = {
    "retrieval": ("text",), "captioning": ("text",), "zero_shot": ("label",), "linear_probe": ("label",),
    "qa": ("qa",),
}


class GenerationSettings(Config):
    """How the generation decoder writes captions or answers (`OmniVL.generate`)."""

    method: Literal["greedy", "beam"] = "greedy"
    num_beams: int = Field(default=3, ge=1, description="beam search only")
    max_new_tokens: int = Field(default=20, ge=1)


class EvalConfig(Config):
    tasks: list[EvalTask] = Field(default_factory=lambda: ["retrieval"], min_length=1)
    rerank_k: int = Field(default=16, ge=0, description="re-rank the top-k contrastive candidates with the "
                          "matching head (0: contrastive ranking only)")
    rerank_score: Literal["match_plus_similarity", "match"] = Field(
        default="match_plus_similarity",
        description="what orders the top-k: the matching probability plus the contrastive cosine similarity "
        "(BLIP's evaluation), or the matching probability alone (ALBEF's)")
    batch_size: int = Field(default=32, ge=1)
    use_gpu: bool = False
    probe_train: dict[str, str] = Field(
        default_factory=dict,
        description="linear_probe: label source name -> manifest of its TRAIN split (the source itself is the "
        "held-out split the probe is scored on); same format, modality and templates as the source")
    probe_C: float = Field(default=1.0, gt=0, description="inverse L2 strength of the probe's logistic regression")
    captioning: GenerationSettings = GenerationSettings()
    answering: GenerationSettings = GenerationSettings(max_new_tokens=6)
    meteor: bool = Field(default=True, description="captioning: add METEOR when a Java runtime is on PATH")
    samples: int = Field(default=8, ge=0, le=64, description="items per sample sheet (frames beside outputs)")


def source_issues(cfg: EvalConfig, sources: list, prefix: str = "eval") -> list[SpecIssue]:
    """Cross-checks of `cfg` against the job's sources (objects with name/kind): every task has a source of
    a kind it evaluates, and `probe_train` names label sources (and is set when linear_probe is asked for)."""
    issues = []
    kinds = {s.name: s.kind for s in sources}
    for i, task in enumerate(cfg.tasks):
        if not any(k in TASK_KINDS[task] for k in kinds.values()):
            issues.append(SpecIssue(f"{prefix}.tasks[{i}]", f"{task} needs a source of kind "
                                    f"{' or '.join(TASK_KINDS[task])}; sources: "
                                    f"{', '.join(f'{n} ({k})' for n, k in kinds.items())}"))
    for name in cfg.probe_train:
        if name not in kinds:
            issues.append(SpecIssue(f"{prefix}.probe_train.{name}", f"unknown source; defined: {', '.join(kinds)}"))
        elif kinds[name] != "label":
            issues.append(SpecIssue(f"{prefix}.probe_train.{name}", f"is a {kinds[name]} source; the linear probe "
                                    "classifies label sources"))
    if "linear_probe" in cfg.tasks and not cfg.probe_train:
        issues.append(SpecIssue(f"{prefix}.probe_train", "linear_probe needs the train split of at least one label "
                                "source: {source_name: train manifest}"))
    return issues
