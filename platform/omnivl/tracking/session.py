"""What the jobs log to their trackers, as steps the Ray seams call (no Ray here).

Training (`TrainingTracking`, on the driver): the tracker runs are opened once per job with the resolved spec
as params and marked RUNNING; rank 0 of every stage continues them (`stage_sink`); after each stage the driver
logs its curves PNG and step range; at the end the export path and FINISHED (FAILED if a stage raised).
Evaluation (`log_evaluation`): an evaluate job of a training run's export logs its metrics, report and figures
into that training run's trackers (found through `<run>/tracking.json`), else into runs of its own.
"""

from __future__ import annotations

import contextlib
import posixpath
from pathlib import Path
from typing import Iterator

from omnivl import console, storage
from omnivl.tracking.config import TrackingConfig
from omnivl.tracking.names import eval_metrics
from omnivl.tracking.record import load_record, record_uri, save_record
from omnivl.tracking.tracker import Tracker

EVAL_FILES = (".md", ".json", ".png")


class TrainingTracking:
    """The driver's side of one training run's trackers. Each call opens and closes its own handle, so the
    driver never holds a W&B run while the workers write it."""

    def __init__(self, cfg: TrackingConfig, run_dir: str, *, name: str, kind: str,
                 params: dict | None = None) -> None:
        self.cfg, self.run_dir, self.name, self.kind, self.params = cfg, run_dir, name, kind, params

    def open(self, **kwargs) -> Tracker:
        return Tracker.open(self.cfg, self.run_dir, name=self.name, kind=self.kind, **kwargs)

    def start(self) -> None:
        """Create or continue the tracker runs, log the spec as params, mark the MLflow run RUNNING."""
        if not self.cfg.enabled:
            return
        with self.open(params=self.params) as t:
            t.set_status("RUNNING")
            for line in t.where():
                console.say(f"tracking: {line}")

    def stage_sink(self, step_offset: int) -> Tracker | None:
        """Rank 0's RunLog sink for a stage whose steps follow `step_offset` earlier ones (None: tracking off, or
        the trackers the driver opened cannot be reached from this worker: training goes on, with a warning)."""
        if not self.cfg.enabled:
            return None
        try:
            return self.open(step_offset=step_offset)
        except Exception as exc:
            print(f"warning: experiment trackers not reachable from this worker ({type(exc).__name__}: {exc}); "
                  "this stage's steps are in metrics.jsonl only", flush=True)
            return None

    def stage_done(self, stage: str, step_offset: int, summary: dict) -> None:
        """Record the stage's global step range; a stage that ran here also logs its curves PNG."""
        if not self.cfg.enabled:
            return
        steps = int(summary.get("steps") or 0)
        first, last = step_offset + 1, step_offset + steps
        with self.open() as t:
            t.record.setdefault("stages", {})[stage] = {"first_step": first, "last_step": last}
            t.record["global_step"] = max(int(t.record.get("global_step", 0)), last)
            save_record(self.run_dir, t.record)
            t.set_tags({f"omnivl.stage.{stage}.steps": f"{first}-{last}"})
            if summary.get("status") == "ran" and summary.get("curves"):
                with storage.local_copy(summary["curves"]) as png:
                    t.log_file(png, "curves")

    def finish(self, export_uri: str) -> None:
        if not self.cfg.enabled:
            return
        with self.open() as t:
            t.set_tags({"omnivl.export": export_uri})
            t.set_status("FINISHED")

    def failed(self) -> None:
        t = self.open()
        try:
            t.set_status("FAILED")
        finally:
            t.close(failed=True)

    @contextlib.contextmanager
    def running(self) -> Iterator["TrainingTracking"]:
        """`start`, then FAILED if the body raises (the error itself is re-raised)."""
        self.start()
        try:
            yield self
        except BaseException:
            if self.cfg.enabled:
                with contextlib.suppress(Exception):
                    self.failed()
            raise


def training_run_of(export: str) -> str | None:
    """The training run directory holding `export` (`<run>/export`) when that run has a tracking record."""
    export = export.rstrip("/")
    parent, base = posixpath.split(export) if storage.is_s3(export) else (str(Path(export).parent), Path(export).name)
    if base == "export" and storage.exists(record_uri(parent)):
        return parent
    return None


def log_evaluation(cfg: TrackingConfig, *, export: str, out_uri: str, name: str, params: dict,
                   summary: dict) -> str | None:
    """Log an evaluate job's headline metrics (`{source: {metric: {value, chance}}}`), report, metrics.json and
    figures. Into the trackers of the training run that `export` belongs to, at its last global step; else into
    new runs recorded in `out_uri` (with `params`). Returns the run directory logged to (None: tracking off)."""
    if not cfg.enabled:
        return None
    training_run = training_run_of(export)
    run_dir = training_run or out_uri
    step = int(load_record(run_dir).get("global_step", 0))
    try:
        tracker = Tracker.open(cfg, run_dir, name=name, kind="evaluate", params=None if training_run else params)
    except Exception as exc:  # the report is written already: say so rather than fail the job
        console.warn(f"evaluation metrics not sent to the trackers ({type(exc).__name__}: {exc})")
        return None
    with tracker as t:
        t.log_summary(eval_metrics(summary), step)
        with storage.local_copy(out_uri) as local:
            for f in sorted(Path(local).iterdir()):
                if f.is_file() and f.suffix in EVAL_FILES:
                    t.log_file(f, f"evaluation/{name}")
        t.set_tags({f"omnivl.evaluation.{name}": storage.join(out_uri, "report.md")})
        if training_run is None:
            t.set_status("FINISHED")
    return run_dir
