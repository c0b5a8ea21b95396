"""Pretraining task: batch contract, momentum encoders, queues per modality, state round-trip, loss weights."""

from __future__ import annotations

import pytest
import torch

from omnivl.models.config import ModelConfig
from omnivl.tasks import PretrainTask, TaskOutput, build_task


def _batch(B=4, video=False, labels=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, 4, 3, 64, 64) if video else (B, 3, 64, 64)
    ids = torch.randint(1000, 5000, (B, 8), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones(B, 8, dtype=torch.long)
    mask[0, 5:] = 0
    ids[mask == 0] = 0
    return {"pixels": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g), "input_ids": ids,
            "attention_mask": mask, "label_id": torch.arange(B) if labels is None else labels}


def _task(**cfg) -> PretrainTask:
    torch.manual_seed(0)
    return build_task(ModelConfig(queue_size=16, **cfg))


def test_forward_returns_named_losses_and_metrics():
    task = _task().train()
    out = task(_batch(), "image")
    assert isinstance(out, TaskOutput) and set(out.losses) == {"vlc", "vlm", "lm", "cls"}
    assert out.losses["cls"].item() == 0.0  # the supervised warm-up is off unless a stage weights it
    assert {"temperature", "queue_fill", "vlm_accuracy"} <= set(out.metrics)
    torch.testing.assert_close(out.loss, sum(out.losses.values()))
    out.loss.backward()
    assert task.model.vision_proj.weight.grad is not None and task.vlc.temp.grad is not None
    assert all(p.grad is None for p in task.momentum_encoders.parameters())
    video_out = task(_batch(video=True), "video")
    assert torch.isfinite(video_out.loss)


def test_momentum_encoders_are_separate_even_with_grad_checkpointing():
    task = _task(grad_checkpointing=True)
    online = {p.data_ptr() for p in task.model.parameters()}
    assert not any(p.data_ptr() in online for p in task.momentum_encoders.parameters())
    assert all(not p.requires_grad for p in task.momentum_encoders.parameters())
    assert not set(map(id, task.trainable_parameters())) & set(map(id, task.momentum_encoders.parameters()))


def test_momentum_update_is_an_ema():
    task = _task(momentum=0.9)
    with torch.no_grad():
        for p in task.model.vision_proj.parameters():
            p.add_(1.0)
    before = task.momentum_encoders.vision_proj.weight.clone()
    online = task.model.vision_proj.weight.detach().clone()
    task.momentum_update()
    torch.testing.assert_close(task.momentum_encoders.vision_proj.weight, 0.9 * before + 0.1 * online)


def test_training_forward_updates_momentum_and_fills_queue_eval_does_not():
    task = _task()
    m_before = task.momentum_encoders.text_proj.weight.clone()
    task.eval()
    with torch.no_grad():
        task(_batch(), "image")
    assert int(task.vlc.queues["shared"].filled) == 0
    task.train()
    with torch.no_grad():
        task.model.text_proj.weight.add_(1.0)
    out = task(_batch(B=3), "image")
    assert int(task.vlc.queues["shared"].filled) == 3 and out.metrics["queue_fill"] == 3 / 16
    assert not torch.equal(task.momentum_encoders.text_proj.weight, m_before)


def test_separate_queues_per_modality():
    task = _task(share_queues=False).train()
    assert set(task.vlc.queues) == {"image", "video"}
    task(_batch(), "image")
    task(_batch(B=2, video=True), "video")
    assert int(task.vlc.queues["image"].filled) == 4 and int(task.vlc.queues["video"].filled) == 2
    shared = _task().train()
    shared(_batch(), "image")
    shared(_batch(B=2, video=True), "video")
    assert set(shared.vlc.queues) == {"shared"} and int(shared.vlc.queues["shared"].filled) == 6


def test_state_dict_round_trips_everything():
    task = _task().train()
    for seed in range(3):  # wrap the queue (16 slots) with a short last batch
        task(_batch(B=7 if seed < 2 else 3, seed=seed), "image").loss.backward()
    with torch.no_grad():
        task.vlc.temp.fill_(0.05)
    state = task.state_dict()
    for key in ("vlc.temp", "vlc.queues.shared.ptr", "vlc.queues.shared.filled", "vlc.queues.shared.labels_M",
                "momentum_encoders.visual.cls_token", "model.visual.cls_token"):
        assert key in state, key
    fresh = _task()
    torch.manual_seed(123)
    fresh.model.visual.reset_parameters()
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert int(fresh.vlc.queues["shared"].ptr) == (7 + 7 + 3) % 16
    fresh.eval(), task.eval()
    b = _batch(seed=9)
    torch.manual_seed(0)
    a = task(b, "image")
    torch.manual_seed(0)
    c = fresh(b, "image")
    for name in a.losses:
        torch.testing.assert_close(a.losses[name], c.losses[name])


def test_loss_weights_and_skipping():
    task = _task().train()
    task.set_loss_weights({"vlc": 1.0, "vlm": 0.0, "lm": 0.5})
    out = task(_batch(), "image")
    assert float(out.losses["vlm"]) == 0.0
    torch.testing.assert_close(out.loss, out.losses["vlc"] + 0.5 * out.losses["lm"])
    with pytest.raises(ValueError, match="unknown loss weights"):
        task.set_loss_weights({"itc": 1.0})


