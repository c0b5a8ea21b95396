"""The model side of serving: load a checkpoint (safetensors export, no pickle) and run batched calls.

Legend: N items, E embedding dim, L text length, P prompt length.

Each `run_*` function takes the calls of one dynamic batch (a list, one entry per HTTP request, each holding
that request's items as numpy arrays), concatenates what can share a forward pass, runs the model once per
group and returns one result per call, in order, under the checkpoint's `precision` (an autocast: weights stay
fp32, results are float32). The Ray Serve replica feeds them through a `Batcher` (one per operation) and runs
`warm_up` before it reports ready; the Python API (`omnivl.load`) and tests call them directly.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from omnivl.models.precision import autocast
from omnivl.serving.media import Geometry


@dataclass
class LoadedModel:
    model_id: str
    uri: str
    model: Any  # OmniVL
    model_config: dict
    arch: dict
    device: str
    precision: str = "fp32"  # fp32 | bf16 | fp16: the autocast of every run_* call (omnivl.models.precision)
    gallery: Any = None  # omnivl.serving.gallery.GalleryIndex | None

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.arch["visual"]["image_size"], self.arch["visual"]["num_frames"])


@dataclass(frozen=True)
class VisualCall:
    pixels: np.ndarray  # uint8 [N,3,S,S] or [N,T,3,S,S]
    modality: str


@dataclass(frozen=True)
class TextCall:
    ids: np.ndarray  # int64 [N, L]
    mask: np.ndarray


@dataclass(frozen=True)
class MatchCall:
    pixels: np.ndarray
    modality: str
    ids: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class GenerateCall:
    pixels: np.ndarray
    modality: str
    prompt_ids: np.ndarray | None  # int64 [N, P] right-padded with PAD (0), no [CLS]/[SEP]; None: no prompt
    options: tuple = field(default=())  # sorted (name, value) pairs of DecodingOptions


def pick_device(preference: str) -> str:
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no GPU")
    return preference


def load_checkpoint(model_id: str, uri: str, device: str, precision: str = "fp32") -> LoadedModel:
    """The export at `uri` in eval mode on `device`, run at `precision` by every `run_*`. Safetensors only
    (`load_export`): no pickle is executed. Raises FileNotFoundError / RuntimeError from the loader."""
    from omnivl.models.export import load_export, read_export_config

    cfg, arch = read_export_config(uri)
    model = load_export(uri, device)
    return LoadedModel(model_id, uri, model, cfg.to_dict(), arch.to_dict(), device, precision)


def _groups(keys: list) -> dict[Any, list[int]]:
    out: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return out


def _split(rows: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(rows, np.cumsum(sizes)[:-1]) if sizes else []


def _t(a: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def _model_op(run: Callable[[LoadedModel, list], list]) -> Callable[[LoadedModel, list], list]:
    """`run(lm, calls)` without autograd and under `lm.precision`'s autocast: every operation, warm-up included."""

    @functools.wraps(run)
    def wrapped(lm: LoadedModel, calls: list) -> list:
        with torch.inference_mode(), autocast(lm.device, lm.precision):
            return run(lm, calls)

    return wrapped


@_model_op
def run_visual(lm: LoadedModel, calls: list[VisualCall]) -> list[np.ndarray]:
    """One float32 [N_i, E] per call: L2-normalized visual embeddings, one forward pass per modality."""
    out: list[np.ndarray | None] = [None] * len(calls)
    for modality, idx in _groups([c.modality for c in calls]).items():
        pixels = np.concatenate([calls[i].pixels for i in idx])
        emb = lm.model.encode_visual(_t(pixels, lm.device), modality).float().cpu().numpy()
        for i, part in zip(idx, _split(emb, [len(calls[i].pixels) for i in idx])):
            out[i] = part
    return out


@_model_op
def run_text(lm: LoadedModel, calls: list[TextCall]) -> list[np.ndarray]:
    """One float32 [N_i, E] per call: L2-normalized text embeddings (all calls share L: the server's length)."""
    ids = np.concatenate([c.ids for c in calls])
    mask = np.concatenate([c.mask for c in calls])
    emb = lm.model.encode_text(_t(ids, lm.device), _t(mask, lm.device)).float().cpu().numpy()
    return _split(emb, [len(c.ids) for c in calls])


@_model_op
def run_match(lm: LoadedModel, calls: list[MatchCall]) -> list[np.ndarray]:
    """One float32 [N_i] per call: P(text matches media) from the alignment decoder's head."""
    out: list[np.ndarray | None] = [None] * len(calls)
    for modality, idx in _groups([c.modality for c in calls]).items():
        cat = lambda name: _t(np.concatenate([getattr(calls[i], name) for i in idx]), lm.device)  # noqa: E731
        prob = lm.model.match_prob(cat("pixels"), cat("ids"), cat("mask"), modality).float().cpu().numpy()
        for i, part in zip(idx, _split(prob, [len(calls[i].ids) for i in idx])):
            out[i] = part
    return out


@_model_op
def run_generate(lm: LoadedModel, calls: list[GenerateCall]) -> list[list[list[int]]]:
    """One list of token-id lists per call (after the prompt, before [EOS]); calls sharing modality and
    decoding options share one `generate` (prompts of different lengths are grouped inside it)."""
    pad = lm.model.tokens.pad
    out: list[list | None] = [None] * len(calls)
    for (modality, options), idx in _groups([(c.modality, c.options) for c in calls]).items():
        pixels = _t(np.concatenate([calls[i].pixels for i in idx]), lm.device)
        prompts = _prompt_matrix([calls[i] for i in idx], pad)
        new = lm.model.generate(pixels, modality, prompt_ids=None if prompts is None else _t(prompts, lm.device),
                                **dict(options))
        rows = [[t for t in r if t != pad] for r in new.cpu().tolist()]
        start = 0
        for i in idx:
            n = len(calls[i].pixels)
            out[i], start = rows[start:start + n], start + n
    return out


