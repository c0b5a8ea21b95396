"""Ray Data pipeline on the embedded cluster: every manifest format, local and s3://, bad-input accounting."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import datafactory as mk
from conftest import write_formats
from omnivl import storage
from omnivl.cluster import data_pipeline as dp
from omnivl.data import badinput as bad
from omnivl.data.config import ActorPoolConfig, DecodeConfig, SourceConfig

pytestmark = pytest.mark.ray

DECODE = DecodeConfig(image_size=32, num_frames=4, text_max_length=16,
                      actors=ActorPoolConfig(min_size=1, max_size=2, batch_size=4))


def collect(ds) -> dict[str, np.ndarray]:
    parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def check_batch(out, n, modality):
    shape = (3, 32, 32) if modality == "image" else (4, 3, 32, 32)
    assert out["pixels"].shape == (n, *shape) and out["pixels"].dtype == np.uint8
    assert out["input_ids"].shape == out["attention_mask"].shape == (n, 16)
    assert out["input_ids"].dtype == np.int64 and (out["input_ids"][:, 0] == 101).all()
    assert out["label_id"].dtype == np.int64 and len(out["text"]) == n
    assert out["prompt_len"].dtype == np.int64 and out["prompt_len"].shape == (n,)


@pytest.mark.parametrize("dataset,fmt", [
    ("image_text", "jsonl"), ("image_text", "csv"), ("image_text", "parquet"), ("image_text", "webdataset"),
    ("video_label", "jsonl"), ("video_label", "webdataset"), ("image_qa", "jsonl"), ("video_qa", "jsonl"),
])
def test_each_format_local(ray_local, small_corpus, dataset, fmt, request):
    manifest = str(small_corpus / dataset / "train.jsonl") if fmt == "jsonl" else write_formats(small_corpus, dataset)[fmt]
    modality, kind = dataset.split("_")
    src = SourceConfig(name=dataset, manifest=manifest, modality=modality, kind=kind)
    n = len((small_corpus / dataset / "train.jsonl").read_text().splitlines())
    ledger = f"t-{request.node.name}"
    out = collect(dp.build_dataset([src], DECODE, modality=modality, train=fmt != "jsonl", seed=1, ledger=ledger))
    check_batch(out, n, modality)
    report = dp.enforce_bad_input_threshold(0.0, ledger=ledger)
    assert report["rows_seen"] == n and report["rows_skipped"] == 0
    if kind == "qa":  # the prompt is "[CLS] question: ... answer:", so at least 5 tokens
        assert (out["prompt_len"] >= 5).all() and all(t.startswith("question: ") for t in out["text"])
    else:
        assert (out["prompt_len"] == 1).all()
    if kind == "label":
        classes = {t.rstrip(".").split()[-1] for t in out["text"]}  # the direction names the class
        assert len(set(out["label_id"])) == len(classes)  # same class, same id


def test_s3_sources(ray_local, small_corpus, s3_bucket):
    root = f"{s3_bucket}/corpus"
    storage.upload_dir(small_corpus, root)
    sources = [
        SourceConfig(name="vt", manifest=f"{root}/video_text/train.jsonl", modality="video"),
        SourceConfig(name="it", manifest=f"{root}/image_text/shards/train-*.tar", modality="image"),
        SourceConfig(name="il", manifest=f"{root}/image_label/train.parquet", modality="image", kind="label"),
    ]
    n = {d: len((small_corpus / d / "train.jsonl").read_text().splitlines())
         for d in ("video_text", "image_text", "image_label")}
    video = collect(dp.build_dataset(sources, DECODE, modality="video", train=False, seed=0, ledger="t-s3"))
    check_batch(video, n["video_text"], "video")
    image = collect(dp.build_dataset(sources, DECODE, modality="image", train=True, seed=0, ledger="t-s3"))
    check_batch(image, n["image_text"] + n["image_label"], "image")
    assert dp.bad_input_report(ledger="t-s3")["rows_skipped"] == 0


def _mixed_image_source(tmp_path, small_corpus) -> tuple[SourceConfig, int]:
    good = sorted((small_corpus / "image_text" / "media").glob("train_*.jpg"))[:6]
    d = tmp_path / "mixed"
    d.mkdir()
    rows = []
    for i, p in enumerate(good):
        shutil.copy(p, d / f"good{i}.jpg")
        rows.append({"path": f"good{i}.jpg", "text": f"good image {i}"})
    files = {
        "zero.jpg": b"", "corrupt.jpg": b"garbage" * 10, "truncated.jpg": mk.noisy_jpeg()[:600],
        "bomb.png": mk.bomb_png(), "notes.txt": b"hello", "cmyk.jpg": mk.jpeg(mode="CMYK", colour=(0, 0, 0, 0)),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
        rows.append({"path": name, "text": f"file {name}"})
    rows += [{"path": "missing.jpg", "text": "gone"}, {"path": "good0.jpg", "text": "  "}]
    mk.write_jsonl(d / "m.jsonl", rows)
    return SourceConfig(name="mixed", manifest=str(d / "m.jsonl"), modality="image"), len(rows)


def test_mixed_good_and_bad_completes_with_counts(ray_local, small_corpus, tmp_path):
    src, total = _mixed_image_source(tmp_path, small_corpus)
    cfg = DECODE.model_copy(update={"max_bad_fraction": 0.9})
    out = collect(dp.build_dataset([src], cfg, modality="image", train=False, ledger="t-mixed"))
    check_batch(out, 7, "image")  # 6 good + the CMYK one, converted
    report = dp.enforce_bad_input_threshold(0.9, ledger="t-mixed")
    assert report["rows_seen"] == total and report["rows_skipped"] == total - 7
    assert report["skipped_by_reason"] == {
        bad.EMPTY_FILE: 1, bad.IMAGE_CORRUPT: 1, bad.IMAGE_TRUNCATED: 1, bad.DECOMPRESSION_BOMB: 1,
        bad.UNSUPPORTED_FORMAT: 1, bad.MISSING_FILE: 1, bad.CAPTION_EMPTY: 1}
    assert report["repaired_by_reason"] == {bad.IMAGE_MODE_CONVERTED: 1}
    with pytest.raises(bad.BadInputError, match="worst files"):
        dp.enforce_bad_input_threshold(0.01, ledger="t-mixed")


def test_mixed_videos(ray_local, small_corpus, tmp_path):
    d = tmp_path / "v"
    d.mkdir()
    good = sorted((small_corpus / "video_text" / "media").glob("train_*.mp4"))[:3]
    rows = [{"path": str(p), "text": f"clip {i}"} for i, p in enumerate(good)]
    for name, data in {"audio.mp4": mk.audio_only_mp4(), "short.mp4": mk.mp4(n=2),
                       "broken.mp4": mk.mp4()[:400], "zero.mp4": b""}.items():
        (d / name).write_bytes(data)
        rows.append({"path": name, "text": name})
    mk.write_jsonl(d / "m.jsonl", rows)
    src = SourceConfig(name="v", manifest=str(d / "m.jsonl"), modality="video")
    cfg = DECODE.model_copy(update={"max_bad_fraction": 0.5})
    out = collect(dp.build_dataset([src], cfg, modality="video", train=True, ledger="t-vid"))
    check_batch(out, 4, "video")
    report = dp.bad_input_report(ledger="t-vid")
    assert report["skipped_by_reason"] == {bad.VIDEO_NO_STREAM: 1, bad.VIDEO_CORRUPT: 1, bad.EMPTY_FILE: 1}
    assert report["repaired_by_reason"] == {bad.VIDEO_SHORT_REPEATED: 1}


def test_over_threshold_fails_with_clear_error(ray_local, small_corpus, tmp_path):
    src, _ = _mixed_image_source(tmp_path, small_corpus)
    ds = dp.build_dataset([src], DECODE, modality="image", train=False, ledger="t-over")  # default 1%
    with pytest.raises(Exception) as e:
        collect(ds)
    message = str(e.value)
    assert "too many bad inputs" in message and "max_bad_fraction 1.0%" in message
    assert any(name in message for name in ("zero.jpg", "corrupt.jpg", "missing.jpg", "notes.txt"))


def test_no_labelled_nodes_means_no_selector(ray_local):
    assert dp.decode_label_selector({"pool": "cpu-decode"}) is None
    assert dp.decode_label_selector({}) is None


def test_no_source_of_the_modality(ray_local, small_corpus):
    src = SourceConfig(name="i", manifest=str(small_corpus / "image_text" / "train.jsonl"), modality="image")
    with pytest.raises(ValueError, match="no video source"):
        dp.build_dataset([src], DECODE, modality="video", train=True)


# --- streams: epochs, resume, scale ------------------------------------------------------------------------

def _by_key(out) -> dict[str, list[np.ndarray]]:
    got: dict[str, list[np.ndarray]] = {}
    for key, px in zip(out["row_key"], out["pixels"]):
        got.setdefault(str(key), []).append(px)
    return got


def test_two_epochs_differ_and_a_resumed_stream_repeats_the_uninterrupted_one(ray_local, small_corpus):
    from omnivl.data.decode import RowDecoder
    from omnivl.data.manifest import read_manifest, row_batches

    src = SourceConfig(name="it", manifest=str(small_corpus / "image_text" / "train.jsonl"), modality="image")
    plan = dp.plan_stream([src], "image", seed=3, window_rows=3)
    R = plan.epoch_rows
    full = _by_key(collect(dp.build_dataset([src], DECODE, modality="image", train=True, seed=3, plan=plan,
                                            stream=dp.StreamRange(0, 2 * R), ledger="t-epochs")))
    rows = read_manifest(src)
    assert sorted(full) == sorted(r.row_key for r in rows) and all(len(v) == 2 for v in full.values())

    def expected(epoch: int) -> dict[str, np.ndarray]:  # each row decoded here as epoch `epoch` would have it
        batch = next(row_batches(rows, len(rows)))
        out, _ = RowDecoder([src], DECODE, "image", train=True, seed=3)({**batch, "epoch": np.full(len(rows), epoch)})
        return dict(zip(out["row_key"], out["pixels"]))

    first, second = expected(0), expected(1)
    for key, samples in full.items():
        assert not np.array_equal(first[key], second[key])  # epochs draw new augmentation ...
        assert any(np.array_equal(s, first[key]) for s in samples)  # ... and the stream had both
        assert any(np.array_equal(s, second[key]) for s in samples)

    start = R + 2  # resumed inside epoch 1: from the window holding stream row R + 2
    resumed = _by_key(collect(dp.build_dataset([src], DECODE, modality="image", train=True, seed=3, plan=plan,
                                               stream=dp.StreamRange(start, 2 * R), ledger="t-epochs")))
    want = {c.source + ":" + c.name for u in plan.units(start, 2 * R) for c in u.chunks}
    assert want == {"it:train.jsonl"} and len(resumed) == len(full)  # one chunk: its window is the whole epoch
    for key, samples in resumed.items():
        assert len(samples) == 1 and np.array_equal(samples[0], second[key])  # exactly epoch 1's samples


def test_a_million_row_manifest_stays_off_the_driver(ray_local, small_corpus, tmp_path):
    """The driver plans from the Parquet footer; rows are read by workers. Python and Arrow allocations on
    the driver stay far below what 1M rows would take there (>= 300 MB as Python objects)."""
    import tracemalloc

    import pyarrow as pa

    from omnivl.cluster.manifest_bench import write_manifest

    media = [str(p) for p in sorted((small_corpus / "image_text" / "media").glob("train_*.jpg"))]
    manifest = tmp_path / "big.parquet"
    n = 1_000_000
    write_manifest(manifest, n, media)
    src = SourceConfig(name="big", manifest=str(manifest), modality="image")
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        ds = dp.build_dataset([src], DECODE, modality="image", train=True, seed=0, ledger="t-big")
        batch = next(iter(ds.iter_batches(batch_size=4, batch_format="numpy")))
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    arrow_growth = pa.total_allocated_bytes() - arrow_before
    assert len(batch["row_key"]) == 4 and all(k.startswith("big:big.parquet:") for k in batch["row_key"])
    assert python_peak < 64 * 2**20, f"driver Python allocations peaked at {python_peak / 2**20:.0f} MiB"
    assert arrow_growth < 64 * 2**20, f"driver Arrow memory grew by {arrow_growth / 2**20:.0f} MiB"
    assert dp.plan_stream([src], "image", 0, 10_000).epoch_rows == n  # row count from the footer
