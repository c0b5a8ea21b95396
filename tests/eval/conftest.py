"""Fixtures of the evaluation tests: a small synthetic corpus and a tiny (randomly initialized) export."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnivl.data.config import SynthConfig
from torch_fixtures import save_random_export

CORPUS = SynthConfig(seed=3, image_size=32, video_frames=4, fps=4, image_text=24, image_label=24, video_text=12,
                     video_label=16, image_qa=30, video_qa=12, val_fraction=0.25, test_fraction=0.25)
DECODE = {"image_size": 32, "num_frames": 4, "text_max_length": 24,
          "actors": {"min_size": 1, "max_size": 1, "batch_size": 8}}


@pytest.fixture(scope="session")
def eval_corpus(tmp_path_factory) -> Path:
    from omnivl.data.synth import generate

    root = tmp_path_factory.mktemp("evalcorpus") / "c"
    generate(CORPUS, str(root))
    return root


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> str:
    return save_random_export(tmp_path_factory.mktemp("export") / "export", image_size=32, num_frames=4)


def eval_spec(corpus: Path, export: str, out: Path, tasks: list[str], **eval_fields) -> dict:
    """A raw `evaluate` spec over the corpus's test splits (every dataset), the image_label probe trained on
    its train split."""
    kinds = {"image_text": "text", "video_text": "text", "image_label": "label", "video_label": "label",
             "image_qa": "qa", "video_qa": "qa"}
    return {
        "kind": "evaluate", "name": "eval-test", "output": str(out), "checkpoint": export,
        "model": {"size": "tiny", "image_size": 32, "num_frames": 4},
        "data": {"decode": DECODE, "sources": [
            {"name": d, "manifest": str(corpus / d / "test.jsonl"), "modality": d.split("_")[0], "kind": k}
            for d, k in kinds.items()]},
        "eval": {"tasks": tasks, "probe_train": {"image_label": str(corpus / "image_label" / "train.jsonl")},
                 **eval_fields},
    }
