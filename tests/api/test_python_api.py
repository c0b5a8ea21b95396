"""The Python API (`omnivl.load`, `omnivl.api`): parity with evaluation's pass and serving's classify, inputs,
errors, precision, batching, run directories and s3://, a light `import omnivl`, and docs/python.md run as
written."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import omnivl

ROOT = Path(__file__).resolve().parents[2]
PARITY_ATOL = 1e-4  # max abs difference allowed between the API's embeddings and evaluation's


def source(corpus: Path, dataset: str, kind: str = "text"):
    from omnivl.data.config import SourceConfig

    return SourceConfig(name=dataset, manifest=str(corpus / dataset / "test.jsonl"), modality=dataset.split("_")[0],
                        kind=kind)


def decoded_rows(src, decode: dict) -> tuple[dict, list]:
    """Evaluation's decoded batch of every row of `src` (RowDecoder, train=False) and the manifest rows."""
    from omnivl.data.decode import RowDecoder
    from omnivl.data.manifest import read_manifest, row_batches

    rows = read_manifest(src)
    batch, ledger = RowDecoder([src], decode, src.modality, train=False)(next(row_batches(rows, len(rows))))
    assert len(batch["row_key"]) == len(rows) == ledger.seen and rows
    return batch, rows


@pytest.fixture(scope="module")
def m(export, eval_decode):
    return omnivl.load(export, device="cpu", text_max_length=eval_decode["text_max_length"])


@pytest.fixture(scope="module")
def eval_model(export):
    from omnivl.models.export import load_export

    return load_export(export)


@pytest.fixture(scope="module")
def media(corpus) -> dict:
    images = sorted(str(p) for p in (corpus / "image_text" / "media").glob("test_*.jpg"))
    videos = sorted(str(p) for p in (corpus / "video_text" / "media").glob("test_*.mp4"))
    assert len(images) >= 3 and len(videos) >= 2
    return {"images": images, "videos": videos}


# ---- import ------------------------------------------------------------------------------------------------


