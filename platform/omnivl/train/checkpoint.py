"""Training checkpoints: sharded (`torch.distributed.checkpoint`), written by every rank, verified on load, with
fallback to the previous good one, and loadable onto any number of workers.

Layout under a run's output (local or s3://):

    checkpoints/<NN>-<stage>/step-<SSSSSSSS>/state/          DCP: `.metadata` + one `__<rank>_0.distcp` per rank
                                                             (task weights, momentum encoders, queues, optimizer)
    checkpoints/<NN>-<stage>/step-<SSSSSSSS>/train_state.pt  rank 0: step, stage, world size, RNG per rank, data
    checkpoints/<NN>-<stage>/step-<SSSSSSSS>/meta.json       written last: a directory without it is incomplete

Every rank writes its own shard of the state (FSDP: its parameter and optimizer shards; DDP: rank 0 writes the
replicated tensors once). DCP stores each tensor with its global shape, so a checkpoint saved by 2 workers loads
onto 3, or onto 1, or into a plain single-process task (the export). On S3 each rank writes its files to a local
staging directory and uploads them; rank 0 uploads `.metadata`, `train_state.pt` and then `meta.json` once all
ranks are done, so a crash mid-write never leaves a checkpoint that `latest_good` would accept.

`train_state.pt` is read with `torch.load(weights_only=True)`: no pickled code is executed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tempfile
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException: caught by name

from omnivl import storage

log = logging.getLogger(__name__)

STATE_DIR = "state"
TRAIN_STATE = "train_state.pt"
META = "meta.json"
STAGING_ROOT = "omnivl-checkpoints"  # under the node's temp dir: S3 checkpoints are staged and cached there


@dataclass(frozen=True)
class CheckpointRef:
    uri: str
    stage_index: int
    stage: str
    step: int
    final: bool


def stage_dir(run_dir: str, stage_index: int, stage: str) -> str:
    return storage.join(run_dir, "checkpoints", f"{stage_index:02d}-{stage}")


def step_uri(run_dir: str, stage_index: int, stage: str, step: int) -> str:
    return storage.join(stage_dir(run_dir, stage_index, stage), f"step-{step:08d}")


# ------------------------------------------------------------------------------------------- collectives


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _distributed():
        dist.barrier()


def all_agree(ok: bool) -> bool:
    """True only if `ok` on every rank (a rank that cannot read its part fails the load for all)."""
    if not _distributed():
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=_cpu_group())
    return bool(flag.item())


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


_GLOO_GROUP: list = []


def _cpu_group():
    """A gloo group for CPU-side collectives (checkpoint flags, async saves) when the default group is NCCL."""
    if not _distributed() or dist.get_backend() == "gloo":
        return None
    if not _GLOO_GROUP:
        _GLOO_GROUP.append(dist.new_group(backend="gloo"))
    return _GLOO_GROUP[0]


# ------------------------------------------------------------------------------------------------ saving


def _local_dir(uri: str) -> Path:
    """Where this node writes (or reads) a checkpoint's files: the checkpoint itself when local, a staging
    directory named after the URI when on S3 (the same path on every node, so ranks of one node share it)."""
    if not storage.is_s3(uri):
        return Path(uri)
    digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir(), STAGING_ROOT, digest)


def _meta(ref: CheckpointRef, world: int) -> dict:
    return {"stage_index": ref.stage_index, "stage": ref.stage, "step": ref.step, "final": ref.final,
            "world_size": world, "format": "dcp", "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class CheckpointWriter:
    """Writes the checkpoints of one stage; every rank calls `save` at the same steps, and `finish` before the
    stage ends. With `async_save`, `save` returns once this rank's state is staged in memory and writing goes on
    in the background; the checkpoint is published (uploads, `meta.json`) at the next `save` or `finish`."""

    def __init__(self, run_dir: str, stage_index: int, stage: str, *, async_save: bool = False,
                 keep_last: int = 2) -> None:
        self.run_dir, self.stage_index, self.stage = run_dir, stage_index, stage
        self.async_save, self.keep_last = async_save, keep_last
        self._pending: tuple[Future, CheckpointRef, dict] | None = None

    def save(self, step: int, state: dict[str, Any], train_state: dict[str, Any], *, final: bool) -> CheckpointRef:
        """Write `state` (a dict of state dicts: DTensors, tensors) sharded by DCP and rank 0's `train_state`."""
        self.finish()
        if storage.is_s3(self.run_dir):
            storage.require_bucket(self.run_dir)  # before any shard is written
        ref = CheckpointRef(step_uri(self.run_dir, self.stage_index, self.stage, step), self.stage_index, self.stage,
                            step, final)
        local = _local_dir(ref.uri)
        if _rank() == 0 and local.exists():
            shutil.rmtree(local)  # a partial write of this step from a crashed attempt
        barrier()
        from torch.distributed import checkpoint as dcp

        writer = dcp.FileSystemWriter(str(local / STATE_DIR))
        if self.async_save and not final:
            future = dcp.async_save(state, storage_writer=writer, process_group=_cpu_group())
            self._pending = (future, ref, train_state)
        else:
            dcp.save(state, storage_writer=writer, no_dist=not _distributed())
            self._publish(ref, train_state)
        return ref

    def finish(self) -> None:
        """Wait for an asynchronous save and publish it (every rank calls this)."""
        if self._pending is None:
            return
        future, ref, train_state = self._pending
        self._pending = None
        future.result()
        self._publish(ref, train_state)

    def _publish(self, ref: CheckpointRef, train_state: dict) -> None:
        local = _local_dir(ref.uri)
        world = dist.get_world_size() if _distributed() else 1
        if storage.is_s3(ref.uri):
            _upload_own_files(local / STATE_DIR, storage.join(ref.uri, STATE_DIR), _rank())
        barrier()
        if _rank() == 0:
            buf = io.BytesIO()
            torch.save(train_state, buf)
            storage.write_bytes(storage.join(ref.uri, TRAIN_STATE), buf.getvalue())
            if storage.is_s3(ref.uri):
                storage.write_bytes(storage.join(ref.uri, STATE_DIR, ".metadata"),
                                    (local / STATE_DIR / ".metadata").read_bytes())
            storage.write_text(storage.join(ref.uri, META), json.dumps(_meta(ref, world)))  # the marker, last
            prune(self.run_dir, self.stage_index, self.stage, self.keep_last)
        barrier()
        if storage.is_s3(ref.uri):
            shutil.rmtree(local, ignore_errors=True)


