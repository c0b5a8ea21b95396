"""Data parallelism and sharded checkpoints across processes (gloo on CPU, the way Ray Train runs workers):

- 2-process FSDP vs a 1-process reference: the same losses and updated parameters for 3 steps, momentum
  encoders and queue contents included; and FSDP vs DDP on 2 processes with every objective.
- A checkpoint saved by 2 FSDP workers loads exactly (weights, momentum encoders, queues, optimizer) onto 3
  workers, and a stage resumed on 3 workers finishes with the same step count, LR and queue contents.
- 2 workers, DDP and FSDP, write one checkpoint to s3:// (each rank uploads its own shards) that one process
  reads back whole.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from omnivl.train import checkpoint as ck
from sharded_workers import GLOBAL_BATCH, MODEL, env_for, global_batch, plan, rank_rows, spawn

STEPS = [("image", 0), ("video", 0), ("image", 1)]
LR = 0.1


def _parity_run(rank: int, world: int, parallelism: str, weights: dict, out: str) -> None:
    """Three optimizer steps on the global batches of STEPS, this rank's rows; rank 0 saves the mean losses and
    the full (gathered) task state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from omnivl.train.loop import train_step
    from omnivl.train.parallel import Precision, parallelize
    from omnivl.train.runner import build_stage_task

    p = plan(out, parallelism=parallelism)
    p = type(p)(**{**p.__dict__, "loss_weights": weights})
    device = torch.device("cpu")
    task = build_stage_task(p, device, world)
    precision = Precision.of("fp32", device)
    model = parallelize(task, parallelism, world, device, precision)
    # plain SGD: an update proportional to the gradient, so parameters compare as tightly as gradients (AdamW
    # divides by the gradient's RMS and turns float noise in near-zero gradients into updates of size LR)
    optimizer = torch.optim.SGD(task.parameters(), lr=LR)
    torch.manual_seed(123 + rank)  # hard negatives: the same draws on a rank whatever the parallelism
    losses = []
    for modality, index in STEPS:
        stats = train_step(model, optimizer, [rank_rows(global_batch(modality, index), rank, world)], modality,
                           grad_clip=1.0, precision=precision, task=task)
        loss = torch.tensor([stats.loss])
        if world > 1:
            torch.distributed.all_reduce(loss)
        losses.append(float(loss) / world)
    full = get_model_state_dict(task, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save({"losses": losses, "state": full}, f"{out}/parity-{parallelism}-{world}.pt")


def _parity(tmp_path, parallelism: str, world: int, weights: dict) -> dict:
    if world == 1:
        import torch.distributed as dist

        assert not dist.is_initialized()
        _parity_run(0, 1, parallelism, weights, str(tmp_path))
    else:
        spawn(_parity_run, world, parallelism, weights, str(tmp_path))
    return torch.load(tmp_path / f"parity-{parallelism}-{world}.pt", weights_only=True)


def assert_states_match(got: dict, want: dict) -> None:
    """Every tensor of the task: weights, momentum encoders, temperature, queue features, labels and pointers."""
    assert set(got) == set(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key].float(), value.float(), atol=2e-5, rtol=1e-4, msg=lambda m: f"{key}: {m}")
    labels = [k for k in want if k.endswith("labels_M")]
    assert labels and all(torch.equal(got[k], want[k]) for k in labels)


