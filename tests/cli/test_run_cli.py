"""`omnivl run` end to end through the real CLI: a pipeline spec on the embedded local Ray, re-run skipped,
a changed step re-run; `omnivl validate` exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def omnivl(*args, cwd=None, timeout=300):
    env = {**os.environ, "OMNIVL_NUM_CPUS": "2", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "omnivl", *args], cwd=cwd or ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def test_validate_exit_codes(tmp_path):
    ok = omnivl("validate", "jobs/demo.yaml", "jobs/synth.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "ok      jobs/demo.yaml: pipeline 'demo'" in ok.stdout
    bad = omnivl("validate", "jobs/pretrain_tiny.yaml", "--set", "stages[0].batch_size.image=-2")
    assert bad.returncode == 1
    assert "stages[0].batch_size.image: must be >= 0, got -2" in bad.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: synth\ncorpus: {seed: 1, colours: 3}\n")
    out = omnivl("validate", str(broken))
    assert out.returncode == 1 and "corpus.colours: unknown key" in out.stderr


def test_run_refuses_an_invalid_spec_before_starting_ray(tmp_path):
    out = omnivl("run", "jobs/demo.yaml", "--set", "steps[9].job.seed=1")
    assert out.returncode == 2
    assert "--set steps[9].job.seed=1: index 9 out of range" in out.stderr
    assert "running on" not in out.stdout


@pytest.mark.ray
def test_pipeline_run_rerun_and_change(tmp_path):
    spec = tmp_path / "pipe.yaml"
    spec.write_text(f"""
kind: pipeline
name: smoke
output_root: {tmp_path / 'runs'}
steps:
  - name: corpus
    job:
      kind: synth
      corpus: {{seed: 3, image_text: 12, image_label: 8, video_text: 6, video_label: 4, video_frames: 4}}
""")
    first = omnivl("run", str(spec), "--summary-out", str(tmp_path / "s1.json"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "running on embedded local Ray" in first.stdout
    assert "[1/1] corpus: running (synth)" in first.stdout
    summary = json.loads((tmp_path / "s1.json").read_text())
    out_dir = Path(summary["corpus"]["output"])
    assert (out_dir / "_SUCCESS.json").exists()
    assert (out_dir / "video_text" / "train.jsonl").exists()
    assert any(p.suffix == ".mp4" for p in (out_dir / "video_text" / "media").iterdir())

    again = omnivl("run", str(spec))
    assert again.returncode == 0, again.stderr
    assert "[1/1] corpus: done already, skipped" in again.stdout

    changed = omnivl("run", str(spec), "--set", "steps[0].job.corpus.seed=4", "--summary-out", str(tmp_path / "s2.json"))
    assert changed.returncode == 0, changed.stderr
    assert "[1/1] corpus: running (synth)" in changed.stdout
    assert json.loads((tmp_path / "s2.json").read_text())["corpus"]["output"] != str(out_dir)
