"""Clip windows: frames are sampled only inside (start_s, end_s), on a real H.264 file whose frames show
their own index as a uniform gray level."""

from __future__ import annotations

import math

import numpy as np
import pytest

from omnivl.data import badinput as bad
from omnivl.data import video as V
from omnivl.data.synth import encode_h264

FRAMES, FPS = 30, 10
GRAY_STEP = 8  # frame i is gray level 8 * i: 0..232, far enough apart to survive H.264


@pytest.fixture(scope="module")
def indexed_mp4() -> bytes:
    levels = (np.arange(FRAMES) * GRAY_STEP).astype(np.uint8)
    return encode_h264(np.broadcast_to(levels[:, None, None, None], (FRAMES, 32, 32, 3)).copy(), FPS)


def frame_indices(frames_THWC: np.ndarray) -> list[int]:
    return [int(round(f.mean() / GRAY_STEP)) for f in frames_THWC]


# --- the pure helper ---------------------------------------------------------------------------------------

def test_window_frame_range():
    assert V.window_frame_range(30, 10.0, (1.0, 2.0)) == (10, 20)  # [start, end): frame 20 is at 2.0 s
    assert V.window_frame_range(30, 10.0, (1.05, 1.25)) == (11, 13)
    assert V.window_frame_range(30, 10.0, (2.5, math.inf)) == (25, 30)  # open end: to the end of the video
    assert V.window_frame_range(30, 10.0, (0.0, 100.0)) == (0, 30)  # clamped to the video
    assert V.window_frame_range(300, 29.97, (2.0, 4.0)) == (60, 120)
    assert V.window_frame_range(3003, 30000 / 1001, (10.01, 20.02)) == (300, 600)  # bounds on frames exactly


@pytest.mark.parametrize("window", [(3.0, 4.0), (1.0, 1.0), (2.0, 1.0), (1.01, 1.09)])
def test_window_without_frames_is_bad_input(window):
    with pytest.raises(bad.BadInput) as e:
        V.window_frame_range(30, 10.0, window)
    assert e.value.reason == bad.CLIP_WINDOW_EMPTY == "clip_window_empty"


def test_window_needs_a_frame_rate():
    with pytest.raises(bad.BadInput) as e:
        V.window_frame_range(30, 0.0, (0.0, 1.0))
    assert e.value.reason == bad.VIDEO_CORRUPT


# --- decoding ----------------------------------------------------------------------------------------------

def test_indexed_video_decodes_to_its_indices(indexed_mp4):
    frames, _ = V.decode_clip(indexed_mp4, 6, 32, train=False)
    assert frame_indices(frames) == [2, 7, 12, 17, 22, 27]  # segment middles of all 30 frames


@pytest.mark.parametrize("seed", range(6))
def test_training_samples_only_inside_the_window(indexed_mp4, seed):
    frames, repeated = V.decode_clip(indexed_mp4, 4, 32, train=True, rng=np.random.default_rng(seed),
                                     window=(1.0, 2.0))
    idx = frame_indices(frames)
    assert all(10 <= i < 20 for i in idx), idx
    assert idx == sorted(idx) and not repeated


def test_training_draws_cover_the_window(indexed_mp4):
    seen = set()
    for seed in range(12):
        frames, _ = V.decode_clip(indexed_mp4, 4, 32, True, np.random.default_rng(seed), window=(1.0, 2.0))
        seen.update(frame_indices(frames))
    assert seen <= set(range(10, 20)) and len(seen) >= 6


def test_eval_samples_segment_middles_of_the_window(indexed_mp4):
    frames, repeated = V.decode_clip(indexed_mp4, 5, 32, train=False, window=(1.0, 2.0))
    assert frame_indices(frames) == [11, 13, 15, 17, 19] and not repeated
    frames, _ = V.decode_clip(indexed_mp4, 2, 32, train=False, window=(2.5, math.inf))
    assert frame_indices(frames) == [26, 28]


def test_short_window_repeats_frames(indexed_mp4):
    frames, repeated = V.decode_clip(indexed_mp4, 4, 32, train=False, window=(1.0, 1.2))
    assert frame_indices(frames) == [10, 10, 11, 11] and repeated


def test_empty_window_raises_with_its_reason(indexed_mp4):
    with pytest.raises(bad.BadInput) as e:
        V.decode_clip(indexed_mp4, 4, 32, train=False, window=(5.0, 6.0))  # past the 3-second video
    assert e.value.reason == bad.CLIP_WINDOW_EMPTY


# --- through the manifest and the row decoder ------------------------------------------------------------------

def test_manifest_windows_reach_the_row_decoder(indexed_mp4, tmp_path):
    """A JSONL manifest with start_s/end_s, read and decoded as the pipeline does (train mode, several epochs,
    no crop so the gray level survives): no frame from outside a row's window ever appears."""
    import json

    from omnivl.data.config import DecodeConfig, SourceConfig
    from omnivl.data.decode import RowDecoder
    from omnivl.data.manifest import read_manifest, row_batches

    (tmp_path / "v.mp4").write_bytes(indexed_mp4)
    rows = [{"path": "v.mp4", "label": "moving left", "start_s": 1.0, "end_s": 2.0},
            {"path": "v.mp4", "label": "moving left", "start_s": 2.5},
            {"path": "v.mp4", "label": "moving left", "end_s": 0.5},
            {"path": "v.mp4", "label": "moving left", "start_s": 7.0, "end_s": 8.0}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = SourceConfig(name="k", manifest=str(tmp_path / "m.jsonl"), modality="video", kind="label")
    cfg = DecodeConfig(image_size=32, num_frames=4, crop_scale_min=1.0, hflip=False)
    decoder = RowDecoder([src], cfg, "video", train=True, seed=1)
    allowed = {"k:m.jsonl:0": range(10, 20), "k:m.jsonl:1": range(25, 30), "k:m.jsonl:2": range(0, 5)}
    batch = next(row_batches(read_manifest(src), len(rows)))
    for epoch in range(3):
        out, ledger = decoder({**batch, "epoch": np.full(len(rows), epoch)})
        assert sorted(out["row_key"]) == sorted(allowed)
        for key, px in zip(out["row_key"], out["pixels"]):
            idx = frame_indices(px.transpose(0, 2, 3, 1))
            assert all(i in allowed[key] for i in idx), (key, idx)
        assert dict(ledger.skipped) == {bad.CLIP_WINDOW_EMPTY: 1}  # the window past the end is counted
