"""HTTP request bodies -> (JSON payload, uploaded files), bounded by `limits.max_upload_bytes`.

Two content types are accepted on every POST endpoint:
- `application/json`: the request object itself (media inline as `data_b64` or by `uri`);
- `multipart/form-data`: an optional part `request` holding the same JSON, plus file parts (media by `upload`
  name, or implicitly when there is one file).
"""

from __future__ import annotations

import io
import json
from typing import AsyncIterator

from omnivl.serving.errors import ServeError

JSON = "application/json"
MULTIPART = "multipart/form-data"
REQUEST_PART = "request"


async def read_capped(chunks: AsyncIterator[bytes], declared_length: str | None, max_bytes: int) -> bytes:
    """The whole body, refusing (413) as soon as the declared or received size passes `max_bytes`."""
    if declared_length and declared_length.isdigit() and int(declared_length) > max_bytes:
        raise ServeError("payload_too_large", f"request body of {declared_length} bytes > limit {max_bytes}")
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > max_bytes:
            raise ServeError("payload_too_large", f"request body > limit {max_bytes} bytes")
    return bytes(buf)


def parse_body(content_type: str | None, body: bytes) -> tuple[dict, dict[str, bytes]]:
    """(payload, uploads by part name). Raises ServeError(unsupported_content_type | malformed_json)."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime == JSON or mime.endswith("+json"):
        return _json_object(body, "request body"), {}
    if mime == MULTIPART:
        return _multipart(content_type, body)
    raise ServeError("unsupported_content_type",
                     f"Content-Type must be {JSON} or {MULTIPART}, got {content_type or 'none'!r}")


def _json_object(raw: bytes, what: str) -> dict:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServeError("malformed_json", f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # e.g. [[[[...]]]] 50,000 levels deep: the parser gives up, the request is bad
        raise ServeError("malformed_json", f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise ServeError("malformed_json", f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _multipart(content_type: str, body: bytes) -> tuple[dict, dict[str, bytes]]:
    from python_multipart import parse_form
    from python_multipart.exceptions import FormParserError

    fields: dict[str, bytes] = {}
    uploads: dict[str, bytes] = {}

    def on_field(f) -> None:
        fields[(f.field_name or b"").decode("utf-8", "replace")] = f.value or b""

    def on_file(f) -> None:
        f.file_object.seek(0)
        uploads[(f.field_name or b"").decode("utf-8", "replace")] = f.file_object.read()
        f.close()

    headers = {"Content-Type": content_type.encode("latin-1"), "Content-Length": str(len(body)).encode()}
    try:
        parse_form(headers, io.BytesIO(body), on_field, on_file)
    except (FormParserError, ValueError) as exc:
        raise ServeError("malformed_body", f"malformed multipart body: {exc}") from None
    unknown = sorted(set(fields) - {REQUEST_PART})
    if unknown:
        raise ServeError("invalid_request", f"unexpected form fields {unknown}; put options in the "
                         f"'{REQUEST_PART}' part as JSON and media as file parts")
    return _json_object(fields.get(REQUEST_PART, b""), f"form part '{REQUEST_PART}'"), uploads
