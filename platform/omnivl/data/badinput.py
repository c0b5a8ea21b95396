"""Bad-input accounting: why a row was skipped (or repaired), counted per reason, and the threshold check.

Every decode step reports into a `BadInputLedger`. Ledgers are plain data that merge by addition, so the
decode actors of a Ray pipeline can each keep one and a single place (the pipeline's ledger actor, or the
caller of a plain loop) can sum them. `check()` is what a job calls at the end of an epoch/run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Reasons a row is SKIPPED (it never reaches training).
MISSING_FILE = "missing_file"
EMPTY_FILE = "empty_file"
UNSUPPORTED_FORMAT = "unsupported_format"
IMAGE_CORRUPT = "image_corrupt"
IMAGE_TRUNCATED = "image_truncated"
DECOMPRESSION_BOMB = "decompression_bomb"
VIDEO_CORRUPT = "video_corrupt"
VIDEO_NO_STREAM = "video_no_stream"
VIDEO_EMPTY = "video_no_frames"
CLIP_WINDOW_EMPTY = "clip_window_empty"  # the row's start_s/end_s window holds no frame of its video
DECODE_TIMEOUT = "decode_timeout"
READ_ERROR = "read_error"
CAPTION_EMPTY = "caption_empty"
CAPTION_NOT_UTF8 = "caption_not_utf8"
LABEL_EMPTY = "label_empty"
QA_EMPTY = "qa_empty"  # a qa row without a question or an answer
MANIFEST_ROW_INVALID = "manifest_row_invalid"

# Things REPAIRED on the way (the row is kept); counted so a run can show what it had to fix.
CAPTION_TRUNCATED = "caption_truncated"
VIDEO_SHORT_REPEATED = "video_short_frames_repeated"
IMAGE_MODE_CONVERTED = "image_mode_converted"

REPAIRS = frozenset({CAPTION_TRUNCATED, VIDEO_SHORT_REPEATED, IMAGE_MODE_CONVERTED})
WORST_FILES_KEPT = 20


class BadInput(Exception):
    """Raised by a decode/text function for an input it must skip. `reason` is one of the constants above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BadInputError(RuntimeError):
    """The skipped fraction of a run exceeded its threshold. The message names the reasons and worst files."""


@dataclass
class BadInputLedger:
    """Counts of rows seen, skipped per reason and repaired per reason, plus a few example files per reason."""

    seen: int = 0
    skipped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    by_source: Counter = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def skipped_fraction(self) -> float:
        return self.n_skipped / self.seen if self.seen else 0.0

    def count_seen(self, n: int = 1) -> None:
        self.seen += n

    def skip(self, reason: str, where: str, source: str = "", detail: str = "") -> None:
        """Record one skipped row; `where` names the file (and member) so the report can point at it."""
        self.skipped[reason] += 1
        if source:
            self.by_source[source] += 1
        self._example(reason, f"{where} ({detail})" if detail else where)

    def repair(self, reason: str, where: str) -> None:
        self.repaired[reason] += 1
        self._example(reason, where)

    def _example(self, reason: str, text: str) -> None:
        kept = self.examples.setdefault(reason, [])
        if len(kept) < WORST_FILES_KEPT:
            kept.append(text[:300])

    def merge(self, other: "BadInputLedger | dict") -> "BadInputLedger":
        """Add another ledger (or its `to_dict()` form) into this one; returns self."""
        if isinstance(other, dict):
            other = BadInputLedger.from_dict(other)
        self.seen += other.seen
        self.skipped.update(other.skipped)
        self.repaired.update(other.repaired)
        self.by_source.update(other.by_source)
        for reason, items in other.examples.items():
            for item in items:
                self._example(reason, item)
        return self

    def to_dict(self) -> dict:
        return {
            "seen": self.seen,
            "skipped": dict(self.skipped),
            "repaired": dict(self.repaired),
            "skipped_by_source": dict(self.by_source),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BadInputLedger":
        return cls(
            seen=int(d.get("seen", 0)),
            skipped=Counter(d.get("skipped", {})),
            repaired=Counter(d.get("repaired", {})),
            examples={k: list(v) for k, v in d.get("examples", {}).items()},
            by_source=Counter(d.get("skipped_by_source", {})),
        )

    def worst_files(self, limit: int = 10) -> list[str]:
        """Example files of the most frequent skip reasons first, as 'reason: file'."""
        out = []
        for reason, _ in self.skipped.most_common():
            out += [f"{reason}: {f}" for f in self.examples.get(reason, [])]
        return out[:limit]

    def summary(self) -> dict:
        """What a run's summary reports."""
        return {
            "rows_seen": self.seen,
            "rows_skipped": self.n_skipped,
            "skipped_fraction": round(self.skipped_fraction, 6),
            "skipped_by_reason": dict(self.skipped.most_common()),
            "repaired_by_reason": dict(self.repaired.most_common()),
            "skipped_by_source": dict(self.by_source.most_common()),
            "worst_files": self.worst_files(),
        }

    def exceeds(self, max_bad_fraction: float, total_rows: int | None = None) -> bool:
        """True once the skipped fraction is over the threshold. With `total_rows` (the manifest size, known
        up front) it is true as soon as the skips alone guarantee the epoch will end over it."""
        denominator = max(self.seen, total_rows or 0)
        return denominator > 0 and self.n_skipped > max_bad_fraction * denominator

    def check(self, max_bad_fraction: float, total_rows: int | None = None) -> "BadInputLedger":
        """Raise BadInputError if over the threshold; returns self otherwise."""
        if self.exceeds(max_bad_fraction, total_rows):
            raise BadInputError(self.error_message(max_bad_fraction, total_rows))
        return self

    def error_message(self, max_bad_fraction: float, total_rows: int | None = None) -> str:
        denominator = max(self.seen, total_rows or 0)
        reasons = ", ".join(f"{r}={n}" for r, n in self.skipped.most_common())
        worst = "\n  ".join(self.worst_files())
        return (
            f"too many bad inputs: {self.n_skipped} of {denominator} rows skipped "
            f"({self.n_skipped / max(denominator, 1):.1%} > max_bad_fraction {max_bad_fraction:.1%}); "
            f"by reason: {reasons}\nworst files:\n  {worst}"
        )
