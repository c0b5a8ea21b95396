"""Pretraining on Ray Train (embedded cluster, CPU workers, gloo): resume after a killed worker, re-run
after an interruption, fallback past a damaged checkpoint, checkpoints and export on s3://."""

import json
import os

import pytest
import torch

from omnivl import storage
from omnivl.cluster.pretrain import METRICS_FILE, dedupe, run_job
from omnivl.spec import validate_spec
from omnivl.train import checkpoint as ck

pytestmark = pytest.mark.ray


def spec(corpus, out, *, steps=10, every=3, workers=1, joint_steps=None, **failure):
    src = lambda name, modality, kind: {"name": name, "manifest": str(corpus / name / "train.jsonl"),
                                        "modality": modality, "kind": kind}
    stages = [{"name": "image", "sources": ["image_text"], "steps": steps, "batch_size": {"image": 8},
               "optimizer": {"lr": 3e-4, "warmup_steps": 2}}]
    if joint_steps:
        stages.append({"name": "joint", "sources": ["image_text", "video_text"], "steps": joint_steps,
                       "batch_size": {"image": 8, "video": 4}, "optimizer": {"lr": 1e-4, "warmup_steps": 2}})
    return validate_spec({
        "kind": "pretrain", "name": "t", "output": str(out), "seed": 0,
        "model": {"size": "tiny", "num_frames": 2},
        "data": {"decode": {"image_size": 64, "num_frames": 2, "text_max_length": 16, "randaugment": False,
                            "actors": {"min_size": 1, "max_size": 1, "batch_size": 16}},
                 "sources": [src("image_text", "image", "text"), src("video_text", "video", "text")]},
        "stages": stages,
        "scaling": {"num_workers": workers, "cpus_per_worker": 1},
        "checkpoint": {"every_steps": every, "keep_last": 2},
        "failure": {"max_failures": 1, **failure},
    })


def logged_steps(run_dir, stage="image"):
    from omnivl.train.metrics import read_records

    return [r["step"] for r in read_records(os.path.join(run_dir, METRICS_FILE)) if r["stage"] == stage]


def final_state(run_dir, index=0, stage="image"):
    return ck.load(ck.final_of(str(run_dir), index, stage))


def test_killed_worker_is_replaced_and_training_resumes(ray_local, corpus, tmp_path):
    run = tmp_path / "run"
    summary = run_job(spec(corpus, run, steps=10, every=3, workers=2, inject_failure_at_step=7))
    assert (run / ".fault-injected-image").exists()  # rank 1 really died at step 7
    # steps 1..7 ran, the group was replaced, training resumed from the checkpoint at step 6
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10]
    state = final_state(run)
    assert state["step"] == 10 and state["world_size"] == 2
    assert summary["stages"]["image"]["steps"] == 10
    assert len(dedupe([{"stage": "image", "step": s} for s in logged_steps(run)])) == 10


def test_interrupted_job_rerun_continues_and_skips_damaged_checkpoint(ray_local, corpus, tmp_path, capfd):
    from ray.train import TrainingFailedError

    run = tmp_path / "run"
    job = spec(corpus, run, steps=10, every=3, max_failures=0, inject_failure_at_step=8)
    with pytest.raises(TrainingFailedError):
        run_job(job)  # interrupted: no retries allowed
    assert [r.step for r in ck.list_checkpoints(str(run), 0, "image")] == [3, 6]
    at6 = ck.load(ck.list_checkpoints(str(run), 0, "image")[-1])

    # a crash while writing the checkpoint at step 6 left it damaged: resume must fall back to step 3
    damaged = os.path.join(ck.list_checkpoints(str(run), 0, "image")[-1].uri, ck.STATE)
    data = open(damaged, "rb").read()
    open(damaged, "wb").write(data[: len(data) // 3])

    run_job(job)  # the same spec again
    # step 8 ran but the process died before logging it; the re-run resumed from step 3
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7, 8, 9, 10]
    state = final_state(run)
    assert state["step"] == 10
    # optimizer, queues and their pointers continued from step 3 rather than from scratch
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {10.0}
    fill = int(state["task"]["vlc.queues.shared.filled"])
    assert fill == 10 * 8  # 10 steps x global batch 8 enqueued; a fresh start would give 7 x 8
    assert at6["step"] == 6


def test_stage_two_starts_only_from_a_final_stage_one(ray_local, corpus, tmp_path):
    from omnivl.cluster.pretrain import starting_point

    run = tmp_path / "run"
    job = spec(corpus, run, steps=4, every=2, joint_steps=4)
    ck.save(str(run), 0, "image", 2, {"task": {}}, final=False)
    with pytest.raises(RuntimeError, match="no final checkpoint"):
        starting_point(job, 1, str(run))


def test_checkpoints_and_export_on_s3(ray_local, corpus, s3_bucket):
    from omnivl.models.export import load_export

    run = f"{s3_bucket}/runs/t"
    summary = run_job(spec(corpus, run, steps=4, every=2, joint_steps=2))
    assert summary["export"] == f"{run}/export"
    assert [r.step for r in ck.list_checkpoints(run, 0, "image")] == [2, 4]
    assert ck.final_of(run, 1, "joint").step == 2
    model = load_export(summary["export"])
    pixels = torch.zeros(2, 2, 3, 64, 64, dtype=torch.uint8)
    assert model.encode_video(pixels).shape[0] == 2
    assert storage.exists(f"{run}/plots/joint.png") and storage.exists(f"{run}/{METRICS_FILE}")
    # re-running a finished job does nothing new
    again = run_job(spec(corpus, run, steps=4, every=2, joint_steps=2))
    assert {s["status"] for s in again["stages"].values()} == {"skipped"}


def test_supervised_warm_up_stage_hands_the_next_stage_its_encoder_not_its_head(ray_local, corpus, tmp_path):
    """A `cls`-only stage on the shape labels, then an image-text stage: the warm-up logs its loss and accuracy,
    its final checkpoint holds the head, and the next stage and the export start without it."""
    from omnivl.train.metrics import read_records

    raw = spec(corpus, tmp_path / "run", steps=3, every=3).to_dict()
    raw["data"]["sources"].append({"name": "shapes", "manifest": str(corpus / "image_label" / "train.jsonl"),
                                   "modality": "image", "kind": "label"})
    raw["stages"].insert(0, {"name": "warm", "sources": ["shapes"], "steps": 6, "batch_size": {"image": 8},
                             "optimizer": {"lr": 5e-4, "warmup_steps": 2},
                             "loss_weights": {"vlc": 0, "vlm": 0, "lm": 0, "cls": 1}})
    run = tmp_path / "run"
    summary = run_job(validate_spec(raw))
    assert [s["status"] for s in summary["stages"].values()] == ["ran", "ran"]
    warm = [r for r in read_records(run / METRICS_FILE) if r["stage"] == "warm"]
    assert len(warm) == 6 and all(r["loss_cls"] > 0 and 0 <= r["cls_accuracy"] <= 1 for r in warm)
    assert all(r["loss_vlc"] == r["loss_lm"] == 0 for r in warm)
    head = [k for k in final_state(run, 0, "warm")["task"] if k.startswith("classifier.")]
    assert head and final_state(run, 0, "warm")["task"]["classifier.weight"].shape[0] == 4  # the 4 shapes
    assert not any(k.startswith("classifier.") for k in final_state(run, 1, "image")["task"])
    assert (run / "export" / "model.safetensors").exists()
