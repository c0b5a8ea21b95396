"""Job kinds: each is a composition of component configs under a `kind:` tag.

Structural checks (types, ranges, unknown keys) are pydantic's; cross-field checks that need to point at a
specific path (a stage naming an unknown source) live in `semantic_issues`, which the loader calls.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr

from omnivl.data.config import DecodeConfig, ShuffleConfig, SourceConfig, SynthConfig
from omnivl.embed.config import EmbedSettings, EmbedSource, IndexSettings
from omnivl.eval.config import EvalConfig, EvalDuringTraining, eval_during_training_issues, source_issues
from omnivl.models.config import ModelConfig
from omnivl.pipeline.refs import find_refs
from omnivl.serving.config import ServeAppConfig
from omnivl.spec.base import Config, TaggedRegistry
from omnivl.spec.errors import SpecIssue
from omnivl.train.config import CheckpointSpec, FailureSpec, ScalingSpec, StageConfig
from omnivl.train.schedule import BatchRounding, unsplit_worker_counts
from omnivl.tracking.config import TrackingConfig

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
    shuffle: ShuffleConfig = ShuffleConfig()


@JOBS.register("synth")
class SynthJob(JobSpec):
    """Generate the synthetic corpus (images, H.264 videos, manifests, splits)."""

    kind: Literal["synth"] = "synth"
    corpus: SynthConfig = SynthConfig()


# The formats of omnivl.data.importers.IMPORTERS (kept here so validating a spec never imports pyarrow).
ImportFormat = Literal["coco", "karpathy", "msrvtt", "webvid", "kinetics", "imagefolder", "vqa"]


@JOBS.register("import")
class ImportJob(JobSpec):
    """Convert a dataset's own annotation files into the manifest `<output>/manifest.parquet`
    (omnivl.data.importers; an option the format does not read is an error when the job runs)."""

    kind: Literal["import"] = "import"
    format: ImportFormat
    sources: list[str] = Field(min_length=1, description="annotation files (imagefolder: root directories; "
                                                         "vqa: the questions and the annotations JSON)")
    media_root: str | None = Field(default=None, description="media directory; default: the first source's")
    split: str | None = Field(default=None, description="keep only this split (formats that state splits)")
    drop_missing: bool = Field(default=False, description="leave out rows whose media file is missing")
    image_pattern: str | None = Field(default=None, description="vqa: image file name pattern")
    subset: str | None = Field(default=None, description="vqa: {subset} when the questions JSON has none")


class TrainingJob(JobSpec):
    """What every Ray Train job kind has: the model, its data, stages run in order, workers, checkpoints."""

    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataSpec
    stages: list[StageConfig] = Field(min_length=1)
    scaling: ScalingSpec = ScalingSpec()
    batch_rounding: BatchRounding = Field(
        default="exact", description="how each stage's global batch meets the worker count Ray Train picks from "
        "scaling.num_workers: 'exact' trains on the batch as written, so it must split over every count of an "
        "elastic range (x grad_accum); 'down' trains on the largest batch <= it that splits over the count "
        "running (a step has up to workers x grad_accum - 1 rows fewer; the learning rate stays as stated)")
    checkpoint: CheckpointSpec = CheckpointSpec()
    failure: FailureSpec = FailureSpec()
    eval_during_training: EvalDuringTraining | None = Field(
        default=None, description="held-out retrieval / zero-shot every N steps of each stage (off by default)")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig,
                                     description="experiment trackers (TensorBoard on by default; MLflow, W&B)")

    def loss_weights(self, index: int) -> dict[str, float]:
        """The objective weights of stage `index` (a job kind may switch objectives off)."""
        return self.stages[index].loss_weights.to_dict()

    def semantic_issues(self) -> list[SpecIssue]:
        issues = _duplicate_names("stages", [s.name for s in self.stages])
        issues += _duplicate_names("data.sources", [s.name for s in self.data.sources])
        by_name = {s.name: s for s in self.data.sources}
        for i, stage in enumerate(self.stages):
            issues += _unknown_sources(f"stages[{i}].sources", stage.sources, by_name)
            modalities = {by_name[s].modality for s in stage.sources if s in by_name}
            kinds = {by_name[s].kind for s in stage.sources if s in by_name}
            if stage.loss_weights.cls > 0 and "label" not in kinds:
                issues.append(SpecIssue(f"stages[{i}].loss_weights.cls", f"is {stage.loss_weights.cls} but stage "
                                        f"{stage.name!r} has no label source (it classifies their class names)"))
            if stage.augment is not None and kinds - {"label"}:
                texts = ", ".join(repr(s) for s in stage.sources if s in by_name and by_name[s].kind != "label")
                issues.append(SpecIssue(f"stages[{i}].augment", f"flips and shifts contradict the texts of {texts} "
                                        "(positions, directions): augment stages of label sources only"))
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
        issues += _batch_split_issues(self.stages, self.scaling.worker_range, self.batch_rounding)
        if self.eval_during_training is not None:
            trained = {by_name[n].manifest: f"stages[{i}] (source {n!r})" for i, stage in
                       reversed(list(enumerate(self.stages))) for n in stage.sources if n in by_name}
            issues += eval_during_training_issues(self.eval_during_training, trained)
        return issues


@JOBS.register("pretrain")
class PretrainJob(TrainingJob):
    kind: Literal["pretrain"] = "pretrain"


FinetuneTask = Literal["retrieval", "captioning", "qa"]
# Objectives each fine-tuning task trains (the others get weight 0 whatever the stage says): retrieval is
# contrastive + matching with hard negatives, captioning and QA are language modelling (QA on the answer only).
TASK_OBJECTIVES: dict[str, tuple[str, ...]] = {"retrieval": ("vlc", "vlm"), "captioning": ("lm",), "qa": ("lm",)}
# The source kinds each task can train on.
TASK_SOURCE_KINDS: dict[str, tuple[str, ...]] = {"retrieval": ("text", "label"), "captioning": ("text",),
                                                 "qa": ("qa",)}


class HeldOutEval(EvalConfig):
    """Evaluation of the fine-tuned export at the end of the job, on `sources` (names in `data.sources` that
    no stage trains on); the other fields are the `evaluate` job's `eval` block."""

    sources: list[str] = Field(min_length=1, description="held-out entries of data.sources")


