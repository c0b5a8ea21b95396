"""Retrieval metrics from a similarity matrix, for any number of matching gallery items per query.

    sim_QG: similarity of each query (row) to each gallery item (column); higher is better.
    truth:  truth[q] is the set of gallery columns that count as a match for query q.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

# match_fn(query_index_P, gallery_index_P) -> match score_P (higher = better), for P (query, item) pairs
MatchFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def ranks(sim_QG: np.ndarray, truth: Sequence[set[int]]) -> np.ndarray:
    """1-based rank of the best-ranked matching item of each query (ties broken against the query)."""
    sim_QG = np.asarray(sim_QG, dtype=np.float64)
    if sim_QG.shape[0] != len(truth):
        raise ValueError(f"{sim_QG.shape[0]} queries but {len(truth)} truth sets")
    out = np.empty(len(truth), dtype=np.int64)
    for q, matches in enumerate(truth):
        if not matches:
            raise ValueError(f"query {q} has no matching gallery item")
        best = sim_QG[q, sorted(matches)].max()
        # items strictly better than the best match, plus non-matching ties (pessimistic)
        non_match = np.ones(sim_QG.shape[1], dtype=bool)
        non_match[list(matches)] = False
        out[q] = 1 + int((sim_QG[q] > best).sum()) + int((sim_QG[q, non_match] == best).sum())
    return out


def recall_metrics(rank_Q: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K in percent, mean and median rank."""
    rank_Q = np.asarray(rank_Q)
    out = {f"R@{k}": float(100.0 * (rank_Q <= k).mean()) for k in ks}
    out["mean_rank"] = float(rank_Q.mean())
    out["median_rank"] = float(np.median(rank_Q))
    return out


def chance_recall(num_gallery: int, matches_per_query: float = 1.0, k: int = 1) -> float:
    """Expected R@K (percent) of a random ranking, for the report's 'chance' column."""
    if num_gallery <= 0:
        return 0.0
    p_miss = 1.0
    for i in range(min(k, num_gallery)):
        p_miss *= max(0.0, (num_gallery - matches_per_query - i) / (num_gallery - i))
    return 100.0 * (1.0 - p_miss)


def bidirectional(sim_VT: np.ndarray, text_to_visual: Sequence[int]) -> dict[str, dict[str, float]]:
    """Visual->text and text->visual retrieval for captions that each belong to one visual item.

    `text_to_visual[t]` is the visual row that caption t describes; a visual may have several captions.
    """
    text_to_visual = list(text_to_visual)
    captions_of: list[set[int]] = [set() for _ in range(sim_VT.shape[0])]
    for t, v in enumerate(text_to_visual):
        captions_of[v].add(t)
    return {
        "visual_to_text": recall_metrics(ranks(sim_VT, captions_of)),
        "text_to_visual": recall_metrics(ranks(sim_VT.T, [{v} for v in text_to_visual])),
    }


def top_k_candidates(sim_QG: np.ndarray, k: int) -> np.ndarray:
    """int [Q, min(k, G)]: each query's k most similar gallery columns, best first (stable on ties)."""
    k = min(k, sim_QG.shape[1])
    return np.argsort(-np.asarray(sim_QG, dtype=np.float64), axis=1, kind="stable")[:, :k]


def rerank_scores(sim_QG: np.ndarray, candidates_QK: np.ndarray, match_QK: np.ndarray,
                  add_similarity: bool = True) -> np.ndarray:
    """Scores whose ranking puts each query's candidates first, ordered by their re-ranking score, and every
    other item after them in contrastive order. The re-ranking score is the match score plus the contrastive
    similarity (`add_similarity`, BLIP's evaluation) or the match score alone (ALBEF's)."""
    sim = np.asarray(sim_QG, dtype=np.float64)
    out = sim - sim.max() - 1.0  # every non-candidate below...
    score = np.asarray(match_QK, dtype=np.float64)
    if add_similarity:
        score = score + np.take_along_axis(sim, np.asarray(candidates_QK), axis=1)
    lift = score - score.min() + 1.0  # ...every candidate (candidates > 0 > non-candidates)
    np.put_along_axis(out, np.asarray(candidates_QK), lift, axis=1)
    return out


def rerank(sim_QG: np.ndarray, k: int, match_fn: MatchFn, add_similarity: bool = True) -> np.ndarray:
    """Re-ranked scores [Q, G]: top-k by `sim_QG`, re-scored by `match_fn` on the (query, item) pairs (plus the
    contrastive similarity when `add_similarity`)."""
    cand_QK = top_k_candidates(sim_QG, k)
    q_idx = np.repeat(np.arange(cand_QK.shape[0]), cand_QK.shape[1])
    scores = np.asarray(match_fn(q_idx, cand_QK.reshape(-1)), dtype=np.float64)
    if scores.shape != q_idx.shape:
        raise ValueError(f"match_fn returned {scores.shape} scores for {q_idx.shape[0]} pairs")
    return rerank_scores(sim_QG, cand_QK, scores.reshape(cand_QK.shape), add_similarity)


def items_and_captions(item_keys: Sequence[str]) -> tuple[list[int], list[int]]:
    """For caption rows naming their item (e.g. its media file): (the first row of each distinct item, in
    order of appearance; the item index of every row). Several captions of one item become one gallery item."""
    first: dict[str, int] = {}
    reps, text_to_item = [], []
    for n, key in enumerate(item_keys):
        if key not in first:
            first[key] = len(reps)
            reps.append(n)
        text_to_item.append(first[key])
    return reps, text_to_item
