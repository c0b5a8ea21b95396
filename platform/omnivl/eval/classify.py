"""Zero-shot classification and paired-caption probes from embeddings (numpy only).

    visual_NE: L2-normalized visual embeddings; class_CE: one embedding per class (prompt ensemble);
    sim_C: one visual's cosine similarity to each class.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up",
            "up-left": "down-right", "down-right": "up-left", "up-right": "down-left", "down-left": "up-right"}
# A diagonal ("up-left") is one direction, so it is tried before its parts.
_DIRECTION = re.compile(r"\b(?:(?:up|down)-(?:left|right)|left|right|up|down)\b")
# The synthetic corpora's speed words (SynthConfig.speeds), each with its contrary: the speed probe's swap
SPEED_CONTRARY = {"slowly": "quickly", "quickly": "slowly"}
_SPEED = re.compile(r"\b(?:" + "|".join(SPEED_CONTRARY) + r")\b")
# CLIP's convention (its learned logit scale is capped at 100): a cosine gap of 0.01 is a factor e in probability.
CLASSIFY_LOGIT_SCALE = 100.0


def ensemble(prompt_embeddings_PE: np.ndarray) -> np.ndarray:
    """Mean of a class's prompt embeddings, re-normalized (CLIP's prompt ensembling)."""
    mean = prompt_embeddings_PE.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def class_prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every (class, template) prompt, class-major: prompt c * P + p is `templates[p]` filled with `classes[c]`."""
    return [t.format(c) for c in classes for t in templates]


def class_embeddings(prompt_TE: np.ndarray, num_classes: int) -> np.ndarray:
    """class_CE: the prompt ensemble of each class, from the embeddings of `class_prompts` (class-major)."""
    return np.stack([ensemble(p) for p in prompt_TE.reshape(num_classes, -1, prompt_TE.shape[-1])])


def class_probabilities(sim_C: np.ndarray) -> np.ndarray:
    """Softmax over classes of CLASSIFY_LOGIT_SCALE x cosine similarity: the probabilities /v1/classify and the
    Python API report. Same shape and dtype as `sim_C` (C >= 1)."""
    logits_C = CLASSIFY_LOGIT_SCALE * (sim_C - sim_C.max())  # shifted by the max: exp cannot overflow
    exp_C = np.exp(logits_C)
    return exp_C / exp_C.sum()


def class_names_by_id(source) -> dict[int, str]:
    """label id -> class name of a label source's manifest (`SourceConfig`), the ids its decoded rows carry."""
    from omnivl.data.manifest import class_names
    from omnivl.data.text import label_id_for_class

    return {label_id_for_class(c): c for c in class_names(source)}


def topk_accuracy(visual_NE: np.ndarray, class_CE: np.ndarray, truth_N: Sequence[int],
                  ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-K accuracy (percent) of classifying each visual as its most similar class."""
    scores_NC = visual_NE @ class_CE.T
    order_NC = np.argsort(-scores_NC, axis=1)
    truth_N = np.asarray(truth_N)
    out = {}
    for k in ks:
        k_eff = min(k, class_CE.shape[0])
        out[f"top{k}"] = float(100.0 * (order_NC[:, :k_eff] == truth_N[:, None]).any(axis=1).mean())
    return out


def confusion(visual_NE: np.ndarray, class_CE: np.ndarray, truth_N: Sequence[int]) -> np.ndarray:
    """Counts [true class, predicted class]."""
    pred = np.argmax(visual_NE @ class_CE.T, axis=1)
    m = np.zeros((class_CE.shape[0],) * 2, dtype=np.int64)
    for t, p in zip(truth_N, pred):
        m[t, p] += 1
    return m


def swap_direction(caption: str) -> str | None:
    """The caption with its motion direction reversed ('moving left' -> 'moving right', 'moving up-left' ->
    'moving down-right'); None if it has none."""
    if not _DIRECTION.search(caption):
        return None
    return _DIRECTION.sub(lambda m: OPPOSITE[m.group(0)], caption)


def swap_speed(caption: str) -> str | None:
    """The caption with its speed word replaced by the contrary one ('slowly' <-> 'quickly'); None if it has
    none."""
    if not _SPEED.search(caption):
        return None
    return _SPEED.sub(lambda m: SPEED_CONTRARY[m.group(0)], caption)


def direction_of(caption: str) -> str | None:
    """The first direction word of the caption ('left', ..., 'up-left', ...: a key of OPPOSITE), or None."""
    m = _DIRECTION.search(caption)
    return m.group(0) if m else None


def paired_choice_accuracy(visual_NE: np.ndarray, true_NE: np.ndarray, alt_NE: np.ndarray) -> float:
    """Percent of items whose visual is more similar to its true caption than to the altered one (chance 50)."""
    s_true = (visual_NE * true_NE).sum(axis=1)
    s_alt = (visual_NE * alt_NE).sum(axis=1)
    return float(100.0 * (s_true > s_alt).mean())


def majority_share(labels: Sequence) -> float:
    """Percent of `labels` that are the most frequent one: the score of always answering it (0 if empty)."""
    return 100.0 * max(Counter(labels).values()) / len(labels) if len(labels) else 0.0
