"""The embed and index jobs on the embedded Ray: actor pool, S3 output, bad rows named, re-runs skip finished
shards, and the embed -> index -> search pipeline over a 20k-row manifest."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import BAD_ROWS
from omnivl import storage
from omnivl.embed import index as ix
from omnivl.embed import shards
from omnivl.runners import run_job
from omnivl.spec import validate_spec

pytestmark = pytest.mark.ray


def embed_spec(corpus, export, output, max_bad_fraction=0.2, **embed) -> dict:
    return {"kind": "embed", "name": "emb", "output": str(output), "checkpoint": export,
            "data": {"decode": {"max_bad_fraction": max_bad_fraction}, "sources": [
                {"name": "imgs", "manifest": str(corpus / "image_text" / "images.jsonl"), "modality": "image"},
                {"name": "vids", "manifest": str(corpus / "video_text" / "train.jsonl"), "modality": "video"},
                {"name": "caps", "manifest": str(corpus / "captions.jsonl"), "modality": "text"}]},
            "embed": {"concurrency": 2, "batch_size": 8, **embed}}


def test_embed_job_writes_shards_reports_bad_rows_and_resumes(ray_local, embed_corpus, tiny_export, tmp_path):
    from omnivl.data.badinput import BadInputError

    out = tmp_path / "emb"
    # 4 bad rows of 74 are over the default 1%: the job fails naming them, after writing every shard
    with pytest.raises(BadInputError, match="broken.jpg"):
        run_job(validate_spec(embed_spec(embed_corpus, tiny_export, out, max_bad_fraction=0.01)))
    assert len(list(out.glob("*/part-*.parquet"))) == 3
    for p in out.glob("*/part-*.parquet"):
        p.unlink()
    first = run_job(validate_spec(embed_spec(embed_corpus, tiny_export, out)))
    assert (first["shards_written"], first["shards_skipped"]) == (3, 0)
    assert first["bad_input"]["rows_skipped"] == BAD_ROWS + 2  # the two bad images, two bad caption lines
    assert any("broken.jpg" in f for f in first["bad_input"]["worst_files"])
    assert json.loads((out / shards.SUMMARY_FILE).read_text())["rows"] == first["rows"]
    written = {p: p.stat().st_mtime_ns for p in out.glob("*/part-*.parquet")}
    assert len(written) == 3
    # an interrupted run: one shard missing; the re-run writes that one only and reports the same totals
    victim = out / "vids" / shards.shard_name(0)
    victim.unlink()
    second = run_job(validate_spec(embed_spec(embed_corpus, tiny_export, out)))
    assert (second["shards_written"], second["shards_skipped"]) == (1, 2)
    assert (second["rows"], second["bad_input"]["rows_skipped"]) == (first["rows"], first["bad_input"]["rows_skipped"])
    for p, mtime in written.items():
        assert p.exists() and (p == victim or p.stat().st_mtime_ns == mtime)
    # the same output with another checkpoint is refused, naming what differs
    import shutil

    other = shutil.copytree(tiny_export, tmp_path / "other-export")
    with pytest.raises(ValueError, match="other checkpoint"):
        run_job(validate_spec(embed_spec(embed_corpus, str(other), out)))


def test_embed_and_index_on_s3(ray_local, s3_bucket, embed_corpus, tiny_export):
    spec = embed_spec(embed_corpus, tiny_export, f"{s3_bucket}/emb")
    spec["data"]["sources"] = spec["data"]["sources"][:1]
    summary = run_job(validate_spec(spec))
    assert summary["rows"] == summary["sources"]["imgs"]["rows_out"] > 0
    assert storage.exists(f"{s3_bucket}/emb/imgs/{shards.shard_name(0)}")
    info = run_job(validate_spec({"kind": "index", "name": "ix", "output": f"{s3_bucket}/ix",
                                  "embeddings": f"{s3_bucket}/emb", "index": {"type": "hnsw"}}))
    loaded = ix.SearchIndex(f"{s3_bucket}/ix")
    assert len(loaded) == info["rows"] == summary["rows"]


# ---- acceptance: 20k rows, embed -> index -> search, re-run skips finished shards ---------------------------

ROWS = 20_000
ROW_GROUP = 4096  # Parquet row groups: the manifest's chunks, so the embed output has ceil(ROWS / ROW_GROUP) shards
QUERIES = 200
TOP_K = 10


def big_manifest(corpus, path) -> list[str]:
    """ROWS rows cycling over the corpus's real image files, each with a distinct caption; returns captions."""
    base = [json.loads(x) for x in (corpus / "image_text" / "train.jsonl").read_text().splitlines()]
    paths = [str(corpus / "image_text" / base[i % len(base)]["path"]) for i in range(ROWS)]
    captions = [f"{base[i % len(base)]['text']}, clip {i} of the archive" for i in range(ROWS)]
    pq.write_table(pa.table({"path": paths, "text": captions}), path, row_group_size=ROW_GROUP)
    return captions