def _prompt_matrix(calls: list[GenerateCall], pad: int) -> np.ndarray | None:
    """[N, P] right-padded prompts of all calls (rows without a prompt are all PAD), or None if none has one."""
    if all(c.prompt_ids is None for c in calls):
        return None
    width = max(c.prompt_ids.shape[1] for c in calls if c.prompt_ids is not None)
    parts = []
    for c in calls:
        block = np.full((len(c.pixels), width), pad, dtype=np.int64)
        if c.prompt_ids is not None:
            block[:, :c.prompt_ids.shape[1]] = c.prompt_ids
        parts.append(block)
    return np.concatenate(parts)


def decoding_kwargs(method: str, max_new_tokens: int, num_beams: int, top_p: float) -> tuple:
    """The hashable options key of a GenerateCall (only the options the method uses, so batches merge)."""
    opts = {"method": method, "max_new_tokens": max_new_tokens}
    if method == "beam":
        opts["num_beams"] = num_beams
    if method == "nucleus":
        opts["top_p"] = top_p
    return tuple(sorted(opts.items()))


OPS: dict[str, Callable[[LoadedModel, list], list]] = {
    "visual": run_visual, "text": run_text, "match": run_match, "generate": run_generate}

WARMUP_NEW_TOKENS = 2  # decoding steps of the warm-up generation: the first step and a longer-prefix one


def warmup_calls(lm: LoadedModel, text_length: int) -> dict[str, tuple[str, object]]:
    """{name: (op, call)}: one small synthetic call per operation (visual for both modalities) of the checkpoint's
    geometry and the server's text length, so that the first real request of each kind finds every code path
    (kernels, allocator pools, the worker thread) already run."""
    g, tok = lm.geometry, lm.model.tokens
    image = np.zeros((1, 3, g.image_size, g.image_size), np.uint8)
    video = np.zeros((1, g.num_frames, 3, g.image_size, g.image_size), np.uint8)
    ids = np.full((1, text_length), tok.pad, np.int64)
    ids[0, :2] = (tok.cls, tok.eos)
    mask = (ids != tok.pad).astype(np.int64)
    return {"visual_image": ("visual", VisualCall(image, "image")),
            "visual_video": ("visual", VisualCall(video, "video")),
            "text": ("text", TextCall(ids, mask)),
            "match": ("match", MatchCall(image, "image", ids, mask)),
            "generate": ("generate", GenerateCall(image, "image", None,
                                                  decoding_kwargs("greedy", WARMUP_NEW_TOKENS, 1, 1.0)))}


def warm_up(lm: LoadedModel, text_length: int) -> dict[str, float]:
    """Run `warmup_calls` once each; returns {name: seconds}. Call it on the thread that will run the model."""
    seconds = {}
    for name, (op, call) in warmup_calls(lm, text_length).items():
        start = time.perf_counter()
        OPS[op](lm, [call])
        seconds[name] = time.perf_counter() - start
    return seconds


class Batcher:
    """Greedy dynamic batching of one operation on one asyncio event loop (not thread-safe).

    A call submitted while no batch of this operation is running starts a batch at once, alone: a lone request
    never waits for company. Calls submitted while a batch runs queue up, and the next batch takes all of them
    (at most `max_batch_size`) as soon as the running one returns, so batches grow with the load and with the
    model's latency, without a timer. `run_batch(items)` returns one result per item, in order; an exception it
    raises fails every call of that batch. A caller that gives up (cancelled) before its batch starts is dropped.
    """

    def __init__(self, run_batch: Callable[[list], Awaitable[list]], max_batch_size: int) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.queue: deque[tuple[object, asyncio.Future]] = deque()
        self.drainer: asyncio.Task | None = None  # set while a batch runs or calls wait

    async def submit(self, item: object) -> Any:
        future = asyncio.get_running_loop().create_future()
        if self.drainer is None and not self.queue:
            return await self._run_alone(item, future)
        self.queue.append((item, future))
        if self.drainer is None:  # no await since the append: no other call can slip in between
            self.drainer = asyncio.create_task(self._drain())
        return await future

    async def _run_alone(self, item: object, future: asyncio.Future) -> Any:
        """The model is idle: run this call in the caller's own task (no hand-off to a drainer task, which costs
        a lone request event-loop turns), marked as the running batch so that calls arriving meanwhile queue up;
        a drainer takes those afterwards."""
        self.drainer = asyncio.current_task()
        try:
            await self._run([(item, future)])
        finally:
            self.drainer = None
            if self.queue:
                self.drainer = asyncio.create_task(self._drain())
        return future.result()

    async def _drain(self) -> None:
        try:
            while self.queue:
                batch = self._take()
                if batch:
                    await self._run(batch)
        except asyncio.CancelledError:
            for _, future in self.queue:
                future.cancel()
            self.queue.clear()
            raise
        finally:
            self.drainer = None

    def _take(self) -> list[tuple[object, asyncio.Future]]:
        batch = []
        while self.queue and len(batch) < self.max_batch_size:
            item, future = self.queue.popleft()
            if not future.done():
                batch.append((item, future))
        return batch

    async def _run(self, batch: list[tuple[object, asyncio.Future]]) -> None:
        try:
            results = await self.run_batch([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
