"""The whole CPU stage for one batch of manifest rows: read media, decode, sample, transform, build the text,
tokenize. Plain Python on numpy batches; `omnivl.cluster.data_pipeline` runs it inside Ray Data actors.

Output batch (N = rows kept):
  pixels          uint8 [N, 3, S, S] (image) or [N, T, 3, S, S] (video), not normalized
  input_ids       int64 [N, L]  ([CLS]=101 first, padded with 0)
  attention_mask  int64 [N, L]
  label_id        int64 [N]     (stable hash of "label:<class>" for label data, of the row key for pairs
                                 and QA rows)
  prompt_len      int64 [N]     leading tokens of input_ids that are prompt, not target: the LM loss must
                                 ignore every target at a position < prompt_len. With `CaptionLoss` (position
                                 j-1 predicts token j) that means tokens 0..prompt_len-1 are never predicted.
                                 Captions and labels: 1 (only [CLS], which is never a target anyway).
                                 QA rows: the tokens of `[CLS] question: {q} answer:` (capped at L), so only
                                 the answer and its [SEP]/[EOS] are trained on; `input_ids[1:prompt_len]`, cut
                                 before a [SEP], is the generation prompt (`text.prompt_ids`).
  text            str   [N]     (what was tokenized; QA rows: `text.qa_text(q, a)` = "question: {q} answer: {a}")
  row_key         str   [N]     the manifest row's key (`omnivl.data.manifest`), as read
Bad rows are dropped from the output and recorded in the ledger that comes back with it.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
from dataclasses import dataclass

import numpy as np

from omnivl.data import badinput as bad
from omnivl.data import image as img_ops
from omnivl.data import text as text_ops
from omnivl.data import video as vid_ops
from omnivl.data.config import DecodeConfig, SourceConfig
from omnivl.data.manifest import IMAGE_EXTS, VIDEO_EXTS, WHOLE_FILE, read_media
from omnivl.data.stream import AUGMENT, derive

OUTPUT_COLUMNS = ("pixels", "input_ids", "attention_mask", "label_id", "prompt_len", "text", "row_key")


@dataclass
class Sample:
    pixels: np.ndarray
    text: str
    label_id: int
    row_key: str
    prompt: str = ""  # the part of `text` that is not a target (QA: `qa_prompt(q)`); "" for captions/labels


class Watchdog:
    """Runs a call in a helper thread and gives up after `timeout_s`. A decoder that hangs (decord#269)
    cannot be killed from Python, so its thread is abandoned and a fresh one serves the next call; the
    native decoders release the GIL, so the abandoned thread does not block this one."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="decode")
        self.abandoned = 0

    def call(self, fn, *args):
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except cf.TimeoutError:
            self._pool.shutdown(wait=False)
            self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="decode")
            self.abandoned += 1
            raise bad.BadInput(bad.DECODE_TIMEOUT, f"no result after {self.timeout_s:g}s") from None


