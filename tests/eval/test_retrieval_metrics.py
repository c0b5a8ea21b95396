"""Retrieval metrics against hand-computed cases."""

import numpy as np
import pytest

from omnivl.eval.retrieval import bidirectional, chance_recall, ranks, recall_metrics


def test_ranks_on_a_hand_built_matrix():
    sim = np.array([
        [0.9, 0.1, 0.3],   # match 0 is first -> rank 1
        [0.8, 0.2, 0.5],   # match 1 is last -> rank 3
        [0.1, 0.7, 0.6],   # match 2 second -> rank 2
    ])
    assert ranks(sim, [{0}, {1}, {2}]).tolist() == [1, 3, 2]
    m = recall_metrics(ranks(sim, [{0}, {1}, {2}]), ks=(1, 2))
    assert m == {"R@1": pytest.approx(100 / 3), "R@2": pytest.approx(200 / 3), "mean_rank": 2.0, "median_rank": 2.0}


def test_any_matching_item_counts():
    sim = np.array([[0.1, 0.9, 0.5, 0.2]])
    assert ranks(sim, [{0, 2}]).tolist() == [2]  # item 2 (0.5) is the best match, behind item 1


def test_ties_are_pessimistic():
    sim = np.array([[0.5, 0.5, 0.5]])
    assert ranks(sim, [{1}]).tolist() == [3]


def test_bidirectional_with_multiple_captions_per_item():
    # 2 videos, 3 captions: captions 0 and 1 describe video 0, caption 2 describes video 1
    sim_VT = np.array([[0.2, 0.9, 0.1],
                       [0.3, 0.1, 0.8]])
    out = bidirectional(sim_VT, [0, 0, 1])
    assert out["visual_to_text"]["R@1"] == 100.0
    # caption 0 prefers video 1 (0.3 > 0.2): rank 2; the others rank 1
    assert out["text_to_visual"]["R@1"] == pytest.approx(200 / 3)


def test_chance_levels():
    assert chance_recall(10, 1, 1) == pytest.approx(10.0)
    assert chance_recall(10, 1, 5) == pytest.approx(50.0)
    assert chance_recall(4, 2, 1) == pytest.approx(50.0)
