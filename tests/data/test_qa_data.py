"""QA data: the synthetic QA datasets, the `question: {q} answer: {a}` text contract, `prompt_len`, hflip."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from omnivl.data import badinput as bad
from omnivl.data import text as T
from omnivl.data.config import DecodeConfig, SourceConfig, SynthConfig
from omnivl.data.decode import OUTPUT_COLUMNS, RowDecoder
from omnivl.data.manifest import ManifestRow, read_manifest, resolve, row_batches
from omnivl.data.synth import (COUNT_DATASET, COUNT_WORDS, IMAGE_QTYPES, POSITIONS, VIDEO_QTYPES, corpus_sources,
                               make_count_item, make_qa_item, position_answer, qa_answer_vocab, video_qtypes)


def _rows(root, dataset, split):
    return [json.loads(line) for line in (root / dataset / f"{split}.jsonl").read_text().splitlines()]


def test_qa_datasets_reuse_media_of_the_same_split_only(small_corpus):
    summary = json.loads((small_corpus / "corpus.json").read_text())
    for dataset, reused, qtypes in (("image_qa", "image_text", IMAGE_QTYPES), ("video_qa", "video_text", VIDEO_QTYPES)):
        train_media = {(small_corpus / dataset / r["path"]).resolve() for r in _rows(small_corpus, dataset, "train")}
        for split in ("train", "val", "test"):
            rows = _rows(small_corpus, dataset, split)
            assert len(rows) == summary["datasets"][dataset]["splits"][split] > 0
            assert {r["qtype"] for r in rows} == set(qtypes)
            for r in rows:
                media = (small_corpus / dataset / r["path"]).resolve()
                assert media.stat().st_size > 0
                assert r["answer"] in summary["qa"][dataset]["answers"]
                if r["path"].startswith("../"):
                    assert media.parent == (small_corpus / reused / "media").resolve()
                    assert media.name.startswith(f"{split}_"), r  # never another split's media
                if split != "train":
                    assert media not in train_media, r
            if split == "train":
                assert not any(r["held_out"] for r in rows)
    assert summary["datasets"]["image_qa"]["kind"] == "qa"


def test_every_item_is_asked_every_question_type_before_any_twice():
    # the n-th question of each type is about the n-th reused item: a type's test questions are on distinct items
    # (drawn at random, 11 speed questions of a wide corpus fell on 8 clips)
    cfg = SynthConfig(seed=1, variant="wide", image_size=32, video_frames=2, fps=2)
    qtypes = video_qtypes(cfg.knobs())
    media_rows = [{"path": f"../video_text/media/test_{k:05d}.mp4", "colour": "red", "shape": "circle",
                   "direction": "left", "speed": "slowly", "held_out": False} for k in range(7)]
    rows = [make_qa_item("video_qa", "test", i, cfg, media_rows)[0] for i in range(len(qtypes) * 9)]
    for qtype in qtypes:
        paths = [r["path"] for r in rows if r["qtype"] == qtype]
        assert paths[:7] == [m["path"] for m in media_rows] and paths[7:] == paths[:2]


def test_answers_follow_from_the_scene(small_corpus):
    caption_of = {r["path"]: r for r in _rows(small_corpus, "image_text", "test")}
    for r in _rows(small_corpus, "image_qa", "test"):
        expected = {"colour": r["colour"], "shape": r["shape"], "size": r.get("size"),
                    "position": position_answer(r.get("position", "")),
                    "count": COUNT_WORDS.get(r.get("count"))}[r["qtype"]]
        assert r["answer"] == expected
        if r["qtype"] != "count":  # the reused image's caption describes the same scene
            cap = caption_of[r["path"].removeprefix("../image_text/")]
            assert (cap["colour"], cap["shape"], cap["position"]) == (r["colour"], r["shape"], r["position"])
    for r in _rows(small_corpus, "video_qa", "test"):
        assert r["answer"] == {"colour": r["colour"], "shape": r["shape"], "direction": r["direction"]}[r["qtype"]]


def _shapes_drawn(jpeg: bytes, width: int, height: int) -> int:
    """How many of the 5 positions of a count picture hold a shape."""
    img = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    assert img.shape == (height, width, 3)
    colourful = img.max(axis=2) - img.min(axis=2) > 60  # the shapes; the backgrounds are nearly grey
    found = 0
    for px, py in POSITIONS.values():  # a shape's centre is within the position's jitter (2% of each side)
        x, y, dx, dy = int(px * width), int(py * height), int(0.02 * width) + 1, int(0.02 * height) + 1
        found += int(colourful[y - dy:y + dy + 1, x - dx:x + dx + 1].any())
    return found


@pytest.mark.parametrize("variant", ["demo", "wide", "small-objects"])
def test_count_images_show_that_many_shapes(variant):
    cfg = SynthConfig(seed=1, variant=variant, image_size=64 if variant == "demo" else None)
    width, height = cfg.knobs().frame_size
    for i in range(4, 60, len(IMAGE_QTYPES)):  # every 5th index is a count question
        row, data, _ = make_qa_item("image_qa", "test", i, cfg, media_rows=[])
        assert row["qtype"] == "count" and data is not None
        assert _shapes_drawn(data, width, height) == row["count"] and row["answer"] == COUNT_WORDS[row["count"]], row


@pytest.mark.parametrize("variant", ["demo", "small-objects"])
def test_count_captions_state_the_number_drawn(variant):
    cfg = SynthConfig(seed=2, variant=variant, image_size=64 if variant == "demo" else None)
    width, height = cfg.knobs().frame_size
    counts = []
    for i in range(24):
        row, data, ext = make_count_item("train", i, cfg)
        number = {"one": 1, "two": 2, "three": 3}[row["text"].split()[0]]
        assert ext == "jpg" and _shapes_drawn(data, width, height) == number == row["count"], row
        noun = row["shape"] + ("s" if number > 1 else "")
        assert row["text"] == f"{row['text'].split()[0]} {row['colour']} {noun}" and not row["held_out"]
        counts.append(number)
    assert set(counts) == {1, 2, 3}


def test_count_captions_are_a_text_dataset_of_the_corpus(small_corpus):
    summary = json.loads((small_corpus / "corpus.json").read_text())
    assert summary["datasets"][COUNT_DATASET]["kind"] == "text"
    rows = _rows(small_corpus, COUNT_DATASET, "train")
    assert len(rows) == summary["datasets"][COUNT_DATASET]["splits"]["train"] > 0
    assert all((small_corpus / COUNT_DATASET / r["path"]).stat().st_size > 0 and r["text"] for r in rows)
    sources = {s.name: s for s in corpus_sources(str(small_corpus))}
    assert (sources[COUNT_DATASET].modality, sources[COUNT_DATASET].kind) == ("image", "text")


def test_variant_video_questions_cover_diagonals_and_speed():
    cfg = SynthConfig(seed=2, variant="small-objects", image_size=32, video_frames=2, fps=2)
    qtypes = video_qtypes(cfg.knobs())
    assert qtypes == VIDEO_QTYPES + ("speed",) and video_qtypes(SynthConfig().knobs()) == VIDEO_QTYPES
    vocab = qa_answer_vocab("video", cfg.knobs())
    assert {"up-left", "down-right", "up", "down", "slowly", "quickly"} <= set(vocab)
    rows = [make_qa_item("video_qa", "test", i, cfg, media_rows=[])[0] for i in range(40)]
    assert [r["qtype"] for r in rows[:4]] == list(qtypes)
    for r in rows:
        assert r["answer"] == r[r["qtype"]] and r["answer"] in vocab
    assert any("-" in r["answer"] for r in rows if r["qtype"] == "direction")
    speed = [r for r in rows if r["qtype"] == "speed"]
    assert {r["answer"] for r in speed} == {"slowly", "quickly"}
    assert speed[0]["question"] == f"how fast is the {speed[0]['colour']} {speed[0]['shape']} moving?"


def test_qa_text_contract_and_prompt_len(small_corpus):
    src = SourceConfig(name="q", manifest=str(small_corpus / "image_qa" / "test.jsonl"), modality="image", kind="qa")
    rows = read_manifest(src)
    cfg = DecodeConfig(image_size=32, text_max_length=24)
    out, ledger = RowDecoder([src], cfg, "image", train=False)(next(row_batches(rows, len(rows))))
    assert tuple(out) == OUTPUT_COLUMNS and ledger.summary()["rows_skipped"] == 0
    tok = T.load_tokenizer(cfg.tokenizer)
    assert out["prompt_len"].dtype == np.int64
    for row, text, ids, mask, p in zip(rows, out["text"], out["input_ids"], out["attention_mask"], out["prompt_len"]):
        assert text == f"question: {row.question} answer: {row.answer}" == T.qa_text(row.question, row.answer)
        prompt_tokens = tok.convert_ids_to_tokens(ids[:p])
        assert prompt_tokens[0] == "[CLS]" and prompt_tokens[-2:] == ["answer", ":"]
        assert ids[1:p].tolist() == tok(T.qa_prompt(row.question), add_special_tokens=False)["input_ids"]
        # what is left for the LM loss: the answer, then [SEP] ([EOS])
        assert tok.decode(ids[p:mask.sum() - 1]) == row.answer and ids[mask.sum() - 1] == 102


def test_prompt_len_is_one_for_captions_and_labels(small_corpus):
    for dataset, kind in (("image_text", "text"), ("image_label", "label")):
        src = SourceConfig(name=dataset, manifest=str(small_corpus / dataset / "train.jsonl"), modality="image",
                           kind=kind)
        out, _ = RowDecoder([src], DecodeConfig(image_size=32), "image", train=True)(
            next(row_batches(read_manifest(src), 8)))
        assert out["prompt_len"].tolist() == [1] * len(out["text"]) and len(out["text"]) > 0


def test_prompt_len_is_capped_by_the_text_length(tmp_path):
    img = tmp_path / "a.jpg"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(img)
    src = SourceConfig(name="q", manifest="m.jsonl", modality="image", kind="qa")
    long_q = "is " + "very " * 30 + "red?"
    out, _ = RowDecoder([src], DecodeConfig(image_size=16, text_max_length=8), "image", train=False)(
        _batch([{"uri": str(img), "question": long_q, "answer": "yes"}]))
    assert out["prompt_len"].tolist() == [8]


def _batch(rows):
    return next(row_batches([ManifestRow("q", f"q:m.jsonl:{i}", **r) for i, r in enumerate(rows)], len(rows)))


def test_hflip_swaps_left_right_in_question_and_answer(tmp_path):
    # red on the left half, blue on the right: after a flip the answer must say "right"
    a = np.zeros((32, 32, 3), np.uint8)
    a[:, :16] = (220, 20, 20)
    a[:, 16:] = (20, 20, 220)
    img = tmp_path / "lr.jpg"
    Image.fromarray(a).save(img, quality=95)
    src = SourceConfig(name="q", manifest="m.jsonl", modality="image", kind="qa")
    cfg = DecodeConfig(image_size=16, crop_scale_min=1.0, randaugment=False, hflip=True)
    rows = [{"uri": str(img), "question": "is the red half on the left or the right?", "answer": "left"}] * 16
    out, _ = RowDecoder([src], cfg, "image", train=True, seed=0)(_batch(rows))
    seen = set()
    for text, px in zip(out["text"], out["pixels"]):
        red_on_left = px[0, :, :8].mean() > px[0, :, 8:].mean()
        answer = text.split("answer: ")[1]
        assert answer == ("left" if red_on_left else "right")
        assert text.startswith("question: is the red half on the right or the left?" if answer == "right"
                               else "question: is the red half on the left or the right?")
        seen.add(answer)
    assert seen == {"left", "right"}


def test_hflip_mirrors_diagonal_answers(tmp_path):
    a = np.zeros((32, 32, 3), np.uint8)
    a[:, :16] = (220, 20, 20)
    a[:, 16:] = (20, 20, 220)
    img = tmp_path / "lr.jpg"
    Image.fromarray(a).save(img, quality=95)
    src = SourceConfig(name="q", manifest="m.jsonl", modality="image", kind="qa")  # a still stands in for a clip
    cfg = DecodeConfig(image_size=16, crop_scale_min=1.0, randaugment=False, hflip=True)
    rows = [{"uri": str(img), "question": "which way is the red circle moving?", "answer": "up-left"}] * 16
    out, _ = RowDecoder([src], cfg, "image", train=True, seed=0)(_batch(rows))
    seen = set()
    for text, px in zip(out["text"], out["pixels"]):
        flipped = px[0, :, :8].mean() < px[0, :, 8:].mean()  # red went right
        assert text.split("answer: ")[1] == ("up-right" if flipped else "up-left")
        seen.add(flipped)
    assert seen == {True, False}


@pytest.mark.parametrize("row,detail", [({"question": "what?", "answer": " "}, "no answer"),
                                        ({"question": "", "answer": "red"}, "no question")])
def test_qa_row_without_question_or_answer_is_skipped(tmp_path, row, detail):
    img = tmp_path / "a.jpg"
    Image.new("RGB", (32, 32)).save(img)
    src = SourceConfig(name="q", manifest="m.jsonl", modality="image", kind="qa")
    out, ledger = RowDecoder([src], DecodeConfig(image_size=16), "image", train=False)(
        _batch([{"uri": str(img), **row}]))
    assert len(out["text"]) == 0 and dict(ledger.skipped) == {bad.QA_EMPTY: 1}
    assert detail in json.dumps(ledger.to_dict())


def test_parent_paths_resolve_for_s3_and_local():
    assert resolve("s3://b/corpus/image_qa", "../image_text/media/x.jpg") == "s3://b/corpus/image_text/media/x.jpg"
    assert resolve("/data/c/image_qa", "../image_text/media/x.jpg") == "/data/c/image_text/media/x.jpg"
    assert resolve("s3://b/c/image_qa", "media/x.jpg") == "s3://b/c/image_qa/media/x.jpg"