def test_missing_batch_key_names_the_contract():
    task = _task()
    batch = _batch()
    del batch["label_id"]
    with pytest.raises(KeyError, match="label_id"):
        task(batch, "image")
    with pytest.raises(ValueError, match="rank"):
        task(_batch(video=True), "image")


def test_same_label_samples_are_never_hard_negatives_of_each_other():
    task = _task().train()
    out = task(_batch(B=4, labels=torch.tensor([3, 3, 3, 3])), "image")
    assert torch.isfinite(out.loss)  # no valid negatives: only positives are scored


def test_lm_learns_from_captions_not_class_prompts_unless_told():
    """By default class-label rows (bit 62 of the label id) take no part in the LM loss: it equals the loss of
    the caption rows alone, and a batch of class rows only has LM loss 0. With `lm_on_class_labels` every row
    counts."""
    from omnivl.data.text import label_id_for_class, label_id_for_pair

    labels = torch.tensor([label_id_for_pair("cap:m:0"), label_id_for_class("circle"),
                           label_id_for_pair("cap:m:1"), label_id_for_class("square")])
    batch = _batch(B=4, labels=labels)
    captions = {k: v[[0, 2]] for k, v in batch.items()}
    classes = {k: v[[1, 3]] for k, v in batch.items()}
    lm_only = {"vlc": 0.0, "vlm": 0.0, "lm": 1.0}
    task = _task().eval()
    task.set_loss_weights(lm_only)
    torch.testing.assert_close(task(batch, "image").losses["lm"], task(captions, "image").losses["lm"])
    assert task(classes, "image").losses["lm"].item() == 0.0

    every_row = _task(lm_on_class_labels=True).eval()
    every_row.set_loss_weights(lm_only)
    all_rows, caption_rows = every_row(batch, "image").losses["lm"], every_row(captions, "image").losses["lm"]
    assert every_row(classes, "image").losses["lm"].item() > 1.0
    assert not torch.allclose(all_rows, caption_rows)


def _class_task(classes=("circle", "square")) -> PretrainTask:
    torch.manual_seed(0)
    return build_task(ModelConfig(queue_size=0), {"vlc": 0.0, "vlm": 0.0, "lm": 0.0, "cls": 1.0},
                      load_pretrained=False, classes=list(classes))


def test_cls_warm_up_scores_labelled_rows_only_and_learns():
    """The supervised warm-up: cross-entropy of the head over the stage's classes, on the rows whose id is one of
    them (caption rows and other classes are left out). A few steps separate two classes of flat images."""
    from omnivl.data.text import label_id_for_class, label_id_for_pair

    circle, square = label_id_for_class("circle"), label_id_for_class("square")
    labels = torch.tensor([circle, label_id_for_pair("cap:m:0"), square, label_id_for_class("triangle")])
    task = _class_task().train()
    batch = _batch(B=4, labels=labels)
    out = task(batch, "image")
    kept = {k: v[[0, 2]] for k, v in batch.items()}
    torch.testing.assert_close(out.losses["cls"], task(kept, "image").losses["cls"])
    assert out.losses["vlc"].item() == out.losses["vlm"].item() == out.losses["lm"].item() == 0.0
    torch.testing.assert_close(out.loss, out.losses["cls"])
    assert 0.0 <= out.metrics["cls_accuracy"] <= 1.0

    # no labelled row: loss 0, and the head still takes part in backward (DDP needs every rank's gradient)
    none = task(_batch(B=2, labels=torch.tensor([label_id_for_pair("cap:m:1"), label_id_for_pair("cap:m:2")])), "image")
    assert none.losses["cls"].item() == 0.0 and "cls_accuracy" not in none.metrics
    none.loss.backward()
    assert task.classifier.weight.grad is not None

    # it learns: dark images are circles, bright ones squares
    g = torch.Generator().manual_seed(1)
    y = torch.arange(16) % 2
    pixels = (40 + 160 * y[:, None, None, None] + torch.randint(0, 30, (16, 3, 64, 64), generator=g)).to(torch.uint8)
    train = {**_batch(B=16), "pixels": pixels, "label_id": torch.where(y == 0, circle, square)}
    opt = torch.optim.AdamW(task.trainable_parameters(), lr=1e-3)
    first = task(train, "image").losses["cls"].item()
    for _ in range(15):
        opt.zero_grad()
        task(train, "image").loss.backward()
        opt.step()
    last = task(train, "image")
    assert last.losses["cls"].item() < 0.5 * first and last.metrics["cls_accuracy"] == 1.0


def test_cls_weight_needs_classes_and_head_stays_out_of_the_model():
    task = _task()
    with pytest.raises(ValueError, match="classes"):
        task.set_loss_weights({"cls": 1.0})
    warm = _class_task()
    assert any(k.startswith("classifier.") for k in warm.state_dict())
    assert not any("classifier" in k for k in warm.model.state_dict())  # exports save the model only
