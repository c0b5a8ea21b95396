"""The `index` job: a FAISS index over an `embed` job's shards, and the reader `/v1/search` serves it with.

Output directory:
    index.faiss        the FAISS index (inner product over L2-normalized embeddings = cosine similarity)
    metadata.parquet   one row per indexed vector, in index order: row_key, uri, text, source, modality
    index.json         type and parameters, rows, dim, the embed output it came from, build time, and for an
                       approximate index its recall@k against exact search on `recall_queries` sampled rows

Index types: `flat` (exact; memory N×E floats), `ivfpq` (inverted lists + product quantization: about
`pq_m` bytes per vector, trained on a sample), `hnsw` (graph; full vectors plus links, fast and accurate, more
memory). `auto` picks flat up to `flat_max_rows` rows, else ivfpq. Shards are read one at a time: the job never
holds more than one shard's rows besides the index itself (and the training sample for ivfpq).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from omnivl import console, storage
from omnivl.embed import shards
from omnivl.embed.config import INDEX_FILE, INFO_FILE, METADATA_FILE, IndexSettings

META_COLUMNS = ("row_key", "uri", "text")
MIN_TRAIN_PER_CENTROID = 39  # FAISS k-means warns below this many training points per centroid
NLIST_PER_SQRT_ROWS = 4  # the usual IVF rule of thumb: nlist ~ 4 * sqrt(N)
DEFAULT_PQ_BYTES_DIVISOR = 4  # pq_m default: one byte per 4 dimensions


@dataclass(frozen=True)
class ShardRef:
    uri: str
    source: str
    modality: str
    rows: int


def list_shards(embeddings: str, sources: list[str] | None) -> list[ShardRef]:
    """The finished shards of an embed output (those of `sources`, default all), in source and shard order.
    Raises ValueError naming the output if it is not one, or a source it does not have."""
    ident_path = storage.join(embeddings, shards.IDENTITY_FILE)
    if not storage.exists(ident_path):
        raise ValueError(f"embeddings: {embeddings} is not an embed job's output (no {shards.IDENTITY_FILE})")
    ident = json.loads(storage.read_text(ident_path))
    modality = {s["name"]: s["modality"] for s in ident["sources"]}
    wanted = sources or list(modality)
    unknown = [s for s in wanted if s not in modality]
    if unknown:
        raise ValueError(f"sources: {unknown} not in {embeddings} (it has {', '.join(modality)})")
    refs = []
    for name in wanted:
        for uri in shards.read_shards(embeddings, name):
            fs, path = storage.filesystem(uri)
            with fs.open_input_file(path) as f:
                rows = pq.ParquetFile(f).metadata.num_rows
            refs.append(ShardRef(uri, name, modality[name], rows))
    if not refs:
        raise ValueError(f"embeddings: {embeddings} has no finished shard of {', '.join(wanted)}")
    return refs


def read_shard(ref: ShardRef, column: str) -> tuple[np.ndarray, pa.Table]:
    """(float32 [n, E] vectors, metadata table) of one shard."""
    fs, path = storage.filesystem(ref.uri)
    with fs.open_input_file(path) as f:
        table = pq.read_table(f)
    if column not in table.column_names:
        raise ValueError(f"column: {ref.uri} has no {column!r} column (it has {', '.join(table.column_names)}); "
                         f"text_embedding needs `embed.text_embedding: true` in the embed job")
    meta = table.select(list(META_COLUMNS))
    n = meta.num_rows
    meta = meta.append_column("source", pa.array([ref.source] * n, pa.string()))
    meta = meta.append_column("modality", pa.array([ref.modality] * n, pa.string()))
    return shards.embeddings_matrix(table, column), meta


def resolve_type(cfg: IndexSettings, rows: int) -> str:
    if cfg.type != "auto":
        return cfg.type
    return "flat" if rows <= cfg.flat_max_rows else "ivfpq"


def ivfpq_params(cfg: IndexSettings, rows: int, dim: int) -> tuple[int, int]:
    """(nlist, pq_m) for `rows` vectors of `dim`: the spec's, else the usual defaults, checked. Raises ValueError
    naming the field that cannot work."""
    train = min(cfg.train_rows, rows)
    nlist = cfg.nlist or max(1, min(int(NLIST_PER_SQRT_ROWS * math.sqrt(rows)), train // MIN_TRAIN_PER_CENTROID))
    m = cfg.pq_m or max(1, dim // DEFAULT_PQ_BYTES_DIVISOR)
    if dim % m:
        raise ValueError(f"index.pq_m: {m} does not divide the embedding dim {dim}")
    if train < nlist or train < 2 ** cfg.pq_bits:
        raise ValueError(f"index: ivfpq needs at least max(nlist={nlist}, 2**pq_bits={2 ** cfg.pq_bits}) training "
                         f"rows, the embeddings have {rows} (use type: flat or hnsw)")
    return nlist, m


def new_index(kind: str, cfg: IndexSettings, rows: int, dim: int):
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim), {}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
        return index, {"hnsw_m": cfg.hnsw_m, "ef_construction": cfg.ef_construction, "ef_search": cfg.ef_search}
    nlist, m = ivfpq_params(cfg, rows, dim)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, cfg.pq_bits, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = min(cfg.nprobe, nlist)
    return index, {"nlist": nlist, "pq_m": m, "pq_bits": cfg.pq_bits, "nprobe": index.nprobe}


def sample_positions(rows: int, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(rows, size=min(n, rows), replace=False))


def gather_rows(refs: list[ShardRef], column: str, positions: np.ndarray) -> np.ndarray:
    """The vectors at global `positions` (sorted), reading only the shards that hold them."""
    out, start = [], 0
    for ref in refs:
        mine = positions[(positions >= start) & (positions < start + ref.rows)] - start
        if len(mine):
            out.append(read_shard(ref, column)[0][mine])
        start += ref.rows
    dim = out[0].shape[1] if out else 0
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


class ExactTopK:
    """The exact top-k inner products of `queries` over vectors seen shard by shard (memory Q×(k+shard)): fed
    during the build's one pass over the shards, so measuring recall reads nothing again."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries, self.k = queries, k
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)
        self.positions = np.zeros((len(queries), 0), np.int64)

    def add(self, vecs: np.ndarray, start: int) -> None:
        """`vecs` are the vectors at global positions start, start+1, ..."""
        scores = self.queries @ vecs.T
        s = np.concatenate([self.scores, scores], axis=1)
        i = np.concatenate([self.positions, np.broadcast_to(np.arange(start, start + len(vecs)), scores.shape)],
                           axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :self.k]
        self.scores, self.positions = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k that the index returned in its top-k."""
    hits = [len(set(f[f >= 0].tolist()) & set(e.tolist())) / max(1, len(e)) for f, e in zip(found, exact)]
    return float(np.mean(hits)) if hits else float("nan")


def build(embeddings: str, out: str, cfg: IndexSettings, column: str = "embedding",
          sources: list[str] | None = None) -> dict:
    """Build the index of `embeddings` into `out` (local or s3://); returns the contents of index.json.
    Reads the shards once to add them (and to find the exact answers of the recall queries), plus once before
    that for the rows an approximate index samples: its training rows and its recall queries."""
    import faiss

    started = time.monotonic()
    refs = list_shards(embeddings, sources)
    rows = sum(r.rows for r in refs)
    dim = shard_dim(refs[0], column)
    kind = resolve_type(cfg, rows)
    index, params = new_index(kind, cfg, rows, dim)
    console.say(f"index: {rows:,} vectors of dim {dim} from {len(refs)} shards -> {kind} {params or ''}".rstrip())
    train_at = sample_positions(rows, min(cfg.train_rows, rows), cfg.seed) if not index.is_trained else None
    query_at = (sample_positions(rows, cfg.recall_queries, cfg.seed + 1)
                if kind != "flat" and cfg.recall_queries else None)
    # one read of the shards that hold sampled rows serves both samples
    union = np.unique(np.concatenate([p for p in (train_at, query_at) if p is not None] or [np.zeros(0, int)]))
    sampled = gather_rows(refs, column, union) if len(union) else None
    if train_at is not None:
        index.train(np.ascontiguousarray(sampled[np.searchsorted(union, train_at)]))
    exact = (ExactTopK(sampled[np.searchsorted(union, query_at)], min(cfg.recall_k, rows))
             if query_at is not None else None)
    with storage.staged_output(out) as stage:
        writer, start = None, 0
        for ref in refs:
            vecs, meta = read_shard(ref, column)
            index.add(np.ascontiguousarray(vecs))
            if exact is not None:
                exact.add(vecs, start)
            start += len(vecs)
            writer = writer or pq.ParquetWriter(stage / METADATA_FILE, meta.schema, compression="zstd")
            writer.write_table(meta)
        writer.close()
        faiss.write_index(index, str(stage / INDEX_FILE))
        info = {"type": kind, "params": params, "rows": int(index.ntotal), "dim": int(dim), "column": column,
                "embeddings": embeddings, "sources": sorted({r.source for r in refs}), "shards": len(refs),
                "build_seconds": round(time.monotonic() - started, 2)}
        if kind == "flat":
            info["recall"] = {"note": "exact search (flat): recall 1 by construction"}
        elif exact is None:
            info["recall"] = {"note": "not measured (recall_queries: 0)"}
        else:
            info["recall"] = measure_recall(index, exact)
        (stage / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def shard_dim(ref: ShardRef, column: str) -> int:
    """The embedding size of a shard's `column`, from its footer (no rows read)."""
    fs, path = storage.filesystem(ref.uri)
    with fs.open_input_file(path) as f:
        schema = pq.read_schema(f)
    if column not in schema.names:
        raise ValueError(f"column: {ref.uri} has no {column!r} column (it has {', '.join(schema.names)}); "
                         f"text_embedding needs `embed.text_embedding: true` in the embed job")
    return schema.field(column).type.list_size


def measure_recall(index, exact: ExactTopK) -> dict:
    """Recall@k of `index` against the exact top-k of the same queries."""
    start = time.perf_counter()
    _, found = index.search(np.ascontiguousarray(exact.queries), exact.k)
    per_query_ms = 1000 * (time.perf_counter() - start) / max(1, len(exact.queries))
    value = recall_at_k(found, exact.positions)
    return {f"recall@{exact.k}": round(value, 4), "queries": len(exact.queries),
            "search_ms_per_query": round(per_query_ms, 3)}


def run_job(job) -> dict:
    out = storage.absolute(job.output or storage.join("runs", job.name))
    info = build(storage.absolute(job.embeddings), out, job.index, job.column, job.sources)
    recall = next((f"{k} {v:.3f} vs exact" for k, v in info["recall"].items() if k.startswith("recall@")), "exact")
    console.say(f"index: {info['rows']:,} vectors ({info['type']}, {recall}) in {info['build_seconds']}s -> {out}")
    return {"index": out, **info}


# ---- reading it back (serving) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexItem:
    """One indexed row (the fields of `omnivl.serving.gallery.GalleryItem`, plus where it came from)."""

    index: int  # position in the index (= row of metadata.parquet)
    uri: str
    text: str
    modality: str
    row_key: str
    source: str


class SearchIndex:
    """A built index loaded for search: the FAISS index in memory, metadata as Arrow columns (no Python object
    per row, so a 10M-row index costs its strings once)."""

    def __init__(self, uri: str) -> None:
        import faiss

        self.uri = uri
        self.info = json.loads(storage.read_text(storage.join(uri, INFO_FILE)))
        with storage.local_copy(storage.join(uri, INDEX_FILE)) as path:
            self.index = faiss.read_index(str(path))
        params = self.info.get("params", {})
        if "nprobe" in params:
            faiss.extract_index_ivf(self.index).nprobe = params["nprobe"]
        if "ef_search" in params:
            self.index.hnsw.efSearch = params["ef_search"]
        fs, path = storage.filesystem(storage.join(uri, METADATA_FILE))
        with fs.open_input_file(path) as f:
            self.meta = pq.read_table(f)
        if self.meta.num_rows != self.index.ntotal:
            raise ValueError(f"{uri}: {METADATA_FILE} has {self.meta.num_rows} rows but the index "
                             f"{self.index.ntotal} vectors")

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, query_E: np.ndarray, k: int) -> list[tuple[float, IndexItem]]:
        """Up to `k` (score, item) pairs, best first."""
        k = min(k, len(self))
        if k == 0:
            return []
        query = np.ascontiguousarray(query_E, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.dim:
            raise ValueError(f"query has dim {query.shape[1]}, the index {self.uri} has {self.dim}: it was built "
                             f"from another model's embeddings")
        scores, idx = self.index.search(query, k)
        keep = [(float(s), int(i)) for s, i in zip(scores[0], idx[0]) if i >= 0]
        rows = self.meta.take(pa.array([i for _, i in keep], pa.int64())).to_pylist()
        return [(s, IndexItem(i, r["uri"], r["text"], r["modality"], r["row_key"], r["source"]))
                for (s, i), r in zip(keep, rows)]

    def summary(self) -> dict:
        return {"items": len(self), "dim": self.dim, "type": self.info["type"], "index": self.uri,
                "recall": self.info.get("recall")}

