"""What every task of one `evaluate` job needs besides its source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omnivl.data.config import DecodeConfig
from omnivl.eval.config import EvalConfig
from omnivl.eval.driver import DriverModel
from omnivl.eval.media import MediaPass


@dataclass
class EvalContext:
    """`media`: the passes over a source's media (Ray actor pools or this process); `driver`: the export loaded
    here, for prompt texts and re-ranking; `out`: the local directory the job's files are staged in."""

    cfg: EvalConfig
    decode: DecodeConfig
    export: str
    out: Path
    media: MediaPass
    driver: DriverModel
