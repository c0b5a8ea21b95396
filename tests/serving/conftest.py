"""Serving fixtures: tiny exported checkpoints, a small synthetic gallery, and one Ray Serve deployment per
module on the shared embedded Ray (`ray_local`). Serve is shut down after the module; Ray is left to conftest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from serve_helpers import app_args, free_port, wait_healthy


def export_tiny(path: Path, seed: int) -> str:
    from omnivl.models.config import ModelConfig
    from omnivl.models.export import save_export
    from omnivl.models.omnivl import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(size="tiny")
    save_export(build_model(cfg, load_pretrained=False).model, cfg, str(path))
    return str(path)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """Two tiny exports with different weights (multiplexing): {'a': uri, 'b': uri}."""
    root = tmp_path_factory.mktemp("exports")
    return {"a": export_tiny(root / "a", 0), "b": export_tiny(root / "b", 1)}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small synthetic corpus: ~14 train images with captions, a few videos."""
    from omnivl.data.config import SynthConfig
    from omnivl.data.synth import generate

    root = tmp_path_factory.mktemp("corpus") / "c"
    generate(SynthConfig(image_text=18, image_label=0, video_text=4, video_label=0, video_frames=8), str(root))
    return root


@pytest.fixture(scope="session")
def media(corpus) -> dict:
    """Bytes of one gallery image, one video, and their manifest rows."""
    rows = [json.loads(line) for line in (corpus / "image_text" / "train.jsonl").read_text().splitlines()]
    vrows = [json.loads(line) for line in (corpus / "video_text" / "train.jsonl").read_text().splitlines()]
    return {"image": (corpus / "image_text" / rows[3]["path"]).read_bytes(), "image_row": 3, "rows": rows,
            "video": (corpus / "video_text" / vrows[0]["path"]).read_bytes(),
            "image_path": str(corpus / "image_text" / rows[3]["path"]), "corpus_dir": corpus / "image_text"}


@pytest.fixture(scope="module")
def _serve_module():
    """Holds what this module deployed; shuts Serve down (only Serve: Ray belongs to conftest) at module end."""
    state: dict = {}
    yield state
    if state:
        from ray import serve

        serve.shutdown()


@pytest.fixture
def served(ray_local, _serve_module, checkpoints, corpus) -> str:
    """URL of the app (auth on, two checkpoints, gallery), deployed once per module on the embedded Ray."""
    if "url" not in _serve_module:
        from ray import serve

        from omnivl.cluster.serve_app import build_app

        torch.set_num_threads(1)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(app_args(checkpoints, corpus)), name="omnivl-test", route_prefix="/")
        _serve_module["url"] = f"http://127.0.0.1:{port}"
        wait_healthy(_serve_module["url"])
    return _serve_module["url"]
