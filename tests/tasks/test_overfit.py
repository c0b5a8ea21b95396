"""The tiny model must *learn*: on 24 synthetic coloured-shape pairs all three losses fall and every training
pair is retrieved at rank 1 in both directions, within a bounded number of steps (CPU, one thread)."""

from __future__ import annotations

import itertools
import json

import torch
from tokenizers import Tokenizer

from omnivl.models.checkpoints import bundled_bert_dir
from omnivl.models.config import ModelConfig
from omnivl.tasks import build_task

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 230), "yellow": (230, 220, 40),
           "white": (250, 250, 250), "purple": (150, 40, 200)}
SHAPES = ("square", "bar", "cross", "dot")
SIZE = 32
MAX_STEPS = 300
WARMUP = 15


def _draw(colour, shape) -> torch.Tensor:
    img = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    x0 = 10
    c = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    if shape == "square":
        img[:, 8:20, x0 : x0 + 12] = c
    elif shape == "bar":
        img[:, 4:28, x0 + 4 : x0 + 8] = c
    elif shape == "dot":
        img[:, 14:18, x0 + 4 : x0 + 8] = c
    else:
        img[:, 12:16, x0 : x0 + 12] = c
        img[:, 6:22, x0 + 4 : x0 + 8] = c
    return img


def _corpus():
    combos = list(itertools.product(COLOURS, SHAPES))
    pixels = torch.stack([_draw(COLOURS[c], s) for c, s in combos])
    tok = Tokenizer.from_file(str(bundled_bert_dir() / "tokenizer.json"))
    tok.enable_padding(pad_id=0, length=10)
    enc = tok.encode_batch([f"a {c} {s} on black" for c, s in combos])
    ids = torch.tensor([e.ids for e in enc])
    assert (ids[:, 0] == 101).all()
    return {"pixels": pixels, "input_ids": ids, "attention_mask": torch.tensor([e.attention_mask for e in enc]),
            "label_id": torch.arange(len(combos))}


def _recall_at_1(task, batch) -> tuple[float, float]:
    model = task.model.eval()
    with torch.no_grad():
        v = model.encode_image(batch["pixels"])
        t = model.encode_text(batch["input_ids"], batch["attention_mask"])
    sim = v @ t.T
    target = torch.arange(sim.shape[0])
    return float((sim.argmax(1) == target).float().mean()), float((sim.argmax(0) == target).float().mean())


def test_tiny_model_overfits_synthetic_pairs():
    torch.manual_seed(0)
    batch = _corpus()
    # No queue here: from a random init every feature is nearly the same vector, and stale queued positives
    # that equal the queued negatives pull features together (queue behaviour is tested on its own).
    task = build_task(ModelConfig(image_size=SIZE, queue_size=0)).train()
    # lr 5e-4: at 1e-3 some random inits stall at 0.67-0.9 recall (seeds 0-2 with the tubelet-2 tiny, and seed 1
    # before it); at 5e-4 seeds 0, 1 and 2 all reach 1.0 within 300 steps.
    opt = torch.optim.AdamW(task.trainable_parameters(), lr=5e-4, weight_decay=0.0)
    # Post-LN BERT layers need the usual warm-up; without it Adam collapses the features at this rate.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP))
    history = []
    for step in range(MAX_STEPS):
        task.train()
        out = task(batch, "image")
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(task.trainable_parameters(), 1.0)
        opt.step()
        sched.step()
        history.append({k: float(v.detach()) for k, v in out.losses.items()})
        if step >= 40 and step % 10 == 0 and _recall_at_1(task, batch) == (1.0, 1.0):
            break
    first, last = history[0], history[-1]
    report = json.dumps({"steps": len(history), "first": first, "last": last})
    assert _recall_at_1(task, batch) == (1.0, 1.0), report
    assert last["vlc"] < 0.3 * first["vlc"], report
    assert last["lm"] < 0.5 * first["lm"], report
    assert last["vlm"] < first["vlm"], report
