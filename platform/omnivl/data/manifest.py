"""Manifests: JSONL, JSON, CSV, Parquet and WebDataset tar shards, local or s3://, read chunk by chunk into
uniform rows.

A manifest is planned into **chunks** (`manifest_index.plan_source`): a Parquet row group, a byte range of
a JSONL/CSV file holding ~`INDEX_CHUNK_ROWS` rows, or one tar shard. A chunk is the unit that is shuffled,
read by one Ray Data read task and named in errors; nothing ever needs all rows of a manifest in one place.
`read_chunk` turns one chunk into an Arrow table of `ROW_SCHEMA`.

A row says where the media bytes are (`uri`, and for a tar member its `offset`/`size`), its caption and/or
class name (or, for QA data, `question`, `answer`, `qtype`), an optional clip window (`start_s`, `end_s`),
its **row key** and `row_error`: a bad-input reason found while reading the manifest itself (a line that is
not JSON, a caption that is not UTF-8). Such rows are kept, not dropped, so the decode step counts them with
everything else in one ledger.

The row key (`<source>:<file name>:<row in file>`, for a tar member `<source>:<shard>:<sample key>`) is
assigned here, where the row is read, and travels through decoding into training and evaluation. Seeded
augmentation, caption-pair ids and evaluation's joins use it; nothing is joined back by position.

`read_manifest` reads every chunk in this process: for small manifests only (evaluation splits, `data
inspect`, a demo gallery). Training streams chunks through `omnivl.cluster.data_pipeline`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
import tarfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from omnivl import storage
from omnivl.data import badinput as bad
from omnivl.data.config import SourceConfig

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
WHOLE_FILE = -1
NO_TIME = math.nan  # start_s / end_s of a row without a clip window
TEXT_FIELDS = ("text", "label", "question", "answer", "qtype")
TIME_FIELDS = ("start_s", "end_s")
# Keys of a .json file that mark a dataset's own annotation format, not a manifest: which importer reads it.
ANNOTATION_KEYS = {"annotations": "coco or vqa", "images": "coco or karpathy", "videos": "msrvtt",
                   "questions": "vqa", "sentences": "msrvtt"}


@dataclass
class ManifestRow:
    source: str
    row_key: str
    uri: str
    offset: int = WHOLE_FILE
    size: int = WHOLE_FILE
    text: str = ""
    label: str = ""
    row_error: str = ""
    question: str = ""
    answer: str = ""
    qtype: str = ""
    start_s: float = NO_TIME
    end_s: float = NO_TIME

    @property
    def where(self) -> str:
        """How reports name this row's file (a tar member as `shard.tar#offset`)."""
        return self.uri if self.offset == WHOLE_FILE else f"{self.uri}#{self.offset}"


ROW_SCHEMA = pa.schema([
    ("source", pa.string()), ("row_key", pa.string()), ("uri", pa.string()), ("offset", pa.int64()),
    ("size", pa.int64()), ("text", pa.string()), ("label", pa.string()), ("row_error", pa.string()),
    ("question", pa.string()), ("answer", pa.string()), ("qtype", pa.string()),
    ("start_s", pa.float64()), ("end_s", pa.float64()),
])


@dataclass(frozen=True)
class Chunk:
    """A contiguous run of rows of one manifest file. `name` is the file's name in row keys; `first_row` the
    file's row number of the chunk's first row. Parquet chunks are row groups; JSONL/CSV chunks byte ranges
    [byte_start, byte_end) starting at line `first_line`; a WebDataset chunk is a whole shard."""

    source: str
    file: str
    fmt: str
    name: str
    first_row: int
    num_rows: int
    row_group: int = -1
    byte_start: int = 0
    byte_end: int = -1
    first_line: int = 1


def detect_format(manifest: str, declared: str = "auto") -> str:
    """The manifest's format: the declared one, else from the extension. Raises ValueError if unknown."""
    if declared != "auto":
        return declared
    name = manifest.lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".json", "json"), (".csv", "csv"), (".parquet", "parquet"),
                        (".tar", "webdataset")):
        if name.endswith(suffix):
            return fmt
    if storage.is_dir(manifest):
        raise ValueError(f"manifest {manifest!r} is a directory: set format: jsonl|csv|parquet|webdataset")
    raise ValueError(f"cannot tell the format of manifest {manifest!r}; "
                     "set format: jsonl|json|csv|parquet|webdataset")


