"""End to end: the tiny model's pretraining stages (image-language, a video-label warm-up, then joint images and
videos) with 2 CPU workers on an embedded Ray cluster, then held-out evaluation through the `evaluate` job. The
model must *learn*: held-out text->video and text->image retrieval well above chance, image captioning (CIDEr)
above its chance level, and motion direction: videos are told apart from captions that differ only in their
direction word, and 4-way zero-shot motion classification is well above chance, so the temporal path is
really trained (time-reversal alone separates "moving left" from "moving right")."""

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
          for i, n in enumerate(("image_text", "video_text", "video_label"))],
    ])
    m = evaluate(ev)["metrics"]
    t2v = m["video_text"]["text->video R@1"]
    assert t2v["value"] >= 4 * t2v["chance"], m["video_text"]
    # Direction: true caption vs the same caption with the direction reversed (chance 50 %), and "moving
    # left/right/up/down" zero-shot over held-out videos (chance 25 %).
    for probe in ("direction probe: full caption, true vs reversed (%)",
                  "direction probe: motion only, true vs reversed (%)"):
        assert m["video_text"][probe]["value"] >= 70.0, (probe, m["video_text"])
    zero_shot = m["video_label"]["zero-shot top1"]
    assert zero_shot["value"] >= 2 * zero_shot["chance"], m["video_label"]
    i2t = m["image_text"]["text->image R@1"]
    assert i2t["value"] >= 4 * i2t["chance"], m["image_text"]
    # The generation decoder describes held-out images better than another item's caption would.
    cider = m["image_text"]["captioning CIDEr (x100)"]
    assert cider["value"] >= 1.3 * cider["chance"], m["image_text"]
