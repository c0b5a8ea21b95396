"""Video decoding with sparse sampling: bytes -> T sampled frames at reduced size -> uint8 `[T, 3, S, S]`.

Legend: T = sampled frames, HWC = height, width, channels.

Sparse sampling (TSN / OmniVL): split the clip into T equal segments, take a random frame of each segment
in training and its middle frame in evaluation. Only those frames are decoded, and decord scales them to
`short_side` inside the decoder, so a clip costs T frames (plus the GOP decoding that seeking needs), never
the whole video at full size.

Videos with fewer than T frames are NOT skipped: their frames are repeated (segment boundaries fall inside
one frame, so indices repeat in order). The row is counted as `video_short_frames_repeated`.

A row may name a **clip window** (start_s, end_s) inside a longer video (Kinetics rows point into full
YouTube videos): the T segments then split the frames inside the window only, and a window shorter than T
frames repeats frames the same way.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from omnivl.data import badinput as bad
from omnivl.data.image import crop_resize, hwc_to_chw, random_resized_crop_box


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float


def probe_video(data: bytes, max_pixels: int = 64_000_000) -> VideoInfo:
    """Stream dimensions from the container header (PyAV; decodes nothing). Raises BadInput for a file
    with no video stream, one PyAV cannot open, or frames larger than `max_pixels`."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise bad.BadInput(bad.VIDEO_NO_STREAM, "container has no video stream")
            stream = container.streams.video[0]
            info = VideoInfo(int(stream.width or 0), int(stream.height or 0), float(stream.average_rate or 0))
    except bad.BadInput:
        raise
    except Exception as exc:  # PyAV raises many FFmpeg error types; all mean "not a readable container"
        raise bad.BadInput(bad.VIDEO_CORRUPT, f"{type(exc).__name__}: {str(exc)[:120]}") from None
    if info.width <= 0 or info.height <= 0:
        raise bad.BadInput(bad.VIDEO_CORRUPT, "video stream has no frame size")
    if info.width * info.height > max_pixels:
        raise bad.BadInput(bad.DECOMPRESSION_BOMB, f"{info.width}x{info.height} frames > {max_pixels} pixels")
    return info


