"""Language-modelling (captioning) loss of the generation decoder, with label smoothing (BLIP uses 0.1).

Legend: B batch, L text length, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CaptionLoss(nn.Module):
    """Position i predicts token i+1; padding positions (attention mask 0) are ignored. The first input token is
    the decoder's [DEC] start and is never a target; the final [SEP] is (it is the [EOS] to learn)."""

    def __init__(self, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits_BLV: torch.Tensor, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor) -> torch.Tensor:
        targets_BL = input_ids_BL[:, 1:].masked_fill(attention_mask_BL[:, 1:] == 0, -100)
        logits = logits_BLV[:, :-1].reshape(-1, logits_BLV.shape[-1]).float()
        return F.cross_entropy(logits, targets_BL.reshape(-1), ignore_index=-100, label_smoothing=self.label_smoothing)