class RowDecoder:
    """Decodes batches of manifest rows (columns of `manifest.ROW_SCHEMA`, plus `epoch` in a training stream)
    of one modality.

    Every random choice of a row comes from a generator derived from (seed, epoch, row key), so the output
    does not depend on which worker got the row or in which order, and each epoch differs. A batch's own
    `epoch` column (the training stream's) wins over the `epoch` given here."""

    def __init__(self, sources: list[SourceConfig | dict], decode: DecodeConfig | dict, modality: str,
                 train: bool, seed: int = 0, epoch: int = 0) -> None:
        self.sources = {s.name: s for s in (SourceConfig.model_validate(x) for x in sources)}
        self.cfg = DecodeConfig.model_validate(decode)
        self.modality, self.train, self.seed, self.epoch = modality, train, seed, epoch
        self.tokenizer = text_ops.load_tokenizer(self.cfg.tokenizer)
        self.watchdog = Watchdog(self.cfg.decode_timeout_s)

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bad.BadInputLedger]:
        ledger = bad.BadInputLedger()
        samples = [s for s in (self._one(_row(batch, i), ledger) for i in range(len(batch["uri"]))) if s]
        return self._collate(samples), ledger

    def _one(self, row: dict, ledger: bad.BadInputLedger) -> Sample | None:
        ledger.count_seen()
        where = row["uri"] if row["offset"] == WHOLE_FILE else f"{row['uri']}#{row['offset']}"
        try:
            if row["row_error"]:
                raise bad.BadInput(row["row_error"])
            return self.decode_row(row, self.rng_for(row), ledger, where)
        except bad.BadInput as exc:
            ledger.skip(exc.reason, where, row["source"], exc.detail)
            return None

    def rng_for(self, row: dict) -> np.random.Generator:
        epoch = int(row.get("epoch", self.epoch))
        return derive(self.seed, AUGMENT, epoch, text_ops.stable_id(row["row_key"]))

    def decode_row(self, row: dict, rng: np.random.Generator, ledger: bad.BadInputLedger, where: str) -> Sample:
        """One row -> Sample. Raises BadInput for anything that must be skipped."""
        source = self.sources[row["source"]]
        flip = self.train and self.cfg.hflip and rng.random() < 0.5
        if source.kind == "qa":
            prompt, text, label_id = self._qa_text(row, flip)
        else:
            prompt, (text, label_id) = "", self._text(source, row, rng, flip, ledger, where)
        check_extension(row["uri"], row["offset"], self.modality)
        data = read_media(row["uri"], row["offset"], row["size"])
        pixels = self.watchdog.call(self._pixels, data, rng, flip, ledger, where, clip_window(row))
        return Sample(pixels, text, label_id, row["row_key"], prompt)

    def _qa_text(self, row: dict, flip: bool) -> tuple[str, str, int]:
        """(prompt, full text, label id) of a QA row; a flip swaps left/right in question and answer."""
        question, answer = " ".join(row.get("question", "").split()), " ".join(row.get("answer", "").split())
        if not question or not answer:
            raise bad.BadInput(bad.QA_EMPTY, "no question" if not question else "no answer")
        if flip:
            question, answer = text_ops.swap_left_right(question), text_ops.swap_left_right(answer)
        return (text_ops.qa_prompt(question), text_ops.qa_text(question, answer),
                text_ops.label_id_for_pair(row["row_key"]))

    def _text(self, source: SourceConfig, row: dict, rng, flip: bool, ledger, where: str) -> tuple[str, int]:
        if source.kind == "label":
            class_name = text_ops.class_name(row["label"])
            if not class_name:
                raise bad.BadInput(bad.LABEL_EMPTY)
            if flip:
                class_name = text_ops.swap_left_right(class_name)
            templates = source.prompt_templates()
            return text_ops.label_text(class_name, templates, self.train, rng), text_ops.label_id_for_class(class_name)
        caption, cut = text_ops.clean_caption(row["text"], self.cfg.max_caption_chars)
        if cut:
            ledger.repair(bad.CAPTION_TRUNCATED, where)
        if flip:
            caption = text_ops.swap_left_right(caption)
        return caption, text_ops.label_id_for_pair(row["row_key"])

    def _pixels(self, data: bytes, rng, flip: bool, ledger, where: str, window) -> np.ndarray:
        size = self.cfg.image_size
        if self.modality == "video":
            frames, repeated = vid_ops.decode_clip(data, self.cfg.num_frames, size, self.train, rng,
                                                   self.cfg.decode_threads, self.cfg.max_image_pixels,
                                                   window=window)
            if repeated:
                ledger.repair(bad.VIDEO_SHORT_REPEATED, where)
            if self.train:
                return vid_ops.train_clip(frames, size, rng, self.cfg.crop_scale_min, flip)
            return vid_ops.eval_clip(frames, size)
        draft = size * 2 if self.train else size
        rgb, converted = img_ops.decode_image(data, self.cfg.max_image_pixels, draft_size=draft)
        if converted:
            ledger.repair(bad.IMAGE_MODE_CONVERTED, where)
        if self.train:
            return img_ops.train_image(rgb, size, rng, self.cfg.crop_scale_min, flip, self.cfg.randaugment)
        return img_ops.eval_image(rgb, size)

    def _collate(self, samples: list[Sample]) -> dict[str, np.ndarray]:
        L = self.cfg.text_max_length
        ids, mask = text_ops.tokenize(self.tokenizer, [s.text for s in samples], L) \
            if samples else (np.zeros((0, L), np.int64),) * 2
        prompt_len = np.ones(len(samples), dtype=np.int64)
        qa = [i for i, s in enumerate(samples) if s.prompt]
        if qa:
            prompt_len[qa] = text_ops.prompt_lengths(self.tokenizer, [samples[i].prompt for i in qa], L)
        return {
            "pixels": np.stack([s.pixels for s in samples]) if samples else np.zeros((0, *self.pixel_shape()), np.uint8),
            "input_ids": ids,
            "attention_mask": mask,
            "label_id": np.asarray([s.label_id for s in samples], dtype=np.int64),
            "prompt_len": prompt_len,
            "text": np.asarray([s.text for s in samples], dtype=object),
            "row_key": np.asarray([s.row_key for s in samples], dtype=object),
        }

    def pixel_shape(self) -> tuple[int, ...]:
        s = self.cfg.image_size
        return (self.cfg.num_frames, 3, s, s) if self.modality == "video" else (3, s, s)


def clip_window(row: dict) -> tuple[float, float] | None:
    """A row's (start_s, end_s) clip window inside its video, None for the whole file. A missing bound is
    the video's start or end."""
    start, end = row.get("start_s", math.nan), row.get("end_s", math.nan)
    if math.isnan(start) and math.isnan(end):
        return None
    return (0.0 if math.isnan(start) else float(start), math.inf if math.isnan(end) else float(end))


def check_extension(uri: str, offset: int, modality: str) -> None:
    """Whole files must carry an extension of their modality (or none); tar members were chosen by theirs.
    Raises BadInput(unsupported_format)."""
    if offset != WHOLE_FILE:
        return
    ext = os.path.splitext(uri.rsplit("/", 1)[-1])[1].lstrip(".").lower()
    allowed = IMAGE_EXTS if modality == "image" else VIDEO_EXTS
    if ext and ext not in allowed:
        raise bad.BadInput(bad.UNSUPPORTED_FORMAT, f".{ext} is not a {modality} format")


def _row(batch: dict[str, np.ndarray], i: int) -> dict:
    return {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