# --- rows out of one chunk --------------------------------------------------------------------------------

def read_chunk(chunk: Chunk, base: str, media_exts: tuple[str, ...]) -> pa.Table:
    """The rows of one chunk as a `ROW_SCHEMA` table. `base` resolves relative media paths (the manifest
    file's directory); `media_exts` picks a WebDataset sample's media member."""
    if chunk.fmt == "webdataset":
        rows = _shard_rows(chunk, media_exts)
    else:
        rows = [_record_to_row(chunk, i, rec, base, where, err)
                for i, (rec, where, err) in enumerate(chunk_records(chunk), start=chunk.first_row)]
    return rows_to_table(rows)


def chunk_records(chunk: Chunk):
    """(record dict or None, where, bad-input reason or "") of each row of a JSONL/JSON/CSV/Parquet chunk, in
    order: the raw records, before a row needs a media path (text-only manifests are read this way)."""
    if chunk.fmt == "webdataset":
        raise ValueError(f"{chunk.file}: a WebDataset shard has no record rows")
    return {"jsonl": _jsonl_records, "json": _json_records, "csv": _csv_records,
            "parquet": _parquet_records}[chunk.fmt](chunk)


def rows_to_table(rows: list[ManifestRow]) -> pa.Table:
    columns = {f.name: [getattr(r, f.name) for r in rows] for f in ROW_SCHEMA}
    return pa.Table.from_pydict(columns, schema=ROW_SCHEMA)


def row_key(chunk: Chunk, row: int | str) -> str:
    return f"{chunk.source}:{chunk.name}:{row}"


def _record_to_row(chunk: Chunk, row_no: int, rec: dict | None, base: str, where: str, err: str) -> ManifestRow:
    key = row_key(chunk, row_no)
    if rec is None or not isinstance(rec.get("path"), str) or not rec.get("path"):
        return ManifestRow(chunk.source, key, where, row_error=err or bad.MANIFEST_ROW_INVALID)
    fields = {k: _field(rec.get(k)) for k in TEXT_FIELDS}
    if not all(_is_utf8(v) for v in fields.values()):
        err = err or bad.CAPTION_NOT_UTF8
        fields = {k: _scrub(v) for k, v in fields.items()}
    times = {k: _seconds(rec.get(k)) for k in TIME_FIELDS}
    if any(t is None for t in times.values()):
        err = err or bad.MANIFEST_ROW_INVALID
        times = {k: NO_TIME for k in TIME_FIELDS}
    return ManifestRow(chunk.source, key, resolve(base, rec["path"]), row_error=err, **fields, **times)


def _seconds(value) -> float | None:
    """A clip bound in seconds; NaN when absent; None when present but not a number >= 0."""
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return NO_TIME
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def _field(value) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN from CSV/Parquet
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    return str(value)


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _scrub(s: str) -> str:
    """A string Arrow can hold: undecodable bytes become U+FFFD (the row is skipped anyway)."""
    return s.encode("utf-8", errors="replace").decode("utf-8")


