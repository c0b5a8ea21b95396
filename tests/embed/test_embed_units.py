"""The embed job's shard work and the index, without Ray: what a shard holds, bad rows, resumability rules,
agreement with evaluation's embeddings, and every index type against exact search."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import BAD_ROWS
from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.embed import index as ix
from omnivl.embed import shards
from omnivl.embed.config import EmbedSettings, EmbedSource, IndexSettings


def _embedder(export: str, **settings) -> tuple[shards.ShardEmbedder, DecodeConfig]:
    from omnivl.models.export import load_export

    decode = DecodeConfig(image_size=32, num_frames=4)
    return shards.ShardEmbedder(load_export(export), decode, EmbedSettings(**settings), "cpu"), decode


def _run(output, sources, export, **settings) -> list[shards.ShardResult]:
    """The embed job's work in this process: plan, embed and write each pending shard."""
    embedder, _ = _embedder(export, **settings)
    pending, _ = shards.plan(sources, str(output))
    out = []
    for task in pending:
        table, result = embedder(task)
        shards.write_shard(table, task.output)
        out.append(result)
    return out


def test_image_shard_matches_evaluation_and_names_bad_rows(embed_corpus, tiny_export, tmp_path):
    from omnivl.cluster.evaluate import embed_locally

    src = EmbedSource(name="imgs", manifest=str(embed_corpus / "image_text" / "images.jsonl"), modality="image")
    (result,) = _run(tmp_path, [src], tiny_export, batch_size=7, decode_threads=2, text_embedding=True)
    table = pq.read_table(result.output)
    good = len(table)
    assert result.rows_in == good + BAD_ROWS and result.rows_out == good
    assert sum(result.ledger["skipped"].values()) == BAD_ROWS
    assert any("broken.jpg" in e for ex in result.ledger["examples"].values() for e in ex)
    assert any("missing.jpg" in e for ex in result.ledger["examples"].values() for e in ex)
    assert table.column_names == ["row_key", "uri", "text", "embedding", "text_embedding"]
    emb = shards.embeddings_matrix(table)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # the same rows through evaluation's embedding pass
    ref = embed_locally(SourceConfig(name="imgs", manifest=src.manifest, modality="image"),
                        DecodeConfig(image_size=32, num_frames=4), tiny_export, batch_size=5)
    order = {k: i for i, k in enumerate(ref.row_key_N)}
    rows = [order[k] for k in table.column("row_key").to_pylist()]
    assert len(rows) == len(ref.row_key_N)
    assert np.abs(emb - ref.visual_NE[rows]).max() < 1e-4
    assert np.abs(shards.embeddings_matrix(table, "text_embedding") - ref.text_NE[rows]).max() < 1e-4
    # the footer carries the counts a re-run reports without reading rows
    again = shards.finished_result(shards.ShardTask(src.to_dict(), {}, 0, result.output))
    assert (again.rows_in, again.rows_out, again.skipped) == (result.rows_in, result.rows_out, True)


def test_video_and_text_shards(embed_corpus, tiny_export, tmp_path):
    from omnivl.models.export import load_export
    from omnivl.data.text import load_tokenizer, tokenize
    from omnivl.eval.inference import encode_texts

    sources = [EmbedSource(name="vids", manifest=str(embed_corpus / "video_text" / "train.jsonl"), modality="video"),
               EmbedSource(name="caps", manifest=str(embed_corpus / "captions.jsonl"), modality="text")]
    vids, caps = _run(tmp_path, sources, tiny_export, batch_size=4)
    assert vids.rows_out == vids.rows_in == CORPUS_VIDEOS(embed_corpus)
    assert (caps.rows_in, caps.rows_out) == (caps.rows_out + 2, caps.rows_out)
    assert set(caps.ledger["skipped"]) == {"caption_empty", "manifest_row_invalid"}
    table = pq.read_table(caps.output)
    assert "text_embedding" not in table.column_names and table.column("uri")[0].as_py().endswith(":1")
    ids, mask = tokenize(load_tokenizer(DecodeConfig().tokenizer), table.column("text").to_pylist(), 32)
    expect = encode_texts(load_export(tiny_export), ids, mask)
    assert np.abs(shards.embeddings_matrix(table) - expect).max() < 1e-4


def CORPUS_VIDEOS(root) -> int:
    return len((root / "video_text" / "train.jsonl").read_text().splitlines())


def test_plan_skips_finished_shards_and_refuses_another_identity(embed_corpus, tiny_export, tmp_path):
    src = EmbedSource(name="caps", manifest=str(embed_corpus / "captions.jsonl"), modality="text")
    ident = shards.identity(tiny_export, [src], DecodeConfig(), EmbedSettings())
    shards.claim_output(str(tmp_path), ident)
    shards.claim_output(str(tmp_path), ident)  # the same job again: fine
    pending, finished = shards.plan([src], str(tmp_path))
    assert (len(pending), len(finished)) == (1, 0)
    _run(tmp_path, [src], tiny_export)
    pending, finished = shards.plan([src], str(tmp_path))
    assert (len(pending), len(finished)) == (0, 1)
    with pytest.raises(ValueError, match="other checkpoint, precision"):
        shards.claim_output(str(tmp_path), {**ident, "checkpoint": "elsewhere", "precision": "bf16"})


