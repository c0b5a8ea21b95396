"""Metric code against hand-computed cases: re-ranking, zero-shot, linear probe, captioning, QA."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from omnivl.eval import classify
from omnivl.eval.captioning import caption_metrics, random_caption_baseline, scores_with_chance, tokenize_caption
from omnivl.eval.probe import linear_probe
from omnivl.eval.qa import normalize_answer, qa_accuracy
from omnivl.eval.retrieval import items_and_captions, ranks, recall_metrics, rerank, top_k_candidates


# --- retrieval re-ranking ---------------------------------------------------------------------------------

def test_rerank_reorders_only_the_top_k():
    sim = np.array([[0.9, 0.8, 0.7, 0.1],    # truth 2: contrastive rank 3
                    [0.1, 0.2, 0.3, 0.95]])  # truth 0: contrastive rank 4
    truth = [{2}, {0}]
    assert ranks(sim, truth).tolist() == [3, 4]
    assert top_k_candidates(sim, 2).tolist() == [[0, 1], [3, 2]]
    # the matching head prefers column 2 for query 0 and column 0 for query 1
    match = np.array([[0.1, 0.2, 0.9, 0.0], [0.99, 0.0, 0.5, 0.1]])
    calls = []

    def match_fn(q, g):
        calls.append(len(q))
        return match[q, g]

    alone = dict(add_similarity=False)  # ALBEF: the head's score alone orders the top-k
    assert ranks(rerank(sim, 3, match_fn, **alone), truth).tolist() == [1, 4]  # query 1's truth is outside its top-3
    assert calls == [6]  # one call, k pairs per query
    assert ranks(rerank(sim, 4, match_fn, **alone), truth).tolist() == [1, 1]
    assert ranks(rerank(sim, 2, match_fn, **alone), truth).tolist() == [3, 4]  # truth not in top-2: unchanged
    # re-ranking never moves a candidate behind a non-candidate, even with a bad head
    # the head ranks query 0's truth last of the 3 candidates and query 1's top candidate (3) second
    bad_head = rerank(sim, 3, lambda q, g: -match[q, g], **alone)
    assert ranks(bad_head, truth).tolist() == [3, 4] and ranks(bad_head, [{3}, {3}]).tolist() == [4, 2]


def test_rerank_adds_the_contrastive_similarity_by_default():
    # BLIP's evaluation: a top-k candidate's score is match + similarity.
    sim = np.array([[0.9, 0.2, 0.1],     # truth 0, contrastive rank 1
                    [0.3, 0.6, 0.5]])    # truth 2, contrastive rank 2
    match = np.array([[0.4, 0.5, 0.0],   # head alone prefers column 1 (0.5 > 0.4): 0.9+0.4=1.3 > 0.2+0.5=0.7
                      [0.0, 0.1, 0.4]])  # 0.5+0.4=0.9 > 0.6+0.1=0.7 > (col 0 is not in the top-2)
    truth = [{0}, {2}]
    head = lambda q, g: match[q, g]  # noqa: E731
    assert ranks(rerank(sim, 2, head, add_similarity=False), truth).tolist() == [2, 1]
    assert ranks(rerank(sim, 2, head), truth).tolist() == [1, 1]
    scores = rerank(sim, 2, head)
    assert np.argsort(-scores[1]).tolist() == [2, 1, 0]  # candidates by match+sim, then the rest


def test_several_captions_per_item_and_recall_summary():
    reps, text_to_item = items_and_captions(["a.jpg", "a.jpg", "b.jpg", "c.jpg", "b.jpg"])
    assert reps == [0, 2, 3] and text_to_item == [0, 0, 1, 2, 1]
    m = recall_metrics(np.array([1, 2, 7, 11]))
    assert m == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0, "mean_rank": 5.25, "median_rank": 4.5}


# --- zero-shot ---------------------------------------------------------------------------------------------

def test_template_ensemble_and_topk_and_confusion():
    # class 0 prompts point at x and y; their normalized mean is the diagonal
    prompts = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert np.allclose(classify.ensemble(prompts), [2**-0.5, 2**-0.5])
    classes = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    visual = np.array([[0.9, 0.1, 0.0],   # -> 0 (truth 0)
                       [0.2, 0.1, 0.7],   # -> 2, second 0 (truth 0)
                       [0.0, 0.6, 0.5]])  # -> 1 (truth 1)
    acc = classify.topk_accuracy(visual, classes, [0, 0, 1], ks=(1, 2))
    assert acc == {"top1": pytest.approx(200 / 3), "top2": pytest.approx(100.0)}
    assert classify.confusion(visual, classes, [0, 0, 1]).tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]


def test_class_embeddings_are_the_ensemble_of_each_class_prompts():
    prompts = classify.class_prompts(["cat", "dog"], ["a {}.", "the {}!"])
    assert prompts == ["a cat.", "the cat!", "a dog.", "the dog!"]  # class-major
    prompt_TE = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 1.0]])
    np.testing.assert_allclose(classify.class_embeddings(prompt_TE, 2), [[2**-0.5, 2**-0.5], [0.0, 1.0]])


def test_class_probabilities_are_a_softmax_of_scaled_similarity():
    sim = np.array([0.30, 0.29, 0.10], np.float32)
    prob = classify.class_probabilities(sim)
    assert prob.dtype == np.float32 and prob.sum() == pytest.approx(1.0, abs=1e-6)
    assert prob[0] / prob[1] == pytest.approx(np.exp(classify.CLASSIFY_LOGIT_SCALE * 0.01), rel=1e-4)
    assert np.argsort(-prob).tolist() == [0, 1, 2]
    np.testing.assert_allclose(classify.class_probabilities(np.array([0.5, 0.5])), [0.5, 0.5])
    assert np.isfinite(classify.class_probabilities(np.array([1.0, -1.0]) * 1e3)).all()  # no overflow


# --- linear probe ------------------------------------------------------------------------------------------

def test_linear_probe_separable_and_unseen_classes():
    rng = np.random.default_rng(0)
    centres = {"circle": np.array([3.0, 0.0]), "square": np.array([-3.0, 0.0]), "triangle": np.array([0.0, 3.0])}
    labels = [c for c in centres for _ in range(20)]
    feats = np.stack([centres[c] + rng.normal(0, 0.3, 2) for c in labels])
    test_labels = ["circle", "square", "triangle", "diamond"]  # diamond was never in training: an error
    test = np.stack([centres.get(c, np.zeros(2)) for c in test_labels])
    out = linear_probe(feats, labels, test, test_labels)
    assert out["predictions"][:3] == ["circle", "square", "triangle"]
    assert out["accuracy"] == 75.0 and out["chance"] == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe(feats[:3], ["circle"] * 3, test, test_labels)


# --- captioning --------------------------------------------------------------------------------------------

REFS = {"img1": ["a red circle in the top left"], "img2": ["two blue squares moving quickly upward"]}


def test_identical_captions_score_bleu_1_and_cider_10():
    out = caption_metrics(REFS, {k: v[0] for k, v in REFS.items()}, java=False)
    assert out["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    # every n-gram occurs in one of the 2 items: idf = log 2 for all, cosine 1 at every n -> 10 * mean(1)
    assert out["CIDEr"] == pytest.approx(10.0, abs=1e-6)


def test_bleu_on_a_hand_counted_pair():
    # 7 words, one substituted at the end: clipped precisions 6/7, 5/6, 4/5, 3/4; equal lengths, no penalty
    out = caption_metrics({"x": ["a red circle in the top right"]}, {"x": "a red circle in the top left"},
                          java=False)
    assert out["BLEU-4"] == pytest.approx((6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25, abs=1e-6)


def test_disjoint_captions_score_zero_and_any_reference_counts():
    out = caption_metrics(REFS, {"img1": "green triangles everywhere here now", "img2": "nothing at all matches ok"},
                          java=False)
    assert out["BLEU-4"] < 1e-6 and out["CIDEr"] == pytest.approx(0.0, abs=1e-9)
    multi = {"img1": ["something else entirely different words", "a red circle in the top left"],
             "img2": REFS["img2"]}
    assert caption_metrics(multi, {k: v[0] for k, v in REFS.items()}, java=False)["BLEU-4"] == pytest.approx(1.0)
    base = random_caption_baseline(REFS)
    assert base["BLEU-4"] < 1e-6 and base["CIDEr"] == pytest.approx(0.0, abs=1e-9)


def test_tokenization_and_mismatched_items():
    assert tokenize_caption("A Red, circle!  (top-left).") == "a red circle top left"
    with pytest.raises(ValueError, match="different items"):
        caption_metrics(REFS, {"img1": "x"}, java=False)


def test_meteor_and_spice_availability_is_reported():
    no_java = caption_metrics(REFS, {k: v[0] for k, v in REFS.items()}, java=False)
    assert no_java["METEOR"] is None and "Java" in no_java["unavailable"]["METEOR"]
    assert "offline" in no_java["unavailable"]["SPICE"]
    java = shutil.which("java")
    assert java, "this machine has a Java runtime; METEOR's real path must be exercised here"
    both = scores_with_chance(REFS, {"img1": REFS["img1"][0], "img2": "a green dot"}, java=java)  # one JVM
    with_java, chance = both["scores"], both["chance"]
    assert "METEOR" not in with_java["unavailable"]
    assert 0.2 < with_java["METEOR"] < 0.9  # one perfect caption, one nearly unrelated
    assert chance["METEOR"] < 0.1 < with_java["METEOR"]  # each item captioned with the other's caption


# --- QA ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,normal", [
    ("Red", "red"),
    ("  the   red  ", "red"),
    ("A circle.", "circle"),
    ("an apple", "apple"),
    ("Two", "2"),
    ("none", "0"),
    ("ten dogs", "10 dogs"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("top-left", "top left"),
    ("top - left", "top left"),
    ("yes!", "yes"),
    ("dont", "don't"),
    ("isnt it", "isn't it"),
    ("Top Left?", "top left"),
    ("left,right", "left right"),
    ("(blue)", "blue"),
])
def test_answer_normalization(raw, normal):
    assert normalize_answer(raw) == normal


def test_qa_accuracy_per_type_with_chance():
    preds = ["Red", "the circle", "3", "left", "blue"]
    answers = ["red", "square", "three", "left", "red"]
    qtypes = ["colour", "shape", "count", "direction", "colour"]
    out = qa_accuracy(preds, answers, qtypes)
    assert out["accuracy"] == pytest.approx(60.0) and out["n"] == 5
    assert out["per_type"]["colour"] == {"accuracy": 50.0, "n": 2, "chance": 100.0}  # one distinct answer
    assert out["per_type"]["shape"]["accuracy"] == 0.0 and out["per_type"]["count"]["accuracy"] == 100.0
    assert out["chance"] == pytest.approx(100.0)  # every type has a single answer in this tiny set
    assert qa_accuracy(["a", "b"], ["a", "c"])["chance"] == pytest.approx(50.0)


def test_majority_class_share_is_the_score_of_always_answering_it():
    from omnivl.eval.classify import majority_share

    assert majority_share(["diamond", "circle", "diamond", "square", "diamond"]) == pytest.approx(60.0)
    assert majority_share([0, 1, 2, 3]) == pytest.approx(25.0)
    assert majority_share([]) == 0.0
