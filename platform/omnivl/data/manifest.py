"""Manifests: JSONL, CSV, Parquet and WebDataset tar shards, local or s3://, turned into uniform rows.

A row is where the media bytes are (`uri`, and for a tar member its `offset`/`size`), its caption and/or
class name (or, for QA data, its `question` and `answer`), and `row_error`: a bad-input reason found while reading the manifest itself (a line that is
not JSON, a caption that is not UTF-8). Such rows are kept, not dropped, so the decode step counts them
with everything else in one ledger.

Rows are read on the driver: manifests are small next to the media they point at. The media bytes are
read later, by the decode workers (`read_media`), so they never travel through the object store.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
import posixpath
import tarfile
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from omnivl import storage
from omnivl.data import badinput as bad
from omnivl.data.config import SourceConfig

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
WHOLE_FILE = -1


@dataclass
class ManifestRow:
    source: str
    row_index: int
    uri: str
    offset: int = WHOLE_FILE
    size: int = WHOLE_FILE
    text: str = ""
    label: str = ""
    row_error: str = ""
    question: str = ""
    answer: str = ""

    @property
    def where(self) -> str:
        """How reports name this row's file (a tar member as `shard.tar#offset`)."""
        return self.uri if self.offset == WHOLE_FILE else f"{self.uri}#{self.offset}"


ROW_SCHEMA = pa.schema([
    ("source", pa.string()), ("row_index", pa.int64()), ("uri", pa.string()), ("offset", pa.int64()),
    ("size", pa.int64()), ("text", pa.string()), ("label", pa.string()), ("row_error", pa.string()),
    ("question", pa.string()), ("answer", pa.string()),
])


def detect_format(manifest: str, declared: str = "auto") -> str:
    """The manifest's format: the declared one, else from the extension. Raises ValueError if unknown."""
    if declared != "auto":
        return declared
    name = manifest.lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".parquet", "parquet"),
                        (".tar", "webdataset")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"cannot tell the format of manifest {manifest!r}; set format: jsonl|csv|parquet|webdataset")


def read_manifest(source: SourceConfig) -> list[ManifestRow]:
    """All rows of one source, in manifest order, `row_index` numbering them from 0."""
    fmt = detect_format(source.manifest, source.format)
    if fmt == "webdataset":
        rows = _read_webdataset(source)
    else:
        reader = {"jsonl": _jsonl_records, "csv": _csv_records, "parquet": _parquet_records}[fmt]
        base = _parent(source.manifest)
        rows = [_record_to_row(source.name, rec, base, where, err) for rec, where, err in reader(source.manifest)]
    for i, row in enumerate(rows):
        row.row_index = i
    return rows


def read_extra_field(source: SourceConfig, name: str) -> list[str]:
    """Per row (in `read_manifest` order) the value of a column the row schema does not carry, e.g. a QA
    row's `qtype`; "" where absent. WebDataset shards carry no extra columns: all "" there."""
    fmt = detect_format(source.manifest, source.format)
    if fmt == "webdataset":
        return [""] * len(read_manifest(source))
    reader = {"jsonl": _jsonl_records, "csv": _csv_records, "parquet": _parquet_records}[fmt]
    return [_field((rec or {}).get(name)) for rec, _, _ in reader(source.manifest)]


def rows_to_table(rows: list[ManifestRow]) -> pa.Table:
    return pa.Table.from_pylist([asdict(r) for r in rows], schema=ROW_SCHEMA)


def row_batches(rows: list[ManifestRow], batch_size: int):
    """Rows as the column batches `RowDecoder` takes (what Ray Data hands it), `batch_size` rows at a time."""
    table = rows_to_table(rows)
    for start in range(0, table.num_rows, batch_size):
        yield {k: np.asarray(v, dtype=object) for k, v in table.slice(start, batch_size).to_pydict().items()}


def _parent(uri: str) -> str:
    return ("s3://" + posixpath.dirname(uri[5:])) if storage.is_s3(uri) else storage.filesystem(uri)[1].rsplit("/", 1)[0]


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


