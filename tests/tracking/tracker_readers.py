"""Reading what the trackers wrote, with each tracker's own reader: TensorBoard's EventAccumulator, MLflow's
client, and W&B's offline run files (the `.wandb` transaction log of records that `wandb sync` uploads)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def tensorboard_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every scalar in the event files of `logdir`, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every point
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in out.items()}


def mlflow_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def mlflow_artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file's path in the run (recursively)."""
    out = []
    for info in client.list_artifacts(run_id, path):
        out.extend(mlflow_artifacts(client, run_id, info.path) if info.is_dir else [info.path])
    return out


# --- W&B offline runs -----------------------------------------------------------------------------------------

_BLOCK = 32768  # the leveldb log layout W&B uses for `.wandb` files: 7-byte file header, 32 KiB blocks,
_HEADER = 7  # records of (crc32 u32, length u16, type u8) + data; type 1 full, 2 first, 3 middle, 4 last


def wandb_records(path: str | Path) -> list:
    """The `wandb_internal_pb2.Record`s of one offline run's `.wandb` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pending, pos = [], b"", _HEADER
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    out = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def wandb_offline_run(wandb_dir: str | Path, run_id: str) -> dict:
    """History rows (`{key: value}` with `_step`), the last config and summary values, and the saved files of
    every offline run directory of `run_id` under `wandb_dir` (one per `wandb.init`, in time order)."""
    history, config, summary, files = [], {}, {}, []
    # one directory per init: offline-run-<time>-<id>, with -1, -2, ... when several start in the same second
    dirs = [d for d in Path(wandb_dir).glob("offline-run-*") if (d / f"run-{run_id}.wandb").exists()]
    for run_dir in sorted(dirs, key=_init_order):
        files += [str(p.relative_to(run_dir / "files")) for p in (run_dir / "files").rglob("*") if p.is_file()]
        for record in wandb_records(run_dir / f"run-{run_id}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "config":
                config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
            elif kind == "run":
                config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "summary":
                summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    return {"history": history, "config": config, "summary": summary, "files": files}


def _init_order(run_dir: Path) -> tuple[str, int]:
    stamp, _, rest = run_dir.name[len("offline-run-"):].partition("-")
    suffix = rest.rpartition("-")[2]
    return stamp, int(suffix) if suffix.isdigit() and "-" in rest else 0


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)
