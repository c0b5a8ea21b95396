"""What the training step does to a batch before the model sees it: text padding trimmed (exact: the losses
and gradients do not change) and, for stages that ask for it, label-keeping flips and shifts of the images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omnivl.models.config import ModelConfig
from omnivl.spec import load_spec
from omnivl.spec.errors import SpecError
from omnivl.tasks.pretrain import build_task
from omnivl.train.augment import augment_images
from omnivl.train.config import ImageAugment
from omnivl.train.loop import TRIM_MULTIPLE, trim_padding

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "jobs" / "pretrain_tiny.yaml"
L_MAX = 24


def text_batch(lengths: list[int], modality: str = "image") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    B = len(lengths)
    shape = (B, 3, 32, 32) if modality == "image" else (B, 4, 3, 32, 32)
    ids = torch.randint(1000, 2000, (B, L_MAX), generator=g)
    mask = torch.zeros(B, L_MAX, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    ids[:, 0] = 101
    ids = ids.masked_fill(mask == 0, 0)
    return {"pixels": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g), "input_ids": ids,
            "attention_mask": mask, "label_id": torch.arange(B)}


def test_trim_cuts_the_text_after_the_longest_row_to_a_multiple():
    batch = text_batch([5, 9, 3, 7])
    out = trim_padding(batch)
    assert out["input_ids"].shape[1] == 12 and 12 % TRIM_MULTIPLE == 0  # 9 rounded up
    assert torch.equal(out["input_ids"], batch["input_ids"][:, :12])
    assert out["pixels"] is batch["pixels"] and out["label_id"] is batch["label_id"]
    full = text_batch([24, 3])
    assert trim_padding(full) is full  # nothing to cut


@pytest.mark.parametrize("modality", ["image", "video"])
def test_trimmed_batch_gives_the_same_losses_and_gradients(modality):
    """Every objective (contrastive, matching with hard negatives, captioning, with the recipe's pooling and
    decoder prefix) on the padded batch and on its trimmed form: the same numbers."""
    cfg = ModelConfig(size="tiny", image_size=32, num_frames=4, queue_size=0, visual_pool="max", text_pool="mean",
                      decoder_visual_prefix=True)
    torch.manual_seed(0)
    task = build_task(cfg, {"vlc": 1.0, "vlm": 0.5, "lm": 1.0}, load_pretrained=False)
    task.momentum_in_forward = False
    batch = text_batch([6, 9, 4, 7, 5, 8], modality)
    results = []
    for b in (batch, trim_padding(batch)):
        torch.manual_seed(1)  # the matching loss samples its hard negatives
        task.zero_grad()
        out = task(b, modality)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}
        results.append(({k: float(v.detach()) for k, v in out.losses.items()}, grads))
    (losses_a, grads_a), (losses_b, grads_b) = results
    assert trim_padding(batch)["input_ids"].shape[1] < L_MAX
    assert losses_a.keys() == losses_b.keys()
    for k in losses_a:
        assert losses_a[k] == pytest.approx(losses_b[k], rel=1e-4, abs=1e-5), k
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-5, msg=name)


def test_augment_flips_and_shifts_each_image_within_its_bounds():
    torch.manual_seed(0)
    B, H, W = 64, 40, 40
    # one bright pixel per image at (20, 20): where it lands shows the flip and the shift
    pixels = torch.zeros(B, 3, H, W, dtype=torch.uint8)
    pixels[:, :, 20, 20] = 255
    out = augment_images(pixels, ImageAugment(hflip=False, max_shift=0.1))
    assert out.dtype == torch.uint8 and out.shape == pixels.shape
    where = [(out[b, 0] == 255).nonzero()[0].tolist() for b in range(B)]
    shifts = {(y - 20, x - 20) for y, x in where}
    assert all(abs(dy) <= 4 and abs(dx) <= 4 for dy, dx in shifts)  # 0.1 of 40 pixels
    assert len(shifts) > 10  # images move independently
    flipped = augment_images(pixels, ImageAugment(hflip=True, max_shift=0.0))
    columns = {(flipped[b, 0, 20] == 255).nonzero()[0].item() for b in range(B)}
    assert columns == {20, W - 1 - 20}  # mirrored or not, about half each
    mirrored = sum((flipped[b, 0, 20] == 255).nonzero()[0].item() == W - 21 for b in range(B))
    assert 16 < mirrored < 48


def test_augment_repeats_the_edges_into_the_gap():
    torch.manual_seed(0)
    ramp = torch.arange(32, dtype=torch.uint8)[None, None, None, :].expand(8, 3, 32, 32).contiguous()
    out = augment_images(ramp, ImageAugment(hflip=False, max_shift=0.2))
    for b in range(8):
        row = out[b, 0, 0].tolist()
        assert row == sorted(row) and set(row) <= set(range(32))  # a shifted ramp, clamped at the ends: no zeros
        assert row[0] in (0, *range(1, 7)) and row[-1] in (31, *range(25, 31))


def test_augment_is_refused_on_a_stage_with_captions():
    overrides = ["stages[2].augment.hflip=true"]  # the recipe's `image` stage reads image_text captions
    with pytest.raises(SpecError) as err:
        load_spec(RECIPE, overrides)
    assert "stages[2].augment" in str(err.value) and "image_text" in str(err.value)
    spec = load_spec(RECIPE)
    assert spec.stages[1].name == "image_label" and spec.stages[1].augment is not None
