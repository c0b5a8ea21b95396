"""The model options for training from random weights that issue 18 added beside the pooling
(`model.visual_stem`, `model.decoder_visual_prefix`, `model.lm_detach_visual`): what each computes, that exports
carry the architectural ones, and that their errors name the field at fault (docs/robustness.md)."""

from __future__ import annotations

import pytest
import torch

from omnivl.models.config import ModelConfig
from omnivl.models.export import load_export, save_export
from omnivl.models.omnivl import build_omnivl
from omnivl.models.sizes import resolve_arch
from omnivl.models.visual import VisualEncoder
from omnivl.tasks import build_task

RECIPE = dict(visual_pool="max", text_pool="mean", visual_stem="conv", decoder_visual_prefix=True)


def _pixels(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _caption_batch(n=4):
    ids = torch.tensor([[101, 1037, 2417, 4418, 3048, 2187, 102, 0]] * n)
    return {"pixels": _pixels(n), "input_ids": ids, "attention_mask": (ids > 0).long(),
            "label_id": torch.arange(n, dtype=torch.long)}


def test_conv_stem_keeps_the_token_count_and_a_video_of_identical_frames_encodes_as_the_image():
    torch.manual_seed(0)
    enc = {stem: VisualEncoder(resolve_arch(ModelConfig(visual_pool="max", visual_stem=stem)).visual).eval()
           for stem in ("patch", "conv")}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = {stem: e(x).tokens_BSD.shape for stem, e in enc.items()}
        image, video = enc["conv"](x), enc["conv"](x[:, None].expand(-1, 4, -1, -1, -1))
    assert tokens["conv"] == tokens["patch"] == (2, 1 + 16, 192)
    assert enc["conv"].stem is not None and enc["patch"].stem is None
    torch.testing.assert_close(video.pooled_BD, image.pooled_BD, atol=1e-5, rtol=1e-5)


def test_conv_stem_refuses_a_patch_it_cannot_divide():
    with pytest.raises(ValueError, match=r"model\.patch 6 is not a multiple of the conv stem's stride 4"):
        VisualEncoder(resolve_arch(ModelConfig(visual_stem="conv", patch=6)).visual)


def test_token_zero_is_the_pooled_representation_the_prefix_reads():
    torch.manual_seed(0)
    model = build_omnivl(resolve_arch(ModelConfig(**RECIPE))).eval()
    with torch.no_grad():
        out = model.visual_features(_pixels())
    torch.testing.assert_close(out.tokens_BSD[:, 0], out.pooled_BD)


def test_the_visual_prefix_and_the_modality_condition_every_position_and_the_prefix_is_required():
    torch.manual_seed(0)
    model = build_omnivl(resolve_arch(ModelConfig(**RECIPE))).eval()
    ids = _caption_batch(2)["input_ids"]
    with torch.no_grad():
        tokens_BSD = model.visual_features(_pixels()).tokens_BSD
        same_tokens = tokens_BSD[:1].expand(2, -1, -1)
        embedding_BE = torch.nn.functional.normalize(torch.randn(2, 64), dim=-1)
        logits = model.gen_decoder(ids, (ids > 0).long(), same_tokens, embedding_BE)
        as_video = model.gen_decoder(ids, (ids > 0).long(), same_tokens, embedding_BE, is_video=True)
    # the same visual tokens, two embeddings: every position's prediction differs; so does the modality's
    assert (logits[0] - logits[1]).abs().amax(dim=-1).min() > 1e-3
    assert (logits - as_video).abs().amax(dim=-1).min() > 1e-3
    with pytest.raises(ValueError, match="visual prefix: pass the visual embedding_BE"):
        model.gen_decoder(ids, (ids > 0).long(), same_tokens)


def test_an_export_carries_the_stem_and_the_prefix(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(**RECIPE)
    model = build_omnivl(resolve_arch(cfg)).eval()
    save_export(model, cfg, str(tmp_path / "export"))
    loaded = load_export(str(tmp_path / "export"))
    assert (loaded.visual.arch.stem, loaded.text.arch.visual_prefix) == ("conv", True)
    px = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(loaded.generate(px, "image", max_new_tokens=5),
                                   model.generate(px, "image", max_new_tokens=5))


@pytest.mark.parametrize("detach", [False, True])
def test_lm_detach_visual_keeps_the_lm_gradient_out_of_the_visual_encoder(detach):
    torch.manual_seed(0)
    task = build_task(ModelConfig(**RECIPE, lm_detach_visual=detach), {"vlc": 0.0, "vlm": 0.0, "lm": 1.0},
                      load_pretrained=False)
    out = task(_caption_batch(), "image")
    out.loss.backward()
    visual_grads = [p.grad for p in [*task.model.visual.parameters(), *task.model.vision_proj.parameters()]]
    reached = any(g is not None and bool(g.abs().sum() > 0) for g in visual_grads)
    assert reached is not detach
    # the decoder learns either way, the prefix included
    assert task.model.gen_decoder.visual_prefix.weight.grad.abs().sum() > 0
