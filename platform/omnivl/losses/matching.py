"""Vision-language matching (VLM) with hard negatives mined from the contrastive similarities (ALBEF/BLIP).

Legend: B batch, S visual tokens, D visual width, L text length, P pairs scored (B positives + negatives).

For every pair i, one negative text is sampled for visual i and one negative visual for text i, with
probability increasing with similarity, and never among items sharing i's label. Mining is over the local
batch: the visual tokens the decoder needs are large, so they are not gathered across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from omnivl.losses.univlc import CrossKind, check_cross_kind, comparable_pairs

MatchFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MatchingOutput:
    loss: torch.Tensor
    accuracy: float
    num_negatives: int


def sample_hard_negatives(sim_BB: torch.Tensor, labels_B: torch.Tensor, temperature: float = 1.0,
                          generator: torch.Generator | None = None,
                          comparable_BB: torch.Tensor | None = None) -> torch.Tensor:
    """For each row, a column index sampled from softmax(sim / temperature) over columns with a different label
    (and, given `comparable_BB`, only where it is True); -1 for rows without a valid negative."""
    allowed_BB = labels_B[:, None] != labels_B[None, :]
    if comparable_BB is not None:
        allowed_BB = allowed_BB & comparable_BB
    # The small floor keeps far-away negatives reachable and avoids an all-zero row from softmax underflow.
    weights_BB = (F.softmax(sim_BB.float() / temperature, dim=1) + 1e-4) * allowed_BB
    has_neg_B = allowed_BB.any(1)
    choice_B = torch.full_like(labels_B, -1)
    if bool(has_neg_B.any()):
        picked = torch.multinomial(weights_BB[has_neg_B], 1, generator=generator).squeeze(1)
        choice_B[has_neg_B] = picked
    return choice_B


class MatchingLoss(nn.Module):
    """Cross-entropy of the 2-way matching head on positives, hard-negative texts and hard-negative visuals.
    `cross_kind` as in UniVLC: "ignore" never pairs a class item with a caption item as a negative."""

    def __init__(self, cross_kind: CrossKind = "negative") -> None:
        super().__init__()
        check_cross_kind(cross_kind)
        self.cross_kind = cross_kind

    def forward(self, match_fn: MatchFn, visual_tokens_BSD: torch.Tensor, input_ids_BL: torch.Tensor,
                attention_mask_BL: torch.Tensor, labels_B: torch.Tensor, sim_v2t_BB: torch.Tensor,
                temperature: float = 1.0, generator: torch.Generator | None = None) -> MatchingOutput:
        """`match_fn(visual_tokens, ids, mask) -> logits [P, 2]` (index 1 = match). `sim_v2t_BB` is the local
        visual-to-text similarity (detached)."""
        sim_v2t_BB = sim_v2t_BB.detach()
        comparable_BB = comparable_pairs(labels_B, labels_B, self.cross_kind)
        neg_text_B = sample_hard_negatives(sim_v2t_BB, labels_B, temperature, generator, comparable_BB)
        neg_visual_B = sample_hard_negatives(sim_v2t_BB.T, labels_B, temperature, generator, comparable_BB)
        has_nt, has_nv = neg_text_B >= 0, neg_visual_B >= 0
        rows = torch.arange(labels_B.shape[0], device=labels_B.device)
        visual_idx_P = torch.cat([rows, rows[has_nt], neg_visual_B[has_nv]])
        text_idx_P = torch.cat([rows, neg_text_B[has_nt], rows[has_nv]])
        logits_P2 = match_fn(visual_tokens_BSD[visual_idx_P], input_ids_BL[text_idx_P], attention_mask_BL[text_idx_P])
        targets_P = torch.zeros(visual_idx_P.shape[0], dtype=torch.long, device=logits_P2.device)
        targets_P[: labels_B.shape[0]] = 1
        loss = F.cross_entropy(logits_P2.float(), targets_P)
        accuracy = float((logits_P2.argmax(-1) == targets_P).float().mean())
        return MatchingOutput(loss, accuracy, int(visual_idx_P.shape[0] - labels_B.shape[0]))
