"""The Python API behind `omnivl.load`: one export in this process, run with the media decoding, tokenizer and
model functions that serving and evaluation use (docs/python.md).

Legend: N items, E embedding dim, L text length, P prompt length, C classes.

Nothing here re-implements a step; each one is imported:
  files      read as evaluation reads a manifest row's file (`data.manifest.read_media`); the modality comes from
             the extension, as evaluation checks it (`manifest.IMAGE_EXTS / VIDEO_EXTS`), else from the bytes
             (`serving.media.sniff_modality`)
  pixels     `serving.media.decode_media`: `data.image.decode_image + eval_image` or `data.video.decode_clip +
             eval_clip`, the transforms of `RowDecoder(train=False)`, under evaluation's decode watchdog and
             pixel limit. PIL images and arrays skip the file decode and go through the same eval transforms.
  text       `data.text.tokenize` with evaluation's tokenizer and text length (`DecodeConfig` defaults)
  model      `serving.engine.load_checkpoint / run_visual / run_text / run_match / run_generate` (which apply the
             precision's autocast, as for serving)
  prompts    questions become `data.text.qa_prompt(q)`, cut as a training row cuts them
             (`data.text.generation_prompt_ids`, as serving; evaluation cuts its rows with `data.text.prompt_ids`)
  text out   `data.text.detokenize` (evaluation, serving)
  classify   evaluation's prompt ensembles (`eval.classify.class_prompts / class_embeddings`, default templates
             `data.config.DEFAULT_TEMPLATES`) and /v1/classify's probabilities (`eval.classify.class_probabilities`)
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image

from omnivl import storage
from omnivl.data import badinput as bad
from omnivl.data import image as img_ops
from omnivl.data import video as vid_ops
from omnivl.data.config import DEFAULT_TEMPLATES, DecodeConfig
from omnivl.data.decode import Watchdog
from omnivl.data.manifest import IMAGE_EXTS, VIDEO_EXTS, read_media
from omnivl.data.text import detokenize, generation_prompt_ids, load_tokenizer, qa_prompt, tokenize
from omnivl.eval import classify as classify_ops
from omnivl.eval.config import EvalConfig
from omnivl.models.precision import PRECISIONS
from omnivl.serving import engine
from omnivl.serving.errors import ServeError
from omnivl.serving.media import (DecodedMedia, Geometry, decode_media, in_item_order, sniff_modality,
                                  stack_by_modality)
from omnivl.serving.schemas import DecodingOptions

MediaInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

DEVICES = ("auto", "cpu", "cuda")
METHODS = ("greedy", "beam", "nucleus")
EVAL_DECODE = DecodeConfig()  # evaluation's defaults: tokenizer, text length, pixel limit, decode timeout
CAPTIONING = EvalConfig().captioning  # evaluation's generation defaults (captions: 20 new tokens, greedy)
ANSWERING = EvalConfig().answering  # (answers: 6 new tokens, greedy)
DEFAULT_TOP_P = DecodingOptions().top_p  # nucleus sampling, which only serving offers
MIN_TEXT_LENGTH = 4  # DecodeConfig.text_max_length's bound: [CLS], [SEP] and room for text
ARRAY_IMAGE_CHANNELS = (3, 4)  # RGB, RGBA (composited over white like any RGBA file)
MODEL_ID = "python-api"  # the LoadedModel's id (serving's checkpoint name; nothing routes on it here)


def load_model(path: str | os.PathLike, device: str, precision: str, batch_size: int, text_max_length: int | None,
               tokenizer: str | None) -> Model:
    """The export at `path` (an export directory, a run directory holding `export/`, local or s3://), in eval
    mode on `device`. `omnivl.load` is the public entry point and holds the defaults.
    Raises FileNotFoundError naming the path, TypeError / ValueError naming the bad argument, RuntimeError for
    `device="cuda"` without a GPU."""
    from omnivl.models.export import read_export_config, resolve_export

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected an export directory, a run directory or an s3:// URI, "
                        f"got {type(path).__name__}")
    _check_choice("precision", precision, tuple(PRECISIONS))
    _check_choice("device", device, DEVICES)
    _check_positive_int("batch_size", batch_size)
    uri = storage.absolute(os.fspath(path))
    if not storage.exists(uri):
        raise FileNotFoundError(f"omnivl.load: {uri} does not exist")
    export = resolve_export(uri)
    length = EVAL_DECODE.text_max_length if text_max_length is None else text_max_length
    limit = read_export_config(export)[1].text.max_position
    if isinstance(length, bool) or not isinstance(length, int) or not MIN_TEXT_LENGTH <= length <= limit:
        raise ValueError(f"text_max_length: must be an int in [{MIN_TEXT_LENGTH}, {limit}] (the checkpoint's "
                         f"text positions), got {length!r}")
    lm = engine.load_checkpoint(MODEL_ID, export, engine.pick_device(device), precision)
    return Model(lm, load_tokenizer(tokenizer or EVAL_DECODE.tokenizer), length, batch_size)


class Model:
    """A loaded export. Embeddings are float32 and L2-normalized; every method takes one item or a list (a list
    in gives a list out, or rows of an array) and runs `batch_size` items per forward pass."""

    def __init__(self, lm: engine.LoadedModel, tokenizer: Any, text_max_length: int, batch_size: int) -> None:
        self._lm = lm
        self.tokenizer = tokenizer
        self.text_max_length = text_max_length
        self.batch_size = batch_size
        self._watchdog = Watchdog(EVAL_DECODE.decode_timeout_s)

    def __repr__(self) -> str:
        return (f"omnivl.Model({self.export!r}, size={self._lm.model_config['size']!r}, device={self.device!r}, "
                f"precision={self.precision!r}, embed_dim={self.embed_dim}, image_size={self.image_size}, "
                f"num_frames={self.num_frames})")

    # ---- what was loaded -------------------------------------------------------------------------------------

    @property
    def export(self) -> str:
        return self._lm.uri

    @property
    def device(self) -> str:
        return self._lm.device

    @property
    def precision(self) -> str:
        """fp32, or the bf16 / fp16 autocast of every forward pass (`serving.engine` applies it)."""
        return self._lm.precision

    @property
    def module(self) -> torch.nn.Module:
        """The `OmniVL` torch module (eval mode), for anything this API does not cover."""
        return self._lm.model

    @property
    def embed_dim(self) -> int:
        return int(self._lm.arch["embed_dim"])

    @property
    def geometry(self) -> Geometry:
        """What the visual encoder takes: image_size x image_size pixels, num_frames frames per video."""
        return self._lm.geometry

    @property
    def image_size(self) -> int:
        return self._lm.geometry.image_size

    @property
    def num_frames(self) -> int:
        return self._lm.geometry.num_frames

    # ---- embeddings ------------------------------------------------------------------------------------------

    def embed_images(self, images: MediaInput | Sequence[MediaInput]) -> np.ndarray:
        """float32 [N, E]. Items: image paths (local or s3://), file bytes, PIL images, uint8 arrays [H,W(,3|4)].
        Raises ValueError for a video, FileNotFoundError for a missing file, TypeError for anything else."""
        return self._embed_media(images, "images", "image")

    def embed_videos(self, videos: MediaInput | Sequence[MediaInput]) -> np.ndarray:
        """float32 [N, E]. Items: video paths, file bytes, uint8 frame arrays [T,H,W,3] (sampled like a file)."""
        return self._embed_media(videos, "videos", "video")

    def embed_texts(self, texts: str | Sequence[str]) -> np.ndarray:
        """float32 [N, E]: evaluation's tokenization (truncated to `text_max_length` tokens)."""
        items = _texts(texts, "texts")
        out = np.zeros((len(items), self.embed_dim), np.float32)
        for part in self._chunks(len(items)):
            out[part] = self._text_embeddings(items[part])
        return out

    def preprocess(self, media: MediaInput, modality: str | None = None) -> tuple[str, np.ndarray]:
        """(modality, uint8 pixels [3,S,S] or [T,3,S,S]): exactly what the model is given for `media`."""
        if modality is not None:
            _check_choice("modality", modality, ("image", "video"))
        d = self._decode(media, "media", modality)
        return d.modality, d.pixels

    # ---- heads -----------------------------------------------------------------------------------------------

    def caption(self, media: MediaInput | Sequence[MediaInput], prompt: str | None = None, *,
                method: str = CAPTIONING.method, max_new_tokens: int = CAPTIONING.max_new_tokens,
                num_beams: int = CAPTIONING.num_beams, top_p: float = DEFAULT_TOP_P) -> str | list[str]:
        """A caption per item (images and videos may mix), continuing `prompt` when given."""
        items, single = _items(media)
        prompts = None if prompt is None else [_text(prompt, "prompt")] * len(items)
        out = self._generate(items, prompts, _decoding(method, max_new_tokens, num_beams, top_p))
        return out[0] if single else out

    def answer(self, media: MediaInput | Sequence[MediaInput], question: str | Sequence[str], *,
               method: str = ANSWERING.method, max_new_tokens: int = ANSWERING.max_new_tokens,
               num_beams: int = ANSWERING.num_beams, top_p: float = DEFAULT_TOP_P) -> str | list[str]:
        """The answer to `question` about each item: the generation decoder continues `question: {q} answer:`.
        One question for all items, or one per item."""
        items, single = _items(media)
        questions = _aligned(_texts(question, "question"), len(items), "question", "media")
        out = self._generate(items, [qa_prompt(q) for q in questions],
                             _decoding(method, max_new_tokens, num_beams, top_p))
        return out[0] if single else out

    def classify(self, media: MediaInput | Sequence[MediaInput], labels: Sequence[str],
                 templates: Sequence[str] | None = None) -> dict[str, float] | list[dict[str, float]]:
        """Zero-shot: {label: probability}, most likely first, per item. Each label is embedded through every
        template ('{}' is the label) and the prompts are averaged; default templates: evaluation's for the item's
        modality (`DEFAULT_TEMPLATES`). Probabilities: softmax of /v1/classify's scale x cosine similarity."""
        items, single = _items(media)
        names = _labels(labels)
        chosen = None if templates is None else _templates(templates)
        classes: dict[str, np.ndarray] = {}  # modality -> class_CE
        out = []
        for part in self._chunks(len(items)):
            decoded = self._decode_all(items, part, "media", None)
            for d, visual_E in zip(decoded, self._visual(decoded)):
                if d.modality not in classes:
                    classes[d.modality] = self._class_embeddings(names, chosen or DEFAULT_TEMPLATES[d.modality])
                sim_C = classes[d.modality] @ visual_E
                prob_C = classify_ops.class_probabilities(sim_C)
                order = np.argsort(-sim_C, kind="stable")
                out.append({names[i]: float(prob_C[i]) for i in order})
        return out[0] if single else out

    def match(self, media: MediaInput | Sequence[MediaInput], text: str | Sequence[str]) -> float | np.ndarray:
        """P(text matches media) from the matching head: a float for one pair, float32 [N] for lists (equal
        lengths, or one item / one text paired with every entry of the other)."""
        items, single_media = _items(media)
        texts = _texts(text, "text")
        single_text = isinstance(text, str)
        if single_media and not single_text:
            items = items * len(texts)
        texts = _aligned(texts, len(items), "text", "media")
        out = np.zeros(len(items), np.float32)
        one = self._decode(items[0], "media", None) if single_media else None  # decoded once, paired N times
        for part in self._chunks(len(items)):
            decoded = [one] * len(texts[part]) if one is not None else self._decode_all(items, part, "media", None)
            ids, mask = tokenize(self.tokenizer, texts[part], self.text_max_length)
            groups = stack_by_modality(decoded)
            calls = [engine.MatchCall(px, mod, ids[pos], mask[pos]) for mod, (pos, px) in groups.items()]
            results = engine.run_match(self._lm, calls)
            out[part] = in_item_order(groups, results)
        return float(out[0]) if single_media and single_text else out

    # ---- steps -----------------------------------------------------------------------------------------------

    def _chunks(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))

    def _embed_media(self, media: MediaInput | Sequence[MediaInput], name: str, modality: str) -> np.ndarray:
        items, _ = _items(media)
        out = np.zeros((len(items), self.embed_dim), np.float32)
        for part in self._chunks(len(items)):
            out[part] = self._visual(self._decode_all(items, part, name, modality))
        return out

    def _visual(self, decoded: list[DecodedMedia]) -> np.ndarray:
        """[N, E] in the order of `decoded`: one forward pass per modality."""
        groups = stack_by_modality(decoded)
        results = engine.run_visual(self._lm, [engine.VisualCall(g.pixels, mod) for mod, g in groups.items()])
        return np.stack(in_item_order(groups, results))

    def _text_embeddings(self, texts: list[str]) -> np.ndarray:
        ids, mask = tokenize(self.tokenizer, texts, self.text_max_length)
        return engine.run_text(self._lm, [engine.TextCall(ids, mask)])[0]

    def _class_embeddings(self, labels: list[str], templates: list[str]) -> np.ndarray:
        """class_CE: each label's prompt ensemble, as evaluation's zero-shot builds it."""
        prompts = classify_ops.class_prompts(labels, templates)
        return classify_ops.class_embeddings(self.embed_texts(prompts), len(labels))

    def _generate(self, items: list, prompts: list[str] | None, options: tuple) -> list[str]:
        out: list[str] = []
        for part in self._chunks(len(items)):
            decoded = self._decode_all(items, part, "media", None)
            prompt_NP = None if prompts is None else generation_prompt_ids(self.tokenizer, prompts[part],
                                                                           self.text_max_length)
            groups = stack_by_modality(decoded)
            calls = [engine.GenerateCall(px, mod, None if prompt_NP is None else prompt_NP[pos], options)
                     for mod, (pos, px) in groups.items()]
            results = engine.run_generate(self._lm, calls)
            out += [detokenize(self.tokenizer, ids) for ids in in_item_order(groups, results)]
        return out

    # ---- media -----------------------------------------------------------------------------------------------

    def _decode_all(self, items: list, part: slice, name: str, modality: str | None) -> list[DecodedMedia]:
        return [self._decode(x, f"{name}[{i}]", modality) for i, x in enumerate(items[part], part.start)]

    def _decode(self, x: Any, where: str, want: str | None) -> DecodedMedia:
        """One input -> model-ready pixels. `want`: the modality the caller needs (None: either)."""
        if isinstance(x, (str, os.PathLike)):
            return self._decode_file(os.fspath(x), where, want)
        if isinstance(x, (bytes, bytearray)):
            return self._decode_bytes(bytes(x), None, where, want, "the bytes")
        if isinstance(x, Image.Image):
            _expect("image", want, where, "a PIL image")
            return DecodedMedia("image", img_ops.eval_image(img_ops.to_rgb(x), self.image_size))
        if isinstance(x, np.ndarray):
            return self._decode_array(x, where, want)
        raise TypeError(f"{where}: expected a file path, file bytes, a PIL image or a uint8 numpy array, "
                        f"got {type(x).__name__}")

    def _decode_file(self, path: str, where: str, want: str | None) -> DecodedMedia:
        modality = modality_from_extension(path)
        if modality is not None:
            _expect(modality, want, where, path)
        try:
            data = read_media(path)
        except bad.BadInput as exc:
            if exc.reason == bad.MISSING_FILE:
                raise FileNotFoundError(f"{where}: no such file: {path}") from None
            raise ValueError(f"{where}: cannot read {path} ({exc})") from None
        return self._decode_bytes(data, modality, where, want, path)

    def _decode_bytes(self, data: bytes, modality: str | None, where: str, want: str | None,
                      what: str) -> DecodedMedia:
        # No extension to go by: the bytes decide; a format the sniffer does not know is tried as `want` / image.
        modality = modality or sniff_modality(data) or want or "image"
        _expect(modality, want, where, what)
        try:
            return self._watchdog.call(decode_media, data, modality, self.geometry, EVAL_DECODE.max_image_pixels,
                                       where)
        except ServeError as exc:
            raise ValueError(f"{where}: {what}: {exc.message}") from None
        except bad.BadInput as exc:  # the watchdog gave up (a decoder that hangs)
            raise TimeoutError(f"{where}: {what}: {exc}") from None

    def _decode_array(self, a: np.ndarray, where: str, want: str | None) -> DecodedMedia:
        if a.dtype != np.uint8:
            raise TypeError(f"{where}: an array must be uint8 RGB (0-255), got dtype {a.dtype}")
        if a.ndim == 4 and a.shape[-1] == 3 and len(a):
            _expect("video", want, where, f"an array of shape {a.shape} (video frames)")
            idx = vid_ops.sample_frame_indices(len(a), self.num_frames, train=False)
            return DecodedMedia("video", vid_ops.eval_clip(a[idx], self.image_size))
        if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in ARRAY_IMAGE_CHANNELS):
            _expect("image", want, where, f"an array of shape {a.shape}")
            rgb = img_ops.to_rgb(Image.fromarray(np.ascontiguousarray(a)))
            return DecodedMedia("image", img_ops.eval_image(rgb, self.image_size))
        raise ValueError(f"{where}: an array must be an image [H,W], [H,W,3] or [H,W,4] or video frames "
                         f"[T,H,W,3] with T > 0, got shape {a.shape}")


