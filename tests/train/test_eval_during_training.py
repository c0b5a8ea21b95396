"""Evaluation during training on Ray Train (embedded cluster, 2 CPU workers, gloo): rank 0 scores held-out
retrieval and zero-shot every `every_steps` steps and at the end of the stage while rank 1 waits at the next
collective; the records land in metrics.jsonl beside the step records, on the driver's console and in the curves."""

from __future__ import annotations

import pytest

from omnivl.cluster.pretrain import METRICS_FILE, dedupe, run_job
from omnivl.spec import validate_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DECODE = {"image_size": 32, "num_frames": 2, "text_max_length": 16, "randaugment": False,
          "actors": {"min_size": 1, "max_size": 1, "batch_size": 16}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from omnivl.data.config import SynthConfig
    from omnivl.data.synth import generate

    out = tmp_path_factory.mktemp("live-eval-corpus")
    generate(SynthConfig(seed=0, image_size=32, video_frames=4, fps=4, image_text=80, image_label=40,
                         video_text=24, video_label=0, image_qa=0, video_qa=0, test_fraction=0.25), str(out))
    return out


@pytest.fixture(scope="module")
def _ran():
    return {}


@pytest.fixture
def trained(ray_local, corpus, tmp_path_factory, capfd, _ran):
    """A 6-step, 2-worker pretrain of image captions that evaluates every 4 steps (so at steps 4 and 6) on
    held-out image captions, shape labels and video captions. Made once per module; keeps what the driver
    printed."""
    if not _ran:
        src = lambda name, split: {"name": f"{name}_{split}", "manifest": str(corpus / name / f"{split}.jsonl"),
                                   "modality": name.split("_")[0], "kind": name.split("_")[1]}
        run = tmp_path_factory.mktemp("live-eval-run")
        job = validate_spec({
            "kind": "pretrain", "name": "live", "output": str(run), "seed": 0,
            "model": {"size": "tiny", "image_size": 32, "num_frames": 2, "queue_size": 0},
            "data": {"decode": DECODE, "sources": [src("image_text", "train")]},
            "stages": [{"name": "image", "sources": ["image_text_train"], "steps": 6, "batch_size": {"image": 8},
                        "optimizer": {"lr": 3e-4, "warmup_steps": 2}}],
            "scaling": {"num_workers": 2, "cpus_per_worker": 1},
            "checkpoint": {"every_steps": 3},
            "failure": {"max_failures": 0},
            "eval_during_training": {"every_steps": 4, "max_items": 8, "batch_size": 4, "sources": [
                src("image_text", "test"), src("image_label", "test"), src("video_text", "test")]},
        })
        summary = run_job(job)
        _ran.update(run=run, summary=summary, out=capfd.readouterr().out)
    return _ran


def test_eval_records_at_every_n_steps_and_the_end_with_chance_levels(trained, corpus):
    from omnivl.data.config import SourceConfig
    from omnivl.data.manifest import class_names
    from omnivl.train.metrics import is_eval, read_records

    classes = class_names(SourceConfig(name="x", manifest=str(corpus / "image_label" / "test.jsonl"),
                                       modality="image", kind="label"))
    assert len(classes) >= 2

    records = read_records(trained["run"] / METRICS_FILE)
    evals = [r for r in records if is_eval(r)]
    assert [(r["stage"], r["step"], r["total_steps"]) for r in evals] == [("image", 4, 6), ("image", 6, 6)]
    assert [r["step"] for r in records if not is_eval(r)] == [1, 2, 3, 4, 5, 6]
    for r in evals:
        n = r["eval_image_text_test_items"]
        assert 2 <= n <= 8
        for key in ("eval_image_text_test_t2i_r1", "eval_image_text_test_i2t_r1", "eval_video_text_test_t2v_r1",
                    "eval_video_text_test_v2t_r1", "eval_image_label_test_zeroshot_top1"):
            assert 0.0 <= r[key] <= 100.0 and 0.0 < r[f"{key}_chance"] < 100.0, key
        # one caption per synthetic image: text->image chance is 1 in n
        assert r["eval_image_text_test_t2i_r1_chance"] == pytest.approx(100.0 / n)
        # a uniform guess among the classes of the held-out manifest
        assert r["eval_image_label_test_zeroshot_top1_chance"] == pytest.approx(100.0 / len(classes))
        assert r["eval_seconds"] > 0
    # the model changed between the two evaluations, the held-out set did not
    assert evals[0]["eval_image_text_test_items"] == evals[1]["eval_image_text_test_items"]
    assert len(dedupe(records)) == 8  # 6 steps + 2 evaluations: none mistaken for the other


def test_eval_lines_on_the_console_and_a_panel_in_the_curves(trained):
    from omnivl.train.metrics import eval_line, is_eval, read_records

    out = trained["out"]
    assert "eval during training every 4 steps on image_text_test (8 rows)" in out
    evals = [r for r in read_records(trained["run"] / METRICS_FILE) if is_eval(r)]
    for r in evals:
        assert eval_line(r) in out
    assert "[image 4/6] eval: image_text_test t→i R@1" in out and "image_label_test zero-shot top-1" in out
    assert (trained["run"] / "plots" / "image.png").stat().st_size > 0
    assert trained["summary"]["stages"]["image"]["status"] == "ran"
