"""Client errors of the serving API: one exception type carrying the HTTP status and a stable `kind`.

Every problem a request can have is raised as `ServeError` before any model call, so the ingress answers
4xx with `{"error": {"kind": ..., "message": ...}}` and the model replicas only ever see well-formed tensors.
"""

from __future__ import annotations

# kind -> HTTP status. Kinds are part of the API (clients and the error metrics use them).
STATUS = {
    "malformed_json": 400,
    "malformed_body": 400,
    "unauthorized": 401,
    "uri_not_allowed": 403,
    "unknown_checkpoint": 404,
    "payload_too_large": 413,
    "too_many_items": 413,
    "unsupported_content_type": 415,
    "invalid_request": 422,
    "out_of_range": 422,
    "text_too_long": 422,
    "empty_text": 422,
    "missing_media": 422,
    "undecodable_media": 422,
    "media_unreadable": 422,
    "decode_timeout": 422,
    "search_unavailable": 409,
    "overloaded": 503,
    "internal": 500,
}


class ServeError(Exception):
    """A request the server refuses. `kind` is a key of STATUS; `field` names the offending request field."""

    def __init__(self, kind: str, message: str, field: str | None = None) -> None:
        if kind not in STATUS:
            raise ValueError(f"unknown error kind {kind!r}")
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.field = field

    @property
    def status(self) -> int:
        return STATUS[self.kind]

    def body(self) -> dict:
        err = {"kind": self.kind, "message": self.message}
        if self.field:
            err["field"] = self.field
        return {"error": err}
