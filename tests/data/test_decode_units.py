"""Unit tests of decode, sampling, transforms and tokenization, without Ray, on real files."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

import datafactory as mk
from omnivl.data import badinput as bad
from omnivl.data import image as I
from omnivl.data import text as T
from omnivl.data import video as V
from omnivl.data.decode import RowDecoder, Watchdog, check_extension
from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.data.manifest import ManifestRow, read_media, row_batches


def rng(seed=0):
    return np.random.default_rng(seed)


# --- frame sampling ---------------------------------------------------------------------------------------

def test_eval_indices_are_segment_middles():
    assert V.sample_frame_indices(16, 8, train=False).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert V.sample_frame_indices(300, 8, train=False).dtype == np.int64


def test_train_indices_one_per_segment_and_seeded():
    idx = V.sample_frame_indices(300, 8, train=True, rng=rng(3))
    seg = 300 / 8
    assert all(k * seg <= i < (k + 1) * seg for k, i in enumerate(idx))
    assert idx.tolist() == V.sample_frame_indices(300, 8, train=True, rng=rng(3)).tolist()
    draws = {tuple(V.sample_frame_indices(300, 8, train=True, rng=rng(s))) for s in range(5)}
    assert len(draws) > 1


def test_short_video_indices_repeat_in_order():
    idx = V.sample_frame_indices(3, 8, train=False)
    assert len(idx) == 8 and set(idx.tolist()) == {0, 1, 2} and np.all(np.diff(idx) >= 0)
    assert V.sample_frame_indices(1, 4, train=True, rng=rng()).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        V.sample_frame_indices(0, 8, train=False)


# --- video decode -----------------------------------------------------------------------------------------

def test_decode_clip_samples_the_right_frames_at_reduced_size():
    data = mk.mp4(n=16, size=64)
    frames, repeated = V.decode_clip(data, 8, short_side=32, train=False)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8 and not repeated
    # The bar moves right, so its column grows with the frame index: sampled frames are in order, distinct.
    bar_x = [int(np.argmax(f[..., 0].mean(axis=0))) for f in frames]
    assert bar_x == sorted(bar_x) and len(set(bar_x)) == 8


def test_decode_only_sampled_equals_decode_everything():
    data = mk.mp4(n=16, size=32)
    a, _ = V.decode_clip(data, 4, 32, train=False)
    b, _ = V.decode_clip(data, 4, 32, train=False, sample_only=False)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_decode_clip_keeps_aspect_ratio():
    from omnivl.data.synth import encode_h264

    data = encode_h264(np.zeros((4, 36, 64, 3), np.uint8), fps=4)
    clip, _ = V.decode_clip(data, 2, short_side=18, train=False)
    assert clip.shape[1:3] == (18, 32)
    assert V.decoded_size(360, 640, 224) == (234, 416)  # width rounded up to a multiple of 32 (decord bug)
    assert V.decoded_size(640, 360, 16) == (57, 32)


def test_short_video_is_repeated_not_skipped():
    clip, repeated = V.decode_clip(mk.mp4(n=3), 8, 32, train=False)
    assert clip.shape[0] == 8 and repeated


@pytest.mark.parametrize("data,reason", [
    (mk.audio_only_mp4(), bad.VIDEO_NO_STREAM),
    (b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8, bad.VIDEO_CORRUPT),
    (mk.mp4()[:300], bad.VIDEO_CORRUPT),
    (mk.jpeg()[:50], bad.VIDEO_CORRUPT),
])
def test_bad_videos(data, reason):
    with pytest.raises(bad.BadInput) as e:
        V.decode_clip(data, 8, 32, train=False)
    assert e.value.reason == reason


def test_video_bomb_rejected_from_header():
    with pytest.raises(bad.BadInput) as e:
        V.decode_clip(mk.mp4(size=32), 4, 16, train=False, max_pixels=100)
    assert e.value.reason == bad.DECOMPRESSION_BOMB


def test_train_clip_shares_one_crop_and_flip():
    frames = np.stack([np.arange(32 * 48 * 3, dtype=np.uint8).reshape(32, 48, 3)] * 4)
    out = V.train_clip(frames, 16, rng(1), flip=True)
    assert out.shape == (4, 3, 16, 16) and out.dtype == np.uint8
    assert all(np.array_equal(out[0], f) for f in out)
    assert np.array_equal(out, V.train_clip(frames, 16, rng(1), flip=True))
    assert np.array_equal(out[:, :, :, ::-1], V.train_clip(frames, 16, rng(1), flip=False))


def test_eval_clip_center_crop():
    frames = np.zeros((2, 20, 40, 3), np.uint8)
    frames[:, :, 10:30] = 200
    out = V.eval_clip(frames, 20)
    assert out.shape == (2, 3, 20, 20) and out.min() == 200


# --- images -----------------------------------------------------------------------------------------------

def decode(data, **kw):
    return I.decode_image(data, **kw)


def test_rgb_jpeg():
    rgb, converted = decode(mk.jpeg(colour=(200, 30, 30)))
    assert rgb.shape == (40, 48, 3) and rgb.dtype == np.uint8 and not converted
    assert abs(int(rgb[..., 0].mean()) - 200) < 6


@pytest.mark.parametrize("img,expect", [
    (Image.new("L", (8, 8), 90), (90, 90, 90)),
    (Image.new("1", (8, 8), 1), (255, 255, 255)),
    (Image.new("RGBA", (8, 8), (10, 200, 10, 255)), (10, 200, 10)),
    (Image.new("RGBA", (8, 8), (0, 0, 0, 0)), (255, 255, 255)),  # transparent -> white, not black
    (Image.new("LA", (8, 8), (50, 255)), (50, 50, 50)),
    (Image.new("I;16", (8, 8), 65535), (255, 255, 255)),
    (Image.new("I;16", (8, 8), 32896), (128, 128, 128)),
    (Image.new("P", (8, 8), 0), (0, 0, 0)),
])
def test_every_mode_becomes_rgb(img, expect):
    rgb, converted = decode(mk.png(img))
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 8, 3) and converted
    assert tuple(int(v) for v in rgb[4, 4]) == expect


def test_palette_with_transparency():
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    p.info["transparency"] = 0
    rgb, _ = decode(mk.png(p))
    assert tuple(rgb[0, 0]) == (250, 10, 10)


def test_cmyk_jpeg_becomes_rgb():
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).convert("CMYK").save(buf, format="JPEG", quality=95)
    rgb, converted = decode(buf.getvalue())
    assert converted and rgb.shape == (16, 16, 3)
    assert rgb[..., 0].mean() > 150 and rgb[..., 1].mean() < 80


def test_sixteen_bit_rgb_png_scaled():
    a = (np.ones((6, 6), np.uint16) * 4096)
    rgb, _ = decode(mk.png(Image.fromarray(a)))
    assert int(rgb[0, 0, 0]) == round(4096 * 255 / 65535)


@pytest.mark.parametrize("data,reason", [
    (b"this is not an image at all", bad.IMAGE_CORRUPT),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 64, bad.IMAGE_CORRUPT),
    (mk.noisy_jpeg()[:600], bad.IMAGE_TRUNCATED),
    (mk.bomb_png(), bad.DECOMPRESSION_BOMB),
])
def test_bad_images(data, reason):
    with pytest.raises(bad.BadInput) as e:
        decode(data)
    assert e.value.reason == reason


def test_bomb_limit_is_ours():
    with pytest.raises(bad.BadInput) as e:
        decode(mk.jpeg(size=(64, 64)), max_pixels=1000)
    assert e.value.reason == bad.DECOMPRESSION_BOMB


def test_train_image_shape_dtype_determinism():
    rgb, _ = decode(mk.noisy_jpeg((80, 60)))
    a = I.train_image(rgb, 32, rng(5))
    assert a.shape == (3, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, I.train_image(rgb, 32, rng(5)))
    assert not np.array_equal(a, I.train_image(rgb, 32, rng(6)))


def test_crop_box_within_image():
    for s in range(20):
        top, left, h, w = I.random_resized_crop_box(30, 50, rng(s), scale=(0.5, 1.0))
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50 and h * w >= 0.45 * 1500


def test_eval_image_center_crop_and_resize():
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, 14:66] = 255  # the central 40x40 square, with a margin for the resize filter
    out = I.eval_image(a, 20)
    assert out.shape == (3, 20, 20) and out.min() == 255


def test_randaugment_keeps_shape_and_is_seeded():
    rgb, _ = decode(mk.noisy_jpeg())
    a = I.randaugment(rgb, rng(2))
    assert a.shape == rgb.shape and a.dtype == np.uint8
    assert np.array_equal(a, I.randaugment(rgb, rng(2)))


# --- text -------------------------------------------------------------------------------------------------

def test_tokenize_bundled_bert():
    tok = T.load_tokenizer("bundled:bert-base-uncased")
    ids, mask = T.tokenize(tok, ["a red circle moving left", "x " * 100], 12)
    assert ids.shape == mask.shape == (2, 12) and ids.dtype == mask.dtype == np.int64
    assert ids[0, 0] == 101 and ids[0, mask[0].sum() - 1] == 102 and ids[0, -1] == 0 and mask[0, -1] == 0
    assert mask[1].all() and ids[1, -1] == 102
    assert tok.convert_ids_to_tokens(ids[0, 1:6].tolist()) == ["a", "red", "circle", "moving", "left"]


def test_tokenizer_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="bundled"):
        T.load_tokenizer("bundled:nope")
    with pytest.raises(ValueError, match="offline"):
        T.load_tokenizer(str(tmp_path / "missing-dir"))


def test_tokenizer_hub_id_is_read_from_the_local_hf_cache(tmp_path, monkeypatch):
    from hf_cache_fixtures import cache_snapshot, use_hf_home
    from omnivl.models.checkpoints import bundled_bert_dir
    from omnivl.models.export import TOKENIZER_FILES

    hub = use_hf_home(monkeypatch, tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    files = {name: (bundled_bert_dir() / name).read_text() for name in TOKENIZER_FILES}
    cache_snapshot(hub, "cached-org/bert-vocab", files)
    texts = ["a red circle moving left"]
    assert np.array_equal(T.tokenize(T.load_tokenizer("cached-org/bert-vocab"), texts, 12)[0],
                          T.tokenize(T.load_tokenizer(), texts, 12)[0])
    with pytest.raises(ValueError, match="data.decode.tokenizer: 'absent-org/vocab' is not a local directory") as err:
        T.load_tokenizer("absent-org/vocab")
    assert str(hub / "models--absent-org--vocab") in str(err.value)


def test_clean_caption():
    assert T.clean_caption("  a  red\n circle ", 100) == ("a red circle", False)
    assert T.clean_caption("one two three four", 9) == ("one two", True)
    for text, reason in (("", bad.CAPTION_EMPTY), ("  \n ", bad.CAPTION_EMPTY),
                         (b"caf\xe9".decode("utf-8", "surrogateescape"), bad.CAPTION_NOT_UTF8),
                         ("caf\ufffd", bad.CAPTION_NOT_UTF8)):
        with pytest.raises(bad.BadInput) as e:
            T.clean_caption(text, 100)
        assert e.value.reason == reason


def test_templates_and_ids():
    templates = ["a photo of a {}.", "a picture of a {}."]
    assert T.label_text("circle", templates, train=False) == "a photo of a circle."
    seen = {T.label_text("circle", templates, train=True, rng=rng(s)) for s in range(10)}
    assert seen == {"a photo of a circle.", "a picture of a circle."}
    assert T.label_id_for_class("circle") == T.label_id_for_class("circle") != T.label_id_for_class("square")
    assert 0 <= T.label_id_for_pair("src:m:3") < 2**63 and T.label_id_for_pair("src:m:3") != T.label_id_for_pair("src:m:4")
    import hashlib

    digest = hashlib.blake2b(b"label:circle", digest_size=8).digest()
    assert T.label_id_for_class("circle") == (int.from_bytes(digest, "big") & (2**63 - 1)) | (1 << 62)
    # Bit 62 tells the kinds apart (class ids set it, caption pair ids never do).
    assert all(T.label_id_for_class(c) & T.CLASS_LABEL_BIT for c in ("circle", "square", "moving left"))
    assert not any(T.label_id_for_pair(f"src:m:{i}") & T.CLASS_LABEL_BIT for i in range(50))


def test_swap_left_right():
    assert T.swap_left_right("a red circle moving left") == "a red circle moving right"
    assert T.swap_left_right("Left of the Right one, leftmost") == "Right of the Left one, rightmost"
    assert T.swap_left_right("bright light") == "bright light"


# --- watchdog, extensions, media reading ------------------------------------------------------------------

def test_watchdog_bounds_a_hang():
    dog = Watchdog(0.2)
    t = time.perf_counter()
    with pytest.raises(bad.BadInput) as e:
        dog.call(time.sleep, 2)
    assert e.value.reason == bad.DECODE_TIMEOUT and time.perf_counter() - t < 1.5
    assert dog.call(lambda: 7) == 7


def test_extension_check():
    check_extension("/x/a.mp4", -1, "video")
    check_extension("/x/noext", -1, "image")
    for uri, modality in (("/x/a.txt", "image"), ("/x/a.jpg", "video"), ("/x/a.pdf", "video")):
        with pytest.raises(bad.BadInput) as e:
            check_extension(uri, -1, modality)
        assert e.value.reason == bad.UNSUPPORTED_FORMAT


def test_read_media_missing_and_empty(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, reason in (("missing.jpg", bad.MISSING_FILE), ("empty.jpg", bad.EMPTY_FILE)):
        with pytest.raises(bad.BadInput) as e:
            read_media(str(tmp_path / name))
        assert e.value.reason == reason


# --- the whole row decoder --------------------------------------------------------------------------------

def _batch(rows):
    """Decoder input of `rows` (ManifestRow fields; row keys `s:m.jsonl:<i>` unless given)."""
    return next(row_batches([ManifestRow(**{"source": "s", "row_key": f"s:m.jsonl:{i}", **r})
                             for i, r in enumerate(rows)], len(rows)))


def test_row_decoder_mixed_batch(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(mk.noisy_jpeg())
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "cmyk.jpg").write_bytes(mk.jpeg(mode="CMYK", colour=(0, 200, 200, 0)))
    rows = [
        {"uri": str(good), "text": "a red circle on the left"},
        {"uri": str(tmp_path / "cmyk.jpg"), "text": "cmyk"},
        {"uri": str(tmp_path / "zero.jpg"), "text": "zero"},
        {"uri": str(tmp_path / "nope.jpg"), "text": "missing"},
        {"uri": str(good), "text": "   "},
        {"uri": str(good), "text": "x" * 50 + " tail"},
        {"uri": str(good), "text": "bad", "row_error": bad.CAPTION_NOT_UTF8},
    ]
    cfg = DecodeConfig(image_size=16, max_caption_chars=40)
    dec = RowDecoder([SourceConfig(name="s", manifest="m.jsonl", modality="image")], cfg, "image", train=False)
    out, ledger = dec(_batch(rows))
    assert out["pixels"].shape == (3, 3, 16, 16) and out["pixels"].dtype == np.uint8
    assert out["input_ids"].shape == (3, 32) and out["label_id"].dtype == np.int64
    assert ledger.seen == 7 and dict(ledger.skipped) == {
        bad.EMPTY_FILE: 1, bad.MISSING_FILE: 1, bad.CAPTION_EMPTY: 1, bad.CAPTION_NOT_UTF8: 1}
    assert ledger.repaired[bad.IMAGE_MODE_CONVERTED] == 1 and ledger.repaired[bad.CAPTION_TRUNCATED] == 1


def test_row_decoder_flip_swaps_text_and_label(tmp_path):
    clip = tmp_path / "c.mp4"
    clip.write_bytes(mk.mp4(n=8, size=32))
    src = SourceConfig(name="s", manifest="m.jsonl", modality="video", kind="label")
    cfg = DecodeConfig(image_size=16, num_frames=4, crop_scale_min=1.0)
    dec = RowDecoder([src], cfg, "video", train=True, seed=0)
    out, _ = dec(_batch([{"uri": str(clip), "label": "moving right", "row_key": f"s:m.jsonl:{i}"} for i in range(12)]))
    texts = set(out["text"])
    assert any("moving left" in t for t in texts) and any("moving right" in t for t in texts)
    for t, lid, px in zip(out["text"], out["label_id"], out["pixels"]):
        cls = "moving left" if "left" in t else "moving right"
        assert lid == T.label_id_for_class(cls)
        bar_x = [int(np.argmax(f[0].mean(axis=0))) for f in px]  # red channel column of the bar
        assert (bar_x == sorted(bar_x)) == (cls == "moving right")
    again, _ = RowDecoder([src], cfg, "video", train=True, seed=0)(
        _batch([{"uri": str(clip), "label": "moving right", "row_key": f"s:m.jsonl:{i}"} for i in range(12)]))
    assert np.array_equal(out["pixels"], again["pixels"]) and list(out["text"]) == list(again["text"])
