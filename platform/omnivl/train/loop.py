"""The training step, shared by the Ray Train worker function and the single-process benchmark baseline.

Plain PyTorch: no Ray here. The caller supplies the task (model + losses) in its parallel form
(`omnivl.train.parallel`), the optimizer and the batches.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from omnivl.tasks.pretrain import PretrainTask
from omnivl.train.config import OptimizerConfig
from omnivl.train.parallel import Precision, full_tensor, no_sync

Batch = dict[str, torch.Tensor]
TEXT_KEYS = ("input_ids", "attention_mask")  # [B, L] columns, padded to the data's text_max_length
TRIM_MULTIPLE = 4  # trimmed text keeps a length that is a multiple of this: few distinct shapes per run


@dataclass
class StepStats:
    loss: float
    losses: dict[str, float]
    metrics: dict[str, float]
    samples: int
    seconds: float
    wait_seconds: float = 0.0
    extras: dict = field(default_factory=dict)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, embeddings and the temperature (1-D or scalar tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # where torch has a fused AdamW kernel


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where torch has one: the default per-tensor loop took 22 ms a step
    for the tiny model's 183 tensors on one CPU thread, the fused kernel 6 ms (same update up to rounding)."""
    groups = param_groups(model, cfg.weight_decay)
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = bool(devices) and devices <= set(FUSED_ADAMW_DEVICES)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class Streams:
    """One batch iterator per modality, opened on first use. A training stream already spans every epoch the
    stage needs (`omnivl.data.stream`); running out of it means more rows were skipped than its slack, and
    the stream is opened again (`passes` counts those reopenings).

    `open_fn(modality, passes)` returns a fresh iterator; it is called at the same step on every rank because
    every rank consumes the same number of batches (drop_last) on the same schedule.
    """

    def __init__(self, open_fn: Callable[[str, int], Iterator[Batch]]) -> None:
        self._open = open_fn
        self._iters: dict[str, Iterator[Batch]] = {}
        self.passes: dict[str, int] = {}
        self.consumed: dict[str, int] = {}

    def next(self, modality: str) -> tuple[Batch, float]:
        """The next batch of `modality` and the seconds spent waiting for it."""
        start = time.perf_counter()
        if modality not in self._iters:
            self.passes[modality] = 0
            self._iters[modality] = self._open(modality, 0)
        try:
            batch = next(self._iters[modality])
        except StopIteration:
            self.passes[modality] += 1
            self._iters[modality] = self._open(modality, self.passes[modality])
            try:
                batch = next(self._iters[modality])
            except StopIteration:
                raise RuntimeError(f"the {modality} stream is empty: no batch survived decoding") from None
        self.consumed[modality] = self.consumed.get(modality, 0) + 1
        return batch, time.perf_counter() - start


def trim_padding(batch: Batch) -> Batch:
    """The batch with its text columns cut after the last position any row uses (rounded up to
    `TRIM_MULTIPLE`). The data pads every text to `text_max_length`; padding is masked everywhere (attention,
    pooling, the LM targets), so the losses are unchanged and only the cost shrinks: with the recipe's captions
    of ~10 tokens in 24, an image-language step takes half the time (docs/robustness.md)."""
    mask_BL = batch.get("attention_mask")
    if mask_BL is None:
        return batch
    length = mask_BL.shape[1]
    used = int(mask_BL.any(0).nonzero().max()) + 1 if bool(mask_BL.any()) else 1
    keep = min(length, -(-used // TRIM_MULTIPLE) * TRIM_MULTIPLE)
    if keep == length:
        return batch
    return {k: v[:, :keep] if k in TEXT_KEYS else v for k, v in batch.items()}


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[Batch],
    modality: str,
    *,
    grad_clip: float | None,
    precision: Precision,
    task: PretrainTask | None = None,
) -> StepStats:
    """One optimizer step over `micro_batches` (gradient accumulation). `model(batch, modality)` must return
    an object with `.loss` (tensor), `.losses` and `.metrics` (dicts); it is the task or its DDP/FSDP form
    (`omnivl.train.parallel`). Gradients are synchronized on the last micro-batch only.

    `task`: when given (its `momentum_in_forward` off), its momentum encoders take their EMA step before each
    micro-batch's forward, outside the forward, where FSDP's parameters are sharded alike (see
    `omnivl.train.parallel`); the same arithmetic as the forward-time update."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    n = len(micro_batches)
    losses: dict[str, float] = {}
    metrics: dict[str, float] = {}
    total = 0.0
    samples = 0
    for i, batch in enumerate(map(trim_padding, micro_batches)):
        if task is not None and task.uses_momentum:
            task.momentum_update()
        with no_sync(model) if i < n - 1 else contextlib.nullcontext():
            with precision.autocast():
                out = model(batch, modality)
            scaled = out.loss / n
            (precision.scaler.scale(scaled) if precision.scaler else scaled).backward()
        total += float(out.loss.detach()) / n
        for k, v in out.losses.items():
            losses[k] = losses.get(k, 0.0) + float(v.detach()) / n
        metrics.update({k: float(v) for k, v in out.metrics.items()})
        samples += int(next(iter(batch.values())).shape[0])
    if precision.scaler:
        precision.scaler.unscale_(optimizer)
    if grad_clip:
        params = [p for p in model.parameters() if p.grad is not None]
        metrics["grad_norm"] = float(full_tensor(torch.nn.utils.clip_grad_norm_(params, grad_clip)))
    if precision.scaler:
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        optimizer.step()
    if task is not None:
        task.after_optimizer_step()
    return StepStats(total, losses, metrics, samples, time.perf_counter() - start)
