"""The supervised `cls` warm-up across stages: its classes come from the stage's label sources, its head is kept
when a stage resumes and left out when the next stage (or the export) loads the checkpoint."""

import json

import pytest
import torch

from omnivl.train import checkpoint as ck
from omnivl.train.runner import load_into, task_state
from omnivl.train.stages import stage_classes
from omnivl.models.config import ModelConfig
from omnivl.spec import validate_spec
from omnivl.tasks import build_task


def _job(tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"path": f"{i}.jpg", "label": name}) + "\n"
                              for i, name in enumerate(["circle", "moving  left", "circle", "square"])))
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"path": "c.jpg", "text": "a red circle"}) + "\n")
    return validate_spec({
        "kind": "pretrain", "name": "warm",
        "data": {"sources": [{"name": "caps", "manifest": str(captions), "modality": "image", "kind": "text"},
                             {"name": "shapes", "manifest": str(labels), "modality": "image", "kind": "label"}]},
        "stages": [{"name": "warm", "sources": ["caps", "shapes"], "steps": 2, "batch_size": {"image": 2},
                    "loss_weights": {"vlc": 0, "vlm": 0, "lm": 0, "cls": 1}},
                   {"name": "image", "sources": ["caps"], "steps": 2, "batch_size": {"image": 2}}],
    })


def test_stage_classes_are_the_label_names_as_the_data_plane_sees_them(tmp_path):
    # whitespace collapsed as the decoder does, and the left/right swap that a horizontal flip makes
    assert stage_classes(_job(tmp_path), 0) == ["circle", "moving left", "moving right", "square"]


def save_task(run_dir, task, state=None):
    """A final checkpoint of stage 0 holding `state` (default: the task's whole state)."""
    writer = ck.CheckpointWriter(str(run_dir), 0, "warm")
    return writer.save(2, state or task_state(task), {"step": 2}, final=True)


def test_head_is_kept_on_resume_and_dropped_by_the_next_stage(tmp_path):
    torch.manual_seed(0)
    warm = build_task(ModelConfig(queue_size=0), {"cls": 1.0}, load_pretrained=False, classes=["a", "b"])
    with torch.no_grad():
        warm.classifier.weight.fill_(0.5)
        warm.model.vision_proj.weight.fill_(0.25)
    ref = save_task(tmp_path / "run", warm)

    torch.manual_seed(1)
    resumed = build_task(ModelConfig(queue_size=0), {"cls": 1.0}, load_pretrained=False, classes=["a", "b"])
    load_into(resumed, None, ref, with_head=True)
    assert torch.all(resumed.classifier.weight == 0.5)

    torch.manual_seed(1)
    following = build_task(ModelConfig(queue_size=0), load_pretrained=False)  # the next stage: no head
    load_into(following, None, ref, with_head=False)
    assert following.classifier is None and torch.all(following.model.vision_proj.weight == 0.25)

    state = task_state(warm)
    state["task"] = {k: v for k, v in state["task"].items() if not k.startswith("model.text_proj")}
    broken = save_task(tmp_path / "broken", warm, state)
    with pytest.raises(ValueError, match="text_proj"):
        load_into(following, None, broken, with_head=False)


def test_progress_line_shows_the_warm_up_term_only_where_a_stage_trains_it():
    from omnivl.train.metrics import progress_line

    base = {"stage": "s", "step": 1, "total_steps": 2, "modality": "image", "loss": 1.0, "lr": 1e-4,
            "samples_per_s": 10.0, "data_wait_frac": 0.0, "loss_vlc": 1.0, "loss_vlm": 0.0, "loss_lm": 0.0}
    assert "cls" not in progress_line({**base, "loss_cls": 0.0})
    line = progress_line({**base, "loss_cls": 0.7, "cls_accuracy": 0.75})
    assert "cls 0.70" in line and "cls acc 75%" in line
