"""End to end: the tiny model's pretraining stages (a video-label warm-up, image-language, then joint images and
videos) with 2 CPU workers on an embedded Ray cluster, then held-out evaluation through the `evaluate` job. The
model must *learn*: held-out text->video and text->image retrieval well above chance; motion direction:
videos are told apart from captions that differ only in their direction word, so the temporal path is really
trained (only the order of frames separates "moving left" from "moving right"); and captions that name what
is in the picture or video."""

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
    # Direction: each held-out video against its caption and the same caption with the direction word reversed
    # (chance 50 %; 45 videos, so 65 % is p < 0.02 under chance; measured 80 % in both runs of this recipe).
    probe = m["video_text"]["direction probe: full caption, true vs reversed (%)"]
    assert probe["value"] >= 65.0, m["video_text"]
    # Reported, not asserted: the prompt-only probe ("a video of something moving left") and 4-way zero-shot
    # motion classification vary between runs of this recipe (e2e: 51-56 % and 30 %; a clean demo run: 100 %
    # and 56.7 %), see issue 5's note.
    assert "direction probe: motion only, true vs reversed (%)" in m["video_text"]
    assert "zero-shot top1" in m["video_label"]
    i2t = m["image_text"]["text->image R@1"]
    assert i2t["value"] >= 4 * i2t["chance"], m["image_text"]
    # Captioning: the generated caption must name the item's colour (6 colours, chance 1/6). A decoder that
    # ignores the picture and writes one caption for everything (last session's demo model, whose LM also trained on
    # class-name prompts) named it for 18 % of images and 11 % of videos; with the LM on captions only, 90 % and 69 %.
    # CIDEr is not the check: that decoder still scored 1.2x the chance CIDEr of this templated corpus.
    for source in ("image_text", "video_text"):
        assert "captioning CIDEr (x100)" in m[source]
        named = colour_named(run / "eval" / f"{source}_captions.jsonl")
        assert named >= 0.4, (source, named, m[source])


def colour_named(captions_jsonl: Path) -> float:
    """Fraction of generated captions that name the colour of their reference caption."""
    import json

    from omnivl.data.synth import COLOURS

    rows = [json.loads(line) for line in captions_jsonl.read_text().splitlines()]
    assert rows, captions_jsonl

    def colour(text: str) -> str | None:
        return next((c for c in COLOURS if c in text.split()), None)

    return sum(colour(r["generated"]) == colour(r["references"][0]) for r in rows) / len(rows)