def _record_to_row(source: str, rec: dict | None, base: str, where: str, err: str) -> ManifestRow:
    if rec is None or not isinstance(rec.get("path"), str) or not rec.get("path"):
        return ManifestRow(source, 0, where, row_error=err or bad.MANIFEST_ROW_INVALID)
    fields = {k: _field(rec.get(k)) for k in ("text", "label", "question", "answer")}
    if not all(_is_utf8(v) for v in fields.values()):
        err = err or bad.CAPTION_NOT_UTF8
        fields = {k: _scrub(v) for k, v in fields.items()}
    return ManifestRow(source, 0, resolve(base, rec["path"]), row_error=err, **fields)


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


def _jsonl_records(uri: str):
    # Lines are decoded with surrogateescape so one bad byte marks one row, not the whole file.
    for lineno, raw in enumerate(storage.read_bytes(uri).split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{uri}:{lineno}"
        try:
            rec = json.loads(raw.decode("utf-8", errors="surrogateescape"))
        except ValueError:
            yield None, where, bad.MANIFEST_ROW_INVALID
            continue
        yield (rec if isinstance(rec, dict) else None), where, ""


def _csv_records(uri: str):
    text = storage.read_bytes(uri).decode("utf-8", errors="surrogateescape")
    for lineno, rec in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
        yield rec, f"{uri}:{lineno}", ""


def _parquet_records(uri: str):
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    table = pq.read_table(path, filesystem=fs)
    for i, rec in enumerate(table.to_pylist()):
        yield rec, f"{uri}:row{i}", ""


# --- WebDataset -------------------------------------------------------------------------------------------

def shard_uris(pattern: str) -> list[str]:
    """The tar shards a WebDataset manifest names: one .tar, a glob of them, or a directory of them."""
    if any(c in pattern for c in "*?["):
        base, glob = pattern.rsplit("/", 1)
        return [storage.join(base, n) for n in storage.list_dir(base) if fnmatch.fnmatch(n, glob)]
    if storage.is_dir(pattern):
        return [storage.join(pattern, n) for n in storage.list_dir(pattern) if n.endswith(".tar")]
    return [pattern]


def _read_webdataset(source: SourceConfig) -> list[ManifestRow]:
    rows = []
    for uri in shard_uris(source.manifest):
        rows += _read_shard(source, uri)
    return rows


def _read_shard(source: SourceConfig, uri: str) -> list[ManifestRow]:
    """Rows of one shard: samples are members sharing a key (the name up to the first dot of the basename)."""
    media_exts = IMAGE_EXTS if source.modality == "image" else VIDEO_EXTS
    fs, path = storage.filesystem(uri)
    samples: dict[str, ManifestRow] = {}
    with fs.open_input_file(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _split_key(member.name)
            row = samples.setdefault(key, ManifestRow(source.name, 0, uri, row_error=bad.UNSUPPORTED_FORMAT))
            if ext in media_exts:
                row.offset, row.size, row.row_error = member.offset_data, member.size, ""
            elif ext in ("txt", "cls", "json"):
                _attach_text(row, ext, tar.extractfile(member).read())
    for key, row in samples.items():
        if row.offset == WHOLE_FILE:
            row.uri = f"{uri}#{key}"  # names the sample that has no media member
    return list(samples.values())


def _split_key(name: str) -> tuple[str, str]:
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem), ext.lower()


def _attach_text(row: ManifestRow, ext: str, data: bytes) -> None:
    value = data.decode("utf-8", errors="surrogateescape").strip()
    if ext == "json":
        try:
            rec = json.loads(value)
            row.question, row.answer = _field(rec.get("question")), _field(rec.get("answer"))
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


# --- Media bytes ------------------------------------------------------------------------------------------

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
    """The distinct class names of a label source's manifest (blank labels left out)."""
    from omnivl.data.text import class_name

    return {name for name in (class_name(r.label) for r in read_manifest(source)) if name}