@JOBS.register("finetune")
class FinetuneJob(TrainingJob):
    """Fine-tune a pretraining export for one task, then (optionally) evaluate it on held-out sources."""

    kind: Literal["finetune"] = "finetune"
    init: str = Field(min_length=1, description="pretraining export directory or run directory (local or s3://)")
    task: FinetuneTask
    eval: HeldOutEval | None = None

    def loss_weights(self, index: int) -> dict[str, float]:
        weights = super().loss_weights(index)
        return {k: (v if k in TASK_OBJECTIVES[self.task] else 0.0) for k, v in weights.items()}

    def semantic_issues(self) -> list[SpecIssue]:
        issues = super().semantic_issues()
        by_name = {s.name: s for s in self.data.sources}
        allowed = TASK_SOURCE_KINDS[self.task]
        trained: dict[str, int] = {}
        for i, stage in enumerate(self.stages):
            for j, name in enumerate(stage.sources):
                trained.setdefault(name, i)
                kind = by_name[name].kind if name in by_name else None
                if kind is not None and kind not in allowed:
                    issues.append(SpecIssue(f"stages[{i}].sources[{j}]", f"task {self.task} trains on "
                                            f"{' or '.join(allowed)} sources; {name!r} is a {kind} source"))
            if not any(w > 0 for w in self.loss_weights(i).values()):
                issues.append(SpecIssue(f"stages[{i}].loss_weights", f"every objective of task {self.task} "
                                        f"({', '.join(TASK_OBJECTIVES[self.task])}) has weight 0"))
        if self.eval is not None:
            issues += _unknown_sources("eval.sources", self.eval.sources, by_name)
            issues += source_issues(self.eval, [by_name[n] for n in self.eval.sources if n in by_name])
            for j, name in enumerate(self.eval.sources):
                if name in trained:
                    issues.append(SpecIssue(f"eval.sources[{j}]", f"{name!r} is trained on by "
                                            f"stages[{trained[name]}]; evaluation needs held-out data"))
        return issues


@JOBS.register("evaluate")
class EvaluateJob(JobSpec):
    kind: Literal["evaluate"] = "evaluate"
    checkpoint: str = Field(min_length=1, description="export directory or training run (local or s3://)")
    model: ModelConfig = ModelConfig()
    data: DataSpec
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = Field(default_factory=TrackingConfig,
                                     description="trackers; a training run's export logs into that run's trackers")

    def semantic_issues(self) -> list[SpecIssue]:
        issues = _duplicate_names("data.sources", [s.name for s in self.data.sources])
        return issues + source_issues(self.eval, self.data.sources)


