"""`omnivl data inspect`: row counts, a contact sheet of decoded samples, and the bad-file report of a source.

Runs the same `RowDecoder` as the pipeline, in this process (no Ray), in evaluation mode, so what the sheet
shows is what training gets before augmentation.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from omnivl.data.badinput import BadInputLedger
from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.data.decode import RowDecoder
from omnivl.data.manifest import IMAGE_EXTS, read_manifest, row_batches

CAPTION_H = 14
BATCH = 16


def guess_modality(manifest_rows) -> str:
    """'video' if the first row with a file extension has a video one, else 'image'."""
    for row in manifest_rows:
        ext = os.path.splitext(row.uri.split("#")[0])[1].lstrip(".").lower()
        if ext:
            return "image" if ext in IMAGE_EXTS else "video"
    return "image"


def decode_source(source: SourceConfig, decode: DecodeConfig, limit: int | None = None):
    """(rows in the manifest, decoded batch of its first `limit` rows (all without), ledger) for a source,
    decoded in eval mode. Rows beyond `limit` are counted from the plan, not read."""
    from omnivl.data.manifest_index import plan_source

    total = sum(c.num_rows for c in plan_source(source))
    chosen = read_manifest(source, limit)
    decoder = RowDecoder([source], decode, source.modality, train=False)
    ledger, parts = BadInputLedger(), []
    for cols in row_batches(chosen, BATCH):
        out, delta = decoder(cols)
        ledger.merge(delta)
        parts.append(out)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return total, merged, ledger


def contact_sheet(pixels: np.ndarray, captions: list[str], max_rows: int = 8) -> Image.Image:
    """One line per sample: its frames (or image) side by side, the caption underneath."""
    n = min(len(pixels), max_rows)
    frames = pixels[:n] if pixels.ndim == 5 else pixels[:n, None]  # -> [N, T, 3, S, S]
    t, s = frames.shape[1], frames.shape[-1]
    width = max(t * s, 320)
    sheet = Image.new("RGB", (width, n * (s + CAPTION_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        y = i * (s + CAPTION_H)
        for j in range(t):
            sheet.paste(Image.fromarray(frames[i, j].transpose(1, 2, 0)), (j * s, y))
        draw.text((2, y + s + 1), captions[i][: width // 6], fill="black")
    return sheet


def inspect(source: SourceConfig, decode: DecodeConfig, png: str, samples: int = 8, limit: int | None = None) -> dict:
    """Decode (up to `limit` rows of) `source`, write a contact sheet of `samples` rows to `png`, return the
    summary: rows, decoded, bad-input report."""
    total, out, ledger = decode_source(source, decode, limit)
    if out and len(out["pixels"]):
        os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
        contact_sheet(out["pixels"], list(out["text"]), samples).save(png)
    else:
        png = None
    return {"source": source.name, "manifest": source.manifest, "modality": source.modality, "kind": source.kind,
            "rows": total, "checked": ledger.seen, "decoded": int(len(out.get("label_id", []))),
            "contact_sheet": png, "bad_inputs": ledger.summary()}