def sample_frame_indices(num_frames: int, t: int, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """T frame indices (int64, non-decreasing, in [0, num_frames)): one per equal segment, random within
    it when `train` (needs `rng`), the segment middle otherwise. Repeats indices when num_frames < T."""
    if num_frames <= 0:
        raise ValueError(f"num_frames must be > 0, got {num_frames}")
    edges = np.linspace(0.0, float(num_frames), t + 1)
    if train:
        positions = rng.uniform(edges[:-1], edges[1:])
    else:
        positions = (edges[:-1] + edges[1:]) / 2.0
    return np.clip(np.floor(positions).astype(np.int64), 0, num_frames - 1)


# Slack when turning seconds into frame positions: a bound that lands on a frame's timestamp up to float
# error (2.0 s * 29.97 fps) must count as landing on it, not just past it.
WINDOW_FRAME_EPS = 1e-6


def window_frame_range(num_frames: int, fps: float, window: tuple[float, float]) -> tuple[int, int]:
    """[first, stop) indices of the frames whose timestamps `index / fps` lie in [start_s, end_s), clamped
    to [0, num_frames). `end_s` may be `math.inf` (to the end of the video). Raises BadInput(clip_window_empty)
    when no frame is inside (a window past the end, or end_s <= start_s) and BadInput(video_corrupt) when
    the video has no frame rate to place the window with."""
    start_s, end_s = window
    if math.isnan(start_s) or math.isnan(end_s):
        raise ValueError(f"clip window bounds must be numbers, got {window}")
    if not fps > 0:
        raise bad.BadInput(bad.VIDEO_CORRUPT, f"no frame rate (fps={fps}) to place clip window {window}")
    # Clamp positions before ceil: end_s may be inf, and a far start_s must not overflow.
    first = math.ceil(min(max(start_s, 0.0) * fps, num_frames) - WINDOW_FRAME_EPS)
    stop = math.ceil(min(end_s * fps, num_frames) - WINDOW_FRAME_EPS)
    first, stop = max(first, 0), min(stop, num_frames)
    if stop <= first:
        raise bad.BadInput(bad.CLIP_WINDOW_EMPTY, f"window {start_s:g}-{end_s:g}s holds no frame of a "
                                                  f"{num_frames}-frame video at {fps:g} fps")
    return first, stop


DECODE_WIDTH_MULTIPLE = 32


def decoded_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) to decode at: shorter side >= `short_side`, aspect kept, width a multiple of 32.
    decord 0.6.0 fails its output copy for some widths (8, 16, 24, 48, 72: "from_size == to_size");
    every multiple of 32 works, so the width is rounded up to one and the height follows the aspect."""
    scale = short_side / min(height, width)
    w = max(DECODE_WIDTH_MULTIPLE, math.ceil(width * scale / DECODE_WIDTH_MULTIPLE) * DECODE_WIDTH_MULTIPLE)
    h = max(short_side, round(height * w / width))
    return h, w


def decode_clip(data: bytes, t: int, short_side: int, train: bool, rng: np.random.Generator | None = None,
                threads: int = 1, max_pixels: int = 64_000_000, sample_only: bool = True,
                window: tuple[float, float] | None = None) -> tuple[np.ndarray, bool]:
    """Bytes -> (uint8 [T, H, W, 3] with min(H, W) ~ short_side, whether frames were repeated).
    `window` = (start_s, end_s): sample only frames inside it (`window_frame_range`; end_s may be inf);
    None: the whole video. `sample_only=False` decodes every frame and then picks (the benchmark's baseline).
    Raises BadInput(video_no_stream | video_corrupt | video_no_frames | clip_window_empty | decompression_bomb)."""
    import decord

    info = probe_video(data, max_pixels)
    h, w = decoded_size(info.height, info.width, short_side)
    try:
        reader = decord.VideoReader(io.BytesIO(data), width=w, height=h, num_threads=threads)
    except Exception as exc:  # decord raises DECORDError/RuntimeError for unreadable streams
        raise bad.BadInput(bad.VIDEO_CORRUPT, f"open: {str(exc)[:120]}") from None
    try:
        n = len(reader)
        if n == 0:
            raise bad.BadInput(bad.VIDEO_EMPTY, "video stream has no frames")
        first, stop = (0, n) if window is None else window_frame_range(n, reader.get_avg_fps(), window)
        idx = first + sample_frame_indices(stop - first, t, train, rng)
        frames = _read_frames(reader, idx, n, sample_only)
    finally:
        # decord keeps decoder buffers alive with the reader (dmlc/decord#197): reset and drop it now.
        _release(reader)
    return frames, stop - first < t


def _read_frames(reader, idx: np.ndarray, n: int, sample_only: bool) -> np.ndarray:
    try:
        if sample_only:
            return reader.get_batch(idx.tolist()).asnumpy()
        return reader.get_batch(list(range(n))).asnumpy()[idx]
    except Exception as exc:
        raise bad.BadInput(bad.VIDEO_CORRUPT, f"decode: {str(exc)[:120]}") from None


def _release(reader) -> None:
    try:
        reader.seek(0)
    except Exception:  # a reader of a broken stream may not seek; it is dropped either way
        pass
    del reader


def train_clip(frames_THWC: np.ndarray, size: int, rng: np.random.Generator, crop_scale_min: float = 0.5,
               flip: bool = False) -> np.ndarray:
    """One random resized crop (and flip) shared by all frames, so motion stays coherent -> uint8 [T, 3, S, S]."""
    box = random_resized_crop_box(*frames_THWC.shape[1:3], rng, scale=(crop_scale_min, 1.0))
    out = np.stack([crop_resize(f, box, size) for f in frames_THWC])
    if flip:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def eval_clip(frames_THWC: np.ndarray, size: int) -> np.ndarray:
    """Center square crop of every frame, resized to size -> uint8 [T, 3, S, S]."""
    h, w = frames_THWC.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return np.stack([hwc_to_chw(crop_resize(f, (top, left, side, side), size)) for f in frames_THWC])