def test_fsdp_on_two_processes_matches_one_process(tmp_path):
    # Hard-negative matching draws its negatives from each rank's own rows (the decoder's visual tokens are not
    # gathered), so it cannot equal one process's draw over the whole batch: it is compared FSDP vs DDP below.
    weights = {"vlc": 1.0, "vlm": 0.0, "lm": 1.0, "cls": 0.0}
    one = _parity(tmp_path, "ddp", 1, weights)
    fsdp = _parity(tmp_path, "fsdp", 2, weights)
    assert fsdp["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert_states_match(fsdp["state"], one["state"])
    queue = one["state"]["vlc.queues.shared.filled"]
    assert int(queue) == 2 * GLOBAL_BATCH["image"] + GLOBAL_BATCH["video"]  # every step's gathered rows


def test_fsdp_matches_ddp_with_every_objective(tmp_path):
    weights = {"vlc": 1.0, "vlm": 1.0, "lm": 1.0, "cls": 0.0}
    ddp = _parity(tmp_path, "ddp", 2, weights)
    fsdp = _parity(tmp_path, "fsdp", 2, weights)
    assert fsdp["losses"] == pytest.approx(ddp["losses"], rel=1e-5)
    assert_states_match(fsdp["state"], ddp["state"])


# ------------------------------------------------------------------------------ resume on another world size


def _train(rank: int, world: int, run_dir: str, start_step: int) -> None:
    from omnivl.train.runner import run_stage

    p = plan(run_dir)
    env, sink = env_for(p, rank, world, start_step)
    run_stage(p, env)
    if rank == 0:
        with open(f"{run_dir}/records-{world}.json", "w") as f:
            json.dump(sink.records, f)


def _load_full(rank: int, world: int, run_dir: str, step: int) -> None:
    """Build the task on `world` workers, load the checkpoint at `step`, and save the gathered state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from omnivl.train.loop import build_optimizer
    from omnivl.train.parallel import Precision, parallelize
    from omnivl.train.runner import build_stage_task, load_into

    p = plan(run_dir)
    device = torch.device("cpu")
    task = build_stage_task(p, device, world)
    parallelize(task, "fsdp", world, device, Precision.of("fp32", device))
    optimizer = build_optimizer(task, p.stage.optimizer)
    ref = next(r for r in ck.list_checkpoints(run_dir, 0, "joint") if r.step == step)
    load_into(task, optimizer, ref, with_head=True)
    model_sd, optim_sd = get_state_dict(task, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save({"task": model_sd, "optimizer": optim_sd}, f"{run_dir}/loaded-{world}.pt")


@pytest.fixture(scope="module")
def saved_by_two(tmp_path_factory):
    """A 6-step FSDP stage on 2 workers, checkpoints at steps 2, 4 and 6."""
    run = tmp_path_factory.mktemp("two")
    spawn(_train, 2, str(run), 0)
    return run


def test_checkpoint_of_two_workers_loads_exactly_onto_three(saved_by_two, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved_by_two, run)
    spawn(_load_full, 3, str(run), 4)
    loaded = torch.load(run / "loaded-3.pt", weights_only=True)
    saved = ck.read_full(next(r for r in ck.list_checkpoints(str(run), 0, "joint") if r.step == 4))
    assert saved["train_state"]["world_size"] == 2
    for key, value in saved["task"].items():
        assert torch.equal(loaded["task"][key], value), key
    for fqn, state in saved["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(loaded["optimizer"]["state"][fqn][name]), torch.as_tensor(value)), (fqn, name)
    assert any(k.startswith("momentum_encoders.") for k in saved["task"])


def test_stage_resumed_on_three_workers_continues_like_the_uninterrupted_run(saved_by_two, tmp_path):
    """On the same global batches as the 2-worker run (on Ray, with 3 and 1 workers: test_pretrain_ray.py)."""
    world = 3
    run = tmp_path / "run"
    shutil.copytree(saved_by_two, run)
    shutil.rmtree(run / "checkpoints" / "00-joint" / "step-00000006")  # as if the job stopped after step 4
    spawn(_train, world, str(run), 4)
    before = {r["step"]: r for r in json.loads((saved_by_two / "records-2.json").read_text())}
    after = json.loads((run / f"records-{world}.json").read_text())
    assert [r["step"] for r in after] == [5, 6] and {r["world_size"] for r in after} == {world}
    for r in after:
        assert r["lr"] == before[r["step"]]["lr"]
        assert r["loss"] == pytest.approx(before[r["step"]]["loss"], rel=0.02)  # hard negatives are redrawn
    final = ck.read_full(ck.final_of(str(run), 0, "joint"))
    reference = ck.read_full(ck.final_of(str(saved_by_two), 0, "joint"))
    assert final["train_state"]["step"] == 6 and final["train_state"]["world_size"] == world
    for key in ("labels_M", "ptr", "filled"):
        assert torch.equal(final["task"][f"vlc.queues.shared.{key}"], reference["task"][f"vlc.queues.shared.{key}"])
    torch.testing.assert_close(final["task"]["vlc.queues.shared.text_ME"],
                               reference["task"]["vlc.queues.shared.text_ME"], atol=0.05, rtol=0)
    # AdamW continued from step 4's state: per parameter the same step count as the uninterrupted run (video-only
    # parameters step on video steps only); a fresh optimizer would count 1 or 2
    steps = {fqn: float(s["step"]) for fqn, s in final["optimizer"]["state"].items()}
    assert steps == {fqn: float(s["step"]) for fqn, s in reference["optimizer"]["state"].items()}
    assert max(steps.values()) == 6.0


def _save_to(rank: int, world: int, uri: str, parallelism: str) -> None:
    """One training step on `world` workers, then a final checkpoint at `uri`."""
    from omnivl.train.loop import build_optimizer, train_step
    from omnivl.train.parallel import Precision, parallelize
    from omnivl.train.runner import build_stage_task, task_state

    p = plan(uri, parallelism=parallelism)
    device = torch.device("cpu")
    task = build_stage_task(p, device, world)
    precision = Precision.of("fp32", device)
    model = parallelize(task, parallelism, world, device, precision)
    optimizer = build_optimizer(task, p.stage.optimizer)
    train_step(model, optimizer, [rank_rows(global_batch("image", 0), rank, world)], "image", grad_clip=1.0,
               precision=precision, task=task)
    writer = ck.CheckpointWriter(uri, 0, "joint")
    writer.save(1, task_state(task, optimizer), {"step": 1, "world_size": world}, final=True)


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_workers_checkpoint_to_s3_and_one_process_reads_it(s3_bucket, parallelism):
    from omnivl import storage
    from omnivl.tasks import build_task
    from omnivl.train.runner import load_into

    run = f"{s3_bucket}/run"
    spawn(_save_to, 2, run, parallelism)
    ref = ck.final_of(run, 0, "joint")
    assert ref is not None and ref.step == 1
    shards = [n for n in storage.list_dir(storage.join(ref.uri, ck.STATE_DIR)) if n.endswith(".distcp")]
    assert shards
    if parallelism == "fsdp":
        assert len(shards) == 2  # both ranks wrote their shard
    full = ck.read_full(ref)
    assert full["train_state"]["world_size"] == 2
    task = build_task(MODEL, load_pretrained=False)
    load_into(task, None, ref, with_head=True)
    for key, value in task.state_dict().items():
        assert torch.equal(value, full["task"][key]), key
