"""Decoding strategies over a next-token function: greedy, beam search and nucleus sampling.

Legend: B batch, K beams, L sequence length so far, N new tokens, V vocabulary.

`step(ids_BL) -> logits_BV` returns the logits for the token after the last position of every row. The
decoders recompute the whole prefix each step (no KV cache): captions and answers are short.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

StepFn = Callable[[torch.Tensor], torch.Tensor]


def greedy(step: StepFn, ids_BL: torch.Tensor, max_new: int, eos: int, pad: int, min_new: int = 0) -> torch.Tensor:
    """Most likely token each step. Returns the new tokens [B, N] (rows that ended are padded with `pad`)."""
    return _sample_loop(step, ids_BL, max_new, eos, pad, min_new, pick=lambda logits: logits.argmax(-1))


def nucleus(step: StepFn, ids_BL: torch.Tensor, max_new: int, eos: int, pad: int, top_p: float = 0.9,
            temperature: float = 1.0, min_new: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample from the smallest set of tokens whose probability mass reaches `top_p` (Holtzman et al.)."""
    if not 0 < top_p <= 1 or temperature <= 0:
        raise ValueError(f"need 0 < top_p <= 1 and temperature > 0, got {top_p}, {temperature}")

    def pick(logits_BV: torch.Tensor) -> torch.Tensor:
        probs_BV = F.softmax(logits_BV / temperature, dim=-1)
        sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
        # Keep a token if the mass *before* it is still below top_p (so the top token is always kept).
        keep_BV = (sorted_BV.cumsum(-1) - sorted_BV) < top_p
        sorted_BV = sorted_BV * keep_BV
        choice_B1 = torch.multinomial(sorted_BV, 1, generator=generator)
        return order_BV.gather(-1, choice_B1).squeeze(-1)

    return _sample_loop(step, ids_BL, max_new, eos, pad, min_new, pick)


def _sample_loop(step, ids_BL, max_new, eos, pad, min_new, pick) -> torch.Tensor:
    B, L0 = ids_BL.shape
    done_B = torch.zeros(B, dtype=torch.bool, device=ids_BL.device)
    for t in range(max_new):
        logits_BV = step(ids_BL).float()
        if t < min_new:
            logits_BV[:, eos] = float("-inf")
        next_B = torch.where(done_B, torch.full_like(done_B, pad, dtype=torch.long), pick(logits_BV))
        ids_BL = torch.cat([ids_BL, next_B[:, None]], dim=1)
        done_B |= next_B == eos
        if bool(done_B.all()):
            break
    return ids_BL[:, L0:]


def beam_search(step: StepFn, ids_BL: torch.Tensor, max_new: int, eos: int, pad: int, num_beams: int = 3,
                length_penalty: float = 1.0, min_new: int = 0) -> torch.Tensor:
    """Keep the `num_beams` best prefixes by summed log-probability; return each row's best finished (or longest)
    hypothesis ranked by score / length**length_penalty. Returns [B, N]."""
    B, L0 = ids_BL.shape
    K, device = num_beams, ids_BL.device
    ids_bL = ids_BL.repeat_interleave(K, dim=0)
    scores_BK = torch.zeros(B, K, device=device)
    scores_BK[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    finished_b = torch.zeros(B * K, dtype=torch.bool, device=device)
    lengths_b = torch.zeros(B * K, device=device)
    for t in range(max_new):
        logp_bV = F.log_softmax(step(ids_bL).float(), dim=-1)
        if t < min_new:
            logp_bV[:, eos] = float("-inf")
        logp_bV[finished_b] = float("-inf")
        logp_bV[finished_b, pad] = 0.0  # a finished beam only extends with padding, at no cost
        V = logp_bV.shape[-1]
        top_BK, flat_BK = (scores_BK.reshape(-1, 1) + logp_bV).reshape(B, K * V).topk(K, dim=-1)
        src_b = ((torch.arange(B, device=device) * K)[:, None] + flat_BK // V).reshape(-1)
        tok_b = (flat_BK % V).reshape(-1)
        lengths_b = lengths_b[src_b] + (~finished_b[src_b]).float()
        finished_b = finished_b[src_b] | (tok_b == eos)
        ids_bL = torch.cat([ids_bL[src_b], tok_b[:, None]], dim=1)
        scores_BK = top_BK
        if bool(finished_b.all()):
            break
    final_BK = scores_BK / lengths_b.reshape(B, K).clamp(min=1) ** length_penalty
    best_b = torch.arange(B, device=device) * K + final_BK.argmax(-1)
    return ids_bL[best_b, L0:]


def trim_at_eos(new_BN: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """Replace the first [EOS] and everything after it by padding."""
    after_eos_BN = (new_BN == eos).long().cumsum(-1) > 0
    return new_BN.masked_fill(after_eos_BN, pad)
