"""Training checkpoints: atomic, verified on load, with fallback to the previous good one.

Layout under a run's output (local or s3://):

    checkpoints/<NN>-<stage>/step-<SSSSSSSS>/state.pt   everything needed to continue exactly
    checkpoints/<NN>-<stage>/step-<SSSSSSSS>/meta.json  written last: a directory without it is incomplete

A local checkpoint is written to a temp directory and renamed into place; on S3 `meta.json` is uploaded after
`state.pt`, so a crash mid-write never leaves a checkpoint that `latest_good` would accept. Loading uses
`torch.load(weights_only=True)`: no pickled code is executed.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from omnivl import storage

log = logging.getLogger(__name__)

STATE = "state.pt"
META = "meta.json"


@dataclass(frozen=True)
class CheckpointRef:
    uri: str
    stage_index: int
    stage: str
    step: int
    final: bool


def stage_dir(run_dir: str, stage_index: int, stage: str) -> str:
    return storage.join(run_dir, "checkpoints", f"{stage_index:02d}-{stage}")


def save(run_dir: str, stage_index: int, stage: str, step: int, state: dict[str, Any], final: bool = False) -> CheckpointRef:
    """Write a checkpoint atomically; returns where it is."""
    uri = storage.join(stage_dir(run_dir, stage_index, stage), f"step-{step:08d}")
    buf = io.BytesIO()
    torch.save(state, buf)
    meta = {"stage_index": stage_index, "stage": stage, "step": step, "final": final,
            "bytes": buf.tell(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with storage.staged_output(uri) as tmp:
        (tmp / STATE).write_bytes(buf.getvalue())
        if storage.is_s3(uri):
            storage.upload_dir(tmp, uri)  # state first ...
            (tmp / STATE).unlink()
        (tmp / META).write_text(json.dumps(meta))  # ... the marker last
    return CheckpointRef(uri, stage_index, stage, step, final)


def list_checkpoints(run_dir: str, stage_index: int, stage: str) -> list[CheckpointRef]:
    """Complete checkpoints (those with meta.json) of one stage, oldest first. Does not verify contents."""
    base = stage_dir(run_dir, stage_index, stage)
    refs = []
    for name in storage.list_dir(base):
        if not name.startswith("step-"):
            continue
        uri = storage.join(base, name)
        try:
            meta = json.loads(storage.read_text(storage.join(uri, META)))
        except (FileNotFoundError, OSError, ValueError):
            continue  # incomplete: the writer died before the marker
        refs.append(CheckpointRef(uri, stage_index, stage, int(meta["step"]), bool(meta.get("final"))))
    return sorted(refs, key=lambda r: r.step)


def load(ref: CheckpointRef) -> dict[str, Any]:
    """Read and deserialize a checkpoint; raises ValueError naming the checkpoint if it is damaged."""
    try:
        data = storage.read_bytes(storage.join(ref.uri, STATE))
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip, a bad pickle opcode, a missing file: all mean "damaged"
        raise ValueError(f"checkpoint {ref.uri} is damaged: {type(exc).__name__}: {exc}") from exc


def latest_good(run_dir: str, stage_index: int, stage: str,
                warn: Callable[[str], object] | None = None) -> tuple[CheckpointRef, dict] | None:
    """The newest checkpoint of a stage that loads, falling back past damaged ones with a warning (to `warn`,
    e.g. a RunLog's, which prints it and sends it to the driver's console; else printed here)."""
    for ref in reversed(list_checkpoints(run_dir, stage_index, stage)):
        try:
            return ref, load(ref)
        except ValueError as exc:
            log.warning("%s; falling back to the previous checkpoint", exc)
            text = f"{exc}; falling back to the previous checkpoint"
            if warn is not None:
                warn(text)
            else:
                print(f"warning: {text}", flush=True)
    return None


def final_of(run_dir: str, stage_index: int, stage: str) -> CheckpointRef | None:
    finals = [r for r in list_checkpoints(run_dir, stage_index, stage) if r.final]
    return finals[-1] if finals else None


def prune(run_dir: str, stage_index: int, stage: str, keep_last: int) -> list[str]:
    """Delete all but the newest `keep_last` checkpoints of a stage; a stage's final checkpoint is always kept."""
    refs = list_checkpoints(run_dir, stage_index, stage)
    doomed = [r for r in refs[:-keep_last] if not r.final] if keep_last > 0 else []
    for r in doomed:
        storage.delete_dir(r.uri)
    return [r.uri for r in doomed]
