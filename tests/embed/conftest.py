"""Embed/index fixtures: a small synthetic corpus with a corrupt file and a text-only manifest, a tiny export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnivl.data.config import SynthConfig
from torch_fixtures import _frugal_torch, save_random_export  # noqa: F401  (_frugal_torch: autouse)

CORPUS = SynthConfig(seed=5, image_size=32, video_frames=4, fps=4, image_text=30, image_label=0, video_text=10,
                     video_label=0, image_qa=0, video_qa=0, val_fraction=0.0, test_fraction=0.0)
BAD_ROWS = 2  # rows added to the image manifest that cannot be embedded (a corrupt JPEG, a missing file)


@pytest.fixture(scope="session")
def embed_corpus(tmp_path_factory) -> Path:
    """The corpus, plus `images.jsonl` (its image rows + BAD_ROWS bad ones) and `captions.jsonl` (text only,
    with one blank caption and one line that is not JSON)."""
    from omnivl.data.synth import generate

    root = tmp_path_factory.mktemp("embedcorpus") / "c"
    generate(CORPUS, str(root))
    rows = [json.loads(x) for x in (root / "image_text" / "train.jsonl").read_text().splitlines()]
    (root / "image_text" / "media" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    images = rows + [{"path": "media/broken.jpg", "text": "broken"}, {"path": "media/missing.jpg", "text": "gone"}]
    (root / "image_text" / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in images))
    texts = [json.dumps({"text": r["text"]}) for r in rows] + [json.dumps({"text": "  "}), "{not json"]
    (root / "captions.jsonl").write_text("\n".join(texts) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> str:
    return save_random_export(tmp_path_factory.mktemp("embedexport") / "export", image_size=32, num_frames=4)
