"""What a training step costs beyond its compute: the runner calls the cluster's `report` once per stage (Ray
Train's waits ~2 s for its controller on every call after the first), and AdamW runs fused on CPU."""

from __future__ import annotations

import json

import torch
from torch import nn

from sharded_workers import env_for, plan, spawn

STEPS = 6  # a short stage logs every step (`StagePlan.log_every` is 1): the old runner reported 6 times


def _run_counting_reports(rank: int, world: int, run_dir: str, out: str) -> None:
    from omnivl.train.runner import run_stage

    p = plan(run_dir, steps=STEPS, every=STEPS, parallelism="ddp")
    assert p.log_every == 1
    env, _ = env_for(p, rank, world)
    calls: list[dict] = []
    env.report = calls.append
    run_stage(p, env)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(calls, f)


def test_a_stage_reports_to_the_cluster_once_after_its_last_step(tmp_path):
    out = tmp_path / "reports.json"
    spawn(_run_counting_reports, 1, str(tmp_path / "run"), str(out))
    calls = json.loads(out.read_text())
    assert len(calls) == 1, [c.get("step") for c in calls]
    assert calls[0]["step"] == STEPS and "loss" in calls[0]


def test_adamw_is_fused_on_cpu_and_updates_like_the_per_tensor_loop():
    from omnivl.train.config import OptimizerConfig
    from omnivl.train.loop import build_optimizer, param_groups

    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    cfg = OptimizerConfig(lr=1e-2, weight_decay=0.05)
    fused = build_optimizer(models[0], cfg)
    loop = torch.optim.AdamW(param_groups(models[1], cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
    assert fused.defaults["fused"] is True
    x = torch.randn(32, 8)
    for _ in range(5):
        for model, opt in zip(models, (fused, loop)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

