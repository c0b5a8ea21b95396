"""Random streams of training workers: every seed is a named function of (seed, stage, step, rank), and a
checkpoint carries each rank's generator states so a resumed run continues them exactly."""

from __future__ import annotations

import ast
import random

import numpy as np
import torch

# Strides keep the derived seeds of different stages, ranks and resume points apart (primes, so that no two
# (stage, rank) or (stage, step, rank) combinations of a realistic run collide).
STAGE_STRIDE = 7919
STEP_STRIDE = 104_729
RESUME_OFFSET = 1_000_003


def init_seed(seed: int) -> int:
    """The seed of a task's initial weights: the same on every rank (DDP and FSDP start from identical models)."""
    return seed


def worker_seed(seed: int, stage_index: int, rank: int) -> int:
    """A rank's random streams (hard-negative sampling, dropout) at the start of a stage."""
    return seed + STAGE_STRIDE * stage_index + rank


def resume_seed(seed: int, stage_index: int, step: int, rank: int) -> int:
    """A rank's streams when a stage resumes on a different number of workers (the saved per-rank states no
    longer map onto ranks): a function of where it resumes, so two such resumes at one step draw alike."""
    return RESUME_OFFSET + seed + STAGE_STRIDE * stage_index + STEP_STRIDE * step + rank


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": repr(random.getstate())}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python"]))


def gather_rng(world: int) -> list[dict]:
    """Every rank's generator states, in rank order (a collective when `world` > 1)."""
    if world == 1:
        return [rng_state()]
    import torch.distributed as dist

    out: list = [None] * world
    dist.all_gather_object(out, rng_state())
    return out


def restore_rng(states: list[dict] | None, *, world: int, seed: int, stage_index: int, step: int, rank: int) -> bool:
    """Continue this rank's saved streams when the worker count is unchanged (True); else reseed with
    `resume_seed` (False)."""
    if states and len(states) == world:
        set_rng_state(states[rank])
        return True
    seed_everything(resume_seed(seed, stage_index, step, rank))
    return False

