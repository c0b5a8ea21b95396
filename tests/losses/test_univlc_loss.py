"""UniVLC against an independent CLIP InfoNCE, multi-positive targets by hand, queue behaviour."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from omnivl.losses import CaptionLoss, MemoryQueue, UniVLCLoss, sample_hard_negatives


def _feats(B=6, E=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(B, E, generator=g), dim=-1), F.normalize(torch.randn(B, E, generator=g), dim=-1)


def clip_infonce(img, txt, temp):
    """CLIP's symmetric cross-entropy, written independently of the library."""
    logits = img @ txt.T / temp
    target = torch.arange(img.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def test_unique_labels_no_queue_equals_clip_infonce():
    v, t = _feats()
    loss = UniVLCLoss(embed_dim=8, queue_size=0, temp_init=0.07)
    out = loss(v, t, torch.arange(6) + 100)
    torch.testing.assert_close(out.loss, clip_infonce(v, t, 0.07))


def test_multi_positive_targets_hand_built():
    # Two samples of class 7 and one of class 9, 2-d features chosen so logits are easy to write down.
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([7, 9, 7])
    out = UniVLCLoss(embed_dim=2, queue_size=0, temp_init=1.0, temp_max=1.0)(v, t, labels)
    e = math.e
    # v->t rows: logits = v @ t.T; row 0 = [1,0,0] with positives {0,2}; row 1 = [0,1,1] positive {1};
    # row 2 = [1,0,0] positives {0,2}.
    lse_a, lse_b = math.log(e + 2), math.log(1 + 2 * e)
    row0 = -0.5 * ((1 - lse_a) + (0 - lse_a))
    row1 = -(1 - lse_b)
    v2t = (2 * row0 + row1) / 3
    # t->v rows: logits = t @ v.T; row 0 = [1,0,1] positives {0,2}; rows 1,2 = [0,1,0]; row 1 positive {1};
    # row 2 positives {0,2}.
    lse_c, lse_d = math.log(2 * e + 1), math.log(e + 2)
    t0 = -(1 - lse_c)
    t1 = -(1 - lse_d)
    t2 = -0.5 * ((0 - lse_d) + (0 - lse_d))
    t2v = (t0 + t1 + t2) / 3
    torch.testing.assert_close(out.loss_v2t, torch.tensor(v2t))
    torch.testing.assert_close(out.loss_t2v, torch.tensor(t2v))
    torch.testing.assert_close(out.loss, torch.tensor((v2t + t2v) / 2))


def test_queue_entries_are_extra_columns_with_label_positives():
    v, t = _feats(B=4)
    qv, qt = _feats(B=3, seed=1)
    q_labels = torch.tensor([1, 50, 51])  # the first queued item shares sample 1's label
    loss = UniVLCLoss(embed_dim=8, queue_size=5, temp_init=0.1)
    loss.queues["shared"].enqueue(qv, qt, q_labels)
    labels = torch.arange(4)
    out = loss(v, t, labels, queue_key="shared")
    cols_t, cols_v, col_y = torch.cat([t, qt]), torch.cat([v, qv]), torch.cat([labels, q_labels])

    def nll(rows, cols):
        logp = F.log_softmax(rows @ cols.T / 0.1, dim=-1)
        pos = (labels[:, None] == col_y[None]).float()
        return (-(logp * pos).sum(1) / pos.sum(1)).mean()

    torch.testing.assert_close(out.loss, (nll(v, cols_t) + nll(t, cols_v)) / 2)


def test_queue_wraps_around_with_any_batch_size():
    q = MemoryQueue(size=5, dim=2)
    rows = lambda a, b: torch.arange(a, b, dtype=torch.float).repeat(2, 1).T  # noqa: E731
    q.enqueue(rows(0, 3), rows(0, 3), torch.arange(0, 3))
    assert (int(q.ptr), int(q.filled)) == (3, 3)
    assert q.contents()[2].tolist() == [0, 1, 2]
    q.enqueue(rows(3, 7), rows(3, 7), torch.arange(3, 7))  # wraps: slots 3,4,0,1
    assert (int(q.ptr), int(q.filled)) == (2, 5)
    assert q.labels_M.tolist() == [5, 6, 2, 3, 4]
    q.enqueue(rows(7, 8), rows(7, 8), torch.arange(7, 8))  # a short last batch of one
    assert q.labels_M.tolist() == [5, 6, 7, 3, 4] and int(q.ptr) == 3
    q.enqueue(rows(10, 17), rows(10, 17), torch.arange(10, 17))  # more than the capacity: newest 5 kept
    assert sorted(q.labels_M.tolist()) == [12, 13, 14, 15, 16]
    assert q.visual_ME[:, 0].sort().values.tolist() == [12.0, 13.0, 14.0, 15.0, 16.0]


def test_forward_enqueues_momentum_features_after_reading_the_queue():
    v, t = _feats(B=3)
    vm, tm = _feats(B=3, seed=2)
    loss = UniVLCLoss(embed_dim=8, queue_size=4)
    first = loss(v, t, torch.arange(3), vm, tm, queue_key="shared", enqueue=True)
    torch.testing.assert_close(first.loss, clip_infonce(v, t, 0.07))  # queue was empty when read
    assert first.queue_fill == 0.75
    torch.testing.assert_close(loss.queues["shared"].visual_ME[:3], vm)
    torch.testing.assert_close(loss.queues["shared"].text_ME[:3], tm)


def test_temperature_is_learnable_and_clamped():
    loss = UniVLCLoss(embed_dim=8, queue_size=0, temp_init=0.07, temp_min=0.01, temp_max=0.5)
    v, t = _feats()
    loss(v, t, torch.arange(6)).loss.backward()
    assert loss.temp.grad is not None
    with torch.no_grad():
        loss.temp.fill_(1e-5)
    assert abs(loss(v, t, torch.arange(6)).temperature - 0.01) < 1e-7


def test_hard_negatives_never_share_the_label():
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    sim = torch.randn(6, 6)
    sim[0, 1] = sim[2, 3] = 100.0  # the most similar items are same-label positives: must never be picked
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        neg = sample_hard_negatives(sim, labels, generator=g)
        assert (labels[neg] != labels).all()
    none_valid = sample_hard_negatives(torch.randn(3, 3), torch.tensor([4, 4, 4]))
    assert none_valid.tolist() == [-1, -1, -1]


def test_caption_loss_ignores_padding_and_the_start_token():
    V = 11
    logits = torch.randn(2, 4, V, requires_grad=True)
    ids = torch.tensor([[101 % V, 3, 4, 5], [101 % V, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    loss = CaptionLoss(label_smoothing=0.1)(logits, ids, mask)
    targets = torch.tensor([3, 4, 5, 6])
    chosen = torch.cat([logits[0, :3], logits[1, :1]])
    torch.testing.assert_close(loss, F.cross_entropy(chosen, targets, label_smoothing=0.1))
    loss.backward()
    assert logits.grad[1, 1:].abs().sum() == 0 and logits.grad[:, -1].abs().sum() == 0


def test_ignore_cross_kind_equals_two_separate_contrastive_problems():
    """With class_caption_pairs='ignore', a batch of caption items and class items gives, per row, the loss of its
    own kind's sub-batch: computed independently here as two UniVLC losses (paper rule) on the halves."""
    from omnivl.data.text import label_id_for_class, label_id_for_pair

    v, t = _feats(B=7, seed=3)
    captions = [label_id_for_pair(f"video_text:m:{i}") for i in range(3)]
    classes = [label_id_for_class(c) for c in ("moving left", "moving right", "moving left", "moving up")]
    labels = torch.tensor(captions + classes)
    cap, cls = slice(0, 3), slice(3, 7)
    paper = UniVLCLoss(embed_dim=8, queue_size=0, temp_init=0.1)
    ignore = UniVLCLoss(embed_dim=8, queue_size=0, temp_init=0.1, cross_kind="ignore")
    out = ignore(v, t, labels)
    part_cap, part_cls = paper(v[cap], t[cap], labels[cap]), paper(v[cls], t[cls], labels[cls])
    expected_v2t = (3 * part_cap.loss_v2t + 4 * part_cls.loss_v2t) / 7
    torch.testing.assert_close(out.loss_v2t, expected_v2t)
    torch.testing.assert_close(out.loss_t2v, (3 * part_cap.loss_t2v + 4 * part_cls.loss_t2v) / 7)
    # The paper's rule differs on the same batch: the caption items are negatives of the class texts there.
    assert not torch.allclose(paper(v, t, labels).loss, out.loss)


def test_ignore_cross_kind_never_picks_a_hard_negative_of_the_other_kind():
    from omnivl.data.text import label_id_for_class, label_id_for_pair
    from omnivl.losses.univlc import comparable_pairs, is_class_label

    labels = torch.tensor([label_id_for_pair("s:m:0"), label_id_for_pair("s:m:1"), label_id_for_class("a"),
                           label_id_for_class("b"), label_id_for_class("a")])
    assert is_class_label(labels).tolist() == [False, False, True, True, True]
    sim = torch.zeros(5, 5)
    sim[0, 2] = sim[2, 0] = sim[3, 1] = 100.0  # cross-kind pairs most similar: must never be picked
    g = torch.Generator().manual_seed(0)
    kinds = is_class_label(labels)
    for _ in range(30):
        neg = sample_hard_negatives(sim, labels, generator=g, comparable_BB=comparable_pairs(labels, labels, "ignore"))
        assert (kinds[neg] == kinds).all() and (labels[neg] != labels).all()
    # Under the paper's rule the cross-kind pairs are fair game (and, this similar, nearly always picked).
    picked = sample_hard_negatives(sim, labels, generator=g)
    assert picked[0] == 2


def test_cross_kind_rejects_unknown_policy():
    import pytest

    with pytest.raises(ValueError, match="cross_kind"):
        UniVLCLoss(embed_dim=8, queue_size=0, cross_kind="sometimes")
