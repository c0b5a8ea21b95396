"""The pooled representations (`model.visual_pool`, `model.text_pool`): what they compute, that exports carry
them, that a fine-tuning spec must state its init's pooling, and why they exist: at random init the [CLS]
features of different items are nearly the same, the pooled ones are not (docs/robustness.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omnivl.cluster.finetune import check_architecture
from omnivl.models.config import ModelConfig
from omnivl.models.export import load_export, save_export
from omnivl.models.omnivl import build_omnivl
from omnivl.models.sizes import resolve_arch
from omnivl.models.visual import VisualEncoder
from omnivl.spec import validate_spec


def _scenes(n=8, size=64, seed=0):
    """Flat light-grey frames, each with one small coloured square somewhere (an object of ~3 % of the frame)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 3, size, size), 1.5)
    for i in range(n):
        top, left = torch.randint(0, size - 12, (2,), generator=g).tolist()
        x[i, :, top:top + 11, left:left + 11] = torch.randn(3, 1, 1, generator=g) * 2
    return x


def _mean_pairwise_cosine(f_ND: torch.Tensor) -> float:
    f = F.normalize(f_ND, dim=-1)
    sim = f @ f.T
    n = f.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def test_max_pooling_is_the_channel_max_of_the_patch_tokens_and_keeps_video_image_equivalence():
    torch.manual_seed(0)
    enc = VisualEncoder(resolve_arch(ModelConfig(visual_pool="max")).visual).eval()
    x = _scenes(2)
    with torch.no_grad():
        out = enc(x)
        video = enc(x[:, None].expand(-1, 4, -1, -1, -1))
    torch.testing.assert_close(out.pooled_BD, out.tokens_BSD[:, 1:].amax(dim=1))
    torch.testing.assert_close(video.pooled_BD, out.pooled_BD, atol=1e-5, rtol=1e-5)


def test_at_random_init_small_objects_move_the_max_pooled_feature_far_more_than_cls():
    torch.manual_seed(0)
    x = _scenes()
    cos = {}
    for pool in ("cls", "max"):
        torch.manual_seed(0)  # the same weights: only the pooling differs
        enc = VisualEncoder(resolve_arch(ModelConfig(visual_pool=pool)).visual).eval()
        with torch.no_grad():
            cos[pool] = _mean_pairwise_cosine(enc(x).pooled_BD)
    # measured: cls 0.997, max 0.81; the gap is what lets contrastive learning leave log(batch) (docs/robustness.md)
    assert 1 - cos["max"] > 5 * (1 - cos["cls"]), cos


def test_mean_text_pooling_ignores_padding_and_spreads_texts_that_cls_collapses():
    torch.manual_seed(0)
    ids = torch.tensor([[101, 1037, 2417, 4418, 3048, 2187, 102, 0, 0],
                        [101, 1037, 2630, 2675, 3048, 2157, 102, 0, 0],
                        [101, 1037, 3756, 9121, 3048, 2039, 102, 0, 0]])
    mask = (ids > 0).long()
    pooled = {}
    for pool in ("cls", "mean"):
        torch.manual_seed(0)
        model = build_omnivl(resolve_arch(ModelConfig(text_pool=pool))).eval()
        with torch.no_grad():
            pooled[pool] = model.text(ids, mask).pooled_BD
            if pool == "mean":  # more padding changes nothing
                longer = torch.cat([ids, torch.zeros(3, 4, dtype=torch.long)], dim=1)
                torch.testing.assert_close(model.text(longer, (longer > 0).long()).pooled_BD, pooled[pool],
                                           atol=1e-5, rtol=1e-5)
    cos = {k: _mean_pairwise_cosine(v) for k, v in pooled.items()}
    assert 1 - cos["mean"] > 10 * (1 - cos["cls"]), cos


def test_an_export_carries_its_pooling_and_a_finetune_spec_must_state_it(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(visual_pool="max", text_pool="mean")
    model = build_omnivl(resolve_arch(cfg)).eval()
    save_export(model, cfg, str(tmp_path / "export"))
    loaded = load_export(str(tmp_path / "export"))
    assert (loaded.visual.arch.pool, loaded.text.arch.pool) == ("max", "mean")
    px = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(px), model.encode_image(px))

    def finetune_spec(model_cfg: dict):
        return validate_spec({"kind": "finetune", "name": "ft", "init": str(tmp_path / "export"), "task": "qa",
                          "output": str(tmp_path / "ft"), "model": model_cfg,
                          "data": {"sources": [{"name": "qa", "manifest": "qa.jsonl", "modality": "image",
                                                "kind": "qa"}]},
                          "stages": [{"name": "qa", "sources": ["qa"], "steps": 1, "batch_size": {"image": 2}}]})

    check_architecture(finetune_spec({"size": "tiny", "visual_pool": "max", "text_pool": "mean"}),
                       str(tmp_path / "export"))
    with pytest.raises(ValueError, match=r"arch\.visual\.pool = 'cls' but init .* has 'max'"):
        check_architecture(finetune_spec({"size": "tiny", "text_pool": "mean"}), str(tmp_path / "export"))
    with pytest.raises(ValueError, match=r"arch\.text\.pool = 'cls' but init .* has 'mean'"):
        check_architecture(finetune_spec({"size": "tiny", "visual_pool": "max"}), str(tmp_path / "export"))
