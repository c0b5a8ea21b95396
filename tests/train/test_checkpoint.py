"""Checkpoints: atomic writes, corrupt/partial fallback with a message, pruning, s3 round trip."""

import os

import pytest
import torch

from omnivl import storage
from omnivl.train import checkpoint as ck


def state(step):
    return {"step": step, "w": torch.full((3,), float(step)), "rng": torch.get_rng_state(), "queue_ptr": step % 5}


def test_round_trip_and_latest(tmp_path):
    run = str(tmp_path)
    for s in (10, 20, 30):
        ck.save(run, 0, "image", s, state(s))
    ref, st = ck.latest_good(run, 0, "image")
    assert ref.step == 30 and torch.equal(st["w"], torch.full((3,), 30.0)) and st["queue_ptr"] == 0


def test_partial_checkpoint_is_ignored(tmp_path):
    run = str(tmp_path)
    ck.save(run, 0, "image", 10, state(10))
    ref = ck.save(run, 0, "image", 20, state(20))
    os.remove(os.path.join(ref.uri, ck.META))  # the writer died before the marker
    assert ck.latest_good(run, 0, "image")[0].step == 10


def test_corrupt_checkpoint_falls_back_with_a_message(tmp_path, capsys):
    run = str(tmp_path)
    ck.save(run, 0, "image", 10, state(10))
    ref = ck.save(run, 0, "image", 20, state(20))
    path = os.path.join(ref.uri, ck.STATE)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # truncated
    got, st = ck.latest_good(run, 0, "image")
    assert got.step == 10 and st["step"] == 10
    out = capsys.readouterr().out
    assert "step-00000020" in out and "damaged" in out and "falling back" in out


def test_crash_while_writing_leaves_nothing_loadable(tmp_path, monkeypatch):
    run = str(tmp_path)
    ck.save(run, 0, "image", 10, state(10))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.json, "dumps", boom)  # fail after state.pt was written, before the marker
    with pytest.raises(OSError):
        ck.save(run, 0, "image", 20, state(20))
    monkeypatch.undo()
    assert [r.step for r in ck.list_checkpoints(run, 0, "image")] == [10]


def test_prune_keeps_last_n_and_final(tmp_path):
    run = str(tmp_path)
    ck.save(run, 0, "image", 5, state(5), final=False)
    for s in (10, 20, 30, 40):
        ck.save(run, 0, "image", s, state(s), final=(s == 10))
    ck.prune(run, 0, "image", keep_last=2)
    assert [r.step for r in ck.list_checkpoints(run, 0, "image")] == [10, 30, 40]
    assert ck.final_of(run, 0, "image").step == 10


def test_s3_round_trip(s3_bucket):
    run = f"{s3_bucket}/run"
    ck.save(run, 1, "joint", 7, state(7), final=True)
    ref, st = ck.latest_good(run, 1, "joint")
    assert ref.final and ref.uri.startswith("s3://") and st["step"] == 7
    assert storage.exists(storage.join(ref.uri, ck.META))
