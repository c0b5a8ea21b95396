"""Passes over the media of a source: the model applied to every decodable row (eval-mode decode), the only
evaluation work that grows with the source. `MediaPass` is what the tasks need; the `evaluate` job's Ray seam
(`omnivl.cluster.evaluate.RayPass`) maps it over actor pools, and `LocalPass` runs it in this process, without
Ray (the reference the Ray path is tested against, and small runs). Both identify rows by their row key.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np

from omnivl.data.config import DecodeConfig
from omnivl.eval import inference
from omnivl.eval.config import GenerationSettings
from omnivl.eval.driver import load_driver_model, load_driver_tokenizer
from omnivl.eval.embedding import Embedded, collect
from omnivl.eval.source import EvalSource


class MediaPass(Protocol):
    def embed(self, source: EvalSource, *, caption: GenerationSettings | None = None,
              keep_tokens: bool = False) -> Embedded:
        """Embeddings of every decodable row; with `caption` also a generated caption per row (same decoded
        pixels), with `keep_tokens` the visual tokens of the first row of each item (`Embedded.tokens`).
        Raises ValueError if no row decodes."""

    def generate(self, source: EvalSource, settings: GenerationSettings, answer: bool) -> dict[str, str]:
        """row key -> generated caption (or, with `answer`, the answer to the row's question)."""

    def bad_input(self) -> dict:
        """The bad-input summary of every decode of this pass (`BadInputLedger.summary()` and more)."""


class LocalPass:
    """`MediaPass` in this process: the source's rows (already read) decoded here, `batch_size` at a time, the
    model run at `precision` (`omnivl.eval.inference`)."""

    def __init__(self, decode: DecodeConfig, export: str, batch_size: int = 32, device: str = "cpu",
                 precision: str = "fp32") -> None:
        from omnivl.data.badinput import BadInputLedger

        self.decode, self.export, self.batch_size, self.device = decode, export, batch_size, device
        self.precision = precision
        self.ledger = BadInputLedger()

    @property
    def model(self):
        return load_driver_model(self.export, self.device)

    def decoded(self, source: EvalSource) -> Iterator[dict[str, np.ndarray]]:
        """Decoded batches of the source's rows (rows that fail are counted in `bad_input` and left out)."""
        from omnivl.data.decode import RowDecoder
        from omnivl.data.manifest import row_batches

        decoder = RowDecoder([source.config], self.decode, source.modality, train=False)
        rows = list(source.rows.values())
        for cols in row_batches(rows, self.batch_size) if rows else ():
            batch, ledger = decoder(cols)
            self.ledger.merge(ledger)
            if len(batch["label_id"]):
                yield batch

    def embed(self, source: EvalSource, *, caption: GenerationSettings | None = None,
              keep_tokens: bool = False) -> Embedded:
        def batches():
            for batch in self.decoded(source):
                out = inference.embed_batch(self.model, batch, source.modality, keep_tokens=keep_tokens,
                                            precision=self.precision)
                if caption is not None:
                    out["generated"] = self._generate(batch, source, caption, answer=False)["generated"]
                yield out

        return collect(batches(), f"{source.name} ({source.manifest})", source.uri if keep_tokens else None)

    def generate(self, source: EvalSource, settings: GenerationSettings, answer: bool) -> dict[str, str]:
        out: dict[str, str] = {}
        for batch in self.decoded(source):
            b = self._generate(batch, source, settings, answer)
            out.update(zip((str(k) for k in b["row_key"]), (str(g) for g in b["generated"])))
        return out

    def _generate(self, batch: dict, source: EvalSource, settings: GenerationSettings, answer: bool) -> dict:
        tokenizer = load_driver_tokenizer(self.decode.tokenizer)
        return inference.generate_batch(self.model, batch, source.modality, tokenizer, settings, answer,
                                        self.precision)

    def bad_input(self) -> dict:
        return self.ledger.summary()
