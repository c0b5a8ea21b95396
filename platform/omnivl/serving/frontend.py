"""What the ingress does with a parsed request: validate it against the server's limits, pick the checkpoint,
decode media in a thread pool (off the model replicas' critical path), tokenize text, call the model backend
with tensors only, and shape the answer.

`Backend` is the model side: in the deployed app it forwards to the Ray Serve model deployment (where calls are
batched); in unit tests it calls `omnivl.serving.engine` in-process. Everything a client can get wrong is a
`ServeError` raised here, before any model call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ValidationError

from omnivl.data.text import detokenize, generation_prompt_ids, qa_prompt
from omnivl.serving import schemas as S
from omnivl.serving.config import ServeAppConfig
from omnivl.serving.engine import GenerateCall, MatchCall, TextCall, VisualCall, decoding_kwargs
from omnivl.serving.errors import ServeError
from omnivl.serving.media import DecodedMedia, Geometry, decode_media, in_item_order, media_bytes, stack_by_modality

RANGE_ERRORS = ("greater_than", "less_than", "too_short", "too_long")


class Backend(Protocol):
    async def visual(self, model_id: str, call: VisualCall) -> np.ndarray: ...
    async def text(self, model_id: str, call: TextCall) -> np.ndarray: ...
    async def match(self, model_id: str, call: MatchCall) -> np.ndarray: ...
    async def generate(self, model_id: str, call: GenerateCall) -> list[list[int]]: ...
    async def search(self, model_id: str, query_E: np.ndarray, k: int) -> list[dict]: ...
    async def stats(self) -> dict: ...


def model_summary(uri: str) -> dict:
    """What `GET /v1/model` says about one checkpoint (reads only its config.json)."""
    from omnivl.models.export import read_export_config

    cfg, arch = read_export_config(uri)
    return {"uri": uri, "size": cfg.size, "image_size": arch.visual.image_size,
            "num_frames": arch.visual.num_frames, "embed_dim": arch.embed_dim,
            "text_max_position": arch.text.max_position, "model_config": cfg.to_dict()}


def parse_request(endpoint: str, payload: dict) -> BaseModel:
    """The typed request, or ServeError(out_of_range | invalid_request) naming the first bad field."""
    try:
        return S.REQUESTS[endpoint].model_validate(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        kind = "out_of_range" if any(t in err["type"] for t in RANGE_ERRORS) else "invalid_request"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise ServeError(kind, f"{where}: {err['msg']}{more}", where) from None


class Frontend:
    """Request handling of one ingress replica. `models`: {checkpoint id: model_summary(uri)}."""

    def __init__(self, cfg: ServeAppConfig, backend: Backend, models: dict[str, dict]) -> None:
        from omnivl.data.text import load_tokenizer

        self.cfg, self.backend, self.models = cfg, backend, models
        self.limits = cfg.limits
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        self.pool = cf.ThreadPoolExecutor(cfg.ingress.decode_threads, thread_name_prefix="media-decode")
        for mid, info in models.items():
            if cfg.text_max_length > info["text_max_position"]:
                raise ValueError(f"text_max_length {cfg.text_max_length} > checkpoint {mid!r}'s "
                                 f"{info['text_max_position']} positions")

    async def handle(self, endpoint: str, payload: dict, uploads: dict[str, bytes],
                     header_model: str | None = None) -> tuple[dict, str]:
        """(response body, checkpoint id used). Raises ServeError for anything the client got wrong."""
        req = parse_request(endpoint, payload)
        model_id = self.pick_model(header_model, req.model)
        handler = getattr(self, f"_{endpoint}")
        return await handler(req, uploads, model_id), model_id

    def pick_model(self, header: str | None, field: str | None) -> str:
        model_id = header or field or self.cfg.default_model
        if model_id not in self.models:
            raise ServeError("unknown_checkpoint", f"no checkpoint {model_id!r}; served: {sorted(self.models)}",
                             "model")
        return model_id

    def info(self) -> dict:
        return {"default": self.cfg.default_model, "models": self.models,
                "batching": self.cfg.batching.to_dict(), "limits": self.limits.to_dict(),
                "text_max_length": self.cfg.text_max_length,
                "gallery": ({"manifest": self.cfg.gallery_manifest} if self.cfg.gallery_manifest else
                            {"index": self.cfg.gallery_index} if self.cfg.gallery_index else None),
                "auth": "bearer" if self.cfg.auth.api_key or self.cfg.auth.api_key_env else "none"}

    # ---- inputs ------------------------------------------------------------------------------------------

    def check_text(self, text: str, where: str) -> str:
        if not text or not text.strip():
            raise ServeError("empty_text", "text is empty", where)
        if len(text) > self.limits.max_text_chars:
            raise ServeError("text_too_long", f"{len(text)} characters > limit {self.limits.max_text_chars}", where)
        return text

    def check_items(self, n: int) -> None:
        if n > self.limits.max_batch_items:
            raise ServeError("too_many_items", f"{n} items in one request > limit {self.limits.max_batch_items}")

    def check_range(self, value: float, limit: float, where: str) -> None:
        if value > limit:
            raise ServeError("out_of_range", f"{value} > server limit {limit}", where)

    def tokenize(self, texts: list[str], max_length: int | None = None) -> TextCall:
        from omnivl.data.text import tokenize

        ids, mask = tokenize(self.tokenizer, texts, max_length or self.cfg.text_max_length)
        return TextCall(ids, mask)

    def prompt_ids(self, text: str) -> np.ndarray:
        """[1, P] generation prompt of `text`, cut as a training row of text_max_length tokens cuts it."""
        return generation_prompt_ids(self.tokenizer, [text], self.cfg.text_max_length)

    @staticmethod
    def implicit(media: S.Media | None, uploads: dict[str, bytes], where: str) -> S.Media:
        """`media`, or the request's only upload when it is left out."""
        if media is not None:
            return media
        if len(uploads) == 1:
            return S.Media(upload=next(iter(uploads)))
        if not uploads:
            raise ServeError("missing_media", "give media as data_b64, uri, or a multipart file upload", where)
        raise ServeError("missing_media", f"{len(uploads)} files uploaded: name one with {where}.upload", where)

    async def decode(self, media: list[S.Media], uploads: dict[str, bytes], model_id: str,
                     where: list[str]) -> list[DecodedMedia]:
        """Decode all items concurrently in the ingress thread pool, each bounded by limits.decode_timeout_s."""
        info = self.models[model_id]
        geometry = Geometry(info["image_size"], info["num_frames"])
        loop = asyncio.get_running_loop()

        async def one(m: S.Media, w: str) -> DecodedMedia:
            data = media_bytes(m, uploads, self.limits.allowed_uri_prefixes, self.limits.max_upload_bytes, w) \
                if m.uri is None else await loop.run_in_executor(
                    self.pool, media_bytes, m, uploads, self.limits.allowed_uri_prefixes,
                    self.limits.max_upload_bytes, w)
            job = loop.run_in_executor(self.pool, decode_media, data, m.modality, geometry,
                                       self.limits.max_image_pixels, w)
            try:
                return await asyncio.wait_for(job, self.limits.decode_timeout_s)
            except asyncio.TimeoutError:
                raise ServeError("decode_timeout", f"decoding took over {self.limits.decode_timeout_s:g}s", w) \
                    from None

        return list(await asyncio.gather(*(one(m, w) for m, w in zip(media, where))))

    async def visual_embeddings(self, model_id: str, decoded: list[DecodedMedia]) -> np.ndarray:
        """[N, E] in the order of `decoded` (one backend call per modality, run concurrently)."""
        groups = stack_by_modality(decoded)
        results = await asyncio.gather(*(self.backend.visual(model_id, VisualCall(g.pixels, mod))
                                         for mod, g in groups.items()))
        return np.stack(in_item_order(groups, results))

    # ---- endpoints ---------------------------------------------------------------------------------------

    async def _embed(self, req: S.EmbedRequest, uploads: dict[str, bytes], model_id: str) -> dict:
        media = req.media or [S.Media(upload=name) for name in uploads]
        if not req.texts and not media:
            raise ServeError("missing_media", "give texts and/or media to embed", "texts")
        self.check_items(len(req.texts) + len(media))
        texts = [self.check_text(t, f"texts.{i}") for i, t in enumerate(req.texts)]
        decoded = await self.decode(media, uploads, model_id, [f"media.{i}" for i in range(len(media))])
        text_job = self.backend.text(model_id, self.tokenize(texts)) if texts else None
        vis_job = self.visual_embeddings(model_id, decoded) if decoded else None
        text_emb, vis_emb = await asyncio.gather(text_job or _none(), vis_job or _none())
        dim = self.models[model_id]["embed_dim"]
        return {"model": model_id, "dim": dim,
                "text_embeddings": [] if text_emb is None else text_emb.tolist(),
                "media_embeddings": [] if vis_emb is None else vis_emb.tolist(),
                "media_modalities": [d.modality for d in decoded]}

    async def _match(self, req: S.MatchRequest, uploads: dict[str, bytes], model_id: str) -> dict:
        self.check_items(2 * len(req.pairs))
        texts = [self.check_text(p.text, f"pairs.{i}.text") for i, p in enumerate(req.pairs)]
        media = [self.implicit(p.media, uploads, f"pairs.{i}.media") for i, p in enumerate(req.pairs)]
        decoded = await self.decode(media, uploads, model_id, [f"pairs.{i}.media" for i in range(len(media))])
        tok = self.tokenize(texts)
        groups = stack_by_modality(decoded)
        calls = [MatchCall(px, mod, tok.ids[pos], tok.mask[pos]) for mod, (pos, px) in groups.items()]
        results = await asyncio.gather(*(self.backend.match(model_id, c) for c in calls))
        return {"model": model_id, "probabilities": [float(p) for p in in_item_order(groups, results)]}

    async def _classify(self, req: S.ClassifyRequest, uploads: dict[str, bytes], model_id: str) -> dict:
        from omnivl.eval.classify import class_embeddings, class_probabilities, class_prompts

        templates = req.templates or ["{}"]
        n_prompts = len(req.labels) * len(templates)
        if n_prompts > self.limits.max_labels:
            raise ServeError("too_many_items", f"{len(req.labels)} labels x {len(templates)} templates = "
                             f"{n_prompts} prompts > limit {self.limits.max_labels}", "labels")
        labels = [self.check_text(label, f"labels.{i}") for i, label in enumerate(req.labels)]
        for i, t in enumerate(templates):
            self.check_text(t, f"templates.{i}")
        media = self.implicit(req.media, uploads, "media")
        decoded = await self.decode([media], uploads, model_id, ["media"])
        vis, prompt_TE = await asyncio.gather(
            self.visual_embeddings(model_id, decoded),
            self.backend.text(model_id, self.tokenize(class_prompts(labels, templates))))
        sim_C = class_embeddings(prompt_TE, len(labels)) @ vis[0]
        prob_C = class_probabilities(sim_C)
        order = np.argsort(-sim_C, kind="stable")[: req.top_k or len(labels)]
        return {"model": model_id, "modality": decoded[0].modality,
                "labels": [{"label": labels[i], "probability": float(prob_C[i]), "similarity": float(sim_C[i])}
                           for i in order]}

    def decoding(self, opts: S.DecodingOptions) -> tuple:
        """The options key of a GenerateCall. Values the client set must be within the server's limits; defaults
        it left out are lowered to them."""
        given = opts.model_fields_set
        max_new = opts.max_new_tokens if "max_new_tokens" in given else min(opts.max_new_tokens,
                                                                             self.limits.max_new_tokens)
        beams = opts.num_beams if "num_beams" in given else min(opts.num_beams, self.limits.max_num_beams)
        self.check_range(max_new, self.limits.max_new_tokens, "decoding.max_new_tokens")
        if opts.method == "beam":
            self.check_range(beams, self.limits.max_num_beams, "decoding.num_beams")
        return decoding_kwargs(opts.method, max_new, beams, opts.top_p)

    async def generate_text(self, media: S.Media | None, uploads: dict[str, bytes], model_id: str, options: tuple,
                            prompt: np.ndarray | None) -> tuple[str, str]:
        """(modality, generated text after the prompt) for one media item."""
        (d,) = await self.decode([self.implicit(media, uploads, "media")], uploads, model_id, ["media"])
        (ids,) = await self.backend.generate(model_id, GenerateCall(d.pixels[None], d.modality, prompt, options))
        return d.modality, detokenize(self.tokenizer, ids)

    async def _caption(self, req: S.CaptionRequest, uploads: dict[str, bytes], model_id: str) -> dict:
        prompt = self.prompt_ids(self.check_text(req.prompt, "prompt")) if req.prompt is not None else None
        modality, text = await self.generate_text(req.media, uploads, model_id, self.decoding(req.decoding), prompt)
        return {"model": model_id, "modality": modality, "caption": text}

    async def _answer(self, req: S.AnswerRequest, uploads: dict[str, bytes], model_id: str) -> dict:
        prompt = self.prompt_ids(qa_prompt(self.check_text(req.question, "question")))  # the training format
        modality, text = await self.generate_text(req.media, uploads, model_id, self.decoding(req.decoding), prompt)
        return {"model": model_id, "modality": modality, "answer": text}

    async def _search(self, req: S.SearchRequest, uploads: dict[str, bytes], model_id: str) -> dict:
        if not (self.cfg.gallery_manifest or self.cfg.gallery_index):
            raise ServeError("search_unavailable", "this server has no gallery (set gallery_index or "
                             "gallery_manifest)")
        self.check_range(req.top_k, self.limits.max_top_k, "top_k")
        if req.text is not None and (req.media is not None or uploads):
            raise ServeError("invalid_request", "give either text or media as the query, not both", "text")
        if req.text is not None:
            query = (await self.backend.text(model_id, self.tokenize([self.check_text(req.text, "text")])))[0]
            kind = "text"
        else:
            media = self.implicit(req.media, uploads, "media")
            decoded = await self.decode([media], uploads, model_id, ["media"])
            query, kind = (await self.visual_embeddings(model_id, decoded))[0], decoded[0].modality
        hits = await self.backend.search(model_id, query, req.top_k)
        return {"model": model_id, "query": kind, "hits": [dict(h, rank=r + 1) for r, h in enumerate(hits)]}


async def _none():
    return None
