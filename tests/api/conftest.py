"""Fixtures of the Python API tests: a small synthetic corpus, a tiny random-weight export at a geometry smaller
than the corpus's media (so the eval transforms resize and sample frames), and a run directory holding it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from omnivl.data.config import SynthConfig
from torch_fixtures import _frugal_torch, save_random_export  # noqa: F401  (_frugal_torch: autouse)

# 48-pixel media with 8 frames, for a model that takes 32-pixel images and 4 frames.
CORPUS = SynthConfig(seed=5, image_size=48, video_frames=8, fps=4, image_text=8, image_label=0, video_text=6,
                     video_label=0, image_qa=6, video_qa=0, val_fraction=0.0, test_fraction=0.5)
IMAGE_SIZE, NUM_FRAMES = 32, 4
# Evaluation's decode settings for that model (`data.decode` of an evaluate job).
DECODE = {"image_size": IMAGE_SIZE, "num_frames": NUM_FRAMES, "text_max_length": 24}


@pytest.fixture(scope="session")
def eval_decode() -> dict:
    """Evaluation's `data.decode` for the tiny export: its geometry and a text length other than the default."""
    return dict(DECODE)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from omnivl.data.synth import generate

    root = tmp_path_factory.mktemp("apicorpus") / "c"
    generate(CORPUS, str(root))
    return root


@pytest.fixture(scope="session")
def export(tmp_path_factory) -> str:
    return save_random_export(tmp_path_factory.mktemp("apiexport") / "export", image_size=IMAGE_SIZE,
                              num_frames=NUM_FRAMES)


@pytest.fixture(scope="session")
def run_dir(export, tmp_path_factory) -> Path:
    """A training run directory as pretraining leaves it, reduced to what loading reads: `export/`."""
    run = tmp_path_factory.mktemp("apirun") / "pretrain-0123"
    shutil.copytree(export, run / "export")
    return run
