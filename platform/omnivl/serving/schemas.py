"""Request and response bodies of the HTTP API (FastAPI builds the OpenAPI schema from these).

Media is given one of three ways: `data_b64` (base64 of the file bytes), `uri` (a path or s3:// URI under one of
the server's allowed prefixes) or `upload` (the name of a file part of a multipart/form-data request). A media
field left out takes the request's only uploaded file, so `curl -F file=@cat.jpg -F 'request={...}'` works.

Static bounds live here; bounds that come from the server's config (text length, max_new_tokens, top_k...)
are checked by `omnivl.serving.frontend` and listed by `GET /v1/model`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Modality = Literal["image", "video"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Media(_Body):
    """One image or video: exactly one of `data_b64`, `uri`, `upload`."""

    modality: Modality | None = Field(default=None, description="default: sniffed from the bytes")
    data_b64: str | None = Field(default=None, description="base64 of the file bytes (JPEG/PNG/... or MP4/WebM/...)")
    uri: str | None = Field(default=None, description="a path or s3:// URI under one of the allowed prefixes")
    upload: str | None = Field(default=None, description="name of a file part of this multipart request")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("data_b64", "uri", "upload") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of data_b64, uri, upload (got {given or 'none'})")
        return self


class _ModelPick(_Body):
    model: str | None = Field(
        default=None, description="checkpoint id (see GET /v1/model); the header serve_multiplexed_model_id wins"
    )


class EmbedRequest(_ModelPick):
    texts: list[str] = Field(default_factory=list)
    media: list[Media] = Field(default_factory=list, description="default: every uploaded file, in order")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    text_embeddings: list[list[float]] = Field(description="L2-normalized, one per text, in order")
    media_embeddings: list[list[float]] = Field(description="L2-normalized, one per media item, in order")
    media_modalities: list[Modality]


class MatchPair(_Body):
    media: Media | None = None
    text: str


class MatchRequest(_ModelPick):
    pairs: list[MatchPair] = Field(min_length=1)


class MatchResponse(BaseModel):
    model: str
    probabilities: list[float] = Field(description="P(text matches media), one per pair, from the alignment head")


class ClassifyRequest(_ModelPick):
    media: Media | None = None
    labels: list[str] = Field(min_length=2, description="candidate class names")
    templates: list[str] | None = Field(
        default=None, description="prompt templates with '{}' for the label, ensembled; default: the label itself"
    )
    top_k: int | None = Field(default=None, ge=1, description="return only the best k labels")

    @model_validator(mode="after")
    def _templates_have_slot(self):
        for t in self.templates or []:
            if "{}" not in t:
                raise ValueError(f"template {t!r} has no '{{}}' slot for the label")
        return self


class LabelScore(BaseModel):
    label: str
    probability: float = Field(description="softmax over the candidates of 100 x cosine similarity")
    similarity: float


class ClassifyResponse(BaseModel):
    model: str
    modality: Modality
    labels: list[LabelScore] = Field(description="best first")


class DecodingOptions(_Body):
    method: Literal["greedy", "beam", "nucleus"] = "greedy"
    max_new_tokens: int = Field(default=20, ge=1, description="at most the server's limits.max_new_tokens")
    num_beams: int = Field(default=3, ge=1, description="beam search; at most limits.max_num_beams")
    top_p: float = Field(default=0.9, gt=0, le=1, description="nucleus sampling")


class CaptionRequest(_ModelPick):
    media: Media | None = None
    prompt: str | None = Field(default=None, description="text the caption must continue, e.g. 'a picture of'")
    decoding: DecodingOptions = DecodingOptions()


class CaptionResponse(BaseModel):
    model: str
    modality: Modality
    caption: str


class AnswerRequest(_ModelPick):
    media: Media | None = None
    question: str
    decoding: DecodingOptions = DecodingOptions()


class AnswerResponse(BaseModel):
    model: str
    modality: Modality
    answer: str


class SearchRequest(_ModelPick):
    text: str | None = Field(default=None, description="a text query; or give media")
    media: Media | None = Field(default=None, description="an image/video query (default: the only upload)")
    top_k: int = Field(default=5, ge=1, description="at most limits.max_top_k")


class SearchHit(BaseModel):
    rank: int
    score: float = Field(description="cosine similarity")
    index: int = Field(description="row of the gallery manifest")
    uri: str
    text: str = Field(description="the row's caption, or its class name")
    modality: Modality


class SearchResponse(BaseModel):
    model: str
    query: Literal["text", "image", "video"]
    hits: list[SearchHit]


class ErrorBody(BaseModel):
    kind: str = Field(description="stable machine-readable kind, e.g. undecodable_media, text_too_long")
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    """`GET /readyz`: 200 with status `ready`, or 503 with status `not_ready` and the reason."""

    status: Literal["ready", "not_ready"]
    reason: str = Field(description="why not ready (or what is ready), for people and logs")
    replicas: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="deployment -> replica state (RUNNING, STARTING, ...) -> count")


REQUESTS: dict[str, type[BaseModel]] = {
    "embed": EmbedRequest, "match": MatchRequest, "classify": ClassifyRequest,
    "caption": CaptionRequest, "answer": AnswerRequest, "search": SearchRequest,
}
RESPONSES: dict[str, type[BaseModel]] = {
    "embed": EmbedResponse, "match": MatchResponse, "classify": ClassifyResponse,
    "caption": CaptionResponse, "answer": AnswerResponse, "search": SearchResponse,
}
