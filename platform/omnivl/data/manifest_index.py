"""Planning a manifest into chunks without reading its rows on the planner.

What each format costs the planner (the driver, in a Ray job):
  Parquet      the footer of each file (row groups and their row counts): a few KiB per file.
  JSONL, CSV   a row index: the byte offset of every `INDEX_CHUNK_ROWS`-th row. Computed once by a scan of the
               file (through `mapper`, i.e. on a Ray worker in a job) and cached beside the file as
               `<file>.omnivl-index.json` (or under `OMNIVL_CACHE_DIR` where that is not writable); valid
               while the file's size and modification time are unchanged. When all the files to scan are
               small together (<= 16 MiB), they are scanned here instead, uncached.
  WebDataset   the shard list; per-shard sample counts from a `sizes.json` beside the shards (the WebDataset
               convention) or, like JSONL, scanned once and cached.
  JSON         a JSON array read whole: small manifests only (convert large ones to JSONL or Parquet).
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import fnmatch
import hashlib
import json
import os
import posixpath
import tarfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow.fs as pafs

from omnivl import storage
from omnivl.data.config import SourceConfig
from omnivl.data.manifest import Chunk, csv_header, detect_format, json_rows, split_member_key

INDEX_CHUNK_ROWS = 8192  # rows per JSONL/CSV chunk (Parquet chunks are the file's own row groups)
INLINE_INDEX_MAX_BYTES = 16 * 2**20  # files to scan that sum to at most this are scanned where planned, uncached
JSON_MAX_BYTES = 64 * 2**20  # a .json manifest is one document; above this, JSONL or Parquet is required
INDEX_SUFFIX = ".omnivl-index.json"
INDEX_VERSION = 1
SIZES_FILE = "sizes.json"  # WebDataset convention: {"shard-000000.tar": samples, ...} beside the shards
FOOTER_THREADS = 16  # Parquet footers are small reads, mostly latency on S3: read many at once
LOOKUP_THREADS = 16  # the same for file sizes and cached indexes
FORMAT_EXTS = {"jsonl": ".jsonl", "json": ".json", "csv": ".csv", "parquet": ".parquet", "webdataset": ".tar"}

Mapper = Callable[[Callable, list], list]


def map_here(fn: Callable, items: list) -> list:
    """The default mapper: in this process. A Ray job passes one that runs `fn` on workers."""
    return [fn(x) for x in items]


# --- listing ----------------------------------------------------------------------------------------------

def manifest_files(source: SourceConfig) -> tuple[str, list[str]]:
    """(format, file URIs) of a source's manifest: one file, a glob of files, or a directory of files of
    its format. Raises ValueError naming the manifest if nothing matches."""
    pattern = source.manifest
    fmt = detect_format(pattern, source.format)
    if any(c in pattern.rsplit("/", 1)[-1] for c in "*?["):
        base, glob = pattern.rsplit("/", 1)
        files = [storage.join(base, n) for n in storage.list_dir(base) if fnmatch.fnmatch(n, glob)]
    elif storage.is_dir(pattern):
        files = [storage.join(pattern, n) for n in storage.list_dir(pattern) if n.endswith(FORMAT_EXTS[fmt])]
    else:
        if not storage.exists(pattern):
            raise ValueError(f"source {source.name!r}: manifest {pattern} does not exist")
        files = [pattern]
    if not files:
        raise ValueError(f"source {source.name!r}: no {fmt} file matches {pattern}")
    return fmt, sorted(files)


# --- planning ---------------------------------------------------------------------------------------------

def plan_source(source: SourceConfig, mapper: Mapper = map_here) -> list[Chunk]:
    """Every chunk of a source's manifest, in manifest order."""
    fmt, files = manifest_files(source)
    if fmt == "parquet":
        return _parquet_chunks(source.name, files)
    if fmt == "json":
        return [_json_chunk(source.name, f) for f in files]
    if fmt == "webdataset":
        return _shard_chunks(source.name, files, mapper)
    return _text_chunks(source.name, fmt, files, mapper)


