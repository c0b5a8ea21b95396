"""The embedding pass's result: the outputs of `inference.embed_batch` over every decodable row of a source,
gathered on the driver (plain numpy, no Ray).

Re-ranking reuses the visual tokens of this pass instead of decoding the source again: with `keep_tokens` the
batches carry each row's tokens [S, D], and `collect` keeps those of the first row of each gallery item (its
media file), copied out of the batch, and drops the rest. That is `items x S x D` float32 on the driver:
`check_token_budget` refuses a source whose tokens would pass `MAX_KEPT_TOKEN_BYTES` before any work is done.
Legend: N decoded rows, E embedding dim, D visual width, S visual tokens per row ([CLS] + patches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

# The visual tokens the driver may keep for re-ranking. ViT-B/16 at 224 px keeps 197 x 768 float32 = 0.58 MiB per
# image (~14k images), at 8 frames (tubelet 1) 4.6 MiB per video (~1.8k videos): the usual test sets fit.
MAX_KEPT_TOKEN_BYTES = 8 * 2**30
FLOAT32_BYTES = 4


@dataclass
class Embedded:
    """Per decoded row (order arbitrary, identified by `row_key_N`): visual embeddings, text embeddings, the
    row's label id and text, the frozen pooled visual features; `generated`: row key -> caption, when captioning
    rode along on the pass; `tokens`: row key -> visual tokens [S, D] of the first decoded row of each item,
    when the pass kept them."""

    visual_NE: np.ndarray
    text_NE: np.ndarray
    label_id_N: np.ndarray
    text_N: list[str]
    row_key_N: list[str]
    features_ND: np.ndarray | None = None
    generated: dict[str, str] | None = None
    tokens: dict[str, np.ndarray] | None = None

    @property
    def rows(self) -> int:
        return len(self.label_id_N)


def collect(batches: Iterable[dict], where: str, item_of: Callable[[str], str] | None = None) -> Embedded:
    """Concatenates embed batches (columns of `inference.embed_batch`, plus `generated` and `tokens` when
    present). Tokens are kept for the first row of each item (`item_of(row key)`, required with tokens).
    Raises ValueError naming `where` if no row was decoded."""
    parts, tokens, seen = [], None, set()
    for b in batches:
        if not len(b["label_id"]):
            continue
        if "tokens" in b:
            tokens = {} if tokens is None else tokens
            _keep_first_of_each_item(b, item_of, tokens, seen)
            b = {k: v for k, v in b.items() if k != "tokens"}  # the batch's tokens go with the batch
        parts.append(b)
    if not parts:
        raise ValueError(f"{where}: no row could be decoded; see the bad-input report")
    return Embedded(
        np.concatenate([b["visual"] for b in parts]), np.concatenate([b["text_emb"] for b in parts]),
        np.concatenate([b["label_id"] for b in parts]), [str(t) for b in parts for t in b["text"]],
        [str(k) for b in parts for k in b["row_key"]],
        np.concatenate([b["features"] for b in parts]) if "features" in parts[0] else None,
        {str(k): str(g) for b in parts for k, g in zip(b["row_key"], b["generated"])}
        if "generated" in parts[0] else None,
        tokens,
    )


def _keep_first_of_each_item(batch: dict, item_of: Callable[[str], str] | None, tokens: dict, seen: set) -> None:
    if item_of is None:
        raise ValueError("collect: batches carry visual tokens but no item_of says which rows to keep")
    for key, tokens_SD in zip(batch["row_key"], batch["tokens"]):
        item = item_of(str(key))
        if item not in seen:
            seen.add(item)
            tokens[str(key)] = np.array(tokens_SD, dtype=np.float32)  # a copy: a view would pin the whole batch


def kept_token_bytes(items: int, tokens_per_row: int, width: int) -> int:
    return items * tokens_per_row * width * FLOAT32_BYTES


def check_token_budget(where: str, items: int, tokens_per_row: int, width: int, budget: int | None = None) -> None:
    """Raises ValueError (naming `where`, the size and the ways out) if keeping the visual tokens of `items`
    gallery items for re-ranking would take more than `budget` bytes (default `MAX_KEPT_TOKEN_BYTES`)."""
    budget = MAX_KEPT_TOKEN_BYTES if budget is None else budget
    need = kept_token_bytes(items, tokens_per_row, width)
    if need > budget:
        raise ValueError(
            f"{where}: re-ranking keeps the visual tokens of each of its {items} items ({tokens_per_row} x {width} "
            f"float32 each, {need / 2**30:.1f} GiB in all), over the {budget / 2**30:.1f} GiB the driver may hold; "
            "set eval.rerank_k: 0 (contrastive ranking only) or split the source")
