"""The FastAPI app of the serving API (the Ray Serve ingress wraps it; `build_api(None)` gives the OpenAPI schema
offline).

Every POST endpoint takes `application/json` or `multipart/form-data` (see `omnivl.serving.body`), so bodies are
parsed by us rather than by FastAPI, and the request schemas are attached to the OpenAPI operations explicitly.
Errors are always `{"error": {"kind", "message", "field"?}}` with the status of `omnivl.serving.errors.STATUS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema

from omnivl.serving import schemas as S
from omnivl.serving.auth import check_bearer
from omnivl.serving.body import JSON, MULTIPART, REQUEST_PART, parse_body, read_capped
from omnivl.serving.errors import ServeError

log = logging.getLogger(__name__)
MODEL_HEADER = "serve_multiplexed_model_id"
SUMMARIES = {
    "embed": "Embed texts and/or images/videos (L2-normalized, shared space)",
    "match": "Probability that each (media, text) pair matches",
    "classify": "Zero-shot classification of one image/video over candidate labels",
    "caption": "Caption one image/video",
    "answer": "Answer a question about one image/video",
    "search": "Top-k gallery items for a text or image/video query",
}
ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 415, 422, 503)


def _overloaded(exc: Exception) -> bool:
    return type(exc).__name__ in ("BackPressureError", "DeploymentUnavailableError")


def build_api(frontend, api_key: str | None = None, metrics=None,
              readiness: Callable[[], Awaitable[S.ReadyResponse]] | None = None) -> FastAPI:
    """The app over a `Frontend` (None: schema only). `api_key` None disables auth; `metrics` records requests;
    `readiness` answers `/readyz` (None: ready whenever this process answers, as in-process tests want)."""
    app = FastAPI(title="OmniVL serving API", version="1",
                  description="Embeddings, matching, zero-shot classification, captioning, QA and gallery search "
                              "for images and videos. Auth: 'Authorization: Bearer <key>' when the server has a key.")

    async def answer(name: str, request: Request, work) -> JSONResponse:
        start, model = time.perf_counter(), "-"
        try:
            check_bearer(request.headers.get("authorization"), api_key)
            content, model = await work()
            status = 200
        except ServeError as exc:
            status, content = exc.status, exc.body()
            if metrics:
                metrics.error(name, exc.kind)
        except Exception as exc:  # noqa: BLE001 - the replica must answer, and stay up, whatever happened
            kind = "overloaded" if _overloaded(exc) else "internal"
            err = ServeError(kind, "server overloaded, retry later" if kind == "overloaded" else
                             f"internal error ({type(exc).__name__})")
            status, content = err.status, err.body()
            if kind == "internal":
                log.exception("internal error in /v1/%s", name)
            if metrics:
                metrics.error(name, kind)
        if metrics:
            metrics.request(name, status, model, (time.perf_counter() - start) * 1000)
        return JSONResponse(content, status_code=status)

    def post_route(name: str):
        async def route(request: Request) -> JSONResponse:
            async def work():
                body = await read_capped(request.stream(), request.headers.get("content-length"),
                                         frontend.limits.max_upload_bytes)
                payload, uploads = parse_body(request.headers.get("content-type"), body)
                return await frontend.handle(name, payload, uploads, request.headers.get(MODEL_HEADER))

            return await answer(name, request, work)

        route.__name__ = f"post_{name}"
        app.post(f"/v1/{name}", summary=SUMMARIES[name], response_model=S.RESPONSES[name],
                 responses={s: {"model": S.ErrorResponse} for s in ERROR_STATUSES},
                 openapi_extra=_operation_extra(name))(route)

    for name in S.REQUESTS:
        post_route(name)

    @app.get("/healthz", response_model=S.HealthResponse, summary="Liveness (no auth)")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=S.ReadyResponse, responses={503: {"model": S.ReadyResponse}},
             summary="Readiness (no auth): 200 once every model replica has loaded its checkpoint and run a "
                     "warm-up batch per operation, else 503 with the reason")
    async def readyz() -> JSONResponse:
        try:
            state = await readiness() if readiness else S.ReadyResponse(status="ready", reason="no readiness source")
        except Exception as exc:  # noqa: BLE001 - unknown readiness is not ready, and the probe must answer
            log.warning("readiness check failed: %r", exc)
            state = S.ReadyResponse(status="not_ready", reason=f"readiness unknown ({type(exc).__name__}: {exc})")
        return JSONResponse(state.model_dump(), status_code=200 if state.status == "ready" else 503)

    @app.get("/v1/model", summary="Served checkpoints, their sizes and configs, limits and batching",
             responses={401: {"model": S.ErrorResponse}})
    async def model_info(request: Request) -> JSONResponse:
        async def work():
            return frontend.info(), "-"

        return await answer("model", request, work)

    @app.get("/v1/stats", summary="Request, error and batch-size counts of this ingress and one model replica",
             responses={401: {"model": S.ErrorResponse}})
    async def stats(request: Request) -> JSONResponse:
        async def work():
            return {"ingress": metrics.snapshot() if metrics else {}, "model": await frontend.backend.stats()}, "-"

        return await answer("stats", request, work)

    app.openapi = lambda: _openapi(app)
    return app


def _operation_extra(name: str) -> dict:
    ref = {"$ref": f"#/components/schemas/{S.REQUESTS[name].__name__}"}
    return {
        "requestBody": {"required": True, "content": {
            JSON: {"schema": ref},
            MULTIPART: {"schema": {"type": "object", "properties": {
                REQUEST_PART: {**ref, "description": "the request as JSON text; media may name file parts by "
                                                     "`upload`, or be left out to take the only file"}},
                "additionalProperties": {"type": "string", "format": "binary"}}},
        }},
        "parameters": [{"name": MODEL_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
                        "description": "checkpoint id (model multiplexing); overrides the body's `model`"}],
        "security": [{"bearer": []}, {}],
    }


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus the request bodies (parsed by hand, so FastAPI does not know them) and bearer auth."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    _, defs = models_json_schema([(m, "validation") for m in S.REQUESTS.values()],
                                 ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(defs.get("$defs", {}))
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    app.openapi_schema = schema
    return schema
