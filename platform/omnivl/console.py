"""What `omnivl run` shows the user: progress of pipeline steps and training stages, warnings once each, and a
short summary at the end. Plain Python: the Ray seam that feeds it from the workers is
`omnivl.cluster.progress`.

Two renderings of the same events:
- on a terminal (TTY), one live progress bar per pipeline step and per training stage (rich), with
  step/total, loss, samples/s, data-wait and ETA; other lines print above the bars;
- elsewhere (CI, `ray job logs`, `omnivl logs --follow`), plain lines: every event at once, and each running
  stage's progress at a steady cadence (`PLAIN_CADENCE_S`), never once per step.

Driver code says things through `say()` / `warn()`, which go to the active console: the one `omnivl run`
installs with `use()`, else a plain console on sys.stdout (library use, tests).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Iterator

PLAIN_CADENCE_S = 30.0  # seconds between two progress lines of one stage without a terminal
RATE_WINDOW = 20  # steps over which samples/s and the ETA are averaged


def format_seconds(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class StageProgress:
    """One training stage as the driver sees it, from the step records rank 0 sends."""

    name: str
    total: int
    step: int = 0
    started_at: float = field(default_factory=time.time)
    record: dict = field(default_factory=dict)
    times: list[tuple[int, float]] = field(default_factory=list)  # (step, time) of the last RATE_WINDOW records
    last_printed: float = 0.0

    def update(self, record: dict) -> None:
        self.step, self.record = int(record["step"]), record
        self.times.append((self.step, float(record.get("time", time.time()))))
        del self.times[:-RATE_WINDOW]

    def steps_per_s(self) -> float | None:
        if len(self.times) < 2 or self.times[-1][1] <= self.times[0][1]:
            return None
        (s0, t0), (s1, t1) = self.times[0], self.times[-1]
        return (s1 - s0) / (t1 - t0)

    def eta_s(self) -> float | None:
        rate = self.steps_per_s()
        return (self.total - self.step) / rate if rate else None

    def fields(self) -> str:
        """`loss 3.214 · 41.3 samples/s · data-wait 12% · ETA 2m10s`."""
        r = self.record
        if not r:
            return "starting"
        parts = [f"loss {r['loss']:.3f}"]
        if "samples_per_s" in r:
            parts.append(f"{r['samples_per_s']:.1f} samples/s/worker")
        if "data_wait_frac" in r:
            parts.append(f"data-wait {100 * r['data_wait_frac']:.0f}%")
        eta = self.eta_s()
        parts.append(f"ETA {format_seconds(eta)}" if eta is not None else "ETA ?")
        return " · ".join(parts)

    def line(self) -> str:
        modality = self.record.get("modality")
        return f"[{self.name} {self.step}/{self.total}{' ' + modality if modality else ''}] {self.fields()}"


class Console:
    """Lines and progress for one `omnivl run`. Thread-safe: the progress feed calls it from its own thread."""

    def __init__(self, stream: IO[str] | None = None, live: bool | None = None,
                 cadence_s: float = PLAIN_CADENCE_S) -> None:
        self._stream = stream  # None: whatever sys.stdout is when a line is written
        self.live = bool(stream is not None and stream.isatty()) if live is None else live
        self.cadence_s = cadence_s
        self.stages: dict[str, StageProgress] = {}
        self.warned: set[str] = set()
        self._lock = threading.RLock()
        self._progress = None  # rich.progress.Progress while live bars are shown
        self._bars: dict[str, int] = {}
        if self.live:
            from rich.console import Console as RichConsole
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._rich = RichConsole(file=self.stream, highlight=False, soft_wrap=True)
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), console=self._rich,
                                      refresh_per_second=4, transient=False)
            self._progress.start()

    @property
    def stream(self) -> IO[str]:
        return self._stream or sys.stdout

    # -- lines ---------------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        with self._lock:
            if self._progress is not None:
                self._rich.print(text, markup=False, highlight=False)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def warn(self, text: str) -> None:
        """A warning, printed once however often it is raised."""
        with self._lock:
            if text in self.warned:
                return
            self.warned.add(text)
        self.say(f"warning: {text}")

    # -- pipeline steps ------------------------------------------------------------------------------------

    def pipeline_progress(self, name: str, done: int, total: int, running: str | None) -> None:
        """A pipeline's bar (live only: without a terminal, the executor's lines say the same)."""
        with self._lock:
            if self._progress is None:
                return
            info = f"running {running}" if running else "done"
            if "pipeline" not in self._bars:
                self._bars["pipeline"] = self._progress.add_task(f"pipeline {name}", total=total, info=info)
            self._progress.update(self._bars["pipeline"], completed=done, info=info)

    # -- training stages -----------------------------------------------------------------------------------

    def stage_started(self, name: str, total: int, start_step: int = 0, resumed_from: str | None = None) -> None:
        """Rank 0 began (or, after a worker failure, began again) a stage."""
        with self._lock:
            known = self.stages.get(name)
            if known is not None and known.step:
                self.warn(f"stage {name!r}: the worker group restarted at step {known.step} and resumed at "
                          f"step {start_step}" + (f" from {resumed_from}" if resumed_from else ""))
            stage = StageProgress(name, total, start_step)
            self.stages[name] = stage
            if self._progress is not None:
                if name in self._bars:
                    self._progress.update(self._bars[name], completed=start_step, info="resuming")
                else:
                    self._bars[name] = self._progress.add_task(f"stage {name}", total=total, completed=start_step,
                                                               info="starting")
        if known is None and resumed_from:
            self.say(f"stage {name!r}: resumed from {resumed_from} at step {start_step}")

    def step_record(self, record: dict) -> None:
        """A training step's record (`omnivl.train.runner.make_record`)."""
        with self._lock:
            name = record["stage"]
            stage = self.stages.get(name)
            if stage is None:
                stage = self.stages[name] = StageProgress(name, int(record["total_steps"]))
                if self._progress is not None:
                    self._bars[name] = self._progress.add_task(f"stage {name}", total=stage.total, info="")
            stage.update(record)
            if self._progress is not None:
                self._progress.update(self._bars[name], completed=stage.step, info=stage.fields())
                return
            now = time.monotonic()
            due = now - stage.last_printed >= self.cadence_s or stage.step >= stage.total
            if due:
                stage.last_printed = now
                line = stage.line()
        if self._progress is None and due:
            self.say(line)

    def stage_finished(self, name: str, seconds: float) -> None:
        with self._lock:
            stage = self.stages.get(name)
            if self._progress is not None and name in self._bars:
                self._progress.update(self._bars[name], completed=stage.total if stage else None,
                                      info=f"done in {format_seconds(seconds)}")
        self.say(f"stage {name!r}: finished in {format_seconds(seconds)}"
                 + (f" ({stage.fields().split(' · ETA')[0]})" if stage and stage.record else ""))

    def close(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None


_active: Console | None = None


def current() -> Console:
    """The console of this `omnivl run`, else a plain one on sys.stdout (created once)."""
    global _active
    if _active is None:
        _active = Console(None, live=False)
    return _active


@contextlib.contextmanager
def use(console: Console) -> Iterator[Console]:
    """Make `console` the active one for the duration of the block."""
    global _active
    saved, _active = _active, console
    try:
        yield console
    finally:
        console.close()
        _active = saved


def say(text: str) -> None:
    current().say(text)


def warn(text: str) -> None:
    current().warn(text)


# --- the short summary at the end of a run ------------------------------------------------------------------

# Metrics named in the summary, each with its chance level (the full table is in each report.md).
HEADLINE_METRICS = ("text->video R@1", "text->image R@1", "zero-shot top1", "linear probe top1",
                    "direction probe: full caption, true vs reversed (%)", "captioning CIDEr (x100)",
                    "QA exact match (%)")


def summary_lines(kind: str, summary: dict) -> list[str]:
    """What a run did, where its outputs are, and its headline metrics beside their chance levels."""
    if kind == "pipeline":
        lines = []
        for name, step in summary.items():
            lines.append(f"  {name:<12} {step.get('status', '?'):<8} {step.get('output', '')}")
            lines += [f"    {line}" for line in _places_and_metrics(step.get("summary") or {})]
        return lines
    return [f"  {line}" for line in _places_and_metrics(summary)]


def _places_and_metrics(summary: dict) -> list[str]:
    lines = []
    for key in ("export", "report"):
        if summary.get(key):
            lines.append(f"{key}: {summary[key]}")
    if isinstance(summary.get("eval"), dict):  # a fine-tuning job's held-out evaluation
        lines += _places_and_metrics(summary["eval"])
    metrics = summary.get("metrics")  # an evaluation's tables by source (a training summary's is a file path)
    for source, table in (metrics.items() if isinstance(metrics, dict) else ()):
        if not isinstance(table, dict):
            continue
        for metric, entry in table.items():
            if metric in HEADLINE_METRICS and isinstance(entry, dict) and "value" in entry:
                lines.append(f"{source} {metric}: {entry['value']:.1f} (chance {entry.get('chance', 0.0):.1f})")
    return lines


# --- keeping Ray's own output off the console ---------------------------------------------------------------


@contextlib.contextmanager
def process_output_to(log_path: str) -> Iterator[IO[str]]:
    """For the duration of the block, everything this process writes to its stdout and stderr (Ray's log lines,
    worker output Ray forwards, C++ messages, warnings) goes to `log_path`, at the file-descriptor level; yields
    a stream on the original stdout for the console. Restores both descriptors at the end."""
    from pathlib import Path

    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace")
    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()
