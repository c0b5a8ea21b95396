"""Serving's model side called in this process: what the Ray Serve model deployment forwards to, for tests that
drive `omnivl.serving.frontend.Frontend` without Ray."""

from __future__ import annotations

import numpy as np

from omnivl.serving import engine


class InProcessBackend:
    """A `frontend.Backend` over one loaded checkpoint (every model id maps to it); no gallery."""

    def __init__(self, lm: engine.LoadedModel) -> None:
        self.lm = lm

    async def visual(self, model_id: str, call: engine.VisualCall) -> np.ndarray:
        return engine.run_visual(self.lm, [call])[0]

    async def text(self, model_id: str, call: engine.TextCall) -> np.ndarray:
        return engine.run_text(self.lm, [call])[0]

    async def match(self, model_id: str, call: engine.MatchCall) -> np.ndarray:
        return engine.run_match(self.lm, [call])[0]

    async def generate(self, model_id: str, call: engine.GenerateCall) -> list[list[int]]:
        return engine.run_generate(self.lm, [call])[0]

    async def search(self, model_id: str, query_E: np.ndarray, k: int) -> list[dict]:
        return []

    async def stats(self) -> dict:
        return {}