def read_range(uri: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file (end -1: to the end of the file)."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        length = (f.size() if end < 0 else end) - start
        return f.read_at(length, start) if length > 0 else b""


def _jsonl_records(chunk: Chunk):
    # Lines are decoded with surrogateescape so one bad byte marks one row, not the whole file.
    data = read_range(chunk.file, chunk.byte_start, chunk.byte_end)
    for lineno, raw in enumerate(data.split(b"\n"), start=chunk.first_line):
        if not raw.strip():
            continue
        where = f"{chunk.file}:{lineno}"
        try:
            rec = json.loads(raw.decode("utf-8", errors="surrogateescape"))
        except ValueError:
            yield None, where, bad.MANIFEST_ROW_INVALID
            continue
        yield (rec if isinstance(rec, dict) else None), where, ""


def _json_records(chunk: Chunk):
    """A .json manifest: a JSON array of row objects (or {"rows": [...]}), read whole (small files only)."""
    rows = json_rows(chunk.file)
    for i, rec in enumerate(rows):
        yield (rec if isinstance(rec, dict) else None), f"{chunk.file}[{i}]", ""


def json_rows(uri: str) -> list:
    """The row objects of a .json manifest. Raises ValueError naming the file if it is not one, and naming
    the importer to use if it is a dataset's own annotation file."""
    try:
        doc = json.loads(storage.read_bytes(uri))
    except ValueError as exc:
        raise ValueError(f"manifest {uri}: not valid JSON ({exc})") from None
    if isinstance(doc, dict) and isinstance(doc.get("rows"), list):
        return doc["rows"]
    if isinstance(doc, list):
        return doc
    hints = sorted({ANNOTATION_KEYS[k] for k in doc if k in ANNOTATION_KEYS}) if isinstance(doc, dict) else []
    hint = (f"; it looks like {' / '.join(hints)} annotations: convert it with "
            f"`omnivl data import FORMAT {uri} --out manifest.parquet`") if hints else ""
    raise ValueError(f"manifest {uri}: a .json manifest must be a list of rows or {{\"rows\": [...]}}{hint}")


def csv_header(uri: str) -> tuple[bytes, int]:
    """(the header line including its newline, its length in bytes) of a CSV file."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path) as f:
        line = b""
        while not line.endswith(b"\n"):
            piece = f.read(4096)
            if not piece:
                break
            line += piece
    header = line.split(b"\n", 1)[0] + b"\n"
    return header, len(header)


def _csv_records(chunk: Chunk):
    header, header_len = csv_header(chunk.file)
    start = max(chunk.byte_start, header_len)
    data = header + read_range(chunk.file, start, chunk.byte_end)
    text = data.decode("utf-8", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for rec in reader:
        yield rec, f"{chunk.file}:{chunk.first_line + reader.line_num - 2}", ""


def _parquet_records(chunk: Chunk):
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(chunk.file)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        wanted = [c for c in ("path", *TEXT_FIELDS, *TIME_FIELDS) if c in pf.schema_arrow.names]
        table = pf.read_row_group(chunk.row_group, columns=wanted)
    for i, rec in enumerate(table.to_pylist()):
        yield rec, f"{chunk.file}:row{chunk.first_row + i}", ""


# --- WebDataset -------------------------------------------------------------------------------------------

def _shard_rows(chunk: Chunk, media_exts: tuple[str, ...]) -> list[ManifestRow]:
    """Rows of one shard: samples are members sharing a key (the name up to the first dot of the basename)."""
    fs, path = storage.filesystem(chunk.file)
    samples: dict[str, ManifestRow] = {}
    with fs.open_input_file(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_member_key(member.name)
            row = samples.setdefault(key, ManifestRow(chunk.source, row_key(chunk, key), chunk.file,
                                                      row_error=bad.UNSUPPORTED_FORMAT))
            if ext in media_exts:
                row.offset, row.size, row.row_error = member.offset_data, member.size, ""
            elif ext in ("txt", "cls", "json"):
                _attach_text(row, ext, tar.extractfile(member).read())
    for key, row in samples.items():
        if row.offset == WHOLE_FILE:
            row.uri = f"{chunk.file}#{key}"  # names the sample that has no media member
    return list(samples.values())


def split_member_key(name: str) -> tuple[str, str]:
    """(sample key, extension) of a tar member: the key is the name up to the first dot of the basename."""
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem), ext.lower()


def _attach_text(row: ManifestRow, ext: str, data: bytes) -> None:
    value = data.decode("utf-8", errors="surrogateescape").strip()
    if ext == "json":
        try:
            rec = json.loads(value)
            row.question, row.answer = _field(rec.get("question")), _field(rec.get("answer"))
            row.qtype = _field(rec.get("qtype"))
            times = {k: _seconds(rec.get(k)) for k in TIME_FIELDS}
            if any(t is None for t in times.values()):
                raise ValueError("bad clip window")
            row.start_s, row.end_s = times["start_s"], times["end_s"]
            value = _field(rec.get("text") or rec.get("caption") or "")
            ext = "txt"
        except (ValueError, AttributeError):
            row.row_error = row.row_error or bad.MANIFEST_ROW_INVALID
            return
    if not _is_utf8(value):
        row.row_error = row.row_error or bad.CAPTION_NOT_UTF8
        value = _scrub(value)
    if ext == "txt":
        row.text = value
    else:
        row.label = value


# --- whole manifests, in this process (small ones) --------------------------------------------------------

def media_exts(modality: str) -> tuple[str, ...]:
    return IMAGE_EXTS if modality == "image" else VIDEO_EXTS


def read_manifest(source: SourceConfig, limit: int | None = None) -> list[ManifestRow]:
    """The rows of one source in manifest order (the first `limit` of them, reading only the chunks that
    hold them). Reads here, in this process: for small manifests or a sample of a large one."""
    from omnivl.data.manifest_index import plan_source

    rows: list[ManifestRow] = []
    for chunk in plan_source(source):
        if limit is not None and len(rows) >= limit:
            break
        table = read_chunk(chunk, parent_of(chunk.file), media_exts(source.modality))
        rows += [ManifestRow(**r) for r in table.to_pylist()]
    return rows[:limit] if limit is not None else rows


def row_batches(rows: list[ManifestRow], batch_size: int):
    """Rows as the column batches `RowDecoder` takes (what Ray Data hands it), `batch_size` rows at a time."""
    table = rows_to_table(rows)
    for start in range(0, table.num_rows, batch_size):
        yield table_batch(table.slice(start, batch_size))


def table_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """A `ROW_SCHEMA` table as numpy columns (strings as object arrays), the batch format of the decoder."""
    return {name: np.asarray(col.to_pylist(), dtype=object if pa.types.is_string(col.type) else None)
            for name, col in zip(table.column_names, table.columns)}


def parent_of(uri: str) -> str:
    """The directory of a manifest file (relative media paths resolve against it)."""
    return ("s3://" + posixpath.dirname(uri[5:])) if storage.is_s3(uri) else os.path.dirname(storage.absolute(uri))


def resolve(base: str, path: str) -> str:
    """A manifest's `path` value as a full URI: s3:// and absolute paths as they are, others under `base`
    with `..` resolved (S3 keys have no parent directories: `../image_text/x.jpg` must become a real key)."""
    if storage.is_s3(path) or path.startswith("/"):
        return path
    joined = storage.join(base, path)
    if ".." not in path.replace("\\", "/").split("/"):
        return joined
    if storage.is_s3(joined):
        return "s3://" + posixpath.normpath(joined[len("s3://"):])
    return os.path.normpath(joined)


# --- media bytes ------------------------------------------------------------------------------------------

def read_media(uri: str, offset: int = WHOLE_FILE, size: int = WHOLE_FILE) -> bytes:
    """The bytes of a media file or tar member. Raises BadInput(missing_file | empty_file | read_error)."""
    if "#" in uri and offset == WHOLE_FILE:
        raise bad.BadInput(bad.UNSUPPORTED_FORMAT, "sample has no media member")
    fs, path = storage.filesystem(uri)
    try:
        if offset == WHOLE_FILE:
            with fs.open_input_stream(path) as f:
                data = f.read()
        else:
            with fs.open_input_file(path) as f:
                data = f.read_at(size, offset)
    except FileNotFoundError:
        raise bad.BadInput(bad.MISSING_FILE) from None
    except OSError as exc:
        msg = str(exc).lower()
        if "not found" in msg or "does not exist" in msg or "no such file" in msg:
            raise bad.BadInput(bad.MISSING_FILE) from None
        raise bad.BadInput(bad.READ_ERROR, str(exc)[:200]) from None
    if not data:
        raise bad.BadInput(bad.EMPTY_FILE)
    return data


def class_names(source: SourceConfig) -> set[str]:
    """The distinct class names of a label source's manifest (blank labels left out). Reads one chunk at a
    time: memory grows with the number of classes, not of rows."""
    from omnivl.data.manifest_index import plan_source
    from omnivl.data.text import class_name

    names: set[str] = set()
    for chunk in plan_source(source):
        labels = read_chunk(chunk, parent_of(chunk.file), media_exts(source.modality)).column("label")
        names |= {n for n in (class_name(x) for x in labels.unique().to_pylist()) if n}
    return names
