"""Pretraining on Ray Train (embedded cluster, CPU workers, gloo), with DDP and with FSDP: resume after a
killed worker, re-run after an interruption (on the same, more or fewer workers), fallback past a damaged
checkpoint, checkpoints and export on s3://. The interrupted runs are made once per parallelism and
copied by the tests that resume them (each Ray Train run costs about a minute here)."""

import os

import pytest
import torch

from omnivl import storage
from omnivl.cluster.pretrain import METRICS_FILE, dedupe, run_job
from omnivl.spec import validate_spec
from omnivl.train import checkpoint as ck

pytestmark = pytest.mark.ray


PARALLELISM = ["ddp", "fsdp"]


def spec(corpus, out, *, steps=10, every=3, workers=1, joint_steps=None, parallelism="ddp", image_batch=8,
         **failure):
    src = lambda name, modality, kind: {"name": name, "manifest": str(corpus / name / "train.jsonl"),
                                        "modality": modality, "kind": kind}
    stages = [{"name": "image", "sources": ["image_text"], "steps": steps, "batch_size": {"image": image_batch},
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
        "scaling": {"num_workers": workers, "cpus_per_worker": 1, "parallelism": parallelism},
        "checkpoint": {"every_steps": every, "keep_last": 2},
        "failure": {"max_failures": 1, **failure},
    })


def logged_steps(run_dir, stage="image"):
    from omnivl.train.metrics import read_records

    return [r["step"] for r in read_records(os.path.join(run_dir, METRICS_FILE)) if r["stage"] == stage]


def final_state(run_dir, index=0, stage="image"):
    return ck.read_full(ck.final_of(str(run_dir), index, stage))


def step_records(run_dir, stage="image"):
    from omnivl.train.metrics import read_records

    return [r for r in read_records(os.path.join(run_dir, METRICS_FILE)) if r["stage"] == stage]


@pytest.mark.parametrize("parallelism", PARALLELISM)
def test_killed_worker_is_replaced_and_training_resumes(ray_local, corpus, tmp_path, parallelism):
    run = tmp_path / "run"
    summary = run_job(spec(corpus, run, steps=10, every=3, workers=2, inject_failure_at_step=7,
                           parallelism=parallelism))
    assert (run / ".fault-injected-image").exists()  # rank 1 really died at step 7
    # steps 1..7 ran, the group was replaced, training resumed from the checkpoint at step 6
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10]
    state = final_state(run)["train_state"]
    assert state["step"] == 10 and state["world_size"] == 2
    assert summary["stages"]["image"]["steps"] == 10
    assert len(dedupe([{"stage": "image", "step": s} for s in logged_steps(run)])) == 10


INTERRUPTED_STEPS, INTERRUPTED_BATCH = 10, 12  # 12 splits over 1, 2 and 3 workers
_INTERRUPTED: dict[str, object] = {}


@pytest.fixture
def interrupted(ray_local, corpus, tmp_path_factory):
    """`interrupted(parallelism)`: a run directory where 2 workers trained a 10-step stage with checkpoints at
    steps 3 and 6, and then stopped: rank 1 died in step 8 and retries were off. Made once per parallelism
    (every test copies it): the runs that resume it are what the tests compare."""
    from ray.train import TrainingFailedError

    def make(parallelism: str):
        if parallelism not in _INTERRUPTED:
            run = tmp_path_factory.mktemp(f"interrupted-{parallelism}") / "run"
            with pytest.raises(TrainingFailedError):
                run_job(interrupted_spec(corpus, run, 2, parallelism))  # no retries allowed
            _INTERRUPTED[parallelism] = run
        return _INTERRUPTED[parallelism]

    return make


