"""Job kinds: each is a composition of component configs under a `kind:` tag.

Structural checks (types, ranges, unknown keys) are pydantic's; cross-field checks that need to point at a
specific path (a stage naming an unknown source) live in `semantic_issues`, which the loader calls.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr

from omnivl.data.config import DecodeConfig, SourceConfig, SynthConfig
from omnivl.eval.config import EvalConfig
from omnivl.models.config import ModelConfig
from omnivl.pipeline.refs import find_refs
from omnivl.serving.config import ServeAppConfig
from omnivl.spec.base import Config, TaggedRegistry
from omnivl.spec.errors import SpecIssue
from omnivl.train.config import CheckpointSpec, FailureSpec, ScalingSpec, StageConfig

JOBS = TaggedRegistry("job", tag_field="kind")


class JobSpec(Config):
    """Common fields of every job. `output` is where the job writes; inside a pipeline the step sets it."""

    kind: str
    name: str = Field(default="job", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    output: str | None = Field(default=None, description="output directory (local or s3://)")

    def semantic_issues(self) -> list[SpecIssue]:
        return []


class DataSpec(Config):
    sources: list[SourceConfig] = Field(min_length=1)
    decode: DecodeConfig = DecodeConfig()


@JOBS.register("synth")
class SynthJob(JobSpec):
    """Generate the synthetic corpus (images, H.264 videos, manifests, splits)."""

    kind: Literal["synth"] = "synth"
    corpus: SynthConfig = SynthConfig()


@JOBS.register("pretrain")
class PretrainJob(JobSpec):
    kind: Literal["pretrain"] = "pretrain"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataSpec
    stages: list[StageConfig] = Field(min_length=1)
    scaling: ScalingSpec = ScalingSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    failure: FailureSpec = FailureSpec()

    def semantic_issues(self) -> list[SpecIssue]:
        issues = _duplicate_names("stages", [s.name for s in self.stages])
        issues += _duplicate_names("data.sources", [s.name for s in self.data.sources])
        by_name = {s.name: s for s in self.data.sources}
        for i, stage in enumerate(self.stages):
            for j, src in enumerate(stage.sources):
                if src not in by_name:
                    issues.append(
                        SpecIssue(f"stages[{i}].sources[{j}]", f"unknown source {src!r}; defined: {', '.join(by_name)}")
                    )
            modalities = {by_name[s].modality for s in stage.sources if s in by_name}
            for modality in ("image", "video"):
                bs = getattr(stage.batch_size, modality)
                if bs > 0 and modality not in modalities:
                    issues.append(
                        SpecIssue(f"stages[{i}].batch_size.{modality}", f"is {bs} but the stage has no {modality} source")
                    )
                if bs == 0 and modality in modalities:
                    issues.append(
                        SpecIssue(f"stages[{i}].batch_size.{modality}", f"must be > 0, got 0 (the stage has {modality} sources)")
                    )
        return issues


@JOBS.register("evaluate")
class EvaluateJob(JobSpec):
    kind: Literal["evaluate"] = "evaluate"
    checkpoint: str = Field(min_length=1, description="export directory or training run (local or s3://)")
    model: ModelConfig = ModelConfig()
    data: DataSpec
    eval: EvalConfig = EvalConfig()


@JOBS.register("serve")
class ServeJob(JobSpec):
    kind: Literal["serve"] = "serve"
    app: ServeAppConfig
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    route_prefix: str = "/"


class PipelineStep(Config):
    """A named step; its `job` is any non-pipeline job kind. Strings in the job may reference earlier steps'
    outputs as `${steps.NAME}`; those references make the step depend on them."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    job: dict


@JOBS.register("pipeline")
class PipelineJob(JobSpec):
    kind: Literal["pipeline"] = "pipeline"
    output_root: str = Field(default="runs", min_length=1, description="step outputs go under here (local or s3://)")
    steps: list[PipelineStep] = Field(min_length=1)
    _step_jobs: list[JobSpec] = PrivateAttr(default_factory=list)

    @property
    def step_jobs(self) -> list[JobSpec]:
        """The validated job of each step (filled by the loader), in step order."""
        return self._step_jobs

    def semantic_issues(self) -> list[SpecIssue]:
        issues = _duplicate_names("steps", [s.name for s in self.steps])
        earlier: list[str] = []
        for i, step in enumerate(self.steps):
            if step.job.get("output") is not None:
                issues.append(SpecIssue(f"steps[{i}].job.output", "is set by the pipeline; remove it"))
            for ref in sorted(find_refs(step.job)):
                if ref not in earlier:
                    issues.append(SpecIssue(
                        f"steps[{i}].job",
                        f"references ${{steps.{ref}}} but no earlier step is named {ref!r}; earlier: {earlier or 'none'}",
                    ))
            earlier.append(step.name)
        return issues


def _duplicate_names(path: str, names: list[str]) -> list[SpecIssue]:
    seen: dict[str, int] = {}
    issues = []
    for i, n in enumerate(names):
        if n in seen:
            issues.append(SpecIssue(f"{path}[{i}].name", f"duplicate name {n!r} (also at {path}[{seen[n]}])"))
        seen.setdefault(n, i)
    return issues
