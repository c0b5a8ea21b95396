"""Dataset importers: a dataset's own annotation files -> a manifest Parquet file (`omnivl data import`).

Each format is one function that reads the annotation files and yields `Record`s (one manifest row each,
its media as a full URI). `import_dataset` keeps the rows of the requested split, checks that their media
exist, and writes them in row groups of `MANIFEST_ROW_GROUP_ROWS` rows (the unit the streaming reader
shards on). It streams: memory holds one row group, the parsed annotation file of the JSON formats, and
one name listing per media directory.

Manifest columns (`path` always; the others where the format fills them):
  path     media file: relative to the manifest's directory when manifest and media are both local (the
           corpus moves as one tree), else absolute or s3://
  text     caption             label     class name
  question, answer, qtype      question answering (qtype: a free question/answer type string)
  split    train / val / test, where the format states it
  start_s, end_s               clip window in seconds inside a longer video; null: the whole file

Media existence is checked from one listing per directory (`MediaIndex`), never a stat (or an S3 HEAD) per
row. Rows whose media are missing are reported (count and first examples) and kept by default, so decoding
counts them as `missing_file`; `drop_missing` leaves them out, still reporting them. Nothing is dropped
silently. Malformed input raises ValueError naming the file and the key, index or line at fault.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import posixpath
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from omnivl import storage
from omnivl.data.manifest import IMAGE_EXTS

MANIFEST_ROW_GROUP_ROWS = 8192
MANIFEST_NAME = "manifest.parquet"  # what the `import` job writes inside its output directory
MISSING_EXAMPLES = 10
NO_SPLIT = "unsplit"  # per-split count key of rows whose format states no split
VQA_IMAGE_PATTERN = "COCO_{subset}_{image_id:012d}.jpg"

# Split names as datasets spell them -> ours.
SPLIT_ALIASES = {
    # Karpathy: "restval" are the val2014 images outside his 5k val and 5k test images; every paper
    # following the split (BLIP, OmniVL) trains on them, so they count as train.
    "restval": "train",
    "validate": "val",  # MSR-VTT
    "validation": "val",
}

COLUMN_TYPES: dict[str, pa.DataType] = {
    "path": pa.string(), "text": pa.string(), "label": pa.string(), "question": pa.string(),
    "answer": pa.string(), "qtype": pa.string(), "split": pa.string(),
    "start_s": pa.float64(), "end_s": pa.float64(),
}


@dataclass(frozen=True, slots=True)
class Record:
    """One manifest row before it is written; `media` is the media file's full URI (absolute or s3://)."""

    media: str
    text: str | None = None
    label: str | None = None
    question: str | None = None
    answer: str | None = None
    qtype: str | None = None
    split: str | None = None
    start_s: float | None = None
    end_s: float | None = None


@dataclass(frozen=True)
class ImportOptions:
    """What an importer reads besides its source files. `media_root` is absolute or an s3:// URI."""

    media_root: str
    image_pattern: str = VQA_IMAGE_PATTERN
    subset: str | None = None

    def media(self, *parts: str) -> str:
        """The full URI of the media file at `parts` under the media root (normalized: no `.` or `..`)."""
        if storage.is_s3(self.media_root):
            return "s3://" + posixpath.normpath(posixpath.join(self.media_root[len("s3://"):], *parts))
        return os.path.normpath(os.path.join(self.media_root, *parts))


class MediaIndex:
    """Which media files exist, from one listing per directory: millions of rows cost one listing per media
    directory, never a stat or an S3 request per row."""

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str]] = {}

    @property
    def directories_listed(self) -> int:
        return len(self._names)

    def exists(self, uri: str) -> bool:
        parent, name = _split_uri(uri)
        if parent not in self._names:
            self._names[parent] = _list_names(parent)
        return name in self._names[parent]


def _split_uri(uri: str) -> tuple[str, str]:
    if storage.is_s3(uri):
        parent, name = posixpath.split(uri[len("s3://"):])
        return "s3://" + parent, name
    return os.path.split(uri)


