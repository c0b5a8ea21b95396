"""Request media -> bytes -> the uint8 tensors the model takes, with the server's limits.

Decoding reuses the data plane's evaluation transforms (`decode_image` + `eval_image`, `decode_clip` +
`eval_clip`), so a served embedding equals the one evaluation computes for the same file. Every failure is a
`ServeError` (4xx); nothing here touches the model.
"""

from __future__ import annotations

import base64
import binascii
import os
import posixpath
from dataclasses import dataclass
from typing import NamedTuple, Sequence, TypeVar

import numpy as np

from omnivl.data import badinput as bad
from omnivl.serving.errors import ServeError
from omnivl.serving.schemas import Media

T = TypeVar("T")


@dataclass(frozen=True)
class Geometry:
    """What a checkpoint's visual encoder takes: images [3,S,S], videos [T,3,S,S]."""

    image_size: int
    num_frames: int


@dataclass
class DecodedMedia:
    modality: str
    pixels: np.ndarray  # uint8 [3,S,S] or [T,3,S,S]


def sniff_modality(data: bytes) -> str | None:
    """'image' / 'video' from the file's magic bytes, None if it matches no format we decode."""
    if data[4:8] == b"ftyp" or data[:4] == b"\x1aE\xdf\xa3" or (data[:4] == b"RIFF" and data[8:12] == b"AVI "):
        return "video"
    if (data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n" or data[:4] in (b"GIF8", b"II*\x00", b"MM\x00*")
            or data[:2] == b"BM" or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")):
        return "image"
    return None


def check_uri(uri: str, allowed_prefixes: list[str]) -> str:
    """The URI if it lies under an allowed prefix (after normalizing `..`), else ServeError(uri_not_allowed)."""
    if not allowed_prefixes:
        raise ServeError("uri_not_allowed", "this server reads no URIs (limits.allowed_uri_prefixes is empty)", "uri")
    if uri.startswith("s3://"):
        normal = "s3://" + posixpath.normpath(uri[5:])
    elif "://" in uri:
        raise ServeError("uri_not_allowed", f"only local paths and s3:// URIs are read, got {uri[:80]!r}", "uri")
    else:
        normal = os.path.normpath(os.path.abspath(uri))
    if ".." in uri.split("/") or not any(normal.startswith(_normal_prefix(p)) for p in allowed_prefixes):
        raise ServeError("uri_not_allowed", f"{uri[:200]!r} is not under an allowed prefix", "uri")
    return normal


def _normal_prefix(prefix: str) -> str:
    """Local prefixes compare as absolute paths (a relative one is taken from the server's working directory)."""
    if prefix.startswith("s3://"):
        return prefix
    tail = "/" if prefix.endswith("/") else ""
    return os.path.abspath(prefix) + tail


def media_bytes(media: Media, uploads: dict[str, bytes], allowed_prefixes: list[str], max_bytes: int,
                where: str) -> bytes:
    """The file bytes `media` refers to. Raises ServeError for bad base64, unknown uploads, refused or unreadable
    URIs and oversized files."""
    if media.data_b64 is not None:
        try:
            data = base64.b64decode(media.data_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ServeError("undecodable_media", "data_b64 is not valid base64", f"{where}.data_b64") from None
    elif media.upload is not None:
        if media.upload not in uploads:
            raise ServeError("missing_media", f"no uploaded file part named {media.upload!r} "
                             f"(parts: {sorted(uploads) or 'none'})", f"{where}.upload")
        data = uploads[media.upload]
    else:
        data = _read_uri(check_uri(media.uri, allowed_prefixes), max_bytes, where)
    if not data:
        raise ServeError("undecodable_media", "the media is empty (0 bytes)", where)
    if len(data) > max_bytes:
        raise ServeError("payload_too_large", f"media of {len(data)} bytes > limit {max_bytes}", where)
    return data


def _read_uri(uri: str, max_bytes: int, where: str) -> bytes:
    from omnivl import storage

    try:
        return storage.read_bytes(uri)
    except (OSError, ValueError) as exc:
        raise ServeError("media_unreadable", f"cannot read {uri[:200]!r}: {type(exc).__name__}", f"{where}.uri") from None


def decode_media(data: bytes, modality: str | None, geometry: Geometry, max_pixels: int, where: str) -> DecodedMedia:
    """Bytes -> model-ready uint8 pixels (evaluation transforms). Raises ServeError(undecodable_media)."""
    from omnivl.data import image as img_ops
    from omnivl.data import video as vid_ops

    modality = modality or sniff_modality(data) or "image"
    try:
        if modality == "video":
            frames, _ = vid_ops.decode_clip(data, geometry.num_frames, geometry.image_size, train=False,
                                            max_pixels=max_pixels)
            return DecodedMedia("video", vid_ops.eval_clip(frames, geometry.image_size))
        rgb, _ = img_ops.decode_image(data, max_pixels, draft_size=geometry.image_size)
        return DecodedMedia("image", img_ops.eval_image(rgb, geometry.image_size))
    except bad.BadInput as exc:
        raise ServeError("undecodable_media", f"{modality} could not be decoded ({exc.reason}"
                         f"{': ' + exc.detail if exc.detail else ''})", where) from None


class ModalityGroup(NamedTuple):
    positions: list[int]  # indices of the group's items in the list that was stacked
    pixels: np.ndarray  # uint8 [n, 3,S,S] or [n, T,3,S,S]: those items' pixels, in that order


def stack_by_modality(items: list[DecodedMedia]) -> dict[str, ModalityGroup]:
    """{modality: its items' positions and stacked pixels}: one model call per modality."""
    out: dict[str, tuple[list[int], list[np.ndarray]]] = {}
    for i, m in enumerate(items):
        pos, px = out.setdefault(m.modality, ([], []))
        pos.append(i)
        px.append(m.pixels)
    return {k: ModalityGroup(pos, np.stack(px)) for k, (pos, px) in out.items()}


def in_item_order(groups: dict[str, ModalityGroup], results: Sequence[Sequence[T]]) -> list[T]:
    """The per-group results of a model call (`results[g]`: one row per item of the g-th group of `groups`, in
    its order) as one list in the order of the items that were stacked. Raises ValueError if a group's row
    count differs from its item count."""
    out: list = [None] * sum(len(g.positions) for g in groups.values())
    for group, rows in zip(groups.values(), results, strict=True):
        if len(rows) != len(group.positions):
            raise ValueError(f"{len(rows)} results for a group of {len(group.positions)} items")
        for pos, row in zip(group.positions, rows):
            out[pos] = row
    return out
