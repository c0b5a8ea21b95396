"""The training stream: which chunks are read in which order, epoch after epoch, as a pure function of the seed.

An epoch is one pass over every chunk of a modality's sources. Each epoch the chunk order is a fresh
permutation (seeded by seed and epoch); consecutive chunks of that order are packed into **windows** of at
least `window_rows` rows, and a window's rows are shuffled together when it is read. So the shuffle is
global at chunk granularity and local within a bounded row buffer (one window): no permutation of all rows
exists anywhere, and memory is bounded by the window, not the corpus.

The stream is a sequence of rows numbered from 0 across epochs: epoch e holds stream rows
[e * epoch_rows, (e + 1) * epoch_rows). Training that has consumed `n` rows of a modality resumes the
stream at row `n`: the same epoch, the window holding that row (re-read whole: up to one window of rows is
seen again), and afterwards exactly the windows and augmentations an uninterrupted run would have had.

Every random choice here and in decoding derives from the seed through `derive`, with a named purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from omnivl.data.manifest import Chunk

# Purposes of derived seeds: one name per random choice, so no two choices share a stream by accident.
CHUNK_ORDER = 1  # the per-epoch permutation of chunks
WINDOW_SHUFFLE = 2  # the row order inside one window
AUGMENT = 3  # a row's crops, flips, frame samples and prompt template (omnivl.data.decode)


def derive(seed: int, purpose: int, *parts: int) -> np.random.Generator:
    """A generator that depends only on (seed, purpose, parts): the same in every process, run and worker."""
    return np.random.default_rng([seed & 0xFFFFFFFF, purpose, *(int(p) & (2**63 - 1) for p in parts)])


@dataclass(frozen=True)
class ReadUnit:
    """One read task's work: the chunks of one window of one epoch (`shuffle`: mix their rows)."""

    epoch: int
    window: int
    chunks: tuple[Chunk, ...]
    shuffle: bool

    @property
    def num_rows(self) -> int:
        return sum(c.num_rows for c in self.chunks)


@dataclass(frozen=True)
class StreamPlan:
    """The chunks of one modality's sources and how they are ordered. Picklable; no Ray, no I/O."""

    chunks: tuple[Chunk, ...]
    seed: int
    window_rows: int

    @property
    def epoch_rows(self) -> int:
        return sum(c.num_rows for c in self.chunks)

    def windows(self, epoch: int) -> list[tuple[Chunk, ...]]:
        """Epoch `epoch`'s windows in stream order: chunks permuted for this epoch, packed in order into
        groups of >= `window_rows` rows (the last may be smaller)."""
        order = derive(self.seed, CHUNK_ORDER, epoch).permutation(len(self.chunks))
        out, current, rows = [], [], 0
        for i in order:
            current.append(self.chunks[i])
            rows += self.chunks[i].num_rows
            if rows >= self.window_rows:
                out.append(tuple(current))
                current, rows = [], 0
        if current:
            out.append(tuple(current))
        return out

    def units(self, start_row: int, end_row: int) -> Iterator[ReadUnit]:
        """The read units covering stream rows [start_row, end_row), starting at the window that holds
        `start_row` (whole) and ending with the window that holds `end_row - 1`."""
        per_epoch = self.epoch_rows
        if per_epoch == 0 or end_row <= start_row:
            return
        epoch, offset = divmod(start_row, per_epoch)
        remaining = end_row - (start_row - offset)  # rows from the start of `epoch`
        while remaining > 0:
            seen = 0
            for w, window in enumerate(self.windows(epoch)):
                size = sum(c.num_rows for c in window)
                if seen + size > offset and seen < remaining:
                    yield ReadUnit(epoch, w, window, shuffle=True)
                seen += size
            remaining -= per_epoch
            epoch, offset = epoch + 1, 0


def in_order_units(chunks: list[Chunk]) -> list[ReadUnit]:
    """One pass in manifest order, unshuffled (evaluation, embedding): one unit per chunk, epoch 0."""
    return [ReadUnit(0, i, (c,), shuffle=False) for i, c in enumerate(chunks)]


def window_permutation(seed: int, unit: ReadUnit, rows: int) -> np.ndarray:
    """The order of the `rows` rows a unit read (identity when it is not shuffled)."""
    if not unit.shuffle:
        return np.arange(rows)
    return derive(seed, WINDOW_SHUFFLE, unit.epoch, unit.window).permutation(rows)