def test_import_omnivl_loads_neither_torch_nor_ray():
    code = ("import sys, omnivl; callable(omnivl.load) or sys.exit(3); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'omnivl')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "['omnivl']", out.stdout


# ---- parity with evaluation and serving --------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["image_text", "video_text"])
def test_embeddings_agree_with_evaluation(m, export, corpus, eval_decode, dataset):
    """Media and caption embeddings of a test split: the API (by file path) vs `embed_locally`, the Ray-free
    reference of the evaluate job's pass, row by row (matched by row key)."""
    from omnivl.cluster.evaluate import embed_locally
    from omnivl.data.config import DecodeConfig
    from omnivl.data.manifest import read_manifest

    src = source(corpus, dataset)
    ref = embed_locally(src, DecodeConfig.model_validate(eval_decode), export)
    path_of = {r.row_key: r.uri for r in read_manifest(src)}
    paths = [path_of[k] for k in ref.row_key_N]
    visual = m.embed_images(paths) if src.modality == "image" else m.embed_videos(paths)
    texts = m.embed_texts(ref.text_N)
    assert visual.shape == ref.visual_NE.shape == (len(paths), m.embed_dim) and visual.dtype == np.float32
    assert np.abs(visual - ref.visual_NE).max() <= PARITY_ATOL
    assert np.abs(texts - ref.text_NE).max() <= PARITY_ATOL
    np.testing.assert_allclose(np.linalg.norm(visual, axis=1), 1.0, atol=1e-5)
    assert np.abs(visual[0] - visual[1]).max() > 1e-3  # distinct items give distinct rows (no broadcasting bug)


@pytest.mark.parametrize("dataset", ["image_text", "video_text"])
def test_preprocess_gives_evaluations_pixels(m, corpus, eval_decode, dataset):
    batch, rows = decoded_rows(source(corpus, dataset), eval_decode)
    uri = {r.row_key: r.uri for r in rows}
    for key, pixels in zip(batch["row_key"], batch["pixels"]):
        modality, got = m.preprocess(uri[key])
        assert modality == dataset.split("_")[0]
        np.testing.assert_array_equal(got, pixels)


def test_captions_and_answers_agree_with_evaluation(m, eval_model, corpus, eval_decode):
    """Greedy captions of images and videos and answers to QA questions: the API vs evaluation's
    `generate_batch` on RowDecoder batches (QA prompts cut from the tokenized `question: .. answer: ..` row)."""
    from omnivl.data.config import DecodeConfig
    from omnivl.data.text import load_tokenizer
    from omnivl.eval.config import EvalConfig
    from omnivl.eval.inference import generate_batch

    tok, settings = load_tokenizer(DecodeConfig.model_validate(eval_decode).tokenizer), EvalConfig()
    for dataset in ("image_text", "video_text"):
        batch, rows = decoded_rows(source(corpus, dataset), eval_decode)
        want = generate_batch(eval_model, batch, dataset.split("_")[0], tok, settings.captioning, answer=False)
        uri = {r.row_key: r.uri for r in rows}
        assert m.caption([uri[k] for k in want["row_key"]]) == list(want["generated"])
    batch, rows = decoded_rows(source(corpus, "image_qa", "qa"), eval_decode)
    want = generate_batch(eval_model, batch, "image", tok, settings.answering, answer=True)
    by_key = {r.row_key: r for r in rows}
    got = m.answer([by_key[k].uri for k in want["row_key"]], [by_key[k].question for k in want["row_key"]])
    assert got == list(want["generated"]) and all(got)


def test_match_agrees_with_evaluation(m, eval_model, corpus, eval_decode):
    """P(match) of every (image, caption) pair of a small split: the API vs evaluation's `match_batch`."""
    from omnivl.data.text import tokenize
    from omnivl.eval.inference import match_batch

    batch, rows = decoded_rows(source(corpus, "image_text"), eval_decode)
    texts = [str(t) for t in batch["text"]]
    ids, mask = tokenize(m.tokenizer, texts, eval_decode["text_max_length"])
    pairs = {int(lid): list(range(len(texts))) for lid in batch["label_id"]}
    ref = match_batch(eval_model, batch, "image", pairs, ids, mask)
    uri = {r.row_key: r.uri for r in rows}
    row_of_label = {int(lid): uri[k] for lid, k in zip(batch["label_id"], batch["row_key"])}
    got = m.match([row_of_label[int(lid)] for lid in ref["label_id"]], [texts[t] for t in ref["text_index"]])
    assert got.shape == ref["score"].shape and np.abs(got - ref["score"]).max() <= PARITY_ATOL
    assert isinstance(m.match(row_of_label[int(ref["label_id"][0])], texts[0]), float)
    one_vs_all = m.match(row_of_label[int(ref["label_id"][0])], texts)  # one item against every text
    np.testing.assert_allclose(one_vs_all, got[:len(texts)], atol=PARITY_ATOL)


def test_classify_agrees_with_serving_and_defaults_to_evaluations_templates(m, export, media, eval_decode):
    from inprocess_backend import InProcessBackend

    from omnivl.data.config import DEFAULT_TEMPLATES
    from omnivl.serving import engine
    from omnivl.serving.config import ServeAppConfig
    from omnivl.serving.frontend import Frontend, model_summary

    labels, templates = ["circle", "square", "triangle"], ["a photo of a {}.", "a drawing of a {}."]
    cfg = ServeAppConfig(checkpoints={"a": export}, text_max_length=eval_decode["text_max_length"])
    front = Frontend(cfg, InProcessBackend(engine.load_checkpoint("a", export, "cpu")), {"a": model_summary(export)})
    body = {"media": {"data_b64": base64.b64encode(Path(media["images"][0]).read_bytes()).decode()},
            "labels": labels, "templates": templates}
    served, _ = asyncio.run(front.handle("classify", body, {}))
    got = m.classify(media["images"][0], labels, templates)
    assert list(got) == [x["label"] for x in served["labels"]]  # same order: most likely first
    for x in served["labels"]:
        assert abs(got[x["label"]] - x["probability"]) <= PARITY_ATOL
    assert abs(sum(got.values()) - 1.0) < 1e-5

    default = m.classify(media["videos"][0], labels)
    assert default == m.classify(media["videos"][0], labels, DEFAULT_TEMPLATES["video"])
    assert default != m.classify(media["videos"][0], labels, ["{}"])
    both = m.classify([media["images"][0], media["videos"][0]], labels)
    assert both == [m.classify(media["images"][0], labels), default]


# ---- inputs --------------------------------------------------------------------------------------------------


def test_pil_arrays_bytes_and_paths_agree(m, media):
    """For these small JPEGs (no reduced-scale JPEG draft applies) every input form gives the same pixels."""
    path = media["images"][0]
    pil = Image.open(path)
    ref = m.embed_images([path])
    for other in (pil, np.asarray(pil.convert("RGB")), Path(path).read_bytes(), Path(path)):
        np.testing.assert_allclose(m.embed_images(other), ref, atol=1e-6)
    grey = np.asarray(pil.convert("L"))
    assert m.preprocess(grey)[1].shape == (3, m.image_size, m.image_size)
    assert np.array_equal(m.embed_videos(Path(media["videos"][0]).read_bytes()), m.embed_videos(media["videos"][0]))


def test_video_frame_arrays_are_sampled_like_files(m):
    """A [T,H,W,3] array is a video: T segments, the middle frame of each (evaluation's sparse sampling)."""
    frames = np.stack([np.full((40, 56, 3), 20 * f, np.uint8) for f in range(8)])
    modality, pixels = m.preprocess(frames)
    assert modality == "video" and pixels.shape == (m.num_frames, 3, m.image_size, m.image_size)
    assert [int(p.mean()) for p in pixels] == [20, 60, 100, 140]  # frames 1, 3, 5, 7 of 8
    assert m.embed_videos([frames]).shape == (1, m.embed_dim)


def test_one_item_in_gives_one_out_and_lists_give_lists(m, media):
    img, vid = media["images"][0], media["videos"][0]
    assert isinstance(m.caption(img, max_new_tokens=3), str)
    caps = m.caption([img, vid], max_new_tokens=3)
    assert isinstance(caps, list) and len(caps) == 2 and caps[1] == m.caption(vid, max_new_tokens=3)
    assert m.caption(img, "a picture of", max_new_tokens=3) != m.caption(img, max_new_tokens=3)
    answers = m.answer([img, vid], ["what colour is it?", "where does it move?"], max_new_tokens=3)
    assert answers[1] == m.answer(vid, "where does it move?", max_new_tokens=3)
    assert m.embed_texts("one text").shape == (1, m.embed_dim)
    assert m.embed_images([]).shape == (0, m.embed_dim) and m.caption([]) == []
    assert isinstance(m.classify(img, ["a", "b"]), dict) and isinstance(m.classify([img], ["a", "b"]), list)


# ---- errors --------------------------------------------------------------------------------------------------


def test_load_names_the_missing_path_and_bad_arguments(export, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        omnivl.load(tmp_path / "nope")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty-run"))):
        omnivl.load(tmp_path / "empty-run")
    for kwargs, name in [({"precision": "fp8"}, "precision"), ({"device": "tpu"}, "device"),
                         ({"batch_size": 0}, "batch_size"), ({"text_max_length": 100_000}, "text_max_length")]:
        with pytest.raises(ValueError, match=f"^{name}: "):
            omnivl.load(export, **kwargs)
    with pytest.raises(TypeError, match="^path: "):
        omnivl.load(123)


def test_input_errors_name_the_argument(m, media, tmp_path):
    img, vid = media["images"][0], media["videos"][0]
    cases = [
        (lambda: m.embed_images([img, vid]), ValueError, r"images\[1\]: .*test_\d+\.mp4 is a video.*embed_videos"),
        (lambda: m.embed_images([img, Path(vid).read_bytes()]), ValueError, r"images\[1\]: the bytes is a video"),
        (lambda: m.embed_images(np.zeros((4, 8, 8, 3), np.uint8)), ValueError, r"images\[0\]: .* is a video"),
        (lambda: m.embed_videos([Image.open(img)]), ValueError, r"videos\[0\]: a PIL image is an image"),
        (lambda: m.embed_images([img, str(tmp_path / "gone.jpg")]), FileNotFoundError,
         r"images\[1\]: no such file: .*gone\.jpg"),
        (lambda: m.embed_images([img, 7]), TypeError, r"images\[1\]: expected a file path.*got int"),
        (lambda: m.embed_images(np.zeros((8, 8, 3), np.float32)), TypeError, r"images\[0\]: .*uint8.*float32"),
        (lambda: m.embed_images(b"\xff\xd8\xff not a jpeg"), ValueError, r"images\[0\]: the bytes: image could not"),
        (lambda: m.embed_texts(["ok", 3]), TypeError, r"texts\[1\]: expected str, got int"),
        (lambda: m.embed_texts(["ok", "  "]), ValueError, r"texts\[1\]: the text is empty"),
        (lambda: m.caption(img, method="sample"), ValueError, r"^method: must be one of"),
        (lambda: m.answer([img, vid, img], ["a?", "b?"]), ValueError, r"^question: 2 given for 3 media"),
        (lambda: m.classify(img, "circle"), TypeError, r"^labels: "),
        (lambda: m.classify(img, ["a", "a"]), ValueError, r"^labels: duplicate"),
        (lambda: m.classify(img, ["a", "b"], ["no slot"]), ValueError, r"^templates\[0\]: "),
        (lambda: m.match([img, vid], ["a", "b", "c"]), ValueError, r"^text: 3 given for 2 media"),
    ]
    for call, kind, pattern in cases:
        with pytest.raises(kind, match=pattern):
            call()


# ---- precision, batching, where exports live -----------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_autocasts_and_stays_close(m, export, media, precision):
    low = omnivl.load(export, device="cpu", precision=precision, text_max_length=m.text_max_length)
    ref, got = m.embed_videos(media["videos"]), low.embed_videos(media["videos"])
    assert got.dtype == np.float32
    assert 0 < np.abs(got - ref).max() < 0.05  # rounding shows (autocast is on) but stays small
    assert (got * ref).sum(axis=1).min() > 0.99


def test_cuda_agrees_with_cpu_or_says_there_is_no_gpu(m, export, media):
    """On a GPU machine the CUDA path agrees with CPU; without one, asking for it is a clear error."""
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no GPU"):
            omnivl.load(export, device="cuda")
        return
    gpu = omnivl.load(export, device="cuda", precision="bf16", text_max_length=m.text_max_length)
    assert gpu.device == "cuda"
    assert (gpu.embed_images(media["images"]) * m.embed_images(media["images"])).sum(axis=1).min() > 0.99


def test_batch_size_splits_forward_passes(export, media, monkeypatch):
    from omnivl.serving import engine

    passes = []
    real = engine.run_visual
    monkeypatch.setattr(engine, "run_visual", lambda lm, calls: passes.append(len(calls[0].pixels)) or real(lm, calls))
    small = omnivl.load(export, device="cpu", batch_size=2)
    got = small.embed_images(media["images"][:3])
    assert passes == [2, 1]
    passes.clear()
    np.testing.assert_allclose(omnivl.load(export, device="cpu").embed_images(media["images"][:3]), got, atol=1e-5)
    assert passes == [3]


def test_run_directory_and_s3_exports(m, run_dir, media, s3_bucket):
    from omnivl import storage

    img = media["images"][0]
    from_run = omnivl.load(run_dir, device="cpu")
    assert from_run.export == str(run_dir / "export")
    np.testing.assert_array_equal(from_run.embed_images(img), m.embed_images(img))

    storage.upload_dir(run_dir, f"{s3_bucket}/runs/pretrain")
    storage.write_bytes(f"{s3_bucket}/media/one.jpg", Path(img).read_bytes())
    remote = omnivl.load(f"{s3_bucket}/runs/pretrain", device="cpu")
    assert remote.export == f"{s3_bucket}/runs/pretrain/export"
    np.testing.assert_array_equal(remote.embed_images(f"{s3_bucket}/media/one.jpg"), m.embed_images(img))
    with pytest.raises(FileNotFoundError, match=re.escape(f"{s3_bucket}/media/two.jpg")):
        remote.embed_images(f"{s3_bucket}/media/two.jpg")


# ---- the documentation, run as written ---------------------------------------------------------------------

DOC = ROOT / "docs" / "python.md"
API = ("omnivl.load", "embed_images", "embed_videos", "embed_texts", "caption", "answer", "classify", "match")


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_docs_python_md_runs_as_written(run_dir, corpus, monkeypatch, capsys):
    """Every ```python block of docs/python.md, in order, in one namespace, with OMNIVL_EXPORT and
    OMNIVL_CORPUS (the page's convention) pointing at the tiny export's run directory and the test corpus."""
    blocks = python_blocks(DOC.read_text())
    code = "\n".join(blocks)
    assert len(blocks) >= 4 and all(name + "(" in code for name in API), "the page must show every API call"
    monkeypatch.setenv("OMNIVL_EXPORT", str(run_dir))
    monkeypatch.setenv("OMNIVL_CORPUS", str(corpus))
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/python.md block {i + 1}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"docs/python.md block {i + 1} failed: {exc!r}\n{block}") from exc
    assert "Model(" in capsys.readouterr().out


def test_python_block_extraction_finds_blocks():
    sample = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\n```\n"
    assert python_blocks(sample) == ["a = 1\n", "b = 2\n"]
