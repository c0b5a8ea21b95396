"""Typed configs of the `embed` and `index` job kinds (validated offline: no torch, Ray or FAISS here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from omnivl.spec.base import Config
from omnivl.spec.precision import UseGpuPrecision, precision_field

# What an `index` job writes (omnivl.embed.index) and serving's `gallery_index:` reads
INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.parquet"
INFO_FILE = "index.json"
INDEX_FILES = (INDEX_FILE, METADATA_FILE, INFO_FILE)


class EmbedSource(Config):
    """A manifest to embed. `image`/`video`: the media are decoded with the evaluation transforms and the visual
    embedding is written; `text`: a text-only manifest (a `text` column, no media) whose captions are embedded."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="names the output folder")
    manifest: str = Field(min_length=1, description="a file, a glob or a directory of one format, local or s3://")
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "webdataset"] = "auto"
    modality: Literal["image", "video", "text"]


class EmbedSettings(Config):
    """How the model runs: an actor pool of `concurrency` model replicas, each on `cpus_per_actor` CPUs (its
    torch threads) or one GPU."""

    use_gpu: bool = False
    concurrency: int = Field(default=2, ge=1, description="model actors (one output shard at a time each)")
    cpus_per_actor: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=64, ge=1, description="rows per forward pass")
    precision: UseGpuPrecision = precision_field("use_gpu: true")
    decode_threads: int = Field(default=2, ge=1, description="threads per actor decoding the next batches "
                                "while the model runs the current one")
    text_embedding: bool = Field(default=False, description="image/video sources: also write the embedding of "
                                 "each row's caption (column text_embedding)")


IndexKind = Literal["auto", "flat", "ivfpq", "hnsw"]


class IndexSettings(Config):
    """The FAISS index. `auto`: exact (`flat`) up to `flat_max_rows` rows, else IVF-PQ. Scores are inner
    products of L2-normalized embeddings (cosine similarity)."""

    type: IndexKind = "auto"
    flat_max_rows: int = Field(default=200_000, ge=1, description="auto: exact search up to this many rows")
    nlist: int | None = Field(default=None, ge=1, description="ivfpq: inverted lists (default ~4*sqrt(rows))")
    pq_m: int | None = Field(default=None, ge=1, description="ivfpq: sub-quantizers (must divide the dim; "
                             "default dim/4)")
    pq_bits: int = Field(default=8, ge=1, le=16, description="ivfpq: bits per sub-quantizer code")
    nprobe: int = Field(default=16, ge=1, description="ivfpq: lists searched per query (stored in the index)")
    hnsw_m: int = Field(default=32, ge=2, description="hnsw: neighbours per node")
    ef_construction: int = Field(default=80, ge=1, description="hnsw: build-time beam")
    ef_search: int = Field(default=64, ge=1, description="hnsw: query-time beam (stored in the index)")
    train_rows: int = Field(default=100_000, ge=1, description="ivfpq: rows sampled to train the quantizers")
    recall_queries: int = Field(default=1000, ge=0, description="rows used as queries to measure recall@k of an "
                                "approximate index against exact search (0: skip)")
    recall_k: int = Field(default=10, ge=1)
    seed: int = 0
