"""The one place the library talks to other processes: an all-gather that keeps the autograd graph.

Pass `all_gather_with_grad` as the contrastive loss's `gather_fn` on a multi-process run. Ranks may hold
different batch sizes (a short last batch): rows are padded for the collective and stripped after.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank concatenated in rank order. Gradients flow back to each rank's own rows: the backward
    sums the gathered gradient over ranks (each rank's local loss contributes) and keeps the local slice, as
    open_clip's gather does. Identity when no process group is initialized."""
    if not _active():
        return x
    return _GatherWithGrad.apply(x)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        sizes = _gather_sizes(x.shape[0], x.device)
        ctx.offset = sum(sizes[: dist.get_rank()])
        ctx.n = x.shape[0]
        padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.offset : ctx.offset + ctx.n]


def _gather_sizes(n: int, device) -> list[int]:
    mine = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, mine)
    return [int(s.item()) for s in sizes]