def _list_names(directory: str) -> frozenset[str]:
    """Names of the files directly in `directory`; empty if it does not exist."""
    if storage.is_s3(directory):
        return frozenset(storage.list_dir(directory))
    try:
        with os.scandir(directory) as entries:
            return frozenset(e.name for e in entries if e.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()


# --- reading annotation files -----------------------------------------------------------------------------

def _load_json(src: str) -> dict:
    """The top-level JSON object of `src`. Raises ValueError naming the file when it is missing, not
    UTF-8, not JSON, or not an object."""
    try:
        text = storage.read_text(src)
    except FileNotFoundError:
        raise ValueError(f"{src}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{src}: not UTF-8 text (byte {exc.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{src}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{src}: expected a JSON object at the top level, got a {type(doc).__name__}")
    return doc


def _key(obj, key: str, src: str, where: str):
    """`obj[key]`; ValueError naming the file and `where` (e.g. `annotations[3]`) when it is absent."""
    if not isinstance(obj, dict):
        raise ValueError(f"{src}: {where}: expected an object, got {type(obj).__name__}")
    if obj.get(key) is None:
        raise ValueError(f"{src}: {where}: missing required key {key!r}")
    return obj[key]


def _list(obj, key: str, src: str, where: str = "top level") -> list:
    value = _key(obj, key, src, where)
    if not isinstance(value, list):
        raise ValueError(f"{src}: {where}: {key!r} must be a list, got {type(value).__name__}")
    return value


def _text(value) -> str:
    return str(value).strip()


def split_name(value: str) -> str:
    """A dataset's split name in ours (train / val / test; unknown names pass through lower-cased)."""
    name = str(value).strip().lower()
    return SPLIT_ALIASES.get(name, name)


@contextlib.contextmanager
def _open_text(src: str) -> Iterator[io.TextIOBase]:
    fs, path = storage.filesystem(src)
    try:
        stream = fs.open_input_stream(path)
    except FileNotFoundError:
        raise ValueError(f"{src}: no such file") from None
    with stream, io.TextIOWrapper(stream, encoding="utf-8-sig", newline="") as f:
        yield f


def _csv_rows(src: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file with a header line, streamed. Raises ValueError naming the file and
    line for a missing required column, a row that is not CSV, or text that is not UTF-8."""
    with _open_text(src) as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames or []
            absent = [c for c in required if c not in header]
            if absent:
                raise ValueError(f"{src}: line 1: header lacks column(s) {', '.join(absent)} "
                                 f"(has: {', '.join(header) or 'nothing'})")
            for row in reader:
                yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise ValueError(f"{src}: near line {reader.line_num + 1}: not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise ValueError(f"{src}: line {reader.line_num}: not CSV ({exc})") from None


def _cell(row: dict[str, str], column: str, src: str, line: int) -> str:
    value = (row.get(column) or "").strip()
    if not value:
        raise ValueError(f"{src}: line {line}: column {column!r} is empty")
    return value


def _seconds(row: dict[str, str], column: str, src: str, line: int) -> float:
    value = _cell(row, column, src, line)
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"{src}: line {line}: column {column!r} must be seconds >= 0, got {value!r}")
    return seconds


# --- the formats ------------------------------------------------------------------------------------------

def read_coco(sources: Sequence[str], opts: ImportOptions, media: MediaIndex) -> Iterator[Record]:
    """COCO captions (`captions_train2014.json`): one row per caption (about 5 per image);
    media `<media_root>/<images[].file_name>`."""
    for src in sources:
        doc = _load_json(src)
        files = {}
        for i, image in enumerate(_list(doc, "images", src)):
            files[_key(image, "id", src, f"images[{i}]")] = _key(image, "file_name", src, f"images[{i}]")
        for i, ann in enumerate(_list(doc, "annotations", src)):
            where = f"annotations[{i}]"
            image_id = _key(ann, "image_id", src, where)
            if image_id not in files:
                raise ValueError(f"{src}: {where}.image_id: {image_id!r} is the id of no entry of 'images'")
            yield Record(opts.media(files[image_id]), text=_text(_key(ann, "caption", src, where)))


def read_karpathy(sources: Sequence[str], opts: ImportOptions, media: MediaIndex) -> Iterator[Record]:
    """Karpathy split (`dataset_coco.json`, `dataset_flickr30k.json`): one row per sentence, with its
    image's split; media `<media_root>/[<filepath>/]<filename>` (COCO's have a filepath, Flickr30k's not)."""
    for src in sources:
        for i, image in enumerate(_list(_load_json(src), "images", src)):
            where = f"images[{i}]"
            filename = _key(image, "filename", src, where)
            path = opts.media(str(image.get("filepath") or ""), filename)
            split = split_name(_key(image, "split", src, where))
            for j, sentence in enumerate(_list(image, "sentences", src, where)):
                yield Record(path, text=_text(_key(sentence, "raw", src, f"{where}.sentences[{j}]")), split=split)


def read_msrvtt(sources: Sequence[str], opts: ImportOptions, media: MediaIndex) -> Iterator[Record]:
    """MSR-VTT `videodatainfo.json`: one row per sentence; media `<media_root>/<video_id>.mp4`. The videos'
    `start time`/`end time` place each clip in its YouTube source; the published mp4s are those clips
    already, so rows get no window."""
    for src in sources:
        doc = _load_json(src)
        splits = {}
        for i, video in enumerate(_list(doc, "videos", src)):
            splits[_key(video, "video_id", src, f"videos[{i}]")] = split_name(_key(video, "split", src, f"videos[{i}]"))
        for i, sentence in enumerate(_list(doc, "sentences", src)):
            where = f"sentences[{i}]"
            video_id = _key(sentence, "video_id", src, where)
            if video_id not in splits:
                raise ValueError(f"{src}: {where}.video_id: {video_id!r} is the video_id of no entry of 'videos'")
            yield Record(opts.media(f"{video_id}.mp4"), text=_text(_key(sentence, "caption", src, where)),
                         split=splits[video_id])


def read_webvid(sources: Sequence[str], opts: ImportOptions, media: MediaIndex) -> Iterator[Record]:
    """WebVid CSV (`videoid,contentUrl,duration,page_dir,name`): caption `name`; media
    `<media_root>/<page_dir>/<videoid>.mp4` where that exists, else `<media_root>/<videoid>.mp4`
    (the two layouts video2dataset-style downloaders leave)."""
    for src in sources:
        for line, row in _csv_rows(src, ("videoid", "page_dir", "name")):
            name = f"{_cell(row, 'videoid', src, line)}.mp4"
            nested = opts.media((row.get("page_dir") or "").strip(), name)
            yield Record(nested if media.exists(nested) else opts.media(name), text=_text(row.get("name") or ""))


def read_kinetics(sources: Sequence[str], opts: ImportOptions, media: MediaIndex) -> Iterator[Record]:
    """Kinetics CSV (`label,youtube_id,time_start,time_end,split`; `split` optional): label rows. Media: the
    trimmed clip `<youtube_id>_<time_start:06d>_<time_end:06d>.mp4` (the official crawler's name) where it
    exists, else the full video `<youtube_id>.mp4` with the window start_s/end_s = time_start/time_end."""
    for src in sources:
        for line, row in _csv_rows(src, ("label", "youtube_id", "time_start", "time_end")):
            youtube_id = _cell(row, "youtube_id", src, line)
            start, end = _seconds(row, "time_start", src, line), _seconds(row, "time_end", src, line)
            if end <= start:
                raise ValueError(f"{src}: line {line}: time_end {end:g} is not after time_start {start:g}")
            label = _cell(row, "label", src, line)
            split = split_name(row["split"]) if (row.get("split") or "").strip() else None
            trimmed = opts.media(f"{youtube_id}_{int(start):06d}_{int(end):06d}.mp4")
            if media.exists(trimmed):
                yield Record(trimmed, label=label, split=split)
            else:
                yield Record(opts.media(f"{youtube_id}.mp4"), label=label, split=split, start_s=start, end_s=end)


def read_imagefolder(sources: Sequence[str], opts: ImportOptions, media: MediaIndex) -> Iterator[Record]:
    """An image tree `<root>/<class>/.../<image>` (torchvision's ImageFolder): label rows, label = the class
    folder's name. Each SRC is a root. Files that are not images (by extension) and files directly under
    the root are not rows."""
    for root in sources:
        found = False
        for rel in _walk_files(root):
            parts = rel.split("/")
            if len(parts) < 2 or posixpath.splitext(rel)[1].lstrip(".").lower() not in IMAGE_EXTS:
                continue
            found = True
            yield Record(storage.join(root, *parts), label=parts[0])
        if not found:
            raise ValueError(f"{root}: no images in class folders (expected <root>/<class>/<image>)")


def _walk_files(root: str) -> Iterator[str]:
    """Paths (with `/`) of the files under `root`, relative to it, in sorted order."""
    if storage.is_s3(root):
        fs, base = storage.filesystem(root)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        yield from sorted(posixpath.relpath(i.path, base) for i in infos if i.type == pafs.FileType.File)
        return
    if not os.path.isdir(root):
        raise ValueError(f"{root}: not a directory (imagefolder reads a tree <root>/<class>/<image>)")
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs.sort()
        rel_dir = os.path.relpath(directory, root)
        for name in sorted(files):
            yield name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"


def read_vqa(sources: Sequence[str], opts: ImportOptions, media: MediaIndex) -> Iterator[Record]:
    """VQA (v2 layout): a questions JSON and an annotations JSON, in any order, joined on question_id;
    answer = multiple_choice_answer, qtype = answer_type. Media `<media_root>/<image_pattern>` formatted
    with `image_id` and `subset` (the questions file's `data_subtype`, else the `subset` option)."""
    (q_src, questions), (a_src, annotations) = _vqa_files(sources)
    subset = questions.get("data_subtype") or opts.subset
    _check_pattern(opts.image_pattern, subset, q_src)
    answers = {}
    for i, ann in enumerate(_list(annotations, "annotations", a_src)):
        where = f"annotations[{i}]"
        answer_type = ann.get("answer_type") if isinstance(ann, dict) else None
        answers[_key(ann, "question_id", a_src, where)] = (_key(ann, "multiple_choice_answer", a_src, where),
                                                          answer_type)
    for i, q in enumerate(_list(questions, "questions", q_src)):
        where = f"questions[{i}]"
        question_id, image_id = _key(q, "question_id", q_src, where), _key(q, "image_id", q_src, where)
        if question_id not in answers:
            raise ValueError(f"{q_src}: {where}.question_id: {question_id!r} has no entry in {a_src}")
        if not isinstance(image_id, int):
            raise ValueError(f"{q_src}: {where}.image_id: expected an integer, got {image_id!r}")
        answer, answer_type = answers[question_id]
        yield Record(opts.media(opts.image_pattern.format(subset=subset, image_id=image_id)),
                     question=_text(_key(q, "question", q_src, where)), answer=_text(answer),
                     qtype=None if answer_type is None else _text(answer_type))


def _vqa_files(sources: Sequence[str]) -> tuple[tuple[str, dict], tuple[str, dict]]:
    """((questions file, doc), (annotations file, doc)), told apart by their top-level key."""
    docs = [(src, _load_json(src)) for src in sources]
    questions = [(s, d) for s, d in docs if "questions" in d]
    annotations = [(s, d) for s, d in docs if "annotations" in d and "questions" not in d]
    if len(sources) != 2 or len(questions) != 1 or len(annotations) != 1:
        raise ValueError(f"vqa needs one questions JSON (key 'questions') and one annotations JSON (key "
                         f"'annotations'); got {len(questions)} and {len(annotations)} among: {', '.join(sources)}")
    return questions[0], annotations[0]


def _check_pattern(pattern: str, subset: str | None, q_src: str) -> None:
    try:
        pattern.format(subset=subset, image_id=0)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"image pattern {pattern!r}: {exc!r}; it may use {{subset}} and {{image_id}} "
                         f"(an int: {{image_id:012d}})") from None
    if subset is None and "{subset" in pattern:
        raise ValueError(f"{q_src}: no 'data_subtype' key, and image pattern {pattern!r} needs {{subset}}: "
                         "pass the subset (e.g. train2014) as an option")


@dataclass(frozen=True)
class Importer:
    """One format: its reader, the manifest columns it fills besides `path`, the options it reads (of
    media_root, split, image_pattern, subset; any other given is an error), and what a source config
    reading its manifest declares."""

    read: Callable[[Sequence[str], ImportOptions, MediaIndex], Iterator[Record]]
    columns: tuple[str, ...]
    options: tuple[str, ...]
    modality: str
    kind: str


IMPORTERS: dict[str, Importer] = {
    "coco": Importer(read_coco, ("text",), ("media_root",), "image", "text"),
    "karpathy": Importer(read_karpathy, ("text", "split"), ("media_root", "split"), "image", "text"),
    "msrvtt": Importer(read_msrvtt, ("text", "split"), ("media_root", "split"), "video", "text"),
    "webvid": Importer(read_webvid, ("text",), ("media_root",), "video", "text"),
    "kinetics": Importer(read_kinetics, ("label", "split", "start_s", "end_s"), ("media_root", "split"),
                         "video", "label"),
    "imagefolder": Importer(read_imagefolder, ("label",), (), "image", "label"),
    "vqa": Importer(read_vqa, ("question", "answer", "qtype"), ("media_root", "image_pattern", "subset"),
                    "image", "qa"),
}


# --- writing the manifest ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImportSummary:
    """What an import wrote. `missing` counts rows whose media file was not found (written anyway unless
    `dropped`); `missing_examples` are the first of them as full URIs. `modality`/`kind` are what a source
    config reading the manifest declares."""

    format: str
    manifest: str
    rows: int
    splits: dict[str, int]
    missing: int
    missing_examples: tuple[str, ...]
    dropped: int
    modality: str
    kind: str

    def to_dict(self) -> dict:
        return {**asdict(self), "missing_examples": list(self.missing_examples)}


@dataclass
class _Tally:
    rows: int = 0
    splits: Counter = field(default_factory=Counter)
    seen_splits: Counter = field(default_factory=Counter)  # before the split filter, for its error message
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)

    def note_missing(self, uri: str) -> None:
        self.missing += 1
        if len(self.missing_examples) < MISSING_EXAMPLES:
            self.missing_examples.append(uri)


