"""The `embed` job's unit of work: one manifest chunk in, one Parquet shard out.

A manifest is planned into chunks (`omnivl.data.manifest_index`: a Parquet row group, ~8k JSONL/CSV rows, a tar
shard) without reading its rows; chunk `i` of source `s` becomes `<output>/<s>/part-<i>.parquet`. A shard is
written whole (temp file + rename locally, one PUT on S3), so a shard that exists is finished: a re-run plans the
same chunks and skips those. The output's `_identity.json` records what the shards were made from (checkpoint,
sources, geometry, precision); a re-run into the same output with a different identity is refused instead of
mixing embeddings of two models.

Shard schema: row_key (str), uri (str), text (str: the caption, else the class name), embedding
(fixed_size_list<float32>[E], L2-normalized), and `text_embedding` when asked for. Rows that cannot be decoded
are left out and counted by reason in the shard's metadata (and the job's bad-input report).
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from omnivl import storage
from omnivl.data import badinput as bad
from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.data.manifest import Chunk, ManifestRow, media_exts, parent_of, read_chunk
from omnivl.embed.config import EmbedSettings, EmbedSource

IDENTITY_FILE = "_identity.json"
SUMMARY_FILE = "embed.json"
SHARD_META_KEY = b"omnivl.embed"  # Parquet key-value metadata: the shard's row counts and bad-input ledger
PLACEHOLDER_CAPTION = "media"  # decoded rows need some text; rows without a caption or label get this one


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


@dataclass(frozen=True)
class ShardTask:
    """One chunk of one source, and where its shard goes. Plain data: it travels to the actors as a dict."""

    source: dict  # EmbedSource
    chunk: dict  # omnivl.data.manifest.Chunk
    index: int
    output: str  # the shard's URI

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ShardResult:
    source: str
    index: int
    output: str
    rows_in: int = 0
    rows_out: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the whole embedding process (all its threads) for this shard
    ledger: dict = field(default_factory=dict)  # BadInputLedger.to_dict()
    skipped: bool = False  # found finished by this run's planning

    def to_dict(self) -> dict:
        return asdict(self)


def planning_source(src: EmbedSource) -> SourceConfig:
    """The `SourceConfig` the manifest planner and decoder read (text manifests plan like any other)."""
    modality = "image" if src.modality == "text" else src.modality
    return SourceConfig(name=src.name, manifest=storage.absolute(src.manifest), format=src.format,
                        modality=modality, kind="text")


def plan(sources: list[EmbedSource], output: str, mapper=None) -> tuple[list[ShardTask], list[ShardTask]]:
    """(pending, finished) shard tasks of every source, in manifest order. One listing per source output
    folder tells which shards exist (not one request per shard: at 10M rows there are ~1,200)."""
    from omnivl.data.manifest_index import map_here, plan_source

    pending, finished = [], []
    for src in sources:
        folder = storage.join(output, src.name)
        done = set(storage.list_dir(folder))
        for i, chunk in enumerate(plan_source(planning_source(src), mapper or map_here)):
            task = ShardTask(src.to_dict(), asdict(chunk), i, storage.join(folder, shard_name(i)))
            (finished if shard_name(i) in done else pending).append(task)
    return pending, finished


def identity(checkpoint: str, sources: list[EmbedSource], decode: DecodeConfig, settings: EmbedSettings) -> dict:
    """What the shards of an output are made from; anything here changing makes them a different product."""
    return {"checkpoint": checkpoint, "sources": [s.to_dict() for s in sources],
            "decode": {k: decode.to_dict()[k] for k in ("image_size", "num_frames", "text_max_length", "tokenizer")},
            "precision": settings.precision, "text_embedding": settings.text_embedding}


def claim_output(output: str, ident: dict) -> None:
    """Record `ident` as the output's identity, or check it against the one there. Raises ValueError naming the
    fields that differ (the output holds shards of another job: use another output, or delete it)."""
    path = storage.join(output, IDENTITY_FILE)
    if storage.exists(path):
        have = json.loads(storage.read_text(path))
        changed = sorted(k for k in set(have) | set(ident) if have.get(k) != ident.get(k))
        if changed:
            raise ValueError(f"output {output} holds embeddings made with other {', '.join(changed)} "
                             f"({path}); write to another output or delete it")
        return
    storage.write_text(path, json.dumps(ident, indent=2))


def finished_result(task: ShardTask) -> ShardResult:
    """The counts of a shard written by an earlier run, from its footer (no rows are read)."""
    fs, path = storage.filesystem(task.output)
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).schema_arrow.metadata or {}
    stats = json.loads(meta.get(SHARD_META_KEY, b"{}"))
    return ShardResult(task.source["name"], task.index, task.output, stats.get("rows_in", 0),
                       stats.get("rows_out", 0), ledger=stats.get("ledger", {}), skipped=True)


# ---- the work of one shard (runs in a model actor, or in a plain loop) -------------------------------------


class ShardEmbedder:
    """Embeds shards with one loaded model. `decode_threads` threads decode the next batches of a shard while
    the model runs the current one (decoders release the GIL). Not thread-safe itself: one shard at a time."""

    def __init__(self, model, decode: DecodeConfig, settings: EmbedSettings, device: str) -> None:
        from omnivl.data.text import load_tokenizer

        self.model, self.decode, self.settings, self.device = model, decode, settings, device
        self.tokenizer = load_tokenizer(decode.tokenizer)
        self.pool = cf.ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="embed-decode")
        self.local = threading.local()  # one RowDecoder per decode thread (each owns a watchdog thread)

    def __call__(self, task: ShardTask) -> tuple[pa.Table, ShardResult]:
        start, cpu_start = time.perf_counter(), time.process_time()
        src = EmbedSource.model_validate(task.source)
        chunk = Chunk(**task.chunk)
        if src.modality == "text":
            rows, ledger = text_rows(chunk)
            table = self._embed_texts(rows)
        else:
            rows = [ManifestRow(**r) for r in
                    read_chunk(chunk, parent_of(chunk.file), media_exts(src.modality)).to_pylist()]
            table, ledger = self._embed_media(src, rows)
        result = ShardResult(src.name, task.index, task.output, ledger.seen, table.num_rows,
                             time.perf_counter() - start, time.process_time() - cpu_start, ledger.to_dict())
        stats = {"rows_in": result.rows_in, "rows_out": result.rows_out, "ledger": result.ledger}
        table = table.replace_schema_metadata({SHARD_META_KEY: json.dumps(stats).encode()})
        return table, result

    # -- media

    def _decoder(self, src: EmbedSource):
        from omnivl.data.decode import RowDecoder

        decoders = self.local.__dict__.setdefault("decoders", {})
        if src.name not in decoders:
            decoders[src.name] = RowDecoder([planning_source(src).model_copy(update={"modality": src.modality})],
                                            self.decode, src.modality, train=False)
        return decoders[src.name]

    def _decode(self, src: EmbedSource, rows: list[ManifestRow]):
        from omnivl.data.manifest import row_batches

        for r in rows:
            r.text = r.text or r.label or PLACEHOLDER_CAPTION
        return self._decoder(src)(next(row_batches(rows, len(rows))))

    def _embed_media(self, src: EmbedSource, rows: list[ManifestRow]) -> tuple[pa.Table, bad.BadInputLedger]:
        text_of = {r.row_key: r.text or r.label for r in rows}  # before decoding fills in placeholders
        uri_of = {r.row_key: r.where for r in rows}
        n = self.settings.batch_size
        batches = [rows[i:i + n] for i in range(0, len(rows), n)]
        ledger = bad.BadInputLedger()
        keys, visual, texts = [], [], []
        # decode_threads batches ahead of the model, in order
        futures = [self.pool.submit(self._decode, src, b) for b in batches[:self.settings.decode_threads]]
        for i in range(len(batches)):
            decoded, part = futures[i].result()
            nxt = i + self.settings.decode_threads
            if nxt < len(batches):
                futures.append(self.pool.submit(self._decode, src, batches[nxt]))
            ledger.merge(part)
            if not len(decoded["row_key"]):
                continue
            v, t = self._forward(decoded, src.modality)
            keys += [str(k) for k in decoded["row_key"]]
            visual.append(v)
            if t is not None:
                texts.append(t)
        cols = {"row_key": keys, "uri": [uri_of[k] for k in keys], "text": [text_of[k] for k in keys]}
        return shard_table(cols, visual, texts if self.settings.text_embedding else None), ledger

    def _forward(self, decoded: dict, modality: str) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        from omnivl.models.precision import autocast

        with torch.inference_mode(), autocast(self.device, self.settings.precision):
            pixels = torch.from_numpy(np.array(decoded["pixels"])).to(self.device)
            visual = self.model.encode_visual(pixels, modality).float().cpu().numpy()
            text = None
            if self.settings.text_embedding:
                ids = torch.as_tensor(np.asarray(decoded["input_ids"]), device=self.device)
                mask = torch.as_tensor(np.asarray(decoded["attention_mask"]), device=self.device)
                text = self.model.encode_text(ids, mask).float().cpu().numpy()
        return visual, text

    # -- text

    def _embed_texts(self, rows: list[tuple[str, str, str]]) -> pa.Table:
        import torch

        from omnivl.data.text import tokenize
        from omnivl.models.precision import autocast

        n = self.settings.batch_size
        parts = []
        for i in range(0, len(rows), n):
            ids, mask = tokenize(self.tokenizer, [t for _, _, t in rows[i:i + n]], self.decode.text_max_length)
            with torch.inference_mode(), autocast(self.device, self.settings.precision):
                parts.append(self.model.encode_text(torch.as_tensor(ids, device=self.device),
                                                    torch.as_tensor(mask, device=self.device)).float().cpu().numpy())
        cols = {"row_key": [k for k, _, _ in rows], "uri": [u for _, u, _ in rows], "text": [t for _, _, t in rows]}
        return shard_table(cols, parts, None)


def text_rows(chunk: Chunk) -> tuple[list[tuple[str, str, str]], bad.BadInputLedger]:
    """(row key, where, caption) of the rows of a text-only chunk that have a usable caption; the others are
    counted in the ledger (empty, not UTF-8, not a record)."""
    from omnivl.data.manifest import chunk_records, row_key
    from omnivl.data.text import clean_caption

    ledger, out = bad.BadInputLedger(), []
    for row_no, (rec, where, err) in enumerate(chunk_records(chunk), start=chunk.first_row):
        ledger.count_seen()
        try:
            if err or not isinstance(rec, dict):
                raise bad.BadInput(err or bad.MANIFEST_ROW_INVALID)
            text = rec.get("text")
            caption, _ = clean_caption(text if isinstance(text, str) else "", DecodeConfig().max_caption_chars)
        except bad.BadInput as exc:
            ledger.skip(exc.reason, where, chunk.source, exc.detail)
            continue
        out.append((row_key(chunk, row_no), where, caption))
    return out, ledger


def shard_table(cols: dict[str, list[str]], embeddings: list[np.ndarray], text_embeddings: list[np.ndarray] | None
                ) -> pa.Table:
    """The shard's Arrow table: string columns plus fixed-size float32 list columns."""
    arrays = {k: pa.array(v, pa.string()) for k, v in cols.items()}
    for name, parts in (("embedding", embeddings), ("text_embedding", text_embeddings)):
        if parts is None:
            continue
        mat = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)
        dim = mat.shape[1] if mat.ndim == 2 and mat.shape[1] else 1
        arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1), pa.float32()), dim)
    return pa.table(arrays)


def write_shard(table: pa.Table, uri: str) -> None:
    """The whole shard in one write (a reader never sees half of it)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())


def embeddings_matrix(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """float32 [N, E] of a fixed-size list column."""
    col = table.column(column).combine_chunks()
    dim = col.type.list_size
    return col.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def read_shards(output: str, source: str) -> list[str]:
    """URIs of the finished shards of one source of an embed output, in order."""
    folder = storage.join(output, source)
    return [storage.join(folder, n) for n in storage.list_dir(folder) if n.startswith("part-") and n.endswith(".parquet")]
