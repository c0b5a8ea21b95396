"""Load a job spec from YAML: parse, apply overrides, dispatch on `kind:`, validate everything.

Nothing here touches Ray or the network: a spec that loads is a spec that can be run.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from omnivl.spec.errors import SpecError, SpecIssue, from_validation_error
from omnivl.spec.jobs import JOBS, JobSpec, PipelineJob
from omnivl.spec.overrides import apply_override


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML file into a mapping; raises SpecError naming the file on syntax errors."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError([SpecIssue("", f"cannot read spec: {exc}")], str(path)) from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str = "<string>") -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError([SpecIssue("", f"YAML syntax error: {exc}")], source) from None
    if not isinstance(data, dict):
        raise SpecError([SpecIssue("", f"top level must be a mapping, got {type(data).__name__}")], source)
    return data


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Read, override and validate the spec at `path`. Raises SpecError listing every problem found."""
    return validate_spec(read_yaml(path), overrides, source=str(path))


def validate_spec(raw: dict, overrides: list[str] | tuple[str, ...] = (), source: str | None = None) -> JobSpec:
    raw = copy.deepcopy(raw)
    try:
        for assignment in overrides:
            apply_override(raw, assignment)
        return build_job(raw, prefix=())
    except SpecError as exc:
        raise SpecError(exc.issues, source) from None


def build_job(raw: dict, prefix: tuple, allow_pipeline: bool = True) -> JobSpec:
    """Dispatch `raw` on its `kind` and validate it; issue paths are prefixed with `prefix`."""
    from omnivl.spec.errors import join_path

    kind = raw.get("kind")
    allowed = [k for k in JOBS.tags() if allow_pipeline or k != "pipeline"]
    if kind not in allowed:
        problem = "required field is missing" if kind is None else f"must be one of {allowed}, got {kind!r}"
        raise SpecError([SpecIssue(join_path(prefix + ("kind",)), problem)])
    cls = JOBS.get(kind)
    try:
        job = cls.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(exc, cls, prefix) from None
    issues = [SpecIssue(join_path(prefix + (i.path,)) if i.path else join_path(prefix), i.message)
              for i in job.semantic_issues()]
    if isinstance(job, PipelineJob):
        job._step_jobs = []
        for i, step in enumerate(job.steps):
            try:
                job._step_jobs.append(build_job(step.job, prefix + ("steps", i, "job"), allow_pipeline=False))
            except SpecError as exc:
                issues.extend(exc.issues)
    if issues:
        raise SpecError(issues)
    return job


def schema() -> dict[str, Any]:
    """JSON Schema of every job kind, keyed by kind (what `omnivl spec schema` prints)."""
    return {kind: cls.model_json_schema() for kind, cls in JOBS.items()}
