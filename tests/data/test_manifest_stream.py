"""Manifests planned into chunks, row keys, cached row indexes, and the epoch stream (no Ray)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import datafactory as mk
from conftest import write_formats
from omnivl.data import badinput as bad
from omnivl.data import manifest_index as mi
from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.data.decode import RowDecoder
from omnivl.data.manifest import ManifestRow, read_chunk, read_manifest, row_batches, table_batch
from omnivl.data.stream import StreamPlan, window_permutation


def _rows(n: int) -> list[dict]:
    return [{"path": f"media/{i:03d}.jpg", "text": f"caption number {i}, with a comma"} for i in range(n)]


def _jsonl(path, rows, blank_every: int = 0, bad_line_at: int = -1) -> None:
    lines = []
    for i, r in enumerate(rows):
        lines.append("{not json" if i == bad_line_at else json.dumps(r))
        if blank_every and i % blank_every == 0:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def small_chunks(monkeypatch, tmp_path):
    """Chunks of 4 rows, and every file indexed through the mapper and cached (as large files are)."""
    monkeypatch.setattr(mi, "INDEX_CHUNK_ROWS", 4)
    monkeypatch.setattr(mi, "INLINE_INDEX_MAX_BYTES", 0)
    monkeypatch.setenv("OMNIVL_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def mapper(fn, items):
        calls.append(list(items))
        return [fn(x) for x in items]

    return mapper, calls


def test_jsonl_chunks_give_the_rows_of_the_whole_file(tmp_path, small_chunks):
    mapper, calls = small_chunks
    m = tmp_path / "train.jsonl"
    _jsonl(m, _rows(18), blank_every=5, bad_line_at=9)
    src = SourceConfig(name="s", manifest=str(m), modality="image")
    chunks = mi.plan_source(src, mapper)
    assert [c.num_rows for c in chunks] == [4, 4, 4, 4, 2] and calls == [[str(m)]]
    rows = [r for c in chunks for r in read_chunk(c, str(tmp_path), ("jpg",)).to_pylist()]
    assert [r["row_key"] for r in rows] == [f"s:train.jsonl:{i}" for i in range(18)]
    assert [r["text"] for i, r in enumerate(rows) if i != 9] == [r["text"] for i, r in enumerate(_rows(18)) if i != 9]
    broken = rows[9]
    assert broken["row_error"] == bad.MANIFEST_ROW_INVALID
    line = m.read_text().split("\n").index("{not json") + 1
    assert broken["uri"] == f"{m}:{line}"  # the bad line is named by its line number
    assert rows[3]["uri"] == str(tmp_path / "media" / "003.jpg")
    # cached beside the file: planning again scans nothing ...
    assert (tmp_path / ("train.jsonl" + mi.INDEX_SUFFIX)).exists()
    assert mi.plan_source(src, mapper) == chunks and len(calls) == 1
    # ... until the file changes
    _jsonl(m, _rows(6))
    assert [c.num_rows for c in mi.plan_source(src, mapper)] == [4, 2] and len(calls) == 2


def test_csv_chunks_respect_quoted_newlines(tmp_path, small_chunks):
    mapper, _ = small_chunks
    m = tmp_path / "t.csv"
    rows = [{"path": f"{i}.jpg", "text": f"line one {i}\nline two" if i % 3 == 0 else f"plain {i}"} for i in range(11)]
    with open(m, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "text"])
        w.writeheader()
        w.writerows(rows)
    src = SourceConfig(name="c", manifest=str(m), modality="image")
    chunks = mi.plan_source(src, mapper)
    assert sum(c.num_rows for c in chunks) == 11 and len(chunks) == 3
    got = [r for c in chunks for r in read_chunk(c, str(tmp_path), ("jpg",)).to_pylist()]
    assert [r["text"] for r in got] == [r["text"] for r in rows]
    assert [r["row_key"] for r in got] == [f"c:t.csv:{i}" for i in range(11)]


def test_unwritable_sidecar_caches_the_index_elsewhere(tmp_path, small_chunks):
    mapper, calls = small_chunks
    _jsonl(tmp_path / "m.jsonl", _rows(5))
    # the sidecar's path is taken by a directory, so writing it fails as on a read-only bucket (tests run as
    # root here, where file modes do not stop a write)
    (tmp_path / ("m.jsonl" + mi.INDEX_SUFFIX)).mkdir()
    src = SourceConfig(name="s", manifest=str(tmp_path / "m.jsonl"), modality="image")
    first = mi.plan_source(src, mapper)
    assert mi.plan_source(src, mapper) == first and len(calls) == 1
    assert len(list((tmp_path / "cache" / "manifest-index").glob("*.json"))) == 1


def test_parquet_chunks_are_row_groups_and_globs_list_files(tmp_path):
    for part in range(2):
        table = pa.Table.from_pylist(_rows(10)[part * 5:(part + 1) * 5] + [{"path": "x.jpg", "text": "t"}])
        pq.write_table(table, tmp_path / f"part-{part}.parquet", row_group_size=2)
    src = SourceConfig(name="p", manifest=str(tmp_path / "part-*.parquet"), modality="image")
    chunks = mi.plan_source(src)
    assert [(c.name, c.row_group, c.first_row, c.num_rows) for c in chunks][:4] == [
        ("part-0.parquet", 0, 0, 2), ("part-0.parquet", 1, 2, 2), ("part-0.parquet", 2, 4, 2),
        ("part-1.parquet", 0, 0, 2)]
    rows = read_manifest(src)
    assert len(rows) == 12 and rows[7].row_key == "p:part-1.parquet:1" and rows[7].text == _rows(10)[6]["text"]


def test_json_manifest_and_annotation_files(tmp_path):
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(_rows(3)))
    assert [r.text for r in read_manifest(SourceConfig(name="j", manifest=str(rows_file), modality="image"))] == \
        [r["text"] for r in _rows(3)]
    coco = tmp_path / "captions_train2017.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "annotations": [{"image_id": 1, "id": 5, "caption": "a cat"}]}))
    with pytest.raises(ValueError, match=r"captions_train2017\.json.*omnivl data import"):
        read_manifest(SourceConfig(name="j", manifest=str(coco), modality="image"))


def test_clip_window_columns(tmp_path):
    m = tmp_path / "v.jsonl"
    m.write_text(json.dumps({"path": "a.mp4", "text": "t", "start_s": 1.5, "end_s": 3}) + "\n"
                 + json.dumps({"path": "b.mp4", "text": "t"}) + "\n"
                 + json.dumps({"path": "c.mp4", "text": "t", "start_s": "soon"}) + "\n")
    a, b, c = read_manifest(SourceConfig(name="v", manifest=str(m), modality="video"))
    assert (a.start_s, a.end_s) == (1.5, 3.0) and np.isnan(b.start_s) and np.isnan(b.end_s)
    assert c.row_error == bad.MANIFEST_ROW_INVALID


# --- the epoch stream ---------------------------------------------------------------------------------------

def _plan(sizes: list[int], window_rows: int = 10, seed: int = 3) -> StreamPlan:
    from omnivl.data.manifest import Chunk

    chunks = tuple(Chunk("s", f"f{i}", "parquet", f"f{i}", 0, n, row_group=0) for i, n in enumerate(sizes))
    return StreamPlan(chunks, seed, window_rows)


def test_every_epoch_is_a_new_order_of_every_chunk():
    plan = _plan([4, 7, 3, 9, 5, 6, 2, 8])
    orders = []
    for epoch in range(4):
        windows = plan.windows(epoch)
        flat = [c.file for w in windows for c in w]
        assert sorted(flat) == sorted(c.file for c in plan.chunks)  # each chunk once per epoch
        assert all(sum(c.num_rows for c in w) >= 10 for w in windows[:-1])  # windows hold >= window_rows
        assert all(sum(c.num_rows for c in w[:-1]) < 10 for w in windows)  # ... and no more chunks than needed
        orders.append(flat)
    assert len({tuple(o) for o in orders}) == 4
    assert plan.windows(2) == _plan([4, 7, 3, 9, 5, 6, 2, 8]).windows(2)  # a pure function of (seed, epoch)


def test_resumed_stream_continues_the_uninterrupted_sequence():
    plan = _plan([4, 7, 3, 9, 5, 6, 2, 8])
    R = plan.epoch_rows
    whole = list(plan.units(0, 3 * R))
    assert [u.epoch for u in whole] == sorted(u.epoch for u in whole) and {u.epoch for u in whole} == {0, 1, 2}
    assert sum(u.num_rows for u in whole) == 3 * R
    for start in (1, R - 1, R, R + 13, 2 * R + 5):
        resumed = list(plan.units(start, 3 * R))
        # the resumed stream is a suffix of the whole one, starting at the window that holds `start`
        assert resumed == whole[len(whole) - len(resumed):]
        before = sum(u.num_rows for u in whole[:len(whole) - len(resumed)])
        assert before <= start < before + resumed[0].num_rows
    # a window's row order is fixed by (seed, epoch, window); other epochs mix differently
    u0, u1 = whole[0], whole[len(plan.windows(0))]
    assert np.array_equal(window_permutation(3, u0, 20), window_permutation(3, u0, 20))
    assert not np.array_equal(window_permutation(3, u0, 20), window_permutation(3, u1, 20))


def test_each_epoch_draws_new_augmentation_of_the_same_row(tmp_path):
    image, clip = tmp_path / "i.jpg", tmp_path / "c.mp4"
    image.write_bytes(mk.noisy_jpeg())
    clip.write_bytes(mk.mp4(n=24, size=32))
    for modality, uri in (("image", image), ("video", clip)):
        src = SourceConfig(name="s", manifest="m.jsonl", modality=modality)
        cfg = DecodeConfig(image_size=16, num_frames=4)
        row = ManifestRow("s", "s:m.jsonl:0", str(uri), text="a thing")
        batch = table_batch(next(_tables([row])))
        pixels = {}
        for epoch in (0, 1, 0):
            out, _ = RowDecoder([src], cfg, modality, train=True, seed=5)({**batch, "epoch": np.array([epoch])})
            pixels.setdefault(epoch, []).append(out["pixels"][0])
        assert np.array_equal(pixels[0][0], pixels[0][1]), modality  # same (seed, epoch, row): same sample
        assert not np.array_equal(pixels[0][0], pixels[1][0]), modality  # another epoch: another sample


def _tables(rows):
    from omnivl.data.manifest import rows_to_table

    yield rows_to_table(rows)


def test_row_batches_carry_row_keys():
    rows = [ManifestRow("s", f"s:m:{i}", f"/x/{i}.jpg", text="t") for i in range(5)]
    batch = next(row_batches(rows, 5))
    assert list(batch["row_key"]) == [r.row_key for r in rows] and batch["start_s"].dtype == np.float64


def test_webdataset_counts_from_sizes_json_or_a_cached_scan(tmp_path, small_chunks, small_corpus):
    mapper, calls = small_chunks
    shards = write_formats(small_corpus, "image_text")["webdataset"]  # two shards, a glob
    src = SourceConfig(name="w", manifest=shards, modality="image")
    directory = small_corpus / "image_text" / "shards"
    (directory / mi.SIZES_FILE).unlink(missing_ok=True)
    scanned = mi.plan_source(src, mapper)  # no sizes.json: both shards scanned once, on the mapper
    assert len(calls) == 1 and len(calls[0]) == 2
    assert [c.num_rows for c in scanned] == [len(read_chunk(c, "", ("jpg",))) for c in scanned]
    (directory / mi.SIZES_FILE).write_text(json.dumps({c.name: 100 + i for i, c in enumerate(scanned)}))
    try:
        listed = mi.plan_source(src, mapper)  # the WebDataset convention wins, nothing is scanned
        assert [c.num_rows for c in listed] == [100, 101] and len(calls) == 1
    finally:
        (directory / mi.SIZES_FILE).unlink()
        for c in scanned:
            (directory / (c.name + mi.INDEX_SUFFIX)).unlink()
