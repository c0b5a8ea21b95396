"""The export loaded in the evaluating process (the Ray driver), for the inference that is small enough to run
there: class-prompt and probe-caption embeddings, and the matching head over re-ranking candidates from the
visual tokens the embedding pass kept. Plain torch, no Ray. Legend: T texts, L text length, P pairs, S, D tokens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from omnivl.data.config import DecodeConfig
from omnivl.eval import inference

MATCH_PAIRS_PER_BATCH = 64  # (visual tokens, text) pairs per matching-head forward pass


@functools.lru_cache(maxsize=2)
def load_driver_model(export: str, device: str = "cpu"):
    """The export, loaded once per process (prompt and probe texts are embedded several times per source)."""
    from omnivl.models.export import load_export

    return load_export(export, device)


@functools.lru_cache(maxsize=2)
def load_driver_tokenizer(name: str):
    from omnivl.data.text import load_tokenizer

    return load_tokenizer(name)


@dataclass(frozen=True)
class DriverModel:
    """The export on `device`, run at `precision` (`omnivl.eval.inference`), tokenizing as `decode` says."""

    export: str
    decode: DecodeConfig
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def model(self):
        return load_driver_model(self.export, self.device)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids [T, L], mask [T, L]) with the job's tokenizer and text length."""
        from omnivl.data.text import tokenize

        return tokenize(load_driver_tokenizer(self.decode.tokenizer), list(texts), self.decode.text_max_length)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [T, E]: normalized text embeddings."""
        ids, mask = self.tokenize(texts)
        return inference.encode_texts(self.model, ids, mask, precision=self.precision)

    def token_shape(self, modality: str) -> tuple[int, int]:
        """(S, D) of the visual tokens of one decoded `modality` row."""
        return inference.visual_token_shape(self.model, modality, self.decode.image_size, self.decode.num_frames)

    def match_pairs(self, tokens_of: Sequence[np.ndarray], texts: Sequence[str], pairs_P2: np.ndarray) -> np.ndarray:
        """float64 [P]: matching probability of each (visual v, text t) pair, from the kept tokens `tokens_of[v]`
        and `texts[t]`."""
        ids, mask = self.tokenize(texts)
        return inference.match_pairs(self.model, tokens_of, ids, mask, pairs_P2, MATCH_PAIRS_PER_BATCH,
                                     self.precision)