def search_pipeline(root, manifest, export) -> dict:
    return {"kind": "pipeline", "name": "search", "output_root": str(root), "steps": [
        {"name": "embed", "job": {"kind": "embed", "checkpoint": export,
                                  "data": {"sources": [{"name": "archive", "manifest": str(manifest),
                                                        "modality": "image"}]},
                                  "embed": {"concurrency": 2, "batch_size": 128, "text_embedding": True}}},
        # the test model is untrained, so captions are searched by their own embedding: exactly (flat), and
        # approximately (HNSW; its recall against exact search is measured). Visual embeddings would not do here:
        # 20k rows share 30 files, so each image has ~670 exact duplicates and "its" top 10 is any 10 of them.
        {"name": "captions", "job": {"kind": "index", "embeddings": "${steps.embed}", "column": "text_embedding",
                                     "index": {"type": "flat"}}},
        {"name": "captions_hnsw", "job": {"kind": "index", "embeddings": "${steps.embed}",
                                          "column": "text_embedding",
                                          "index": {"type": "hnsw", "recall_queries": 500}}},
    ]}


def search_over_http(export: str, index: str, captions: list[str]) -> list[bool]:
    """Deploy `export` with `gallery_index: index` on 127.0.0.1, search each caption; whether its own row is
    among the top TOP_K hits. Shuts down only Serve (Ray belongs to conftest)."""
    import requests
    from ray import serve

    from omnivl.cluster.serve_app import deploy
    from omnivl.spec.jobs import ServeJob

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    job = ServeJob.model_validate({"name": "search", "port": port, "app": {
        "checkpoints": {"tiny": export}, "gallery_index": index, "auth": {"api_key": None, "api_key_env": None}}})
    url = deploy(job)
    try:
        model = requests.get(f"{url}/v1/model", timeout=30).json()
        assert model["gallery"]["index"] == index
        found = []
        for caption in captions:
            reply = requests.post(f"{url}/v1/search", json={"text": caption, "top_k": TOP_K}, timeout=60)
            assert reply.status_code == 200, reply.text
            found.append(caption in [h["text"] for h in reply.json()["hits"]])
        return found
    finally:
        serve.shutdown()


def text_embeddings(export: str, texts: list[str]) -> np.ndarray:
    from omnivl.data.config import DecodeConfig
    from omnivl.data.text import load_tokenizer, tokenize
    from omnivl.eval.inference import encode_texts
    from omnivl.models.export import load_export

    decode = DecodeConfig()
    ids, mask = tokenize(load_tokenizer(decode.tokenizer), texts, decode.text_max_length)
    return encode_texts(load_export(export), ids, mask)


@pytest.mark.slow
def test_search_pipeline_over_20k_rows(ray_local, embed_corpus, tiny_export, tmp_path):
    from omnivl.pipeline.executor import MARKER

    captions = big_manifest(embed_corpus, tmp_path / "archive.parquet")
    spec = search_pipeline(tmp_path / "runs", tmp_path / "archive.parquet", tiny_export)
    steps = run_job(validate_spec(spec))
    embed = steps["embed"]["summary"]
    assert embed["rows"] == ROWS and embed["shards_written"] == -(-ROWS // ROW_GROUP)
    assert steps["captions_hnsw"]["summary"]["recall"]["recall@10"] >= 0.9
    # search for 200 sampled rows' own captions: the row is in the top 10
    caption_index = ix.SearchIndex(steps["captions"]["output"])
    sample = np.random.default_rng(0).choice(ROWS, QUERIES, replace=False)
    queries = text_embeddings(tiny_export, [captions[i] for i in sample])
    found = [f"archive:archive.parquet:{i}" in {item.row_key for _, item in caption_index.search(q, TOP_K)}
             for i, q in zip(sample, queries)]
    assert np.mean(found) >= 0.95, np.mean(found)
    # the same through /v1/search of a Serve app that loads the prebuilt index (nothing embedded at startup)
    found_http = search_over_http(tiny_export, steps["captions"]["output"], [captions[i] for i in sample])
    assert np.mean(found_http) >= 0.95, np.mean(found_http)
    # interrupted: the embed step lost its marker and one shard; the re-run embeds that shard only
    out = steps["embed"]["output"]
    os.remove(os.path.join(out, MARKER))
    os.remove(os.path.join(out, "archive", shards.shard_name(2)))
    again = run_job(validate_spec(spec))["embed"]["summary"]
    assert (again["shards_written"], again["shards_skipped"], again["rows"]) == (1, embed["shards_written"] - 1, ROWS)
