"""UniVLC: unified vision-language contrastive loss with label-defined positives and memory queues.

Legend: B local batch, G gathered batch (all ranks), M queue capacity, F filled queue entries, E embed dim,
C columns (G + F).

Rows are this rank's online features; columns are the gathered online features of the other modality (with
gradient) followed by the queued momentum features. Every column whose label equals the row's label is a
positive (P(i) = {k : y_k = y_i}); the loss is the mean negative log-likelihood over the positives, averaged
over visual->text and text->visual. With unique labels and an empty queue this is CLIP's InfoNCE.

Class items vs caption items: the paper counts a caption item as a negative of every class item (and the other
way round). That is nearly always right with ImageNet's 1000 classes, and often wrong with a handful of classes
(a video captioned "a red circle moving left" becomes a negative of the class text "moving left"). With
`cross_kind="ignore"` such pairs are left out of the softmax (and out of the matching head's hard negatives):
class items contrast with class items, caption items with caption items. Label ids say their kind (bit 62, see
`omnivl.data.text.CLASS_LABEL_BIT`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from omnivl.data.text import CLASS_LABEL_BIT

CrossKind = Literal["negative", "ignore"]
GatherFn = Callable[[torch.Tensor], torch.Tensor]


def identity_gather(x: torch.Tensor) -> torch.Tensor:
    return x


def is_class_label(labels: torch.Tensor) -> torch.Tensor:
    """Bool per id: True for a class of a label source, False for a caption pair."""
    return (labels & CLASS_LABEL_BIT) != 0


def check_cross_kind(cross_kind: str) -> None:
    if cross_kind not in ("negative", "ignore"):
        raise ValueError(f"cross_kind must be 'negative' or 'ignore', got {cross_kind!r}")


def comparable_pairs(row_labels_B: torch.Tensor, col_labels_C: torch.Tensor,
                     cross_kind: CrossKind) -> torch.Tensor | None:
    """Bool [B, C]: the pairs whose relation the labels state (None: all of them, the paper's rule)."""
    check_cross_kind(cross_kind)
    if cross_kind == "negative":
        return None
    return is_class_label(row_labels_B)[:, None] == is_class_label(col_labels_C)[None, :]


def multi_positive_nll(logits_BC: torch.Tensor, row_labels_B: torch.Tensor, col_labels_C: torch.Tensor,
                       comparable_BC: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of -sum_k p_ik log softmax(logits_i)_k with p_i uniform over the same-label columns.
    Columns where `comparable_BC` is False are left out of the softmax.
    Rows without any positive column contribute nothing (cannot happen when a row's pair is a column)."""
    if comparable_BC is not None:
        logits_BC = logits_BC.float().masked_fill(~comparable_BC, float("-inf"))
    positive_BC = row_labels_B[:, None] == col_labels_C[None, :]
    counts_B = positive_BC.sum(1)
    targets_BC = positive_BC.float() / counts_B.clamp(min=1)[:, None]
    # where() rather than a product: a left-out column has log-probability -inf and target 0.
    nll_B = -torch.where(positive_BC, targets_BC * F.log_softmax(logits_BC.float(), dim=-1), 0.0).sum(1)
    has_pos_B = counts_B > 0
    return (nll_B * has_pos_B).sum() / has_pos_B.sum().clamp(min=1)


class MemoryQueue(nn.Module):
    """The M most recent momentum visual features, text features and labels (a ring buffer).

    Enqueue accepts any number of rows (a short last batch, or more than M: only the newest M are kept). Until
    full, the valid entries are exactly the first `filled` slots."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("visual_ME", torch.zeros(size, dim))
        self.register_buffer("text_ME", torch.zeros(size, dim))
        self.register_buffer("labels_M", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def contents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(visual [F,E], text [F,E], labels [F]) of the filled slots (order is irrelevant to the loss)."""
        f = int(self.filled)
        return self.visual_ME[:f], self.text_ME[:f], self.labels_M[:f]

    @torch.no_grad()
    def enqueue(self, visual_NE: torch.Tensor, text_NE: torch.Tensor, labels_N: torch.Tensor) -> None:
        n = visual_NE.shape[0]
        if self.size == 0 or n == 0:
            return
        if n > self.size:
            visual_NE, text_NE, labels_N = visual_NE[-self.size:], text_NE[-self.size:], labels_N[-self.size:]
            n = self.size
        slots_N = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size
        self.visual_ME[slots_N] = visual_NE.to(self.visual_ME.dtype)
        self.text_ME[slots_N] = text_NE.to(self.text_ME.dtype)
        self.labels_M[slots_N] = labels_N.to(torch.long)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))

    def fill_fraction(self) -> float:
        return float(self.filled) / self.size if self.size else 0.0


@dataclass
class UniVLCOutput:
    loss: torch.Tensor
    loss_v2t: torch.Tensor
    loss_t2v: torch.Tensor
    temperature: float
    queue_fill: float


class UniVLCLoss(nn.Module):
    """Owns the learnable temperature (clamped to [temp_min, temp_max]) and the memory queues.

    `queue_keys` names the banks: ("shared",) when image and video share one, ("image", "video") otherwise.
    `gather_fn` concatenates a tensor's rows over ranks keeping gradients (identity on one process).
    `cross_kind` says what a (class item, caption item) pair is: a negative (the paper) or left out."""

    def __init__(self, embed_dim: int, queue_size: int, queue_keys: tuple[str, ...] = ("shared",),
                 temp_init: float = 0.07, temp_min: float = 0.001, temp_max: float = 0.5,
                 gather_fn: GatherFn = identity_gather, cross_kind: CrossKind = "negative") -> None:
        super().__init__()
        check_cross_kind(cross_kind)
        self.cross_kind = cross_kind
        # shape [1], not a scalar: FSDP2 shards 1-D and larger parameters only
        self.temp = nn.Parameter(torch.tensor([float(temp_init)]))
        self.temp_min, self.temp_max = temp_min, temp_max
        self.queues = nn.ModuleDict({k: MemoryQueue(queue_size, embed_dim) for k in queue_keys})
        self.gather_fn = gather_fn

    def forward(self, visual_BE: torch.Tensor, text_BE: torch.Tensor, labels_B: torch.Tensor,
                visual_m_BE: torch.Tensor | None = None, text_m_BE: torch.Tensor | None = None,
                queue_key: str | None = None, enqueue: bool = False) -> UniVLCOutput:
        """Features are L2-normalized [B,E]; `*_m_` are the momentum features to enqueue (required when
        `enqueue`). `queue_key=None` uses no queue. The queue is read before it is updated with this batch."""
        self.clamp_temperature()
        queue = self.queues[queue_key] if queue_key is not None else None
        visual_GE, text_GE, labels_G = self.gather_fn(visual_BE), self.gather_fn(text_BE), self.gather_fn(labels_B)
        q_visual, q_text, q_labels = _queue_contents(queue, visual_BE)
        col_labels_C = torch.cat([labels_G, q_labels])
        logits_v2t_BC = visual_BE @ torch.cat([text_GE, q_text]).T / self.temp
        logits_t2v_BC = text_BE @ torch.cat([visual_GE, q_visual]).T / self.temp
        comparable_BC = comparable_pairs(labels_B, col_labels_C, self.cross_kind)
        loss_v2t = multi_positive_nll(logits_v2t_BC, labels_B, col_labels_C, comparable_BC)
        loss_t2v = multi_positive_nll(logits_t2v_BC, labels_B, col_labels_C, comparable_BC)
        if enqueue and queue is not None:
            self._enqueue(queue, visual_m_BE, text_m_BE, labels_B)
        fill = queue.fill_fraction() if queue is not None else 0.0
        return UniVLCOutput((loss_v2t + loss_t2v) / 2, loss_v2t, loss_t2v, float(self.temp.detach()), fill)

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Keep the temperature in [temp_min, temp_max]. The forward does it, and so must the train loop after each
        optimizer step: under FSDP a forward only sees a gathered copy, and a clamp there is not kept."""
        self.temp.clamp_(self.temp_min, self.temp_max)

    @torch.no_grad()
    def _enqueue(self, queue: MemoryQueue, visual_m_BE, text_m_BE, labels_B) -> None:
        if visual_m_BE is None or text_m_BE is None:
            raise ValueError("enqueue needs the momentum features")
        # Every rank enqueues the same gathered rows, so queues stay identical across ranks.
        queue.enqueue(self.gather_fn(visual_m_BE.detach()), self.gather_fn(text_m_BE.detach()), self.gather_fn(labels_B))


def _queue_contents(queue: MemoryQueue | None, like_BE: torch.Tensor):
    if queue is None or queue.size == 0:
        E = like_BE.shape[1]
        return like_BE.new_zeros(0, E), like_BE.new_zeros(0, E), torch.zeros(0, dtype=torch.long, device=like_BE.device)
    v, t, y = queue.contents()
    return v.to(like_BE.dtype), t.to(like_BE.dtype), y
