"""`omnivl data synth`, `omnivl data inspect` and `omnivl bench data` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import datafactory as mk
from omnivl.cli import main


def test_data_synth_cli(tmp_path, capsys):
    out = tmp_path / "corpus"
    args = ["data", "synth", "--out", str(out), "--seed", "5", "--image-size", "32", "--video-frames", "4"]
    for flag in ("--image-text", "--image-label", "--video-text", "--video-label"):
        args += [flag, "4"]
    assert main(args) == 0
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["seed"] == 5 and summary["config"]["image_size"] == 32
    assert "video_label" in capsys.readouterr().out


def test_data_inspect_video_contact_sheet(small_corpus, tmp_path, capsys):
    png = tmp_path / "sheet.png"
    code = main(["data", "inspect", str(small_corpus / "video_text" / "train.jsonl"), "--out", str(png),
                 "--samples", "3", "--image-size", "32", "--frames", "4"])
    assert code == 0
    sheet = Image.open(png)
    assert sheet.size[0] >= 4 * 32 and sheet.size[1] == 3 * (32 + 14)
    text = capsys.readouterr().out
    assert "(video, text)" in text and "skipped 0" in text


def test_data_inspect_reports_bad_files(tmp_path, capsys):
    (tmp_path / "ok.jpg").write_bytes(mk.noisy_jpeg())
    (tmp_path / "zero.jpg").write_bytes(b"")
    mk.write_jsonl(tmp_path / "m.jsonl", [{"path": "ok.jpg", "label": "cat"}, {"path": "zero.jpg", "label": "dog"},
                                          {"path": "gone.jpg", "label": "dog"}])
    code = main(["data", "inspect", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "s.png")])
    out = capsys.readouterr().out
    assert code == 1  # 2 of 3 skipped is over the 1% default
    report = json.loads(out[: out.rindex("}") + 1])
    assert report["kind"] == "label" and report["rows"] == 3 and report["decoded"] == 1
    assert report["bad_inputs"]["skipped_by_reason"] == {"empty_file": 1, "missing_file": 1}
    assert (tmp_path / "s.png").exists()


@pytest.mark.ray
def test_bench_data_runs_small(ray_local, capsys):
    assert main(["bench", "data", "--videos", "1", "--clips", "8", "--seconds", "1", "--fps", "8", "--width", "64",
                 "--height", "48", "--images", "8", "--workers", "1", "--image-size", "32", "--num-frames", "4",
                 "--batch-size", "2", "--image-batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "a/b" in out and "speedup" in out and "video (clips/s/core)" in out