# ---- plain helpers -------------------------------------------------------------------------------------------


def modality_from_extension(path: str) -> str | None:
    """'image' / 'video' from a file name's extension (the lists evaluation checks rows against), else None."""
    ext = os.path.splitext(path.rsplit("/", 1)[-1])[1].lstrip(".").lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None


def _expect(modality: str, want: str | None, where: str, what: str) -> None:
    if want is not None and modality != want:
        raise ValueError(f"{where}: {what} is {'an' if modality == 'image' else 'a'} {modality}, not "
                         f"{'an' if want == 'image' else 'a'} {want}; use embed_{modality}s for {modality}s")


def _items(value: Any) -> tuple[list, bool]:
    """(items, whether one item was given rather than a list or tuple)."""
    if isinstance(value, (list, tuple)):
        return list(value), False
    return [value], True


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name}: the text is empty")
    return value


def _texts(value: Any, name: str) -> list[str]:
    items, single = _items(value)
    return [_text(t, name if single else f"{name}[{i}]") for i, t in enumerate(items)]


def _aligned(values: list, n: int, name: str, other: str) -> list:
    """`values` for `n` items: one value is repeated; otherwise there must be exactly `n`."""
    if len(values) == 1 and n != 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} given for {n} {other} items (give one, or one per item)")
    return values


def _labels(labels: Any) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
        raise TypeError(f"labels: expected a list of class names, got {type(labels).__name__}")
    names = _texts(list(labels), "labels")
    if len(names) < 2:
        raise ValueError(f"labels: need at least 2 class names, got {len(names)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"labels: duplicate class names {dup}")
    return names


def _templates(templates: Any) -> list[str]:
    if isinstance(templates, str) or not isinstance(templates, (list, tuple)) or not templates:
        raise TypeError(f"templates: expected a non-empty list of strings with '{{}}', got {templates!r}")
    out = _texts(list(templates), "templates")
    for i, t in enumerate(out):
        if "{}" not in t:
            raise ValueError(f"templates[{i}]: {t!r} has no '{{}}' slot for the label")
    return out


def _decoding(method: str, max_new_tokens: int, num_beams: int, top_p: float) -> tuple:
    """The options key of a GenerateCall, checked here so a bad value names its argument."""
    _check_choice("method", method, METHODS)
    _check_positive_int("max_new_tokens", max_new_tokens)
    _check_positive_int("num_beams", num_beams)
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p: must be in (0, 1], got {top_p!r}")
    return engine.decoding_kwargs(method, max_new_tokens, num_beams, float(top_p))


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be an int >= 1, got {value!r}")
