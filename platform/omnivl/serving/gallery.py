"""The /v1/search gallery: a manifest decoded with the evaluation transforms, embedded by the served model and
indexed with FAISS (exact inner product over L2-normalized embeddings = cosine similarity).

Rows that fail to decode are left out and counted; their manifest row numbers are kept so a hit names its row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from omnivl.data import badinput as bad

log = logging.getLogger(__name__)
EMBED_CHUNK = 32


@dataclass(frozen=True)
class GalleryItem:
    index: int  # position among the gallery's manifest rows
    uri: str
    text: str
    modality: str


class GalleryIndex:
    """Exact cosine search over a fixed set of items (`faiss.IndexFlatIP`)."""

    def __init__(self, items: list[GalleryItem], embeddings_NE: np.ndarray, skipped: dict | None = None) -> None:
        import faiss

        if len(items) != len(embeddings_NE):
            raise ValueError(f"{len(items)} items but {len(embeddings_NE)} embeddings")
        self.items = items
        self.skipped = dict(skipped or {})
        self.dim = int(embeddings_NE.shape[1])
        self.index = faiss.IndexFlatIP(self.dim)
        if len(items):
            self.index.add(np.ascontiguousarray(embeddings_NE, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.items)

    def search(self, query_E: np.ndarray, k: int) -> list[tuple[float, GalleryItem]]:
        """Up to `k` (score, item) pairs, best first."""
        k = min(k, len(self.items))
        if k == 0:
            return []
        scores, idx = self.index.search(np.ascontiguousarray(query_E, dtype=np.float32).reshape(1, -1), k)
        return [(float(s), self.items[i]) for s, i in zip(scores[0], idx[0]) if i >= 0]

    def summary(self) -> dict:
        return {"items": len(self.items), "dim": self.dim, "skipped": self.skipped}


def decode_gallery(manifest: str, modality: str, image_size: int, num_frames: int, max_items: int,
                   tokenizer: str, max_pixels: int) -> tuple[list[GalleryItem], np.ndarray, dict]:
    """(items, uint8 pixels [N,...], skipped counts by reason) for the first `max_items` manifest rows."""
    from omnivl.data.config import DecodeConfig, SourceConfig
    from omnivl.data.decode import RowDecoder
    from omnivl.data.inspect import guess_modality
    from omnivl.data.manifest import read_manifest

    probe = SourceConfig(name="gallery", manifest=manifest, modality="image")
    rows = read_manifest(probe)[:max_items]
    modality = guess_modality(rows) if modality == "auto" else modality
    kind = "label" if rows and not any(r.text for r in rows) and any(r.label for r in rows) else "text"
    source = probe.model_copy(update={"modality": modality, "kind": kind})
    decode = DecodeConfig(image_size=image_size, num_frames=num_frames, tokenizer=tokenizer,
                          max_image_pixels=max_pixels)
    decoder = RowDecoder([source], decode, modality, train=False)
    ledger = bad.BadInputLedger()
    items, pixels = [], []
    for position, row in enumerate(rows):
        r = vars(row)
        try:
            if row.row_error:
                raise bad.BadInput(row.row_error)
            sample = decoder.decode_row(r, decoder.rng_for(r), ledger, row.where)
        except bad.BadInput as exc:
            ledger.skip(exc.reason, row.where, row.source, exc.detail)
            continue
        items.append(GalleryItem(position, row.uri, row.text or row.label, modality))
        pixels.append(sample.pixels)
    stacked = np.stack(pixels) if pixels else np.zeros((0,), np.uint8)
    return items, stacked, dict(ledger.skipped)


def build_gallery(embed_visual, manifest: str, modality: str, image_size: int, num_frames: int, max_items: int,
                  tokenizer: str, max_pixels: int) -> GalleryIndex:
    """Decode and embed the gallery; `embed_visual(pixels, modality) -> float32 [N, E]` is the served model's."""
    items, pixels, skipped = decode_gallery(manifest, modality, image_size, num_frames, max_items, tokenizer,
                                            max_pixels)
    if not items:
        raise ValueError(f"gallery {manifest!r}: no row could be decoded (skipped: {skipped})")
    mod = items[0].modality
    embeddings = np.concatenate([embed_visual(pixels[i:i + EMBED_CHUNK], mod)
                                 for i in range(0, len(pixels), EMBED_CHUNK)])
    log.info("gallery %s: %d items indexed, skipped %s", manifest, len(items), skipped or "none")
    return GalleryIndex(items, embeddings, skipped)


def load_gallery_index(uri: str, lm):
    """The prebuilt index of an `index` job (`omnivl.embed.index.SearchIndex`) for `lm`'s queries. Raises
    ValueError if its vectors are not of the checkpoint's embedding size (another model made them)."""
    from omnivl.embed.index import SearchIndex

    index = SearchIndex(uri)
    if index.dim != int(lm.arch["embed_dim"]):
        raise ValueError(f"gallery_index: {uri} holds {index.dim}-dim embeddings but checkpoint {lm.model_id} "
                         f"embeds to {lm.arch['embed_dim']}: build the index from this checkpoint's embed job")
    return index


def load_with_gallery(cfg, model_id: str, device):
    """Checkpoint `model_id` of a serving config (`ServeAppConfig`) on `device`, with the gallery the config
    names: embedded at load from `gallery_manifest`, or a prebuilt index (`gallery_index`), or none."""
    from omnivl.serving import engine

    lm = engine.load_checkpoint(model_id, cfg.checkpoints[model_id], device, cfg.precision)
    if cfg.gallery_manifest:
        g = lm.geometry
        lm.gallery = build_gallery(
            lambda px, mod: engine.run_visual(lm, [engine.VisualCall(px, mod)])[0],
            cfg.gallery_manifest, cfg.gallery_modality, g.image_size, g.num_frames, cfg.gallery_max_items,
            cfg.tokenizer, cfg.limits.max_image_pixels)
    elif cfg.gallery_index:
        lm.gallery = load_gallery_index(cfg.gallery_index, lm)
    return lm