def manifest_schema(columns: Sequence[str]) -> pa.Schema:
    return pa.schema([("path", COLUMN_TYPES["path"])] + [(c, COLUMN_TYPES[c]) for c in columns])


def import_dataset(fmt: str, sources: Sequence[str], out: str, *, media_root: str | None = None,
                   split: str | None = None, drop_missing: bool = False, image_pattern: str | None = None,
                   subset: str | None = None) -> ImportSummary:
    """Convert `sources` (annotation files of format `fmt`; imagefolder: root directories) into the manifest
    `out` (.parquet, local or s3://; its parent directories are created). `media_root` defaults to the
    first source's directory (imagefolder: the source itself). Only rows of `split` are kept when given.
    The manifest appears only once complete. Raises ValueError naming the file and field at fault for
    malformed input, an option the format does not read, or an import that would write no rows."""
    importer = _importer(fmt)
    if not sources:
        raise ValueError(f"{fmt}: no source files given")
    given = {"media_root": media_root, "split": split, "image_pattern": image_pattern, "subset": subset}
    for option, value in given.items():
        if value is not None and option not in importer.options:
            raise ValueError(f"{option}={value!r}: the {fmt} importer does not read it "
                             f"(it reads: {', '.join(importer.options) or 'no options'})")
    sources = [storage.absolute(s) for s in sources]
    opts = ImportOptions(storage.absolute(media_root or _default_media_root(sources[0])),
                         image_pattern or VQA_IMAGE_PATTERN, subset)
    media = MediaIndex()
    keep = None if split is None else split_name(split)
    with _staged_file(out) as local:
        tally = _write(importer.read(sources, opts, media), local, importer.columns, _path_writer(out), keep,
                       drop_missing, media)
        _check_not_empty(tally, keep, drop_missing, sources)
    return ImportSummary(fmt, out, tally.rows, dict(tally.splits), tally.missing, tuple(tally.missing_examples),
                         tally.missing if drop_missing else 0, importer.modality, importer.kind)


