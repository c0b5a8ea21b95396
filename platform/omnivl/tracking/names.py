"""How a run's spec and records become tracker params, metric keys and steps (plain functions, no clients).

Steps: every tracker gets one **global step** per run, monotonic across stages:
    global step = (the total steps of all earlier stages) + (the step within the stage, 1-based)
so stage 2's first step follows stage 1's last one on a single x-axis, and a resumed or extended run lands on
the same axis. The stage stays visible in the key: a step record's metrics are logged as `<stage>/<metric>`
(`image/loss`, `joint/loss_vlc`), evaluation metrics as `eval/<source>/<metric>`.
"""

from __future__ import annotations

import json
import math
import re

# MLflow's limit on a param value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH)
MAX_PARAM_CHARS = 6000
# Step-record fields that are bookkeeping, not metrics (the step is the x-axis; the stage is the key prefix).
NOT_METRICS = frozenset({"step", "total_steps", "stage_index", "time"})
_BAD_KEY_CHARS = re.compile(r"[^\w./\-]+")


def flatten_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested dicts and lists of dicts flattened to dotted keys (`stages.0.optimizer.lr`); leaves become strings
    (JSON for lists of scalars, `null`, `true`/`false`); values are cut to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, path))
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            out.update(flatten_params({str(i): v for i, v in enumerate(value)}, path))
        else:
            out[path] = param_value(value)
    return out


def param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def metric_key(*parts: str) -> str:
    """`parts` joined by `/`, each made of the characters every tracker accepts (`text->video R@1` becomes
    `text_to_video_R_at_1`)."""
    clean = []
    for part in parts:
        text = str(part).replace("->", "_to_").replace("@", "_at_").replace("%", "pct")
        text = _BAD_KEY_CHARS.sub("_", text).strip("_./") or "_"
        clean.append(re.sub(r"_+", "_", text))
    return "/".join(clean)


def global_step(step_offset: int, step: int) -> int:
    """The run-wide step of `step` (1-based, within its stage) of a stage after `step_offset` earlier steps."""
    return int(step_offset) + int(step)


def step_metrics(record: dict) -> dict[str, float]:
    """A training step record's numeric fields as `<stage>/<field>` metrics (bookkeeping fields left out)."""
    prefix = record.get("stage") or "train"
    out = {}
    for key, value in record.items():
        if key in NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[metric_key(prefix, key)] = float(value)
    return out


def eval_metrics(summary: dict) -> dict[str, float]:
    """An evaluate job's headline table (`{source: {name: {value, chance}}}`) as `eval/<source>/<name>` and
    `eval/<source>/<name>_chance` metrics (non-finite values left out)."""
    out = {}
    for source, table in summary.items():
        for name, entry in table.items():
            for suffix, value in (("", entry.get("value")), ("_chance", entry.get("chance"))):
                if isinstance(value, (int, float)) and math.isfinite(value):
                    out[metric_key("eval", source, f"{name}{suffix}")] = float(value)
    return out