def plan_sources(sources: Iterable[SourceConfig], mapper: Mapper = map_here) -> list[Chunk]:
    return [c for s in sources for c in plan_source(s, mapper)]


def _name(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/"))


def _parquet_chunks(source: str, files: list[str]) -> list[Chunk]:
    with cf.ThreadPoolExecutor(min(FOOTER_THREADS, len(files))) as pool:
        footers = list(pool.map(_row_group_rows, files))
    return [Chunk(source, f, "parquet", _name(f), first, rows, row_group=g)
            for f, groups in zip(files, footers) for g, (first, rows) in enumerate(groups)]


def _row_group_rows(uri: str) -> list[tuple[int, int]]:
    """(first row, rows) of each row group of a Parquet file, from its footer."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    try:
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
    except (OSError, ValueError) as exc:
        raise ValueError(f"manifest {uri}: not a readable Parquet file ({exc})") from None
    out, first = [], 0
    for g in range(meta.num_row_groups):
        rows = meta.row_group(g).num_rows
        out.append((first, rows))
        first += rows
    return out


def _json_chunk(source: str, uri: str) -> Chunk:
    size = _file_info(uri).size
    if size > JSON_MAX_BYTES:
        raise ValueError(f"manifest {uri}: a .json manifest is read whole and this one has {size} bytes "
                         f"(> {JSON_MAX_BYTES}); write JSONL or Parquet instead")
    return Chunk(source, uri, "json", _name(uri), 0, len(json_rows(uri)))


def _text_chunks(source: str, fmt: str, files: list[str], mapper: Mapper) -> list[Chunk]:
    indexes = _indexes(files, fmt, mapper)
    chunks = []
    for uri, index in zip(files, indexes):
        starts = index["chunks"]
        for i, (first_row, byte_start, first_line) in enumerate(starts):
            end = starts[i + 1][1] if i + 1 < len(starts) else -1
            rows = (starts[i + 1][0] if i + 1 < len(starts) else index["rows"]) - first_row
            chunks.append(Chunk(source, uri, fmt, _name(uri), first_row, rows, byte_start=byte_start,
                                byte_end=end, first_line=first_line))
    return chunks


def _shard_chunks(source: str, files: list[str], mapper: Mapper) -> list[Chunk]:
    sizes = _sizes_json(files)
    unknown = [f for f in files if _name(f) not in sizes]
    for uri, index in zip(unknown, _indexes(unknown, "webdataset", mapper)):
        sizes[_name(uri)] = index["rows"]
    return [Chunk(source, f, "webdataset", _name(f), 0, int(sizes[_name(f)])) for f in files]


def _sizes_json(files: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for directory in sorted({f.rsplit("/", 1)[0] for f in files}):
        uri = storage.join(directory, SIZES_FILE)
        if storage.exists(uri):
            out.update({k: int(v) for k, v in json.loads(storage.read_text(uri)).items()})
    return out


# --- row indexes of JSONL/CSV files and tar shards ------------------------------------------------------------

def _indexes(files: list[str], fmt: str, mapper: Mapper) -> list[dict]:
    """The row index of each file: from its cache when fresh; else scanned and cached, through `mapper` (on
    workers, in parallel) unless all the files to scan together are small enough to scan here."""
    if not files:
        return []
    with cf.ThreadPoolExecutor(min(LOOKUP_THREADS, len(files))) as pool:  # S3 lookups are mostly latency
        infos = list(pool.map(_file_info, files))
        found = dict(zip(files, pool.map(_cached_index, files, infos)))
    todo = [f for f in files if found[f] is None]
    if sum(i.size for f, i in zip(files, infos) if found[f] is None) <= INLINE_INDEX_MAX_BYTES:
        found.update({f: index_file(f, fmt) for f in todo})  # small: cheaper than caching
    elif todo:
        for f, index in zip(todo, mapper(_IndexJob(fmt), todo)):
            found[f] = index
            _store_index(f, index)
    return [found[f] for f in files]


class _IndexJob:
    """`index_file` for one format, as a picklable callable for a mapper."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def __call__(self, uri: str) -> dict:
        return index_file(uri, self.fmt)


def index_file(uri: str, fmt: str) -> dict:
    """Scan one file: its row count and chunk starts [(first row, byte offset, line number), ...], plus the
    size and modification time it was made from."""
    info = _file_info(uri)
    scan = {"jsonl": _scan_jsonl, "csv": _scan_csv, "webdataset": _scan_shard}[fmt]
    rows, starts = scan(uri)
    return {"version": INDEX_VERSION, "size": info.size, "mtime": _mtime(info), "rows": rows, "chunks": starts}


def _lines(uri: str) -> Iterator[bytes]:
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path) as f:
        pending = b""
        while True:
            block = f.read(2**20)
            if not block:
                break
            *lines, pending = (pending + block).split(b"\n")
            for line in lines:
                yield line + b"\n"
        if pending:
            yield pending


