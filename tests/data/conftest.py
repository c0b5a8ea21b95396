"""Fixtures of the data tests: a small synthetic corpus, and the same manifest in every format."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest

from omnivl.data.config import SynthConfig
from omnivl.data.synth import generate

SMALL = SynthConfig(seed=7, image_size=32, video_frames=8, fps=4, image_text=16, image_label=8, video_text=8,
                    video_label=8, val_fraction=0.25, test_fraction=0.25)


def write_formats(root: Path, dataset: str, split: str = "train") -> dict[str, str]:
    """Write `dataset`'s split manifest again as CSV, Parquet and two WebDataset shards; returns
    format -> manifest path (the WebDataset one a glob)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = root / dataset
    rows = [json.loads(line) for line in (d / f"{split}.jsonl").read_text().splitlines()]
    field = "text" if "text" in rows[0] else "label"
    with open(d / f"{split}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", field])
        w.writeheader()
        w.writerows({"path": r["path"], field: r[field]} for r in rows)
    pq.write_table(pa.Table.from_pylist([{"path": r["path"], field: r[field]} for r in rows]), d / f"{split}.parquet")
    (d / "shards").mkdir(exist_ok=True)
    half = len(rows) // 2
    for shard, part in enumerate((rows[:half], rows[half:])):
        with tarfile.open(d / "shards" / f"{split}-{shard:03d}.tar", "w") as tar:
            for r in part:
                key = Path(r["path"]).stem
                ext = Path(r["path"]).suffix
                _add(tar, f"{key}{ext}", (d / r["path"]).read_bytes())
                _add(tar, f"{key}.{'txt' if field == 'text' else 'cls'}", r[field].encode())
    return {"jsonl": str(d / f"{split}.jsonl"), "csv": str(d / f"{split}.csv"),
            "parquet": str(d / f"{split}.parquet"), "webdataset": str(d / "shards" / f"{split}-*.tar")}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "c"
    generate(SMALL, str(root))
    for dataset in ("image_text", "image_label", "video_text", "video_label"):
        write_formats(root, dataset)
    return root