class EmbedData(Config):
    sources: list[EmbedSource] = Field(min_length=1)
    decode: DecodeConfig = Field(default_factory=DecodeConfig, description="image_size and num_frames come from "
                                 "the checkpoint; the rest (tokenizer, text length, timeouts) from here")


@JOBS.register("embed")
class EmbedJob(JobSpec):
    """Embed every row of manifests of any size to Parquet shards (row_key, uri, text, embedding), one shard per
    manifest chunk; a re-run skips finished shards (omnivl.embed.shards)."""

    kind: Literal["embed"] = "embed"
    checkpoint: str = Field(min_length=1, description="export directory or training run (local or s3://)")
    data: EmbedData
    embed: EmbedSettings = EmbedSettings()

    def semantic_issues(self) -> list[SpecIssue]:
        issues = _duplicate_names("data.sources", [s.name for s in self.data.sources])
        for field in ("image_size", "num_frames"):
            if field in self.data.decode.model_fields_set:
                issues.append(SpecIssue(f"data.decode.{field}", "comes from the checkpoint in an embed job; "
                                        "remove it"))
        return issues


@JOBS.register("index")
class IndexJob(JobSpec):
    """A FAISS index over an `embed` job's output, with its rows' metadata beside it (omnivl.embed.index);
    `/v1/search` serves it (`gallery_index:`)."""

    kind: Literal["index"] = "index"
    embeddings: str = Field(min_length=1, description="an embed job's output directory (local or s3://)")
    sources: list[str] | None = Field(default=None, description="sources of that output to index (default all)")
    column: Literal["embedding", "text_embedding"] = "embedding"
    index: IndexSettings = IndexSettings()


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
            if step.job.get("kind") == "serve" and i != len(self.steps) - 1:
                issues.append(SpecIssue(f"steps[{i}].job.kind", "a serve step runs until stopped, so it must be "
                                        f"the last step (it is step {i + 1} of {len(self.steps)})"))
        return issues


def _batch_split_issues(stages: list[StageConfig], workers: tuple[int, int],
                        rounding: BatchRounding) -> list[SpecIssue]:
    """One issue per stage batch size that `train.schedule.split_batch` would reject on some worker count that
    Ray Train may pick from the range `workers` = (min, max) (`ScalingSpec.worker_range`)."""
    issues = []
    for i, stage in enumerate(stages):
        for modality in ("image", "video"):
            size = getattr(stage.batch_size, modality)
            bad = unsplit_worker_counts(size, workers, stage.grad_accum, rounding) if size > 0 else []
            if bad:
                issues.append(SpecIssue(f"stages[{i}].batch_size.{modality}",
                                        _unsplit_message(size, bad, workers, stage.grad_accum, rounding)))
    return issues


def _unsplit_message(size: int, bad: list[int], workers: tuple[int, int], grad_accum: int,
                     rounding: BatchRounding) -> str:
    lo, hi = workers
    stated = f"scaling.num_workers {lo if lo == hi else [lo, hi]}"
    if rounding == "down":
        return (f"{size} is smaller than {hi} workers x grad_accum {grad_accum} ({stated}; batch_rounding down): "
                f"every worker needs a row per micro-step; use a batch >= {hi * grad_accum} or fewer workers")
    good = [n for n in range(max(1, lo), hi + 1) if n not in bad]
    splits = f"; it splits over {_counts(good)}" if good else ""
    return (f"{size} does not split over {_counts(bad)} workers x grad_accum {grad_accum} ({stated}{splits}); "
            f"set batch_rounding: down (each step trains on the largest batch <= {size} that splits, learning "
            f"rate as stated), or choose a batch size and worker counts that divide")


def _counts(ns: list[int], limit: int = 8) -> str:
    """'9, 10, 11' or, past `limit` numbers, '9, 10, 11, 13, 14, 17, ..., 31'."""
    shown = ns if len(ns) <= limit else ns[: limit - 2] + ["..."] + ns[-1:]
    return ", ".join(str(n) for n in shown)


def _unknown_sources(path: str, names: list[str], by_name: dict) -> list[SpecIssue]:
    return [SpecIssue(f"{path}[{j}]", f"unknown source {n!r}; defined: {', '.join(by_name)}")
            for j, n in enumerate(names) if n not in by_name]


def _duplicate_names(path: str, names: list[str]) -> list[SpecIssue]:
    seen: dict[str, int] = {}
    issues = []
    for i, n in enumerate(names):
        if n in seen:
            issues.append(SpecIssue(f"{path}[{i}].name", f"duplicate name {n!r} (also at {path}[{seen[n]}])"))
        seen.setdefault(n, i)
    return issues
