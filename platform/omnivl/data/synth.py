"""The synthetic corpus: drawn shapes in JPEG images and moving shapes in H.264 videos, with manifests.

Layout under OUT (local or s3://):
  image_text/   {train,val,test}.jsonl  rows {path, text, colour, shape, size, position, held_out}
  image_label/  {train,val,test}.jsonl  rows {path, label (= shape), ...}
  video_text/   {train,val,test}.jsonl  rows {path, text, colour, shape, direction, held_out}
  video_label/  {train,val,test}.jsonl  rows {path, label (= "moving <direction>"), ...}
  image_qa/     {train,val,test}.jsonl  rows {path, question, answer, qtype, colour, shape, ..., held_out}
  video_qa/     {train,val,test}.jsonl  rows {path, question, answer, qtype, colour, shape, direction, held_out}
  <dataset>/media/<split>_<index>.jpg|.mp4     (`path` in the manifests is relative to the manifest)
  corpus.json   counts, vocabularies, held-out combinations, config

It is learnable by construction: every caption is a function of what is drawn (colour, shape, size and
position for images; colour, shape and motion direction for videos, so "moving left" and "moving right"
differ only in motion). Some combinations never occur in train and appear only in val/test (`held_out`).
Everything is a function of the seed: the same seed gives the same files.

QA pairs ask about colour, shape, size, position and count (images) and colour, shape and motion direction
(videos), with one- or two-word answers ("red", "circle", "top left", "2", "left"). They reuse the media of
image_text/video_text *of the same split* (path `../image_text/media/...`), so test QA media were never seen in
training; count questions get their own images of 1-3 identical shapes (image_qa/media/).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from omnivl import storage
from omnivl.data.config import DEFAULT_TEMPLATES, SourceConfig, SynthConfig

COLOURS = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215),
    "yellow": (230, 200, 30), "purple": (135, 55, 185), "orange": (240, 125, 25),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.24, "large": 0.44}  # shape extent as a fraction of the image side
POSITIONS = {
    "in the top left": (0.28, 0.28), "in the top right": (0.72, 0.28), "in the center": (0.5, 0.5),
    "in the bottom left": (0.28, 0.72), "in the bottom right": (0.72, 0.72),
}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# (colour, shape) pairs never seen in training images; one per shape, so every shape and colour is still seen.
HELD_OUT_IMAGE = {("red", "triangle"), ("green", "circle"), ("blue", "diamond"), ("yellow", "square")}
DATASETS = ("image_text", "image_label", "video_text", "video_label")
QA_DATASETS = ("image_qa", "video_qa")
ALL_DATASETS = DATASETS + QA_DATASETS
SPLITS = ("train", "val", "test")
IMAGE_QTYPES = ("colour", "shape", "size", "position", "count")
VIDEO_QTYPES = ("colour", "shape", "direction")
COUNTS = (1, 2, 3)


def held_out_video(colour: str, shape: str, direction: str) -> bool:
    """About 1 in 7 (colour, shape, direction) triples are held out of training; every pair stays seen."""
    key = list(COLOURS).index(colour) + SHAPES.index(shape) + list(DIRECTIONS).index(direction)
    return key % 7 == 3


@dataclass
class Scene:
    colour: str
    shape: str
    size: str = "small"
    position: str = "in the center"
    direction: str = ""

    @property
    def held_out(self) -> bool:
        if self.direction:
            return held_out_video(self.colour, self.shape, self.direction)
        return (self.colour, self.shape) in HELD_OUT_IMAGE

    def image_caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {self.position}"

    def video_caption(self) -> str:
        return f"{_article(self.colour)} {self.colour} {self.shape} moving {self.direction}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --- Drawing ----------------------------------------------------------------------------------------------

def draw_shape(canvas: Image.Image, shape: str, cx: float, cy: float, extent: float, rgb) -> None:
    """Draw a filled shape centred at (cx, cy) pixels, `extent` pixels across."""
    d, r = ImageDraw.Draw(canvas), extent / 2
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=rgb)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def background(size: int, rng: np.random.Generator) -> Image.Image:
    """A light grey background with mild noise, so images are not trivially flat."""
    grey = rng.integers(200, 246)
    noise = rng.normal(0, 6, (size, size, 1))
    a = np.clip(grey + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)
    return Image.fromarray(a)


def render_image(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    img = background(size, rng)
    px, py = POSITIONS[scene.position]
    jitter = rng.uniform(-0.04, 0.04, 2)
    extent = SIZES[scene.size] * rng.uniform(0.9, 1.1) * size
    draw_shape(img, scene.shape, (px + jitter[0]) * size, (py + jitter[1]) * size, extent, COLOURS[scene.colour])
    return img


def render_video(scene: Scene, size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [frames, size, size, 3]: the shape crosses about half the frame in `scene.direction`."""
    dx, dy = DIRECTIONS[scene.direction]
    extent = rng.uniform(0.22, 0.32) * size
    across = rng.uniform(0.35, 0.65)  # the coordinate that does not move
    start, end = 0.75, 0.25  # along the motion axis, in the direction of motion
    bg = background(size, rng)
    out = []
    for f in range(frames):
        along = start + (end - start) * f / (frames - 1)
        x = (1 - along) if dx > 0 else along if dx < 0 else across
        y = (1 - along) if dy > 0 else along if dy < 0 else across
        canvas = bg.copy()
        draw_shape(canvas, scene.shape, x * size, y * size, extent, COLOURS[scene.colour])
        out.append(np.asarray(canvas))
    return np.stack(out)


