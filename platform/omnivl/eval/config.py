"""Configs owned by evaluation, and the checks that tie an `eval` block to the job's data sources."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from omnivl.data.config import SourceConfig
from omnivl.spec.base import Config
from omnivl.spec.errors import SpecIssue
from omnivl.spec.precision import UseGpuPrecision, precision_field

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
    precision: UseGpuPrecision = precision_field("use_gpu: true")
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


# ------------------------------------------------------------------------------ evaluation during training

LiveTask = Literal["retrieval", "zero_shot"]


class EvalDuringTraining(Config):
    """Evaluation while training (open_clip's `--zeroshot-frequency`; `omnivl.eval.live`): every `every_steps`
    optimizer steps of every stage, and at its end, rank 0 scores the current model on the first `max_items`
    rows of each held-out source: retrieval R@1 both ways on caption (`text`) sources, zero-shot top-1 over the
    class names of `label` sources, each beside its chance level."""

    every_steps: int = Field(ge=1, description="evaluate after every this many optimizer steps of a stage "
                             "(and at the end of each stage)")
    sources: list[SourceConfig] = Field(min_length=1, description="held-out sources, as the evaluate job's "
                                        "`data.sources`: kind text (retrieval) or label (zero-shot)")
    tasks: list[LiveTask] = Field(default_factory=lambda: ["retrieval", "zero_shot"], min_length=1)
    max_items: int = Field(default=64, ge=2, le=1024, description="rows read from each source (decoded once "
                           "per stage on the driver and handed to rank 0: keep it small)")
    batch_size: int = Field(default=32, ge=1, description="rows per forward pass on rank 0")


def eval_during_training_issues(cfg: EvalDuringTraining, trained: dict[str, str],
                                prefix: str = "eval_during_training") -> list[SpecIssue]:
    """Cross-checks of `cfg`: each source gives a task of `cfg.tasks` (retrieval needs captions, zero-shot class
    labels), each task has a source, names are unique, and no source is a manifest a stage trains on
    (`trained`: manifest -> where it is trained on, e.g. "stages[0] (source 'image_text')")."""
    issues, seen = [], {}
    for j, src in enumerate(cfg.sources):
        path = f"{prefix}.sources[{j}]"
        gives = [t for t in cfg.tasks if src.kind in TASK_KINDS[t]]
        if not gives:
            issues.append(SpecIssue(f"{path}.kind", f"a {src.kind} source gives none of tasks {list(cfg.tasks)}: "
                                    "retrieval needs captions (kind text), zero_shot class labels (kind label)"))
        if src.name in seen:
            issues.append(SpecIssue(f"{path}.name", f"duplicate name {src.name!r} (also at {prefix}.sources"
                                    f"[{seen[src.name]}])"))
        seen.setdefault(src.name, j)
        if src.manifest in trained:
            issues.append(SpecIssue(f"{path}.manifest", f"{src.manifest!r} is trained on by {trained[src.manifest]};"
                                    " evaluation during training needs held-out data"))
    for i, task in enumerate(cfg.tasks):
        if not any(s.kind in TASK_KINDS[task] for s in cfg.sources):
            need = ("captions (a source of kind text)" if task == "retrieval"
                    else "class labels (a source of kind label)")
            issues.append(SpecIssue(f"{prefix}.tasks[{i}]", f"{task} needs {need}; sources: "
                                    f"{', '.join(f'{s.name} ({s.kind})' for s in cfg.sources)}"))
    return issues
