"""Gathered contrastive loss: one process with batch 2B == two gloo processes with batch B each (loss, grads,
queue), and the padded gather handles ranks with different batch sizes."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from omnivl.losses import UniVLCLoss
from omnivl.losses.distributed import all_gather_with_grad

B, IN, E, WORLD = 4, 6, 5, 2
LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 4, 5])  # positives shared across the two halves


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup():
    """Same encoders, inputs and pre-filled queue in every process."""
    torch.manual_seed(0)
    enc_v, enc_t = torch.nn.Linear(IN, E), torch.nn.Linear(IN, E)
    x_v, x_t = torch.randn(2 * B, IN), torch.randn(2 * B, IN)
    loss = UniVLCLoss(embed_dim=E, queue_size=6, temp_init=0.1)
    q = torch.randn(3, E)
    loss.queues["shared"].enqueue(F.normalize(q, dim=-1), F.normalize(q.flip(0), dim=-1), torch.tensor([2, 9, 9]))
    return enc_v, enc_t, x_v, x_t, loss


def _step(enc_v, enc_t, loss, x_v, x_t, labels):
    v, t = F.normalize(enc_v(x_v), dim=-1), F.normalize(enc_t(x_t), dim=-1)
    out = loss(v, t, labels, v.detach() * 0.5, t.detach() * 0.5, queue_key="shared", enqueue=True)
    out.loss.backward()
    return out.loss.detach()


def _grads(*modules):
    return torch.cat([p.grad.flatten() for m in modules for p in m.parameters()])


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        enc_v, enc_t, x_v, x_t, loss = _setup()
        loss.gather_fn = all_gather_with_grad
        mine = slice(rank * B, (rank + 1) * B)
        value = _step(enc_v, enc_t, loss, x_v[mine], x_t[mine], LABELS[mine])
        grads = _grads(enc_v, enc_t, loss)
        # What DDP does: average losses and parameter gradients over ranks.
        dist.all_reduce(value)
        dist.all_reduce(grads)
        uneven = all_gather_with_grad(torch.arange(3 + 2 * rank, dtype=torch.float) + 10 * rank)
        torch.save({"loss": value / WORLD, "grads": grads / WORLD, "queue": loss.queues["shared"].state_dict(),
                    "uneven": uneven}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    enc_v, enc_t, x_v, x_t, loss = _setup()
    expected_loss = _step(enc_v, enc_t, loss, x_v, x_t, LABELS)
    expected_grads = _grads(enc_v, enc_t, loss)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], expected_loss, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got["grads"], expected_grads, atol=1e-6, rtol=1e-5)
        for k, v in loss.queues["shared"].state_dict().items():
            torch.testing.assert_close(got["queue"][k], v, msg=k)
        assert got["uneven"].tolist() == [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 13.0, 14.0]
