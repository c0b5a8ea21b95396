"""Decoding strategies on hand-made next-token functions, the model's generate API, and the export format."""

from __future__ import annotations

import json

import pytest
import torch

from omnivl.models import generation
from omnivl.models.config import ModelConfig
from omnivl.models.export import load_export, save_export
from omnivl.models.omnivl import build_omnivl
from omnivl.models.sizes import resolve_arch

EOS, PAD, V = 102, 0, 120


def _scripted(script: list[int]):
    """A next-token function that strongly prefers script[t] at generation step t (t = len(ids) - 1)."""

    def step(ids_BL):
        t = ids_BL.shape[1] - 1
        logits = torch.zeros(ids_BL.shape[0], V)
        logits[:, script[min(t, len(script) - 1)]] = 10.0
        return logits

    return step


def test_greedy_stops_at_eos_and_pads():
    out = generation.greedy(_scripted([5, 6, EOS, 7]), torch.ones(2, 1, dtype=torch.long), 10, EOS, PAD)
    assert out.tolist() == [[5, 6, EOS]] * 2
    assert generation.trim_at_eos(out, EOS, PAD).tolist() == [[5, 6, 0]] * 2


def test_min_new_tokens_blocks_eos():
    out = generation.greedy(_scripted([EOS, EOS, EOS]), torch.ones(1, 1, dtype=torch.long), 4, EOS, PAD, min_new=2)
    assert out[0, :2].ne(EOS).all() and out[0, 2] == EOS


def test_beam_search_finds_the_better_sequence_greedy_misses():
    # Step 0: token 5 (p=.55) vs 6 (p=.45). After 5 the next token is uncertain (flat); after 6 it is certain.
    def step(ids_BL):
        logits = torch.full((ids_BL.shape[0], V), -1e4)
        if ids_BL.shape[1] == 1:
            logits[:, 5], logits[:, 6] = 0.2, 0.0
        elif ids_BL.shape[1] == 2:
            after5 = ids_BL[:, 1] == 5
            logits[after5, 10:20] = 0.0
            logits[~after5, 30] = 0.0
        else:
            logits[:, EOS] = 0.0
        return logits

    start = torch.ones(1, 1, dtype=torch.long)
    assert generation.greedy(step, start, 5, EOS, PAD)[0, 0] == 5
    assert generation.beam_search(step, start, 5, EOS, PAD, num_beams=3)[0, :2].tolist() == [6, 30]


def test_nucleus_samples_only_inside_top_p():
    def step(ids_BL):
        logits = torch.full((ids_BL.shape[0], V), -1e4)
        logits[:, 7], logits[:, 8], logits[:, 9] = 2.0, 1.9, -3.0  # 9 is outside top_p=0.9
        return logits

    g = torch.Generator().manual_seed(0)
    out = generation.nucleus(step, torch.ones(64, 1, dtype=torch.long), 3, EOS, PAD, top_p=0.9, generator=g)
    assert set(out.unique().tolist()) == {7, 8}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_omnivl(resolve_arch(ModelConfig())).eval()


def _pixels(B=2):
    return torch.randint(0, 256, (B, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["greedy", "beam", "nucleus"])
def test_generate_api(tiny, method):
    out = tiny.generate(_pixels(), method=method, max_new_tokens=4, num_beams=2,
                        generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.long and out.shape[0] == 2 and out.shape[1] <= 4


def test_generate_with_prompts_of_different_lengths(tiny):
    px = _pixels()
    prompts = torch.tensor([[1037, 3861, 1997], [2054, 0, 0]])
    both = tiny.generate(px, prompt_ids=prompts, max_new_tokens=3)
    first = tiny.generate(px[:1], prompt_ids=prompts[0], max_new_tokens=3)
    second = tiny.generate(px[1:], prompt_ids=prompts[1, :1], max_new_tokens=3)
    assert both[0, : first.shape[1]].tolist() == first[0].tolist()
    assert both[1, : second.shape[1]].tolist() == second[0].tolist()


def test_video_generation_and_embeddings(tiny):
    video = torch.randint(0, 256, (2, 4, 3, 64, 64), dtype=torch.uint8)
    assert tiny.generate(video, "video", max_new_tokens=2).shape[0] == 2
    assert tiny.encode_video(video).shape == (2, 64)
    with pytest.raises(ValueError, match="uint8"):
        tiny.encode_image(video.float()[:, 0])
    with pytest.raises(ValueError, match="rank"):
        tiny.encode_visual(video, "image")


def test_export_round_trip_local_and_s3(tiny, tmp_path, s3_bucket):
    cfg = ModelConfig()
    ids = torch.tensor([[101, 1037, 4937, 102], [101, 1037, 3899, 102]])
    mask = torch.ones_like(ids)
    px = _pixels()
    with torch.no_grad():
        expected = (tiny.encode_image(px), tiny.encode_text(ids, mask), tiny.match_prob(px, ids, mask))
    for uri in (str(tmp_path / "export"), f"{s3_bucket}/exports/tiny"):
        save_export(tiny, cfg, uri)
        loaded = load_export(uri)
        with torch.no_grad():
            got = (loaded.encode_image(px), loaded.encode_text(ids, mask), loaded.match_prob(px, ids, mask))
        for a, b in zip(expected, got):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        assert loaded.gen_decoder.lm_head.decoder.weight is loaded.gen_decoder.embeddings.word_embeddings.weight
    files = {p.name for p in (tmp_path / "export").iterdir()}
    assert {"model.safetensors", "config.json", "vocab.txt", "tokenizer.json"} <= files
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["model_config"]["size"] == "tiny" and meta["arch"]["visual"]["width"] == 192
