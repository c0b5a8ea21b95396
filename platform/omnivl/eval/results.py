"""Typed results of the `evaluate` job's tasks, and their `metrics.json` form.

A task returns a `TaskResult` for one source; a `SourceResult` gathers them and writes the source's entry of
`metrics.json` (`metrics["sources"][name]`): modality, kind, rows, each task's payload under `tasks`, the report
table (every number beside its chance level), notes and figures, and `retrieval` (the contrastive numbers)
at the top level, where the pipeline summary and older readers look.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Score(NamedTuple):
    """A report-table number beside its chance level (`metrics.json` writes it as `[value, chance]`)."""

    value: float
    chance: float


@dataclass
class TaskResult:
    """What one task gives for one source. `payload`: the task's own numbers, JSON-ready, written under
    `tasks.<task>` as they are; `table`: report rows; `figures`: PNG names in the output directory; `rows`:
    decoded rows the task scored."""

    payload: dict[str, Any]
    table: dict[str, Score] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    rows: int = 0


@dataclass
class SourceResult:
    modality: str
    kind: str
    rows: int = 0
    tasks: dict[str, TaskResult] = field(default_factory=dict)

    def add(self, task: str, result: TaskResult) -> None:
        self.tasks[task] = result
        self.rows = max(self.rows, result.rows)

    def to_json(self) -> dict:
        """The source's entry of `metrics.json`."""
        entry = {"modality": self.modality, "kind": self.kind, "rows": self.rows,
                 "tasks": {name: r.payload for name, r in self.tasks.items()},
                 "table": {k: v for r in self.tasks.values() for k, v in r.table.items()},
                 "notes": [n for r in self.tasks.values() for n in r.notes],
                 "figures": [f for r in self.tasks.values() for f in r.figures]}
        if "retrieval" in self.tasks:  # kept at the top level: the e2e test and older readers look here
            entry["retrieval"] = self.tasks["retrieval"].payload["contrastive"]
        return entry


def headline(metrics: dict) -> dict:
    """The summary a job returns to the pipeline: per source, each table row as {value, chance}, rounded."""
    return {name: {k: {"value": round(v, 2), "chance": round(c, 2)} for k, (v, c) in m["table"].items()}
            for name, m in metrics["sources"].items()}
