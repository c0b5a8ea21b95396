"""Training precision and compile (`scaling.precision`, `scaling.compile`) on the train step itself: bf16
autocast runs and stays close to fp32; fp16's gradient scaler skips overflowing steps and then trains; compiled
blocks train like eager ones and keep their parameter names (checkpoints and exports are unchanged)."""

from __future__ import annotations

import pytest
import torch

from omnivl.spec import validate_spec
from omnivl.spec.errors import SpecError
from omnivl.tasks import build_task
from omnivl.train.config import OptimizerConfig
from omnivl.train.loop import build_optimizer, train_step
from omnivl.train.parallel import Precision, compile_blocks
from sharded_workers import MODEL, global_batch

CPU = torch.device("cpu")


def fresh_task():
    torch.manual_seed(0)
    task = build_task(MODEL, load_pretrained=False)
    task.momentum_in_forward = False
    return task, build_optimizer(task, OptimizerConfig(lr=1e-4, warmup_steps=0))


def step(task, opt, precision, modality="image", index=0):
    torch.manual_seed(5)  # the same hard negatives in every variant
    return train_step(task, opt, [global_batch(modality, index)], modality, grad_clip=1.0, precision=precision,
                      task=task)


def test_bf16_autocast_runs_and_stays_close_to_fp32():
    task, opt = fresh_task()
    seen = []
    task.model.visual.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    bf16 = step(task, opt, Precision.of("bf16", CPU))
    task, opt = fresh_task()
    fp32 = step(task, opt, Precision.of("fp32", CPU))
    assert seen and set(seen) == {torch.bfloat16}
    assert bf16.loss == pytest.approx(fp32.loss, rel=1e-2) and bf16.loss != fp32.loss


def test_auto_is_fp32_on_cpu_and_fp16_brings_a_scaler():
    assert Precision.of("auto", CPU).name == "fp32" and Precision.of("auto", CPU).scaler is None
    assert isinstance(Precision.of("fp16", CPU).scaler, torch.amp.GradScaler)


def test_fp16_scaler_skips_overflowing_steps_then_trains():
    task, opt = fresh_task()
    precision = Precision.of("fp16", CPU)
    skipped = trained = 0
    for i in range(8):
        before = task.model.vision_proj.weight.detach().clone()
        scale = precision.scaler.get_scale()
        step(task, opt, precision, index=i)
        changed = not torch.equal(before, task.model.vision_proj.weight)
        if precision.scaler.get_scale() < scale:  # an inf/nan gradient: the step was skipped
            assert not changed
            skipped += 1
        else:
            assert changed
            trained += 1
        if trained >= 2:
            break
    assert trained >= 2 and precision.scaler.get_scale() <= 65536.0


def test_spec_refuses_fp16_without_a_gpu():
    raw = {"kind": "pretrain", "name": "p", "data": {"sources": [
        {"name": "s", "manifest": "m.jsonl", "modality": "image", "kind": "text"}]},
        "stages": [{"name": "a", "sources": ["s"], "steps": 1, "batch_size": {"image": 2}}],
        "scaling": {"precision": "fp16"}}
    with pytest.raises(SpecError, match=r"scaling\.precision.*fp16 needs use_gpu"):
        validate_spec(raw)
    raw["scaling"] = {"precision": "bf16", "parallelism": "fsdp", "compile": True}
    assert validate_spec(raw).scaling.parallelism == "fsdp"


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_ones_and_keep_their_names():
    task, opt = fresh_task()
    eager = step(task, opt, Precision.of("fp32", CPU))
    names = list(task.state_dict())
    task, opt = fresh_task()
    compile_blocks(task)
    compiled = step(task, opt, Precision.of("fp32", CPU))
    assert list(task.state_dict()) == names
    assert compiled.loss == pytest.approx(eager.loss, rel=1e-4)