def _upload_own_files(local_dir: Path, uri: str, rank: int) -> None:
    """Upload the shard files this rank wrote (`__<rank>_*.distcp`)."""
    for path in sorted(local_dir.glob(f"__{rank}_*")):
        storage.write_bytes(storage.join(uri, path.name), path.read_bytes())


# ------------------------------------------------------------------------------------------------ loading


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


def load_state(ref: CheckpointRef, state: dict[str, Any]) -> None:
    """Fill `state` (templates: state dicts of the task, optimizer... as this run holds them, sharded or not) in
    place from the checkpoint, resharding as needed. Optimizer state of parameters the checkpoint has none for
    (they never had a gradient, e.g. temporal attention in an image-only stage) is dropped from the template:
    they start fresh, as they would have without the interruption. Raises ValueError naming the checkpoint if it
    is damaged or does not fit."""
    from torch.distributed import checkpoint as dcp

    try:
        with _readable(ref.uri) as local:
            reader = dcp.FileSystemReader(str(local / STATE_DIR))
            _drop_unsaved_optimizer_state(state, set(reader.read_metadata().state_dict_metadata))
            dcp.load(state, storage_reader=reader, no_dist=not _distributed())
    except (Exception, CheckpointException) as exc:  # a truncated shard, a missing file, bad metadata: "damaged"
        raise ValueError(f"checkpoint {ref.uri} is damaged: {type(exc).__name__}: {exc}") from exc


def _drop_unsaved_optimizer_state(state: dict[str, Any], saved_keys: set[str]) -> None:
    per_param = state.get("optimizer", {}).get("state")
    if not per_param:
        return
    saved = {key.rsplit(".", 1)[0] for key in saved_keys if key.startswith("optimizer.state.")}
    for fqn in [fqn for fqn in per_param if f"optimizer.state.{fqn}" not in saved]:
        del per_param[fqn]


def load_train_state(ref: CheckpointRef) -> dict[str, Any]:
    """Rank 0's small state (step, world size, RNG, data position); raises ValueError if damaged."""
    try:
        data = storage.read_bytes(storage.join(ref.uri, TRAIN_STATE))
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {ref.uri} is damaged: {type(exc).__name__}: {exc}") from exc


class _readable:
    """A local directory holding the checkpoint: itself when local; for S3, a per-rank download (removed after)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.tmp: str | None = None

    def __enter__(self) -> Path:
        if not storage.is_s3(self.uri):
            return Path(self.uri)
        self.tmp = tempfile.mkdtemp(prefix="omnivl-ckpt-")
        return storage.download_dir(self.uri, Path(self.tmp) / "c")

    def __exit__(self, *exc) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def read_full(ref: CheckpointRef) -> dict[str, Any]:
    """The whole checkpoint in one process, as plain CPU tensors (sharded tensors gathered): its state dicts
    (`task`, `optimizer`) and `train_state`. For inspection and tests; training loads with `load_state`."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with _readable(ref.uri) as local, tempfile.TemporaryDirectory(prefix="omnivl-ckpt-") as tmp:
        dcp_to_torch_save(str(local / STATE_DIR), f"{tmp}/full.pt")
        state = torch.load(f"{tmp}/full.pt", map_location="cpu", weights_only=True)
    return {**state, "train_state": load_train_state(ref)}


def latest_good(run_dir: str, stage_index: int, stage: str, load: Callable[[CheckpointRef], Any],
                warn: Callable[[str], object] | None = None) -> tuple[CheckpointRef, Any] | None:
    """The newest checkpoint of a stage that `load` reads (it raises ValueError on a damaged one), falling back
    past damaged ones with a warning (to `warn`, e.g. a RunLog's; else printed). Every rank calls this and they
    all accept the same checkpoint: a load that fails on any rank fails on all."""
    for ref in reversed(list_checkpoints(run_dir, stage_index, stage)):
        error = None
        try:
            loaded = load(ref)
        except ValueError as exc:
            error, loaded = exc, None
        if all_agree(error is None):
            return ref, loaded
        text = f"{error or f'checkpoint {ref.uri} is damaged on another rank'}; falling back to the previous checkpoint"
        log.warning(text)
        if _rank() == 0:
            (warn or (lambda t: print(f"warning: {t}", flush=True)))(text)
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
