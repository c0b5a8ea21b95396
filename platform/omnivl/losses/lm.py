"""Language-modelling (captioning) loss of the generation decoder, with label smoothing (BLIP uses 0.1).

Legend: B batch, L text length, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CaptionLoss(nn.Module):
    """Position i predicts token i+1; padding positions (attention mask 0) are ignored. The first input token is
    the decoder's [DEC] start and is never a target; the final [SEP] is (it is the [EOS] to learn). With
    `prompt_len_B`, the first `prompt_len_B[b]` tokens of row b are not targets either (QA trains on the answer
    only; the question is conditioning)."""

    def __init__(self, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits_BLV: torch.Tensor, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor,
                prompt_len_B: torch.Tensor | None = None) -> torch.Tensor:
        targets_BL = input_ids_BL[:, 1:].masked_fill(attention_mask_BL[:, 1:] == 0, -100)
        if prompt_len_B is not None:
            position_L = torch.arange(1, input_ids_BL.shape[1], device=input_ids_BL.device)
            targets_BL = targets_BL.masked_fill(position_L[None, :] < prompt_len_B[:, None], -100)
        logits = logits_BLV[:, :-1].reshape(-1, logits_BLV.shape[-1]).float()
        return F.cross_entropy(logits, targets_BL.reshape(-1), ignore_index=-100, label_smoothing=self.label_smoothing)