def _importer(fmt: str) -> Importer:
    if fmt not in IMPORTERS:
        raise ValueError(f"unknown import format {fmt!r}; known: {', '.join(sorted(IMPORTERS))}")
    return IMPORTERS[fmt]


def _default_media_root(source: str) -> str:
    if storage.is_dir(source):
        return source
    if storage.is_s3(source):
        return "s3://" + posixpath.dirname(source[len("s3://"):])
    return os.path.dirname(source)


def _path_writer(out: str) -> Callable[[str], str]:
    """How a media URI is written in the manifest `out`: relative to its directory when both are local."""
    if storage.is_s3(out):
        return lambda uri: uri
    out_dir = os.path.dirname(storage.absolute(out))
    return lambda uri: uri if storage.is_s3(uri) else os.path.relpath(uri, out_dir)


def _write(records: Iterator[Record], local_path: str, columns: tuple[str, ...], to_path: Callable[[str], str],
           keep: str | None, drop_missing: bool, media: MediaIndex) -> _Tally:
    schema = manifest_schema(columns)
    tally = _Tally()
    batch: dict[str, list] = {name: [] for name in schema.names}
    with pq.ParquetWriter(local_path, schema) as writer:
        for record in records:
            tally.seen_splits[record.split or NO_SPLIT] += 1
            if keep is not None and record.split != keep:
                continue
            if not media.exists(record.media):
                tally.note_missing(record.media)
                if drop_missing:
                    continue
            batch["path"].append(to_path(record.media))
            for name in columns:
                batch[name].append(getattr(record, name))
            tally.rows += 1
            tally.splits[record.split or NO_SPLIT] += 1
            if len(batch["path"]) == MANIFEST_ROW_GROUP_ROWS:
                _flush(writer, batch, schema)
        _flush(writer, batch, schema)
    return tally


