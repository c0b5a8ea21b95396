"""BERT text encoder parity with transformers, bundled MiniLM loading, decoder sharing and causality."""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel

from omnivl.models.checkpoints import bundled_bert_dir, load_text_checkpoint
from omnivl.models.config import InitConfig, ModelConfig
from omnivl.models.omnivl import build_model, build_omnivl
from omnivl.models.sizes import resolve_arch


def _ids(B=3, L=9, vocab=30522, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (B, L), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 6:] = 0  # one padded row
    ids[mask == 0] = 0
    return ids, mask


def test_text_encoder_matches_transformers_bert(random_bert_dir):
    path, ref = random_bert_dir
    built = build_model(ModelConfig(init=InitConfig(text=str(path))))
    assert built.arch.text.hidden == 64 and built.arch.text.layers == 2  # the checkpoint fixes the geometry
    report = built.init_reports["text"]
    assert report.missing == []
    assert set(report.unexpected) <= {"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"}
    ids, mask = _ids()
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = built.model.eval().text(ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(ours.tokens_BLD[valid], expected[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.pooled_BD, expected[:, 0], atol=1e-5, rtol=0)


def test_decoders_initialized_from_bert_list_cross_attention_as_missing(random_bert_dir):
    path, _ = random_bert_dir
    reports = build_model(ModelConfig(init=InitConfig(text=str(path)))).init_reports
    for name in ("align_decoder", "gen_decoder"):
        missing = reports[name].missing
        assert missing and all(".cross_attn." in k or k.startswith(("match_head", "lm_head")) for k in missing), missing


def test_bundled_minilm_loads_and_matches_transformers():
    directory = bundled_bert_dir()
    built = build_model(ModelConfig(init=InitConfig(text="bundled")))
    assert (built.arch.text.hidden, built.arch.text.layers) == (384, 6)
    report = built.init_reports["text"]
    assert report.missing == [] and report.loaded > 90
    assert report.unexpected == ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]
    ref = BertModel.from_pretrained(str(directory)).eval()
    ids, mask = _ids()
    with torch.no_grad():
        torch.testing.assert_close(built.model.eval().text(ids, mask).pooled_BD,
                                   ref(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0], atol=1e-4, rtol=0)


def test_text_checkpoint_shape_mismatch_is_an_error(random_bert_dir):
    path, _ = random_bert_dir
    model = build_omnivl(resolve_arch(ModelConfig()))  # tiny: hidden 128, the checkpoint has 64
    with pytest.raises(ValueError, match="shape mismatch"):
        load_text_checkpoint({"text": model.text}, str(path))


def _tiny_model():
    torch.manual_seed(0)
    return build_omnivl(resolve_arch(ModelConfig())).eval()


def test_decoders_share_all_but_self_attention():
    model = _tiny_model()
    align, gen = model.align_decoder, model.gen_decoder
    assert gen.embeddings is align.embeddings
    for a, g in zip(align.layers, gen.layers):
        assert g.cross_attn is a.cross_attn and g.ffn is a.ffn
        assert g.self_attn is not a.self_attn
        assert g.self_attn.query.weight.data_ptr() != a.self_attn.query.weight.data_ptr()
    assert gen.lm_head.decoder.weight is gen.embeddings.word_embeddings.weight


def test_generation_decoder_is_causal_and_alignment_decoder_is_not():
    model = _tiny_model()
    tokens = model.visual(torch.randn(2, 3, 64, 64)).tokens_BSD
    ids, mask = _ids(B=2, L=10)
    mask[:] = 1
    changed = ids.clone()
    changed[:, 6] = 2023
    with torch.no_grad():
        before, after = model.lm_logits(tokens, ids, mask), model.lm_logits(tokens, changed, mask)
        torch.testing.assert_close(before[:, :6], after[:, :6], atol=0, rtol=0)
        assert (before[:, 6:] - after[:, 6:]).abs().max() > 1e-4
        enc_before = model.align_decoder.hidden(ids, mask, tokens)[:, 0]
        enc_after = model.align_decoder.hidden(changed, mask, tokens)[:, 0]
        assert (enc_before - enc_after).abs().max() > 1e-4


def test_decoders_use_their_task_tokens_and_the_visual_tokens():
    model = _tiny_model()
    ids, mask = _ids(B=2)
    img = torch.randn(2, 3, 64, 64)
    tokens = model.visual(img).tokens_BSD
    with torch.no_grad():
        base = model.lm_logits(tokens, ids, mask)
        other_start = ids.clone()
        other_start[:, 0] = 999  # position 0 is replaced by [DEC] whatever the data plane put there
        torch.testing.assert_close(model.lm_logits(tokens, other_start, mask), base)
        other_visual = model.visual(torch.randn(2, 3, 64, 64)).tokens_BSD
        assert (model.lm_logits(other_visual, ids, mask) - base).abs().max() > 1e-4
