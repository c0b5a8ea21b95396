"""The robustness table's plain parts: the overrides of a run, reading a run's metrics files, the bars.

The figures themselves come from real runs (tests/e2e/test_pretrain_learns.py runs the recipe on a variant)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from omnivl.pipeline import robustness as rb
from omnivl.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
DEMO_STEPS = [("corpus", "synth"), ("pretrain", "pretrain"), ("evaluate", "evaluate"), ("finetune", "finetune")]


def test_a_variant_run_changes_only_the_variant_the_seeds_and_the_output_root():
    sets = rb.run_overrides(DEMO_STEPS, "wide", 1, "/tmp/x/wide-s1")
    assert sets == ["output_root=/tmp/x/wide-s1", "steps[0].job.corpus.variant=wide", "steps[0].job.corpus.seed=1",
                    "steps[0].job.corpus.image_size=null", "steps[0].job.corpus.video_frames=null",
                    "steps[0].job.corpus.fps=null", "steps[1].job.seed=1", "steps[3].job.seed=1"]
    # the demo variant keeps the spec's pinned look
    assert not any("image_size" in s for s in rb.run_overrides(DEMO_STEPS, "demo", 0, "o"))


def test_the_overrides_validate_against_the_demo_spec():
    spec = str(REPO / "jobs" / "demo.yaml")
    job = load_spec(spec, rb.run_overrides(DEMO_STEPS, "small-objects", 3, "/tmp/rb"))
    corpus = job.step_jobs[0].corpus
    assert (corpus.variant, corpus.seed, corpus.image_size, corpus.fps) == ("small-objects", 3, None, None)
    assert job.step_jobs[1].seed == 3 and job.step_jobs[3].seed == 3 and job.output_root == "/tmp/rb"


def _write_run(root: Path, evaluate: dict, finetune: dict | None = None) -> None:
    for step, sources in (("evaluate", evaluate), ("finetune", finetune)):
        if sources is None:
            continue
        d = root / "latest" / step / ("eval" if step == "finetune" else "")
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps({"sources": {k: {"table": v} for k, v in sources.items()}}))


def test_figures_are_read_from_the_steps_metrics_and_judged_against_their_bars(tmp_path):
    _write_run(tmp_path, {
        "video_text": {"direction probe: full caption, true vs reversed (%)": [79.0, 50.0],
                       "text->video R@1": [12.0, 2.2], "captioning BLEU-4 (x100)": [9.0, 8.6],
                       "captioning CIDEr (x100)": [90.0, 94.5]},
        "video_label": {"zero-shot top1": [50.0, 25.0], "linear probe top1": [62.4, 25.0]},
        "image_label": {"zero-shot top1": [49.9, 25.0], "linear probe top1": [62.5, 25.0]},
        "image_text": {"text->image R@1": [5.6, 1.1]},
    }, {"video_qa_test": {"QA direction exact match (%)": [60.0, 25.0], "QA exact match (%)": [50.0, 30.0]}})
    figures = rb.read_figures(tmp_path)
    assert figures["video QA direction (fine-tuned)"] == (60.0, 25.0)
    assert figures["video QA all (fine-tuned)"] == (50.0, 30.0)
    v = rb.verdicts(figures)
    assert v == {"direction probe (true vs reversed caption)": False, "zero-shot direction top-1": True,
                 "zero-shot shape top-1": False, "linear probe direction": False, "linear probe shape": True,
                 "text->video R@1": True, "text->image R@1": True, "video captioning BLEU-4": True,
                 "video captioning CIDEr": False}
    table = rb.markdown({"wide-s0": figures})
    assert "| zero-shot shape top-1 | >= 2x chance | 49.9 (25.0) ✗ |" in table
    assert "| **bars cleared** | | 5/9 |" in table


def test_a_run_without_metrics_misses_every_bar(tmp_path):
    assert rb.read_figures(tmp_path) == {}
    assert not any(rb.verdicts({}).values())
    assert "| text->video R@1 | >= 5x chance | - |" in rb.markdown({"demo-s0": {}})


def test_the_command_names_an_unknown_variant_before_running_anything(tmp_path):
    done = subprocess.run([sys.executable, "-m", "omnivl", "bench", "robustness", str(REPO / "jobs" / "demo.yaml"),
                           "--variants", "demo,tall", "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0 and "unknown ['tall']" in done.stderr
    assert not any(tmp_path.iterdir())


def test_a_spec_without_a_corpus_step_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not 'pretrain'"):
        rb.run_table(str(REPO / "jobs" / "pretrain_tiny.yaml"), ["wide"], [0], tmp_path)