def _flush(writer: pq.ParquetWriter, batch: dict[str, list], schema: pa.Schema) -> None:
    if batch["path"]:
        writer.write_table(pa.table(batch, schema=schema), row_group_size=MANIFEST_ROW_GROUP_ROWS)
    for values in batch.values():
        values.clear()


def _check_not_empty(tally: _Tally, keep: str | None, drop_missing: bool, sources: Sequence[str]) -> None:
    """An empty manifest is never what was meant: say which filter emptied it."""
    if tally.rows:
        return
    seen = sum(tally.seen_splits.values())
    if not seen:
        raise ValueError(f"{', '.join(sources)}: no rows to import")
    if keep is not None and keep not in tally.seen_splits:
        present = ", ".join(f"{s}={n}" for s, n in sorted(tally.seen_splits.items()))
        raise ValueError(f"split={keep!r}: no rows of that split in {', '.join(sources)} (present: {present})")
    if drop_missing:
        raise ValueError(f"every row's media file is missing ({tally.missing}; e.g. {tally.missing_examples[0]}): "
                         "check the media root")


@contextlib.contextmanager
def _staged_file(out: str) -> Iterator[str]:
    """A local path to write the file `out` at. It is published (renamed into place, or uploaded to S3) only
    when the block succeeds, so a failed import leaves no half-written manifest behind."""
    if storage.is_s3(out):
        storage.require_bucket(out)  # before the import does its work, not after
        with tempfile.TemporaryDirectory(prefix="omnivl-import-") as tmp:
            local = os.path.join(tmp, MANIFEST_NAME)
            yield local
            fs, path = storage.filesystem(out)
            pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        return
    final = storage.absolute(out)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final), prefix=".tmp-import-", suffix=".parquet")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run_job(job) -> dict:
    """Runner of the `import` job kind: write `<job.output>/manifest.parquet`; returns the summary as a dict
    (its `manifest` is the file's path)."""
    if not job.output:
        raise ValueError("import job needs an output directory")
    summary = import_dataset(job.format, job.sources, storage.join(job.output, MANIFEST_NAME),
                             media_root=job.media_root, split=job.split, drop_missing=job.drop_missing,
                             image_pattern=job.image_pattern, subset=job.subset)
    return summary.to_dict()
