"""End to end: both pretraining stages of the tiny model on the synthetic corpus with 2 CPU workers on an
embedded Ray cluster, then held-out evaluation. The model must *learn*: held-out text->video retrieval well
above chance, and telling a caption from the same caption with the motion direction reversed above chance
(so the temporal path is really trained), plus zero-shot motion classification above chance."""

from pathlib import Path

import pytest

from omnivl.cluster.evaluate import run_job as evaluate
from omnivl.cluster.pretrain import run_job as pretrain
from omnivl.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray, pytest.mark.slow]


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
    probe = m["video_text"]["direction probe: true vs reversed caption (%)"]
    assert probe["value"] >= 60.0, m["video_text"]
    zs = m["video_label"]["zero-shot top1"]
    assert zs["value"] >= zs["chance"] + 15, m["video_label"]
    i2t = m["image_text"]["text->image R@1"]
    assert i2t["value"] >= 4 * i2t["chance"], m["image_text"]
