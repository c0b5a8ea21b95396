"""End to end: the tiny model's pretraining stages (a video-label warm-up, a supervised warm-up of the visual
encoder on shape labels, image-language, then joint images and videos) with 2 CPU workers on an embedded Ray
cluster, then held-out evaluation through the `evaluate` job. The model must *learn*: held-out text->video and
text->image retrieval well above chance, zero-shot shape classification of images, and motion direction:
videos are told apart from captions that differ only in their direction word, so the temporal path is really
trained (only the order of frames separates "moving left" from "moving right")."""

from pathlib import Path

import pytest

from omnivl.cluster.evaluate import run_job as evaluate
from omnivl.cluster.pretrain import run_job as pretrain
from omnivl.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(2400)]


def test_two_stage_pretraining_learns(ray_local, tmp_path_factory):
    from omnivl.data.config import SynthConfig
    from omnivl.data.synth import generate

    corpus = tmp_path_factory.mktemp("corpus")
    generate(SynthConfig(seed=0), str(corpus))
    run = tmp_path_factory.mktemp("run")
    job = load_spec(ROOT / "jobs" / "pretrain_tiny.yaml", [
        f"output={run}",
        *[f"data.sources[{i}].manifest={corpus}/{n}/train.jsonl"
          for i, n in enumerate(("image_text", "image_label", "video_text", "video_label"))],
    ])
    assert job.scaling.num_workers == 2
    summary = pretrain(job)
    assert {s["status"] for s in summary["stages"].values()} == {"ran"}

    ev = load_spec(ROOT / "jobs" / "evaluate_tiny.yaml", [
        f"checkpoint={summary['export']}", f"output={run}/eval",
        *[f"data.sources[{i}].manifest={corpus}/{n}/test.jsonl"
          for i, n in enumerate(("image_text", "video_text", "video_label", "image_label"))],
    ])
    m = evaluate(ev)["metrics"]
    t2v = m["video_text"]["text->video R@1"]
    assert t2v["value"] >= 4 * t2v["chance"], m["video_text"]
    # Direction: each held-out video against its caption and the same caption with the direction word reversed
    # (chance 50 %; 45 videos, so 65 % is p < 0.02 under chance; measured 93-100 % in this recipe's demo runs).
    probe = m["video_text"]["direction probe: full caption, true vs reversed (%)"]
    assert probe["value"] >= 65.0, m["video_text"]
    # Reported, not asserted: the prompt-only probe ("a video of something moving left") and 4-way zero-shot
    # motion classification vary between runs (this recipe's demo runs: 84-100 % and 50-100 %; 30 videos).
    assert "direction probe: motion only, true vs reversed (%)" in m["video_text"]
    assert "zero-shot top1" in m["video_label"]
    i2t = m["image_text"]["text->image R@1"]
    assert i2t["value"] >= 4 * i2t["chance"], m["image_text"]
    # Shapes, zero-shot from class-name prompts (4 classes, 180 held-out images; the most frequent class is 29 %
    # of them). Before the supervised warm-up stage this stayed at chance in every recipe (issue 6's notes).
    shapes = m["image_label"]["zero-shot top1"]
    assert shapes["value"] >= 2 * shapes["chance"], m["image_label"]
    # Captioning is reported, not asserted: the demo run of this recipe scored CIDEr 2.1x chance on images but
    # only 1.45x on videos, whose captioner names "moving left" for most clips. See issue 6's notes.
    assert "captioning CIDEr (x100)" in m["image_text"]
