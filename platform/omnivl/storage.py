"""One filesystem layer for local paths and `s3://` URIs (pyarrow.fs).

S3 settings come from the standard AWS environment/config: region and credentials the way the AWS SDK finds
them, and the endpoint from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (how MinIO, moto or any S3-compatible
store is reached).
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def absolute(uri: str) -> str:
    """`uri` made independent of the current directory (Ray workers do not share the driver's cwd)."""
    return uri if is_s3(uri) else os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    """Join path parts the same way for local paths and URIs."""
    if is_s3(base):
        return "s3://" + posixpath.join(base[len("s3://"):], *parts)
    return os.path.join(base, *parts)


@functools.lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    # Never create buckets: a typo in an output URI must fail, not write into a new bucket nobody watches.
    kwargs = {"allow_bucket_creation": False, "allow_bucket_deletion": False}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs["scheme"] = "https" if endpoint.startswith("https") else "http"
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or an s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return _s3(endpoint, region), uri[len("s3://"):]
    return pafs.LocalFileSystem(), os.path.abspath(uri)


class MissingBucketError(FileNotFoundError):
    """An s3:// URI names a bucket that does not exist (or that these credentials cannot see)."""


_KNOWN_BUCKETS: set[tuple[str, str]] = set()


def require_bucket(uri: str) -> None:
    """Raise MissingBucketError naming `uri` if it is on S3 and its bucket does not exist. Checked once per
    bucket per process, before the first write; local paths pass."""
    if not is_s3(uri):
        return
    bucket = uri[len("s3://"):].split("/", 1)[0]
    fs, _ = filesystem(uri)
    key = (str(id(fs)), bucket)
    if key in _KNOWN_BUCKETS:
        return
    if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        raise MissingBucketError(f"{uri}: S3 bucket {bucket!r} does not exist (omnivl never creates buckets; "
                                 "check the URI for a typo, or create the bucket first)")
    _KNOWN_BUCKETS.add(key)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(uri: str) -> bytes:
    """Whole file; raises FileNotFoundError naming the URI."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {uri}") from None
    except OSError as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            raise FileNotFoundError(f"no such file: {uri}") from None
        raise


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file. Local writes go to a temp file then rename, so readers never see half a file;
    an S3 PUT is atomic per object already."""
    fs, path = filesystem(uri)
    if is_s3(uri):
        require_bucket(uri)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def list_dir(uri: str) -> list[str]:
    """Names (not paths) directly under a directory; [] if it does not exist."""
    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(i.path) for i in infos)


def delete_dir(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local directory tree to `uri` (local or s3)."""
    require_bucket(uri)
    dst_fs, dst = filesystem(uri)
    pafs.copy_files(str(local_dir), dst, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=dst_fs)


def download_dir(uri: str, local_dir: str | Path) -> Path:
    src_fs, src = filesystem(uri)
    os.makedirs(local_dir, exist_ok=True)
    pafs.copy_files(src, str(local_dir), source_filesystem=src_fs, destination_filesystem=pafs.LocalFileSystem())
    return Path(local_dir)


@contextlib.contextmanager
def staged_output(uri: str) -> Iterator[Path]:
    """A local directory to write `uri`'s contents into. Local: a sibling temp dir renamed into place on success.
    S3: a temp dir uploaded on success. On error nothing is published."""
    if is_s3(uri):
        require_bucket(uri)  # before the caller does the work, not after
        with tempfile.TemporaryDirectory(prefix="omnivl-stage-") as tmp:
            yield Path(tmp)
            upload_dir(tmp, uri)
        return
    final = Path(uri).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path holding `uri` (a file or a directory): the path itself when local, a temp download for s3."""
    if not is_s3(uri):
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="omnivl-get-") as tmp:
        if is_dir(uri):
            yield download_dir(uri, Path(tmp) / "d")
        else:
            target = Path(tmp) / posixpath.basename(uri)
            target.write_bytes(read_bytes(uri))
            yield target
