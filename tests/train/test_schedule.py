"""Learning-rate, alternation and batch-splitting arithmetic (pure functions, identical on every rank)."""

import pytest

from omnivl.train.config import OptimizerConfig, StageConfig
from omnivl.train.schedule import (lr_at, modality_at, split_batch, stage_weights, steps_for_stage,
                                   unsplit_worker_counts)


def test_warmup_then_cosine_to_min():
    opt = OptimizerConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, schedule="cosine")
    lrs = [lr_at(s, 110, opt) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))  # rising during warm-up
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # falling after
    assert lr_at(110, 110, opt) == pytest.approx(1e-5)


def test_step_decay_is_the_papers_085():
    opt = OptimizerConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="step")
    assert lr_at(0, 100, opt) == 1.0
    assert lr_at(10, 100, opt) == pytest.approx(0.85)
    assert lr_at(25, 100, opt) == pytest.approx(0.85**2)


@pytest.mark.parametrize("weights, expected", [
    ({"image": 1, "video": 1}, "ivivivivivi"),
    ({"image": 2, "video": 1}, "iviiviivi"),
    ({"image": 1, "video": 0}, "iiiii"),
    ({"video": 1}, "vvv"),
])
def test_alternation_pattern(weights, expected):
    got = "".join(modality_at(s, weights)[0] for s in range(len(expected)))
    assert got == expected


def test_alternation_counts_match_weights_over_long_runs():
    seq = [modality_at(s, {"image": 3, "video": 2}) for s in range(500)]
    assert seq.count("image") == 300 and seq.count("video") == 200


def test_global_batch_is_kept_when_workers_change():
    for world in (1, 2, 4, 8):
        wb = split_batch(64, world, grad_accum=2)
        assert wb.effective == 64 and wb.micro == 64 // (2 * world)
    with pytest.raises(ValueError, match="not divisible"):
        split_batch(30, 4, 2)


def test_rounding_down_trains_on_the_largest_batch_that_splits():
    wb = split_batch(2880, 31, 1, rounding="down")
    assert (wb.global_size, wb.micro, wb.effective) == (2880, 92, 2852)
    assert split_batch(64, 4, 2, rounding="down").effective == 64  # a batch that splits is kept
    with pytest.raises(ValueError, match="smaller than workers x grad_accum"):
        split_batch(16, 32, 1, rounding="down")


def test_worker_counts_an_elastic_range_cannot_split_over():
    assert unsplit_worker_counts(24, (1, 8), 1) == [5, 7]
    assert unsplit_worker_counts(24, (1, 8), 2) == [5, 7, 8]  # 24 over 10, 14 and 16 parts
    assert unsplit_worker_counts(24, (1, 16), 2, "down") == [13, 14, 15, 16]  # fewer than one row per part
    assert unsplit_worker_counts(24, (0, 4), 1) == []  # a count of 0 starts no worker to split over


def stage(**kw):
    base = dict(name="s", sources=["a"], batch_size={"image": 10, "video": 5})
    return StageConfig(**{**base, **kw})


def test_steps_from_epochs_cover_the_slowest_modality():
    st = stage(epochs=2)
    w = stage_weights(st, {"image", "video"})
    # images need 100/10 = 10 of their steps, videos 100/5 = 20; alternating 1:1 -> 40 steps per epoch
    assert steps_for_stage(st, {"image": 100, "video": 100}, w) == 80
    assert steps_for_stage(stage(steps=7), {"image": 100}, w) == 7


def test_stage_weights_drop_missing_modalities():
    st = stage(batch_size={"image": 10}, steps=3)
    assert stage_weights(st, {"image"}) == {"image": 1}