def test_bf16_embeddings_stay_close_to_fp32(embed_corpus, tiny_export, tmp_path):
    src = EmbedSource(name="imgs", manifest=str(embed_corpus / "image_text" / "train.jsonl"), modality="image")
    (fp32,) = _run(tmp_path / "a", [src], tiny_export)
    (bf16,) = _run(tmp_path / "b", [src], tiny_export, precision="bf16")
    a, b = (shards.embeddings_matrix(pq.read_table(r.output)) for r in (fp32, bf16))
    cos = (a * b).sum(1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98 and np.abs(a - b).max() > 0  # really ran in bf16, and still the same embedding


def test_fp16_needs_a_gpu():
    from omnivl.spec.errors import SpecError
    from omnivl.spec.loader import validate_spec

    with pytest.raises(ValueError, match="fp16 needs use_gpu"):
        EmbedSettings(precision="fp16")
    raw = {"kind": "embed", "name": "e", "checkpoint": "c", "embed": {"precision": "fp16"},
           "data": {"sources": [{"name": "s", "manifest": "m.jsonl", "modality": "image"}]}}
    with pytest.raises(SpecError, match=r"embed\.precision: fp16 needs use_gpu: true"):
        validate_spec(raw)
    assert EmbedSettings(precision="fp16", use_gpu=True).precision == "fp16"


# ---- the index ---------------------------------------------------------------------------------------------


def _fake_output(root, n: int, dim: int, rows_per_shard: int, seed: int = 0) -> np.ndarray:
    """An embed output of `n` random unit vectors in shards (what `index` reads), returning the vectors."""
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    src = EmbedSource(name="s", manifest="m.jsonl", modality="image")
    (root / shards.IDENTITY_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / shards.IDENTITY_FILE).write_text(json.dumps({"sources": [src.to_dict()]}))
    for i, start in enumerate(range(0, n, rows_per_shard)):
        part = vecs[start:start + rows_per_shard]
        keys = [f"s:m.jsonl:{j}" for j in range(start, start + len(part))]
        table = shards.shard_table({"row_key": keys, "uri": [f"u{j}" for j in range(start, start + len(part))],
                                    "text": [f"t{j}" for j in range(start, start + len(part))]}, [part], None)
        shards.write_shard(table, str(root / "s" / shards.shard_name(i)))
    return vecs


@pytest.mark.parametrize("kind,settings,min_recall", [
    ("flat", {}, 1.0),
    ("hnsw", {"hnsw_m": 16, "ef_search": 64}, 0.9),
    ("ivfpq", {"nlist": 32, "pq_m": 16, "nprobe": 32, "train_rows": 3000}, 0.5),
])
def test_index_types_against_exact_search(tmp_path, kind, settings, min_recall):
    vecs = _fake_output(tmp_path / "emb", 3000, 32, 700)
    info = ix.build(str(tmp_path / "emb"), str(tmp_path / kind), IndexSettings(type=kind, recall_queries=200,
                                                                               **settings))
    assert (info["type"], info["rows"], info["dim"], info["shards"]) == (kind, 3000, 32, 5)
    loaded = ix.SearchIndex(str(tmp_path / kind))
    # metadata is in index order: row j's own vector finds row j's uri (exactly for flat and hnsw)
    probe = [0, 699, 700, 2999]
    for j in probe:
        hits = loaded.search(vecs[j], 10)
        assert hits[0][0] >= hits[-1][0]
        if kind != "ivfpq":
            assert (hits[0][1].uri, hits[0][1].row_key) == (f"u{j}", f"s:m.jsonl:{j}")
        else:
            assert f"u{j}" in [h.uri for _, h in hits]
    if kind == "flat":
        assert "exact" in info["recall"]["note"]
    else:
        # recall reported = recall recomputed here against brute force
        queries = vecs[ix.sample_positions(3000, 200, IndexSettings().seed + 1)]
        exact = np.argsort(-(queries @ vecs.T), axis=1)[:, :10]
        found = np.array([[h.index for _, h in loaded.search(q, 10)] for q in queries])
        assert info["recall"]["recall@10"] == pytest.approx(ix.recall_at_k(found, exact), abs=1e-3)
        assert info["recall"]["recall@10"] >= min_recall


def test_auto_type_and_parameter_errors(tmp_path):
    _fake_output(tmp_path / "emb", 500, 30, 500)
    assert ix.resolve_type(IndexSettings(flat_max_rows=499), 500) == "ivfpq"
    assert ix.resolve_type(IndexSettings(), 500) == "flat"
    with pytest.raises(ValueError, match="pq_m: 7 does not divide the embedding dim 30"):
        ix.ivfpq_params(IndexSettings(pq_m=7), 500, 30)
    with pytest.raises(ValueError, match="at least max"):
        ix.ivfpq_params(IndexSettings(), 100, 32)
    with pytest.raises(ValueError, match="not in"):
        ix.list_shards(str(tmp_path / "emb"), ["nope"])
    with pytest.raises(ValueError, match="not an embed job's output"):
        ix.list_shards(str(tmp_path), None)
    with pytest.raises(ValueError, match="text_embedding"):
        ix.build(str(tmp_path / "emb"), str(tmp_path / "i"), IndexSettings(), column="text_embedding")
    ix.build(str(tmp_path / "emb"), str(tmp_path / "i"), IndexSettings())
    with pytest.raises(ValueError, match="another model"):
        ix.SearchIndex(str(tmp_path / "i")).search(np.ones(8, np.float32), 3)
