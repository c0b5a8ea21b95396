"""Unified visual encoder: timm parity through our loader, video/image equivalence at init, live temporal path."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from omnivl import storage
from omnivl.models.checkpoints import load_visual_checkpoint
from omnivl.models.config import InitConfig, ModelConfig
from omnivl.models.omnivl import build_model
from omnivl.models.sizes import resolve_arch
from omnivl.models.visual import VisualEncoder


def _timm_vit():
    """A random timm ViT with the tiny size's geometry (width 192, depth 2, 3 heads, 64 px)."""
    torch.manual_seed(1)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=64).eval()


def _images(n=2, size=64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


def test_timm_parity_through_our_loader(tmp_path):
    ref = _timm_vit()
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    enc = VisualEncoder(resolve_arch(ModelConfig()).visual).eval()
    report = load_visual_checkpoint(enc, str(path))
    assert report.unexpected == ["head.bias", "head.weight"]  # the classifier has no place here, and is listed
    assert report.missing == []
    assert "time_embed" in report.derived and "patch_embed3d.proj.weight" in report.derived
    x = _images()
    with torch.no_grad():
        expected = ref.forward_features(x)
        out = enc(x)
    torch.testing.assert_close(out.tokens_BSD, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pooled_BD, expected[:, 0], atol=1e-5, rtol=0)


def test_timm_pth_checkpoint_and_s3(tmp_path, s3_bucket):
    ref = _timm_vit()
    local = tmp_path / "vit.pth"
    torch.save({"model": ref.state_dict()}, local)
    uri = f"{s3_bucket}/ckpt/vit.pth"
    storage.write_bytes(uri, local.read_bytes())
    built = build_model(ModelConfig(init=InitConfig(visual=uri)))
    assert built.init_reports["visual"].missing == []
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(built.model.visual(x).tokens_BSD, ref.forward_features(x), atol=1e-5, rtol=0)


def test_position_grid_resized_for_other_resolutions(tmp_path):
    ref = _timm_vit()
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    enc = VisualEncoder(resolve_arch(ModelConfig(image_size=96)).visual)
    report = load_visual_checkpoint(enc, str(path))
    assert report.resized == ["pos_embed"] and enc.pos_embed.shape == (1, 37, 192)
    assert enc(_images(1, 96)).tokens_BSD.shape == (1, 37, 192)
    assert enc(_images(1, 64)).tokens_BSD.shape == (1, 17, 192)  # and at run time, too


def test_shape_mismatch_is_an_error(tmp_path):
    ref = timm.create_model("vit_small_patch16_224", pretrained=False, depth=1, img_size=64)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_visual_checkpoint(VisualEncoder(resolve_arch(ModelConfig()).visual), str(path))


@pytest.mark.parametrize("tubelet", [1, 2])
def test_identical_frames_encode_like_the_image_at_init(tubelet):
    enc = VisualEncoder(resolve_arch(ModelConfig(tubelet=tubelet)).visual).eval()
    x = _images()
    video = x[:, None].expand(-1, 4, -1, -1, -1)
    with torch.no_grad():
        image_out, video_out = enc(x), enc(video)
    torch.testing.assert_close(video_out.pooled_BD, image_out.pooled_BD, atol=1e-5, rtol=1e-5)
    assert video_out.tokens_BSD.shape == (2, 1 + (4 // tubelet) * 16, 192)


def test_frame_order_is_visible_at_init_only_through_the_tubelet():
    """Mean inflation alone would make a video and its time reversal encode identically (no gradient could then
    learn motion direction); the zero-sum temporal part of the 3D tokenizer breaks that from the start."""
    video = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        one = VisualEncoder(resolve_arch(ModelConfig(tubelet=1)).visual).eval()
        torch.testing.assert_close(one(video).pooled_BD, one(video.flip(1)).pooled_BD, atol=1e-5, rtol=1e-5)
        two = VisualEncoder(resolve_arch(ModelConfig(tubelet=2)).visual).eval()
        assert (two(video).pooled_BD - two(video.flip(1)).pooled_BD).abs().max() > 1e-3
        w = two.patch_embed3d.proj.weight
        torch.testing.assert_close(w.sum(dim=2), two.patch_embed.proj.weight, atol=1e-6, rtol=1e-5)


def test_frame_order_matters_once_the_temporal_path_is_trained():
    enc = VisualEncoder(resolve_arch(ModelConfig(tubelet=1)).visual).eval()
    video = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    reversed_video = video.flip(1)
    with torch.no_grad():
        # At init with one frame per token, temporal attention is an identity and the [CLS] averages frames:
        # order is invisible.
        torch.testing.assert_close(enc(video).pooled_BD, enc(reversed_video).pooled_BD, atol=1e-5, rtol=1e-5)
        for _, p in enc.temporal_parameters():
            p.add_(0.05 * torch.randn_like(p))
        image = video[:, 0]
        same_frames = image[:, None].expand(-1, 4, -1, -1, -1)
        assert (enc(video).pooled_BD - enc(reversed_video).pooled_BD).abs().max() > 1e-3
        assert (enc(same_frames).pooled_BD - enc(image).pooled_BD).abs().max() > 1e-3  # temporal attention is live
        # Images never touch the video-only weights.
        names = {n for n, _ in enc.temporal_parameters()}
        assert any(".temporal_attn." in n for n in names) and "time_embed" in names


def test_image_forward_does_not_use_video_weights():
    enc = VisualEncoder(resolve_arch(ModelConfig()).visual)
    enc(_images()).pooled_BD.sum().backward()
    for name, p in enc.temporal_parameters():
        assert p.grad is None, name


def test_grad_checkpointing_gives_same_outputs_and_grads():
    arch = resolve_arch(ModelConfig()).visual
    plain = VisualEncoder(arch)
    ckpt = VisualEncoder(resolve_arch(ModelConfig(grad_checkpointing=True)).visual)
    ckpt.load_state_dict(plain.state_dict())
    video = torch.randn(1, 2, 3, 64, 64)
    for enc in (plain, ckpt):
        enc.train()
        enc(video).pooled_BD.square().sum().backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_bad_inputs_are_rejected():
    enc = VisualEncoder(resolve_arch(ModelConfig(tubelet=2)).visual)
    with pytest.raises(ValueError, match="tubelet"):
        enc(torch.randn(1, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="pixels"):
        enc(torch.randn(1, 64, 64))