def interrupted_spec(corpus, out, workers, parallelism="fsdp"):
    return spec(corpus, out, steps=INTERRUPTED_STEPS, every=3, workers=workers, parallelism=parallelism,
                image_batch=INTERRUPTED_BATCH, max_failures=0, inject_failure_at_step=8)


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_interrupted_job_rerun_continues_and_skips_damaged_checkpoint(interrupted, corpus, tmp_path):
    """FSDP only: the fallback past a damaged shard does not depend on the parallelism, FSDP's checkpoint has
    the most shards, and DDP's resume on Ray is covered by the killed-worker test (this case cost 89 s)."""
    parallelism = "fsdp"
    run = copy_run(interrupted(parallelism), tmp_path / "run")
    assert [r.step for r in ck.list_checkpoints(str(run), 0, "image")] == [3, 6]
    at6 = ck.read_full(ck.list_checkpoints(str(run), 0, "image")[-1])["train_state"]

    # a crash while writing the checkpoint at step 6 left one rank's shard damaged: resume falls back to step 3
    state_dir = os.path.join(ck.list_checkpoints(str(run), 0, "image")[-1].uri, ck.STATE_DIR)
    damaged = os.path.join(state_dir, sorted(n for n in os.listdir(state_dir) if n.endswith(".distcp"))[-1])
    data = open(damaged, "rb").read()
    open(damaged, "wb").write(data[: len(data) // 3])

    run_job(interrupted_spec(corpus, run, 2, parallelism))  # the same spec again
    # rank 1 died in step 8 (rank 0 logged it); the re-run resumed from step 3
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6, 7, 8, 4, 5, 6, 7, 8, 9, 10]
    state = final_state(run)
    assert state["train_state"]["step"] == 10
    # optimizer, queues and their pointers continued from step 3 rather than from scratch
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert max(adam_steps) == 10.0  # parameters an image step never uses (temporal attention) have no state
    fill = int(state["task"]["vlc.queues.shared.filled"])
    assert fill == 10 * INTERRUPTED_BATCH  # 10 steps x global batch enqueued; a fresh start would give 7 x 12
    assert at6["step"] == 6


@pytest.mark.parametrize("workers", [3, 1])
def test_stopped_on_two_workers_resumes_on_another_count(interrupted, corpus, tmp_path, workers):
    """What an autoscaling cluster does to an elastic job: saved by 2 FSDP workers, resumed by 3 or by 1. The
    global batch (12) and the LR schedule stay as written; optimizer, momentum encoders and queues continue."""
    from omnivl.train.schedule import lr_at

    run = copy_run(interrupted("fsdp"), tmp_path / "run")
    job = interrupted_spec(corpus, run, workers)
    run_job(job)
    records = step_records(run)
    before, after = records[:8], records[8:]  # rank 1 died in step 8 (rank 0 logged it), the checkpoint is at 6
    assert [r["step"] for r in before] == list(range(1, 9)) and {r["world_size"] for r in before} == {2}
    assert [r["step"] for r in after] == [7, 8, 9, 10] and {r["world_size"] for r in after} == {workers}
    assert all(r["lr"] == pytest.approx(lr_at(r["step"] - 1, INTERRUPTED_STEPS, job.stages[0].optimizer))
               for r in after)
    # step 7 again, on other rows: the contrastive term depends on which rows meet in a batch (it ranges over
    # 2.5-5.8 within one run here), the captioning loss hardly does, and it is far from a fresh model's
    assert after[0]["loss_lm"] == pytest.approx(before[6]["loss_lm"], rel=0.02)
    assert after[0]["loss_lm"] < before[0]["loss_lm"] * 0.95
    state = final_state(run)
    assert state["train_state"]["step"] == INTERRUPTED_STEPS and state["train_state"]["world_size"] == workers
    assert int(state["task"]["vlc.queues.shared.filled"]) == INTERRUPTED_STEPS * INTERRUPTED_BATCH
    assert max(float(s["step"]) for s in state["optimizer"]["state"].values()) == INTERRUPTED_STEPS


def test_stage_two_starts_only_from_a_final_stage_one(ray_local, corpus, tmp_path):
    from omnivl.cluster.pretrain import starting_point

    run = tmp_path / "run"
    job = spec(corpus, run, steps=4, every=2, joint_steps=4)
    ck.CheckpointWriter(str(run), 0, "image").save(2, {"task": {"w": torch.zeros(1)}}, {"step": 2}, final=False)
    with pytest.raises(RuntimeError, match="no final checkpoint"):
        starting_point(job, 1, str(run))


def test_checkpoints_and_export_on_s3(ray_local, corpus, s3_bucket):
    """FSDP on 2 workers (each uploads its own shards); DDP's S3 checkpoints: test_sharded_training.py."""
    from omnivl.models.export import load_export

    run = f"{s3_bucket}/runs/t"
    parallelism = "fsdp"
    summary = run_job(spec(corpus, run, steps=4, every=2, joint_steps=2, workers=2, parallelism=parallelism))
    assert summary["export"] == f"{run}/export"
    assert [r.step for r in ck.list_checkpoints(run, 0, "image")] == [2, 4]
    assert ck.final_of(run, 1, "joint").step == 2
    model = load_export(summary["export"])
    pixels = torch.zeros(2, 2, 3, 64, 64, dtype=torch.uint8)
    assert model.encode_video(pixels).shape[0] == 2
    assert storage.exists(f"{run}/plots/joint.png") and storage.exists(f"{run}/{METRICS_FILE}")
    # re-running a finished job does nothing new
    again = run_job(spec(corpus, run, steps=4, every=2, joint_steps=2, workers=2, parallelism=parallelism))
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