def encode_jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_h264(frames_THWC: np.ndarray, fps: int, gop: int | None = None, crf: int = 20) -> bytes:
    """Real H.264 in an mp4 container (PyAV / libx264). Single-threaded so the bytes depend only on input."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames_THWC.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "g": str(gop or fps)}
        for frame in frames_THWC:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


# --- Sampling scenes --------------------------------------------------------------------------------------

def sample_scene(rng: np.random.Generator, video: bool, split: str) -> Scene:
    """A random scene; training draws only combinations that are not held out, val/test draw from all."""
    while True:
        scene = Scene(colour=str(rng.choice(list(COLOURS))), shape=str(rng.choice(SHAPES)),
                      size=str(rng.choice(list(SIZES))), position=str(rng.choice(list(POSITIONS))),
                      direction=str(rng.choice(list(DIRECTIONS))) if video else "")
        if split != "train" or not scene.held_out:
            return scene


def split_counts(total: int, cfg: SynthConfig) -> dict[str, int]:
    n_val, n_test = round(total * cfg.val_fraction), round(total * cfg.test_fraction)
    return {"train": max(total - n_val - n_test, 0), "val": n_val, "test": n_test}


def make_item(dataset: str, split: str, index: int, cfg: SynthConfig) -> tuple[dict, bytes, str]:
    """(manifest row, media bytes, extension) of one item; a pure function of (seed, dataset, split, index)."""
    rng = np.random.default_rng([cfg.seed, DATASETS.index(dataset), SPLITS.index(split), index])
    video = dataset.startswith("video")
    scene = sample_scene(rng, video, split)
    row = {"colour": scene.colour, "shape": scene.shape, "held_out": scene.held_out}
    if video:
        row["direction"] = scene.direction
        data = encode_h264(render_video(scene, cfg.image_size, cfg.video_frames, rng), cfg.fps)
        ext = "mp4"
    else:
        row.update(size=scene.size, position=scene.position)
        data, ext = encode_jpeg(render_image(scene, cfg.image_size, rng)), "jpg"
    if dataset == "image_text":
        row["text"] = scene.image_caption()
    elif dataset == "video_text":
        row["text"] = scene.video_caption()
    elif dataset == "image_label":
        row["label"] = scene.shape
    else:
        row["label"] = f"moving {scene.direction}"
    return row, data, ext


# --- Question answering -----------------------------------------------------------------------------------

def position_answer(position: str) -> str:
    """'in the top left' -> 'top left'; 'in the center' -> 'center'."""
    return position.removeprefix("in the ")


def qa_pair(scene: Scene, qtype: str, count: int = 1) -> tuple[str, str]:
    """(question, answer) about `scene`; answers are single words or 'top left'-style pairs."""
    if qtype == "colour":
        return f"what colour is the {scene.shape}?", scene.colour
    if qtype == "shape":
        return ("what shape is moving?" if scene.direction else "what shape is shown?"), scene.shape
    if qtype == "size":
        return f"what size is the {scene.colour} {scene.shape}?", scene.size
    if qtype == "position":
        return f"where is the {scene.colour} {scene.shape}?", position_answer(scene.position)
    if qtype == "direction":
        return f"which way is the {scene.colour} {scene.shape} moving?", scene.direction
    if qtype == "count":
        return f"how many {scene.shape}s are there?", str(count)
    raise ValueError(f"unknown question type {qtype!r}")


def qa_answer_vocab(modality: str) -> list[str]:
    """Every answer a QA dataset of `modality` can have (the report's chance level per question type)."""
    if modality == "video":
        return sorted({*COLOURS, *SHAPES, *DIRECTIONS})
    return sorted({*COLOURS, *SHAPES, *SIZES, *(position_answer(p) for p in POSITIONS), *map(str, COUNTS)})


def render_count_image(scene: Scene, count: int, size: int, rng: np.random.Generator) -> Image.Image:
    """`count` identical small shapes at distinct positions (smaller than 'small' so neighbours never touch)."""
    img = background(size, rng)
    spots = rng.choice(len(POSITIONS), size=count, replace=False)
    for k in spots:
        px, py = list(POSITIONS.values())[int(k)]
        jitter = rng.uniform(-0.02, 0.02, 2)
        draw_shape(img, scene.shape, (px + jitter[0]) * size, (py + jitter[1]) * size, 0.18 * size,
                   COLOURS[scene.colour])
    return img


def _scene_of(row: dict) -> Scene:
    return Scene(colour=row["colour"], shape=row["shape"], size=row.get("size", "small"),
                 position=row.get("position", "in the center"), direction=row.get("direction", ""))


def make_qa_item(dataset: str, split: str, index: int, cfg: SynthConfig,
                 media_rows: list[dict]) -> tuple[dict, bytes | None, str]:
    """(manifest row, media bytes or None, extension) of one QA pair. `media_rows` are the rows (with `path`
    relative to this dataset's directory) of the same split of the dataset whose media are reused; a count
    question, or an empty `media_rows`, draws its own media. Pure function of (seed, dataset, split, index)."""
    rng = np.random.default_rng([cfg.seed, ALL_DATASETS.index(dataset), SPLITS.index(split), index])
    video = dataset.startswith("video")
    qtypes = VIDEO_QTYPES if video else IMAGE_QTYPES
    qtype = qtypes[index % len(qtypes)]  # balanced question types
    count, data, ext, path = 1, None, "mp4" if video else "jpg", ""
    if qtype == "count":
        scene = sample_scene(rng, False, split)
        count = int(rng.choice(COUNTS))
        data = encode_jpeg(render_count_image(scene, count, cfg.image_size, rng))
    elif media_rows:
        src = media_rows[int(rng.integers(len(media_rows)))]
        scene, path = _scene_of(src), src["path"]
    else:
        own, data, ext = make_item("video_text" if video else "image_text", split, index, cfg)
        scene = _scene_of(own)
    question, answer = qa_pair(scene, qtype, count)
    row = {"path": path, "question": question, "answer": answer, "qtype": qtype,
           "colour": scene.colour, "shape": scene.shape, "held_out": scene.held_out}
    if video:
        row["direction"] = scene.direction
    elif qtype == "count":
        row["count"] = count  # the drawn shapes are all "small"-ish and spread over several positions
    else:
        row.update(size=scene.size, position=scene.position)
    return row, data, ext


def write_qa_dataset(root: Path, dataset: str, total: int, cfg: SynthConfig) -> dict[str, int]:
    """Write one QA dataset's manifests (and its own media) under root/dataset; returns rows per split.
    Must run after the caption dataset it reuses media from has been written under `root`."""
    counts = split_counts(total, cfg)
    reused = dataset.replace("_qa", "_text")
    (root / dataset / "media").mkdir(parents=True, exist_ok=True)
    for split, n in counts.items():
        manifest = root / reused / f"{split}.jsonl"
        media_rows = [json.loads(line) for line in manifest.read_text().splitlines()] if manifest.exists() else []
        for r in media_rows:
            r["path"] = f"../{reused}/{r['path']}"
        lines = []
        for i in range(n):
            row, data, ext = make_qa_item(dataset, split, i, cfg, media_rows)
            if data is not None:
                row["path"] = f"media/{split}_{i:05d}.{ext}"
                (root / dataset / row["path"]).write_bytes(data)
            lines.append(json.dumps(row))
        (root / dataset / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    return counts


# --- Writing ----------------------------------------------------------------------------------------------

def write_dataset(root: Path, dataset: str, total: int, cfg: SynthConfig) -> dict[str, int]:
    """Write one dataset's media and manifests under root/dataset; returns rows per split."""
    counts = split_counts(total, cfg)
    (root / dataset / "media").mkdir(parents=True, exist_ok=True)
    for split, n in counts.items():
        lines = []
        for i in range(n):
            row, data, ext = make_item(dataset, split, i, cfg)
            rel = f"media/{split}_{i:05d}.{ext}"
            (root / dataset / rel).write_bytes(data)
            text_or_label = {k: row.pop(k) for k in ("text", "label") if k in row}
            lines.append(json.dumps({"path": rel, **text_or_label, **row}))
        (root / dataset / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    return counts


def corpus_summary(cfg: SynthConfig, counts: dict[str, dict[str, int]], seconds: float) -> dict:
    return {
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "datasets": {
            d: {"modality": d.split("_")[0], "kind": d.split("_")[1], "splits": counts[d]} for d in ALL_DATASETS
        },
        "colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES),
        "positions": list(POSITIONS), "directions": list(DIRECTIONS),
        "classes": {"image_label": list(SHAPES), "video_label": [f"moving {d}" for d in DIRECTIONS]},
        "qa": {"image_qa": {"qtypes": list(IMAGE_QTYPES), "answers": qa_answer_vocab("image")},
               "video_qa": {"qtypes": list(VIDEO_QTYPES), "answers": qa_answer_vocab("video")}},
        "templates": DEFAULT_TEMPLATES,
        "held_out": {
            "image_text": sorted(" ".join(p) for p in HELD_OUT_IMAGE),
            "video_text": sorted(f"{c} {s} {d}" for c in COLOURS for s in SHAPES for d in DIRECTIONS
                                 if held_out_video(c, s, d)),
        },
        "seconds": round(seconds, 2),
    }


def generate(cfg: SynthConfig, out: str) -> dict:
    """Write the corpus to `out` (local dir or s3:// URI, replaced if present); returns the corpus.json dict."""
    start = time.perf_counter()
    totals = {"image_text": cfg.image_text, "image_label": cfg.image_label,
              "video_text": cfg.video_text, "video_label": cfg.video_label}
    with storage.staged_output(out) as root:
        counts = {d: write_dataset(root, d, totals[d], cfg) for d in DATASETS}
        counts["image_qa"] = write_qa_dataset(root, "image_qa", cfg.image_qa, cfg)
        counts["video_qa"] = write_qa_dataset(root, "video_qa", cfg.video_qa, cfg)
        summary = corpus_summary(cfg, counts, time.perf_counter() - start)
        (root / "corpus.json").write_text(json.dumps(summary, indent=2))
    return summary


def corpus_sources(root: str, split: str = "train", datasets: tuple[str, ...] = ALL_DATASETS) -> list[SourceConfig]:
    """SourceConfigs for the datasets of a corpus at `root` (names like "image_text", kinds text/label/qa)."""
    return [SourceConfig(name=d, manifest=storage.join(root, d, f"{split}.jsonl"), modality=d.split("_")[0],
                         kind=d.split("_")[1]) for d in datasets]


def run_job(job) -> dict:
    """Runner of the `synth` job kind: generate `job.corpus` into `job.output`."""
    if not job.output:
        raise ValueError("synth job needs an output directory")
    summary = generate(job.corpus, job.output)
    return {"output": job.output, "rows": {d: v["splits"] for d, v in summary["datasets"].items()},
            "seconds": summary["seconds"]}
