"""The retrieval task on a caption (`kind: text`) source: text->visual and visual->text, by contrastive
similarity, then with each query's top `rerank_k` candidates re-scored by the matching head from the visual
tokens the embedding pass kept; for videos also the motion-direction probe, and the speed probe where the captions
have speed words.

Items are distinct media files; a caption matches the item its manifest row points at. Legend: V gallery items,
T texts (decoded rows), K candidates per query, P candidate pairs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from omnivl.eval import classify, report
from omnivl.eval.embedding import Embedded
from omnivl.eval.results import Score, TaskResult
from omnivl.eval.retrieval import chance_recall, items_and_captions, ranks, recall_metrics, rerank, top_k_candidates
from omnivl.eval.source import EvalSource
from omnivl.eval.tasks.context import EvalContext

RECALL_AT = (1, 5, 10)
PAIRED_CHOICE_CHANCE = 50.0  # the direction and speed probes pick one of two captions


def retrieval(source: EvalSource, ctx: EvalContext, emb: Embedded) -> TaskResult:
    reps, text_to_item = items_and_captions([source.uri(k) for k in emb.row_key_N])
    sim_VT = emb.visual_NE[reps] @ emb.text_NE.T
    truth_tv = [{v} for v in text_to_item]
    truth_vt: list[set[int]] = [set() for _ in reps]
    for t, v in enumerate(text_to_item):
        truth_vt[v].add(t)
    rank_lists = {"contrastive": {"text_to_visual": ranks(sim_VT.T, truth_tv),
                                  "visual_to_text": ranks(sim_VT, truth_vt)}}
    k = ctx.cfg.rerank_k
    if k > 0:
        rank_lists["reranked"] = reranked_ranks(ctx, emb, reps, sim_VT, truth_tv, truth_vt)
    res = {name: {d: recall_metrics(r, RECALL_AT) for d, r in dirs.items()} for name, dirs in rank_lists.items()}
    table = retrieval_table(source.modality, res, n_items=len(reps), n_texts=len(text_to_item), k=k,
                            captions_per_item=len(text_to_item) / len(reps))
    payload = {"items": len(reps), "rerank_k": k, **res}
    if source.modality == "video":
        probe = direction_probe(source, ctx, emb)
        if probe is not None:
            payload["direction_probe"] = probe
            table["direction probe: full caption, true vs reversed (%)"] = Score(probe["caption"], PAIRED_CHOICE_CHANCE)
            table["direction probe: motion only, true vs reversed (%)"] = Score(probe["motion"], PAIRED_CHOICE_CHANCE)
        speed = speed_probe(ctx, emb)
        if speed is not None:
            payload["speed_probe"] = speed
            table["speed probe: full caption, true vs contrary speed (%)"] = Score(speed, PAIRED_CHOICE_CHANCE)
    figures = recall_figures(source, ctx, rank_lists, n_items=len(reps), n_texts=len(text_to_item))
    return TaskResult(payload, table, figures=figures, rows=len(text_to_item))


def candidate_pairs(sim_VT: np.ndarray, k: int) -> np.ndarray:
    """int [P, 2]: the distinct (item, text) pairs among each text's top-k items and each item's top-k texts."""
    cand_TK, cand_VK = top_k_candidates(sim_VT.T, k), top_k_candidates(sim_VT, k)
    tv = np.stack([cand_TK.ravel(), np.repeat(np.arange(cand_TK.shape[0]), cand_TK.shape[1])], axis=1)
    vt = np.stack([np.repeat(np.arange(cand_VK.shape[0]), cand_VK.shape[1]), cand_VK.ravel()], axis=1)
    return np.unique(np.concatenate([tv, vt]).astype(np.int64), axis=0)


def item_tokens(emb: Embedded, reps: list[int]) -> list[np.ndarray]:
    """The kept visual tokens [S, D] of each gallery item (its first decoded row `reps[v]`), joined by row key."""
    if emb.tokens is None:
        raise ValueError("re-ranking needs the visual tokens of the embedding pass (embed with keep_tokens)")
    keys = [emb.row_key_N[r] for r in reps]
    missing = [k for k in keys if k not in emb.tokens]
    if missing:
        raise ValueError(f"re-ranking: no visual tokens kept for rows {missing[:3]} ({len(missing)} items)")
    return [emb.tokens[k] for k in keys]


def reranked_ranks(ctx: EvalContext, emb: Embedded, reps: list[int], sim_VT: np.ndarray,
                   truth_tv: list[set[int]], truth_vt: list[set[int]]) -> dict[str, np.ndarray]:
    """Ranks after re-scoring each query's top-k candidates with the matching head, every candidate pair scored
    once (in this process, from the kept tokens: no second decode)."""
    k = ctx.cfg.rerank_k
    pairs_P2 = candidate_pairs(sim_VT, k)
    scores_P = ctx.driver.match_pairs(item_tokens(emb, reps), emb.text_N, pairs_P2)
    score_of = {(int(v), int(t)): float(s) for (v, t), s in zip(pairs_P2, scores_P)}

    def tv(q, g):
        return np.array([score_of[(int(v), int(t))] for t, v in zip(q, g)])

    def vt(q, g):
        return np.array([score_of[(int(v), int(t))] for v, t in zip(q, g)])

    add_sim = ctx.cfg.rerank_score == "match_plus_similarity"
    return {"text_to_visual": ranks(rerank(sim_VT.T, k, tv, add_sim), truth_tv),
            "visual_to_text": ranks(rerank(sim_VT, k, vt, add_sim), truth_vt)}


def retrieval_table(kind: str, res: dict, n_items: int, n_texts: int, k: int,
                    captions_per_item: float) -> dict[str, Score]:
    """Report rows: R@1/5/10, mean and median rank per direction and ranking, each with its chance level."""
    table = {}
    for d, label, gallery, matches in (("text_to_visual", f"text->{kind}", n_items, 1.0),
                                       ("visual_to_text", f"{kind}->text", n_texts, captions_per_item)):
        for name, suffix in (("contrastive", ""), ("reranked", f" (re-ranked top-{k})")):
            if name not in res:
                continue
            m = res[name][d]
            for r in RECALL_AT:
                table[f"{label} R@{r}{suffix}"] = Score(m[f"R@{r}"], chance_recall(gallery, matches, r))
            mid = (gallery - matches) / (matches + 1) + 1  # expected best rank of `matches` random positions
            table[f"{label} mean rank{suffix}"] = Score(m["mean_rank"], mid)
            table[f"{label} median rank{suffix}"] = Score(m["median_rank"], mid)
    return table


def recall_figures(source: EvalSource, ctx: EvalContext, rank_lists: dict, n_items: int, n_texts: int) -> list[str]:
    """One R@K curve PNG per direction (every ranking, with the chance diagonal); returns their names."""
    kind, names = source.modality, []
    for d, label, gallery in (("text_to_visual", f"text->{kind}", n_items),
                              ("visual_to_text", f"{kind}->text", n_texts)):
        curves = {f"{label} ({name})": rank_lists[name][d].tolist() for name in rank_lists}
        png = ctx.out / f"{source.name}_{d}_recall.png"
        names.append(report.plot_recall_curve(curves, gallery, png, f"{source.name}: {label} recall@K").name)
    return names


def direction_probe(source: EvalSource, ctx: EvalContext, emb: Embedded) -> dict | None:
    """Does the model tell a caption from the same caption with the motion reversed? (chance 50%)

    'caption': the item's own caption vs. the same caption reversed. On held-out (colour, shape, direction)
    combinations this is biased by the text prior: the reversed caption may be a combination seen in training.
    'motion': the same comparison on captions that say nothing but the motion ("a video of something moving
    left" vs "... right", the modality's first prompt template), which isolates the temporal path."""
    from omnivl.data.config import DEFAULT_TEMPLATES

    caption = swapped_caption_choice(ctx, emb, classify.swap_direction)
    if caption is None:
        return None
    template = (source.config.templates or DEFAULT_TEMPLATES[source.modality])[0]
    rows, motion, motion_alt = [], [], []
    for n, text in enumerate(emb.text_N):
        direction = classify.direction_of(text)
        if direction is not None:
            rows.append(n)
            motion.append(template.format(f"moving {direction}"))
            motion_alt.append(template.format(f"moving {classify.OPPOSITE[direction]}"))
    texts = ctx.driver.embed_texts(motion + motion_alt)
    return {"caption": caption,
            "motion": classify.paired_choice_accuracy(emb.visual_NE[rows], texts[:len(rows)], texts[len(rows):])}


def speed_probe(ctx: EvalContext, emb: Embedded) -> float | None:
    """Percent of captions with a speed word whose item is more similar to them than to the same caption with
    the contrary speed ('slowly' <-> 'quickly'; chance 50), or None if no caption has one. Speed, like direction,
    is only in the order and spacing of the frames: this tells whether the video features carry it."""
    return swapped_caption_choice(ctx, emb, classify.swap_speed)


def swapped_caption_choice(ctx: EvalContext, emb: Embedded, swap: Callable[[str], str | None]) -> float | None:
    """Percent of the captions that `swap` changes whose item is more similar to them than to their swapped form
    (chance 50); None if it changes none."""
    rows, alts = [], []
    for n, text in enumerate(emb.text_N):
        alt = swap(text)
        if alt is not None:
            rows.append(n)
            alts.append(alt)
    if not rows:
        return None
    return classify.paired_choice_accuracy(emb.visual_NE[rows], emb.text_NE[rows], ctx.driver.embed_texts(alts))
