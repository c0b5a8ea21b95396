"""Data parallelism applied to a pretraining task from outside (the model code stays single-device).

`ddp`: every rank holds the whole task; gradients are all-reduced (`DistributedDataParallel`).
`fsdp`: FSDP2 (`fully_shard`): parameters, gradients and optimizer state are sharded over the ranks. One unit
per transformer block of the visual encoder, the text encoder and the momentum twins of both; the alignment
and generation decoders share all but self-attention, so layer i of both is one unit; what is left
(embeddings, projections, the tied LM head, the temperature) is the root unit. Momentum encoders are sharded
exactly like their online twins, so the EMA update is an element-wise op on matching local shards. Buffers (the
memory queues) are not sharded: every rank keeps the same replicated queue, as under DDP.

Also here: the autocast/grad-scaler precision of a training step and `torch.compile` of each block.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from omnivl.tasks.pretrain import PretrainTask

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 on GPUs and fp32 on CPUs (CPU bf16 autocast is slower than fp32 on most hosts)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


@dataclass
class Precision:
    """How a training step runs forward/backward: autocast dtype (None: fp32) and, for fp16, a gradient scaler."""

    name: str
    device: torch.device
    scaler: Any = None

    @classmethod
    def of(cls, precision: str, device: torch.device, sharded: bool = False) -> "Precision":
        """`sharded`: gradients are FSDP shards, so an overflow found on one rank must skip the step on all
        (the sharded scaler all-reduces it)."""
        name = resolve_precision(precision, device)
        scaler = None
        if name == "fp16":
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            scaler = ShardedGradScaler(device.type) if sharded else torch.amp.GradScaler(device.type)
        return cls(name, device, scaler)

    def autocast(self):
        dtype = AUTOCAST_DTYPES.get(self.name)
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def block_groups(task: PretrainTask) -> Iterator[nn.Module | list[nn.Module]]:
    """The FSDP units below the root, in forward order: each a module or a list sharded as one group."""
    model, momentum = task.model, task.momentum_encoders
    yield from model.visual.blocks
    yield from model.text.layers
    for align, gen in zip(model.align_decoder.layers, model.gen_decoder.layers):
        yield [align, gen]  # they share cross-attention and feed-forward modules
    yield from momentum.visual.blocks
    yield from momentum.text.layers


def shard_fsdp(task: PretrainTask, precision: Precision) -> nn.Module:
    """Shard `task` in place with FSDP2 over the default process group; returns it (still a PretrainTask)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    dtype = AUTOCAST_DTYPES.get(precision.name)
    if dtype is not None:  # compute in the low precision, reduce gradients in fp32
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for unit in block_groups(task):
        fully_shard(unit, mp_policy=policy)
    fully_shard(task, mp_policy=policy)
    return task


def wrap_ddp(task: PretrainTask, device: torch.device) -> nn.Module:
    """DDP over the default process group. Unused parameters are expected (image steps skip temporal attention,
    an LM-only stage skips the encoders' projections); the queues are identical on every rank by construction
    (they enqueue gathered features), so buffers are not broadcast."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(task, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False)


def compile_blocks(task: PretrainTask) -> None:
    """`torch.compile` every block in place (`Module.compile` keeps parameter names, so checkpoints and exports
    are unchanged)."""
    for unit in block_groups(task):
        for module in unit if isinstance(unit, list) else [unit]:
            module.compile()


def parallelize(task: PretrainTask, parallelism: str, world: int, device: torch.device, precision: Precision,
                compile: bool = False) -> nn.Module:
    """The module the train step calls: the task itself (one worker: nothing to shard or synchronize; FSDP,
    which shards in place) or its DDP wrapper. Call before building the optimizer."""
    if compile:
        compile_blocks(task)
    if world <= 1:
        return task
    if parallelism == "fsdp":
        return shard_fsdp(task, precision)
    return wrap_ddp(task, device)


def no_sync(model: nn.Module):
    """A context that skips gradient synchronization for a non-final micro-batch (DDP's `no_sync`, FSDP2's
    `set_requires_gradient_sync(False)`); a null context for a plain module."""
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly sharded, DTensor) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (all-gathered if it is a sharded DTensor): a collective, every rank must call it."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def state_bytes(task: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds of parameters, gradients and optimizer state (the part FSDP shards)."""
    params = sum(local_tensor(p).numel() * local_tensor(p).element_size() for p in task.parameters())
    grads = sum(local_tensor(p.grad).numel() * local_tensor(p.grad).element_size()
                for p in task.parameters() if p.grad is not None)
    opt = sum(local_tensor(v).numel() * local_tensor(v).element_size()
              for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    return {"params": params, "grads": grads, "optimizer": opt, "total": params + grads + opt}
