"""Sharded checkpoints (torch.distributed.checkpoint), one process: round trip into a fresh model and
optimizer, partial and corrupt checkpoints skipped with a message, a crash while writing, pruning, async saves
published only once written, s3 round trip. Many workers: tests/train/test_sharded_training.py."""

import os

import pytest
import torch
from torch import nn

from omnivl import storage
from omnivl.train import checkpoint as ck
from omnivl.train.runner import load_into, task_state


class Tiny(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(3, 2)
        self.register_buffer("queue_ptr", torch.tensor([seed]))


def trained(seed: int):
    """A module and an AdamW that took one step (so the optimizer has state)."""
    model = Tiny(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    return model, opt


def save(run, step, seed=None, final=False, writer=None):
    model, opt = trained(step if seed is None else seed)
    writer = writer or ck.CheckpointWriter(run, 0, "image", keep_last=10)
    return writer.save(step, task_state(model, opt), {"step": step}, final=final), model, opt


def loader(model, opt):
    def load(ref):
        load_into(model, opt, ref, with_head=True)
        return ck.load_train_state(ref)
    return load


def test_round_trip_into_a_fresh_model_and_optimizer(tmp_path):
    run = str(tmp_path)
    for s in (10, 20):
        _, saved, saved_opt = save(run, s)
    model, opt = trained(99)
    ref, train_state = ck.latest_good(run, 0, "image", loader(model, opt))
    assert ref.step == 20 and train_state["step"] == 20
    assert torch.equal(model.lin.weight, saved.lin.weight) and int(model.queue_ptr) == 20
    got, want = opt.state_dict()["state"], saved_opt.state_dict()["state"]
    assert all(torch.equal(got[i]["exp_avg"], want[i]["exp_avg"]) for i in want)


def test_parameters_without_optimizer_state_stay_without_it(tmp_path):
    """A parameter that never had a gradient (temporal attention in an image-only stage) has no AdamW state in
    the checkpoint; after loading it still has none, so its first update is AdamW's first step."""
    model, opt = trained(1)
    model.unused = nn.Linear(2, 2)
    opt.add_param_group({"params": model.unused.parameters()})
    writer = ck.CheckpointWriter(str(tmp_path), 0, "image")
    writer.save(1, task_state(model, opt), {"step": 1}, final=False)
    fresh, fresh_opt = trained(2)
    fresh.unused = nn.Linear(2, 2)
    fresh_opt.add_param_group({"params": fresh.unused.parameters()})
    ck.latest_good(str(tmp_path), 0, "image", loader(fresh, fresh_opt))
    assert fresh.lin.weight in fresh_opt.state and fresh.unused.weight not in fresh_opt.state
    assert float(fresh_opt.state[fresh.lin.weight]["step"]) == 1.0


def test_partial_checkpoint_is_ignored(tmp_path):
    run = str(tmp_path)
    save(run, 10)
    ref, _, _ = save(run, 20)
    os.remove(os.path.join(ref.uri, ck.META))  # the writer died before the marker
    assert ck.latest_good(run, 0, "image", loader(*trained(1)))[0].step == 10


def shard_file(ref):
    return next(p for p in (os.path.join(ref.uri, ck.STATE_DIR, n) for n in os.listdir(os.path.join(ref.uri, ck.STATE_DIR)))
                if p.endswith(".distcp"))


def test_corrupt_checkpoint_falls_back_with_a_message(tmp_path, capsys):
    run = str(tmp_path)
    save(run, 10)
    ref, _, _ = save(run, 20)
    path = shard_file(ref)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # truncated
    model, opt = trained(1)
    got, train_state = ck.latest_good(run, 0, "image", loader(model, opt))
    assert got.step == 10 and train_state["step"] == 10 and int(model.queue_ptr) == 10
    out = capsys.readouterr().out
    assert "step-00000020" in out and "damaged" in out and "falling back" in out


def test_crash_while_writing_leaves_nothing_loadable(tmp_path, monkeypatch):
    run = str(tmp_path)
    save(run, 10)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.json, "dumps", boom)  # fail after the shards were written, before the marker
    with pytest.raises(OSError):
        save(run, 20)
    monkeypatch.undo()
    assert [r.step for r in ck.list_checkpoints(run, 0, "image")] == [10]


def test_prune_keeps_last_n_and_final(tmp_path):
    run = str(tmp_path)
    writer = ck.CheckpointWriter(run, 0, "image", keep_last=2)
    save(run, 5, writer=writer)
    for s in (10, 20, 30, 40):
        save(run, s, final=(s == 10), writer=writer)
    assert [r.step for r in ck.list_checkpoints(run, 0, "image")] == [10, 30, 40]
    assert ck.final_of(run, 0, "image").step == 10


def test_async_save_is_published_when_finished(tmp_path):
    run = str(tmp_path)
    writer = ck.CheckpointWriter(run, 0, "image", async_save=True)
    model, opt = trained(3)
    writer.save(3, task_state(model, opt), {"step": 3}, final=False)
    with torch.no_grad():
        model.lin.weight.add_(1.0)  # training goes on while the checkpoint is written
    assert ck.list_checkpoints(run, 0, "image") == []  # not published yet: no marker
    writer.finish()
    fresh, fresh_opt = trained(4)
    ref, _ = ck.latest_good(run, 0, "image", loader(fresh, fresh_opt))
    assert ref.step == 3
    torch.testing.assert_close(fresh.lin.weight, model.lin.weight - 1.0)  # the state at save time


def test_read_full_gives_plain_tensors_and_the_train_state(tmp_path):
    ref, model, _ = save(str(tmp_path), 7, final=True)
    full = ck.read_full(ref)
    assert torch.equal(full["task"]["lin.weight"], model.lin.weight) and full["train_state"]["step"] == 7
    assert set(full["optimizer"]["state"]["lin.weight"]) >= {"exp_avg", "exp_avg_sq", "step"}


def test_s3_round_trip(s3_bucket):
    run = f"{s3_bucket}/run"
    writer = ck.CheckpointWriter(run, 1, "joint")
    model, opt = trained(7)
    writer.save(7, task_state(model, opt), {"step": 7}, final=True)
    fresh, fresh_opt = trained(8)
    ref, train_state = ck.latest_good(run, 1, "joint", lambda r: (load_into(fresh, fresh_opt, r, with_head=True),
                                                                 ck.load_train_state(r))[1])
    assert ref.final and ref.uri.startswith("s3://") and train_state["step"] == 7
    assert torch.equal(fresh.lin.weight, model.lin.weight)
    assert storage.exists(storage.join(ref.uri, ck.META)) and storage.exists(storage.join(ref.uri, ck.STATE_DIR, ".metadata"))