def _scan_jsonl(uri: str) -> tuple[int, list]:
    rows, offset, starts = 0, 0, []
    for lineno, line in enumerate(_lines(uri), start=1):
        if line.strip():
            if rows % INDEX_CHUNK_ROWS == 0:
                starts.append([rows, offset, lineno])
            rows += 1
        offset += len(line)
    return rows, starts or [[0, 0, 1]]


def _scan_csv(uri: str) -> tuple[int, list]:
    """Records, not lines: a quoted field may hold newlines, so chunk starts are record boundaries."""
    _, header_len = csv_header(uri)
    position = {"bytes": 0, "lines": 0}

    def counted(lines):
        for line in lines:
            position["bytes"] += len(line)
            position["lines"] += 1
            yield line.decode("utf-8", errors="surrogateescape")

    lines = counted(_lines(uri))
    next(lines, None)  # the header
    reader = csv.reader(lines)
    rows, starts = 0, []
    record_start, record_line = header_len, 2
    for _ in reader:
        if rows % INDEX_CHUNK_ROWS == 0:
            starts.append([rows, record_start, record_line])
        rows += 1
        record_start, record_line = position["bytes"], position["lines"] + 1
    return rows, starts or [[0, header_len, 2]]


def _scan_shard(uri: str) -> tuple[int, list]:
    fs, path = storage.filesystem(uri)
    keys = set()
    with fs.open_input_file(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if member.isfile():
                keys.add(split_member_key(member.name)[0])
    return len(keys), [[0, 0, 1]]


def _file_info(uri: str) -> pafs.FileInfo:
    fs, path = storage.filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ValueError(f"manifest file {uri} does not exist")
    return info


def _mtime(info: pafs.FileInfo) -> float | None:
    return info.mtime.timestamp() if info.mtime is not None else None


def _local_cache(uri: str) -> Path:
    root = Path(os.environ.get("OMNIVL_CACHE_DIR") or Path.home() / ".cache" / "omnivl") / "manifest-index"
    return root / (hashlib.blake2b(uri.encode(), digest_size=12).hexdigest() + ".json")


def _cached_index(uri: str, info: pafs.FileInfo) -> dict | None:
    for text in (_try_read(uri + INDEX_SUFFIX), _try_read(str(_local_cache(uri)))):
        if text is None:
            continue
        try:
            index = json.loads(text)
        except ValueError:
            continue
        if index.get("version") == INDEX_VERSION and index.get("size") == info.size \
                and index.get("mtime") == _mtime(info):
            return index
    return None


def _try_read(uri: str) -> str | None:
    try:
        return storage.read_text(uri)
    except (OSError, ValueError):
        return None


def _store_index(uri: str, index: dict) -> str:
    """Cache an index beside its file, or in the local cache where the file's directory is read-only."""
    text = json.dumps(index)
    try:
        storage.write_text(uri + INDEX_SUFFIX, text)
        return uri + INDEX_SUFFIX
    except OSError:
        local = _local_cache(uri)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text)
        return str(local)
