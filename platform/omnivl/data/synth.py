"""The synthetic corpus: drawn shapes in JPEG images and moving shapes in H.264 videos, with manifests.

Layout under OUT (local or s3://):
  image_text/   {train,val,test}.jsonl  rows {path, text, colour, shape, size, position, held_out}
  image_label/  {train,val,test}.jsonl  rows {path, label (= shape), ...}
  video_text/   {train,val,test}.jsonl  rows {path, text, colour, shape, direction, held_out}
  video_label/  {train,val,test}.jsonl  rows {path, label (= "moving <direction>"), ...}
  image_qa/     {train,val,test}.jsonl  rows {path, question, answer, qtype, colour, shape, ..., held_out}
  video_qa/     {train,val,test}.jsonl  rows {path, question, answer, qtype, colour, shape, direction, held_out}
  image_count/  {train,val,test}.jsonl  rows {path, text, colour, shape, count, held_out}: 1-3 identical shapes,
                captioned with their number ("three red circles"); kind `text`
  <dataset>/media/<split>_<index>.jpg|.mp4     (`path` in the manifests is relative to the manifest)
  corpus.json   counts, vocabularies, held-out combinations, config

It is learnable by construction: every caption is a function of what is drawn (colour, shape, size and
position for images; colour, shape and motion direction for videos, so "moving left" and "moving right"
differ only in motion). Some combinations never occur in train and appear only in val/test (`held_out`).
Everything is a function of the seed: the same seed gives the same files.

QA pairs ask about colour, shape, size, position and count (images) and colour, shape and motion direction
(videos; and speed where the corpus has speed words), with one- or two-word answers ("red", "circle",
"top left", "two", "left", "up-right", "quickly"). They reuse the media of image_text/video_text *of the same
split* (path `../image_text/media/...`), so test QA media were never seen in training; count questions get their
own images of 1-3 identical shapes (image_qa/media/). image_count holds more such pictures, captioned with their
number: the only pretraining data with more than one object, so the visual features learn to carry a count.

Variants (`SynthConfig.variant`, knobs in `SynthKnobs`, table in docs/data.md) change how things look: frame
size and aspect ratio, object scale, 4 or 8 directions, speed words, clip length and frame rate, textures,
backgrounds, caption wordings. The facts a caption, label or answer states stay true in every variant.
`demo` is the corpus as it was before variants, byte for byte: the draws that only variants need (speed,
texture, background, wording, clip length) come from a second random stream of each item (STYLE_STREAM).
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from omnivl import storage
from omnivl.data.config import DEFAULT_TEMPLATES, SourceConfig, SynthConfig, SynthKnobs

COLOURS = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215),
    "yellow": (230, 200, 30), "purple": (135, 55, 185), "orange": (240, 125, 25),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")  # their extents are SynthKnobs.object_scale
POSITIONS = {
    "in the top left": (0.28, 0.28), "in the top right": (0.72, 0.28), "in the center": (0.5, 0.5),
    "in the bottom left": (0.28, 0.72), "in the bottom right": (0.72, 0.72),
}
# Unit steps (x right, y down) in the order held_out_video indexes them: a 4-direction corpus uses the first 4.
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
              "up-left": (-1, -1), "up-right": (1, -1), "down-left": (-1, 1), "down-right": (1, 1)}
DEFAULT_TRAVEL = 0.5  # fraction of the frame an object crosses during its clip when the corpus has no speed words
SPEED_TRAVEL = {"slowly": 0.25, "quickly": 0.65}
OBJECT_JITTER = (0.9, 1.1)  # an image object's extent is its size's scale times this
COUNT_OBJECT_SCALE = 0.18  # count images: at most this (or the 'small' scale) so neighbours never touch
TINT = 0.4  # the light stripes/checks of a textured object: its colour this far towards white
TEXTURE_BANDS = 8  # stripes/checks: bands across a textured object
TEXTURE_GRAIN = 22  # "noise" texture: standard deviation of the grain on the object's colour
FLAT_GREY, FLAT_GRAIN = (200, 246), 6  # the demo's background: grey level range, grain
NOISE_GREY, NOISE_BLOTCH, NOISE_GRAIN, BLOTCH_GRID = (175, 226), 20, 12, (4, 6)
GRADIENT_GREY, GRADIENT_GRAIN = (170, 246), 3
BACKGROUND_TINT = 5  # noise/gradient backgrounds: at most this per-channel offset from grey
STYLE_STREAM = 1  # appended to an item's seed: the random stream of the draws only variants make
# Caption phrasings (SynthKnobs.wordings takes the first n); the first of each is the demo's.
IMAGE_WORDINGS = ("a {size} {colour} {shape} {position}",
                  "{position} there is a {size} {colour} {shape}",
                  "a {colour} {shape} of {size} size {position}")
VIDEO_WORDINGS = ("{a} {colour} {shape} moving {direction} {speed}",
                  "{a} {colour} {shape} {speed} moves {direction}",
                  "the {colour} {shape} is heading {direction} {speed}")
# (colour, shape) pairs never seen in training images; one per shape, so every shape and colour is still seen.
HELD_OUT_IMAGE = {("red", "triangle"), ("green", "circle"), ("blue", "diamond"), ("yellow", "square")}
DATASETS = ("image_text", "image_label", "video_text", "video_label")
QA_DATASETS = ("image_qa", "video_qa")
COUNT_DATASET = "image_count"
# Last, so that adding it left every other dataset's random stream (item_rngs' index) as it was.
ALL_DATASETS = DATASETS + QA_DATASETS + (COUNT_DATASET,)
SPLITS = ("train", "val", "test")
REFERENCE_SPLIT = "test"  # where a caption item lists every phrasing of its facts (write_dataset)
IMAGE_QTYPES = ("colour", "shape", "size", "position", "count")
VIDEO_QTYPES = ("colour", "shape", "direction")
COUNTS = (1, 2, 3)
# Numbers are words in count captions and count answers alike (VQA's answer normalization counts "three" and "3"
# as the same answer): with digit answers the fine-tuned decoder, which had only ever written number words, answered
# "2" to nearly every count question while the contrastive features told 1-3 shapes apart (docs/robustness.md).
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}


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
    speed: str = ""  # a speed word, or "" in a corpus without them

    @property
    def held_out(self) -> bool:
        if self.direction:
            return held_out_video(self.colour, self.shape, self.direction)
        return (self.colour, self.shape) in HELD_OUT_IMAGE

    def image_caption(self, wording: int = 0) -> str:
        return IMAGE_WORDINGS[wording].format(size=self.size, colour=self.colour, shape=self.shape,
                                              position=self.position)

    def video_caption(self, wording: int = 0) -> str:
        text = VIDEO_WORDINGS[wording].format(a=_article(self.colour), colour=self.colour, shape=self.shape,
                                              direction=self.direction, speed=self.speed)
        return " ".join(text.split())  # no speed word leaves a double or trailing space


@dataclass(frozen=True)
class Style:
    """How an item is drawn and phrased, beyond the facts its text states."""

    texture: str = "solid"
    background: str = "flat"
    wording: int = 0
    fps: int = 8
    frames: int = 16
    texture_seed: int = 0


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def direction_names(knobs: SynthKnobs) -> tuple[str, ...]:
    return tuple(DIRECTIONS)[:knobs.directions]


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


def background(width: int, height: int, rng: np.random.Generator, kind: str = "flat") -> Image.Image:
    """A light, nearly colourless background (so the object's colour word stays the only colour):
    flat: grey with mild grain (the demo's); noise: soft blotches and grain; gradient: between two light tints."""
    if kind == "flat":
        grey = rng.integers(*FLAT_GREY)
        noise = rng.normal(0, FLAT_GRAIN, (height, width, 1))
        return Image.fromarray(np.clip(grey + noise, 0, 255).astype(np.uint8).repeat(3, axis=2))
    tint = rng.integers(-BACKGROUND_TINT, BACKGROUND_TINT + 1, 3)
    if kind == "noise":
        grey = rng.integers(*NOISE_GREY)
        blotches = rng.normal(0, NOISE_BLOTCH, BLOTCH_GRID)  # a coarse grid, smoothly upscaled
        blotches_HW = np.asarray(Image.fromarray(blotches.astype(np.float32), mode="F").resize(
            (width, height), Image.BILINEAR))
        a = grey + tint + blotches_HW[..., None] + rng.normal(0, NOISE_GRAIN, (height, width, 1))
    elif kind == "gradient":
        ends = rng.integers(*GRADIENT_GREY, (2, 1)) + tint  # two light greys, both tinted alike
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width]
        t = xx * np.cos(angle) / width + yy * np.sin(angle) / height
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-9)
        a = ends[0] + (ends[1] - ends[0]) * t[..., None] + rng.normal(0, GRADIENT_GRAIN, (height, width, 1))
    else:
        raise ValueError(f"unknown background {kind!r}")
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def texture_fill(texture: str, side: int, rgb, seed: int) -> Image.Image:
    """A side x side RGB fill in the object's colour: stripes or checks of it and its light tint, or grain."""
    base = np.asarray(rgb, dtype=float)
    tint = base + (255 - base) * TINT
    yy, xx = np.mgrid[0:side, 0:side]
    band = max(1, side // TEXTURE_BANDS)
    if texture == "stripes":
        light = (xx // band) % 2 == 1
    elif texture == "checks":
        light = (xx // band + yy // band) % 2 == 1
    elif texture == "noise":
        grain = np.random.default_rng(seed).normal(0, TEXTURE_GRAIN, (side, side, 1))
        return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return Image.fromarray(np.where(light[..., None], tint, base).astype(np.uint8))


Painter = Callable[[Image.Image, float, float], None]


def object_painter(shape: str, extent: float, rgb, texture: str = "solid", texture_seed: int = 0) -> Painter:
    """A function drawing the object centred at (cx, cy) pixels. A textured fill is made once, so in a
    video it moves with the object; "solid" draws straight onto the canvas (as the demo corpus did)."""
    if texture == "solid":
        return lambda canvas, cx, cy: draw_shape(canvas, shape, cx, cy, extent, rgb)
    side = int(np.ceil(extent)) + 2
    mask = Image.new("L", (side, side), 0)
    draw_shape(mask, shape, side / 2, side / 2, extent, 255)
    fill = texture_fill(texture, side, rgb, texture_seed)
    return lambda canvas, cx, cy: canvas.paste(fill, (round(cx - side / 2), round(cy - side / 2)), mask)


def render_image(scene: Scene, knobs: SynthKnobs, style: Style, rng: np.random.Generator) -> Image.Image:
    width, height = knobs.frame_size
    img = background(width, height, rng, style.background)
    px, py = POSITIONS[scene.position]
    jitter = rng.uniform(-0.04, 0.04, 2)
    extent = knobs.object_scale[SIZES.index(scene.size)] * rng.uniform(*OBJECT_JITTER) * min(width, height)
    paint = object_painter(scene.shape, extent, COLOURS[scene.colour], style.texture, style.texture_seed)
    paint(img, (px + jitter[0]) * width, (py + jitter[1]) * height)
    return img


def render_video(scene: Scene, knobs: SynthKnobs, style: Style, rng: np.random.Generator) -> np.ndarray:
    """uint8 [frames, height, width, 3]: the shape crosses DEFAULT_TRAVEL (or its speed's SPEED_TRAVEL) of
    the frame in `scene.direction`, centred on the frame's middle along each moving axis."""
    width, height = knobs.frame_size
    dx, dy = DIRECTIONS[scene.direction]
    extent = rng.uniform(*knobs.video_object_scale) * min(width, height)
    across = rng.uniform(0.35, 0.65)  # the coordinate that does not move (none for a diagonal)
    travel = SPEED_TRAVEL.get(scene.speed, DEFAULT_TRAVEL)
    start, end = 0.5 + travel / 2, 0.5 - travel / 2  # along the motion axis, in the direction of motion
    bg = background(width, height, rng, style.background)
    paint = object_painter(scene.shape, extent, COLOURS[scene.colour], style.texture, style.texture_seed)
    out = []
    for f in range(style.frames):
        along = start + (end - start) * f / (style.frames - 1)
        x = (1 - along) if dx > 0 else along if dx < 0 else across
        y = (1 - along) if dy > 0 else along if dy < 0 else across
        canvas = bg.copy()
        paint(canvas, x * width, y * height)
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

def sample_scene(rng: np.random.Generator, video: bool, split: str,
                 directions: tuple[str, ...] = tuple(DIRECTIONS)[:4]) -> Scene:
    """A random scene (without speed: see sample_style); training draws only combinations that are not held
    out, val/test draw from all."""
    while True:
        scene = Scene(colour=str(rng.choice(list(COLOURS))), shape=str(rng.choice(SHAPES)),
                      size=str(rng.choice(list(SIZES))), position=str(rng.choice(list(POSITIONS))),
                      direction=str(rng.choice(list(directions))) if video else "")
        if split != "train" or not scene.held_out:
            return scene


def sample_style(rng: np.random.Generator, knobs: SynthKnobs, video: bool) -> tuple[Style, str]:
    """(style, speed word or "") of one item, from its STYLE_STREAM generator."""
    texture, bg = str(rng.choice(knobs.textures)), str(rng.choice(knobs.backgrounds))
    wording, texture_seed = int(rng.integers(knobs.wordings)), int(rng.integers(2**31))
    if not video:
        return Style(texture, bg, wording, texture_seed=texture_seed), ""
    speed = str(rng.choice(knobs.speeds)) if knobs.speeds else ""
    fps = int(rng.integers(knobs.fps[0], knobs.fps[1] + 1))
    frames = knobs.video_frames or max(2, round(rng.uniform(*knobs.clip_seconds) * fps))
    return Style(texture, bg, wording, fps, frames, texture_seed), speed


def item_rngs(cfg: SynthConfig, dataset_index: int, split: str,
              index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(scene stream, style stream) of one item: pure functions of (seed, dataset, split, index)."""
    key = [cfg.seed, dataset_index, SPLITS.index(split), index]
    return np.random.default_rng(key), np.random.default_rng(key + [STYLE_STREAM])


def style_fields(knobs: SynthKnobs, style: Style, speed: str, video: bool) -> dict:
    """The manifest fields of what varies in this corpus beyond the demo's (none for the demo)."""
    out: dict = {}
    if video and knobs.speeds:
        out["speed"] = speed
    if len(knobs.textures) > 1:
        out["texture"] = style.texture
    if len(knobs.backgrounds) > 1:
        out["background"] = style.background
    if video and (knobs.video_frames is None or knobs.fps[0] != knobs.fps[1]):
        out.update(fps=style.fps, frames=style.frames)
    return out


def split_counts(total: int, cfg: SynthConfig) -> dict[str, int]:
    n_val, n_test = round(total * cfg.val_fraction), round(total * cfg.test_fraction)
    return {"train": max(total - n_val - n_test, 0), "val": n_val, "test": n_test}


def make_item(dataset: str, split: str, index: int, cfg: SynthConfig) -> tuple[dict, bytes, str]:
    """(manifest row, media bytes, extension) of one item; a pure function of (seed, dataset, split, index)."""
    if dataset == COUNT_DATASET:
        return make_count_item(split, index, cfg)
    knobs = cfg.knobs()
    rng, style_rng = item_rngs(cfg, DATASETS.index(dataset), split, index)
    video = dataset.startswith("video")
    scene = sample_scene(rng, video, split, direction_names(knobs))
    style, scene.speed = sample_style(style_rng, knobs, video)
    row = {"colour": scene.colour, "shape": scene.shape, "held_out": scene.held_out}
    if video:
        row["direction"] = scene.direction
        data = encode_h264(render_video(scene, knobs, style, rng), style.fps)
        ext = "mp4"
    else:
        row.update(size=scene.size, position=scene.position)
        data, ext = encode_jpeg(render_image(scene, knobs, style, rng)), "jpg"
    row.update(style_fields(knobs, style, scene.speed, video))
    if dataset == "image_text":
        row["text"] = scene.image_caption(style.wording)
    elif dataset == "video_text":
        row["text"] = scene.video_caption(style.wording)
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
    if qtype == "speed":
        return f"how fast is the {scene.colour} {scene.shape} moving?", scene.speed
    if qtype == "count":
        return f"how many {scene.shape}s are there?", COUNT_WORDS[count]
    raise ValueError(f"unknown question type {qtype!r}")


def video_qtypes(knobs: SynthKnobs) -> tuple[str, ...]:
    """The video question types of a corpus: VIDEO_QTYPES, and "speed" where it has speed words."""
    return VIDEO_QTYPES + (("speed",) if knobs.speeds else ())


def qa_answer_vocab(modality: str, knobs: SynthKnobs) -> list[str]:
    """Every answer a QA dataset of `modality` can have (the report's chance level per question type)."""
    if modality == "video":
        return sorted({*COLOURS, *SHAPES, *direction_names(knobs), *knobs.speeds})
    return sorted({*COLOURS, *SHAPES, *SIZES, *(position_answer(p) for p in POSITIONS), *COUNT_WORDS.values()})


def render_count_image(scene: Scene, count: int, knobs: SynthKnobs, style: Style,
                       rng: np.random.Generator) -> Image.Image:
    """`count` identical small shapes at distinct positions (smaller than 'small' so neighbours never touch)."""
    width, height = knobs.frame_size
    img = background(width, height, rng, style.background)
    extent = min(COUNT_OBJECT_SCALE, knobs.object_scale[0]) * min(width, height)
    paint = object_painter(scene.shape, extent, COLOURS[scene.colour], style.texture, style.texture_seed)
    spots = rng.choice(len(POSITIONS), size=count, replace=False)
    for k in spots:
        px, py = list(POSITIONS.values())[int(k)]
        jitter = rng.uniform(-0.02, 0.02, 2)
        paint(img, (px + jitter[0]) * width, (py + jitter[1]) * height)
    return img


def count_caption(scene: Scene, count: int) -> str:
    """'one red circle', 'three blue squares'."""
    return f"{COUNT_WORDS[count]} {scene.colour} {scene.shape}" + ("s" if count > 1 else "")


def draw_count_item(rng: np.random.Generator, style_rng: np.random.Generator, knobs: SynthKnobs,
                    split: str) -> tuple[Scene, int, bytes]:
    """(scene, count, JPEG) of a picture of 1-3 identical shapes: count questions and image_count rows."""
    scene = sample_scene(rng, False, split)
    count = int(rng.choice(COUNTS))
    style, _ = sample_style(style_rng, knobs, False)
    return scene, count, encode_jpeg(render_count_image(scene, count, knobs, style, rng))


def make_count_item(split: str, index: int, cfg: SynthConfig) -> tuple[dict, bytes, str]:
    """(manifest row, JPEG, extension) of one image_count row; a pure function of (seed, split, index)."""
    rng, style_rng = item_rngs(cfg, ALL_DATASETS.index(COUNT_DATASET), split, index)
    scene, count, data = draw_count_item(rng, style_rng, cfg.knobs(), split)
    row = {"text": count_caption(scene, count), "colour": scene.colour, "shape": scene.shape, "count": count,
           "held_out": scene.held_out}
    return row, data, "jpg"


def dataset_kind(dataset: str) -> str:
    """text, label or qa: a source's `kind` (image_count rows are captions)."""
    return "text" if dataset == COUNT_DATASET else dataset.split("_")[1]


def _scene_of(row: dict) -> Scene:
    return Scene(colour=row["colour"], shape=row["shape"], size=row.get("size", "small"),
                 position=row.get("position", "in the center"), direction=row.get("direction", ""),
                 speed=row.get("speed", ""))


def make_qa_item(dataset: str, split: str, index: int, cfg: SynthConfig,
                 media_rows: list[dict]) -> tuple[dict, bytes | None, str]:
    """(manifest row, media bytes or None, extension) of one QA pair. `media_rows` are the rows (with `path`
    relative to this dataset's directory) of the same split of the dataset whose media are reused; a count
    question, or an empty `media_rows`, draws its own media. Pure function of (seed, dataset, split, index).

    Question types take turns, and the n-th question of every type is about the n-th reused item (wrapping
    round): each item is asked every type before any item is asked a type twice. Items used to be drawn at
    random, so a type's few test questions repeated some items and left others out (issue 18: 11 speed
    questions on 8-9 distinct clips)."""
    knobs = cfg.knobs()
    rng, style_rng = item_rngs(cfg, ALL_DATASETS.index(dataset), split, index)
    video = dataset.startswith("video")
    qtypes = video_qtypes(knobs) if video else IMAGE_QTYPES
    qtype = qtypes[index % len(qtypes)]
    count, data, ext, path = 1, None, "mp4" if video else "jpg", ""
    if qtype == "count":
        scene, count, data = draw_count_item(rng, style_rng, knobs, split)
    elif media_rows:
        src = media_rows[(index // len(qtypes)) % len(media_rows)]
        scene, path = _scene_of(src), src["path"]
    else:
        own, data, ext = make_item("video_text" if video else "image_text", split, index, cfg)
        scene = _scene_of(own)
    question, answer = qa_pair(scene, qtype, count)
    row = {"path": path, "question": question, "answer": answer, "qtype": qtype,
           "colour": scene.colour, "shape": scene.shape, "held_out": scene.held_out}
    if video:
        row["direction"] = scene.direction
        if knobs.speeds:
            row["speed"] = scene.speed
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
        rows = [json.loads(line) for line in manifest.read_text().splitlines()] if manifest.exists() else []
        media_rows, seen = [], set()
        for r in rows:  # one row per item: a test item has a row per phrasing
            if r["path"] not in seen:
                seen.add(r["path"])
                media_rows.append(r)
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

def other_phrasings(dataset: str, row: dict, text: str, knobs: SynthKnobs) -> list[str]:
    """The corpus's other phrasings of the facts of an image_text/video_text row's caption `text`."""
    scene = _scene_of(row)
    phrase = scene.video_caption if dataset == "video_text" else scene.image_caption
    return [c for c in (phrase(w) for w in range(knobs.wordings)) if c != text]


def write_dataset(root: Path, dataset: str, total: int, cfg: SynthConfig) -> dict[str, int]:
    """Write one dataset's media and manifests under root/dataset; returns rows per split.

    A test item of image_text/video_text gets a row per phrasing of its facts (the drawn one first): all are true
    captions, and captioning metrics score a caption against every reference of its item, as COCO's five do. With
    one reference, BLEU-4 mostly measured whether the model picked the phrasing the reference was drawn in."""
    knobs = cfg.knobs()
    rows_written = {}
    (root / dataset / "media").mkdir(parents=True, exist_ok=True)
    for split, n in split_counts(total, cfg).items():
        lines = []
        for i in range(n):
            row, data, ext = make_item(dataset, split, i, cfg)
            rel = f"media/{split}_{i:05d}.{ext}"
            (root / dataset / rel).write_bytes(data)
            text_or_label = {k: row.pop(k) for k in ("text", "label") if k in row}
            lines.append(json.dumps({"path": rel, **text_or_label, **row}))
            if split == REFERENCE_SPLIT and dataset in ("image_text", "video_text"):
                lines += [json.dumps({"path": rel, "text": other, **row})
                          for other in other_phrasings(dataset, row, text_or_label["text"], knobs)]
        (root / dataset / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
        rows_written[split] = len(lines)
    return rows_written


def corpus_summary(cfg: SynthConfig, counts: dict[str, dict[str, int]], seconds: float) -> dict:
    knobs = cfg.knobs()
    directions = direction_names(knobs)
    return {
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "variant": cfg.variant,
        "knobs": {**dataclasses.asdict(knobs), "frame_size": list(knobs.frame_size)},
        "datasets": {
            d: {"modality": d.split("_")[0], "kind": dataset_kind(d), "splits": counts[d]} for d in ALL_DATASETS
        },
        "colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES),
        "positions": list(POSITIONS), "directions": list(directions), "speeds": list(knobs.speeds),
        "classes": {"image_label": list(SHAPES), "video_label": [f"moving {d}" for d in directions]},
        "qa": {"image_qa": {"qtypes": list(IMAGE_QTYPES), "answers": qa_answer_vocab("image", knobs)},
               "video_qa": {"qtypes": list(video_qtypes(knobs)), "answers": qa_answer_vocab("video", knobs)}},
        "templates": DEFAULT_TEMPLATES,
        "caption_wordings": {"image": list(IMAGE_WORDINGS[:knobs.wordings]),
                             "video": list(VIDEO_WORDINGS[:knobs.wordings])},
        "held_out": {
            "image_text": sorted(" ".join(p) for p in HELD_OUT_IMAGE),
            "video_text": sorted(f"{c} {s} {d}" for c in COLOURS for s in SHAPES for d in directions
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
        counts[COUNT_DATASET] = write_dataset(root, COUNT_DATASET, cfg.image_count, cfg)
        summary = corpus_summary(cfg, counts, time.perf_counter() - start)
        (root / "corpus.json").write_text(json.dumps(summary, indent=2))
    return summary


def corpus_sources(root: str, split: str = "train", datasets: tuple[str, ...] = ALL_DATASETS) -> list[SourceConfig]:
    """SourceConfigs for the datasets of a corpus at `root` (names like "image_text", kinds text/label/qa)."""
    return [SourceConfig(name=d, manifest=storage.join(root, d, f"{split}.jsonl"), modality=d.split("_")[0],
                         kind=dataset_kind(d)) for d in datasets]


def run_job(job) -> dict:
    """Runner of the `synth` job kind: generate `job.corpus` into `job.output`."""
    if not job.output:
        raise ValueError("synth job needs an output directory")
    summary = generate(job.corpus, job.output)
    return {"output": job.output, "rows": {d: v["splits"] for d, v in summary["datasets"].items()},
            "seconds": summary["seconds"]}
