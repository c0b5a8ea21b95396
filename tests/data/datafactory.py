"""Real media files for the data tests: images in every PIL mode, H.264 clips, and broken files of each kind."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from omnivl.data.synth import encode_h264


def jpeg(size=(48, 40), colour=(200, 30, 30), mode="RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="JPEG", **save)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def noisy_jpeg(size=(64, 48), seed=0) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def moving_frames(n=12, size=32, seed=0) -> np.ndarray:
    """A bright bar moving right; frame f is recognisable by where the bar is."""
    frames = np.full((n, size, size, 3), 30, np.uint8)
    for f in range(n):
        x = int(f * (size - 4) / max(n - 1, 1))
        frames[f, :, x:x + 4] = 230
    return frames


def mp4(n=12, size=32, fps=8) -> bytes:
    return encode_h264(moving_frames(n, size), fps)


def audio_only_mp4() -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def bomb_png() -> bytes:
    """A small file that claims 20000 x 20000 pixels (400 MP)."""
    return png(Image.new("1", (20000, 20000)))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
