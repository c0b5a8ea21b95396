"""Optional bearer API-key auth: the key comes from the spec (`auth.api_key`) or, preferably, an env var."""

from __future__ import annotations

import hmac
import os
from typing import Mapping

from omnivl.serving.config import AuthConfig
from omnivl.serving.errors import ServeError


def resolve_api_key(auth: AuthConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The key requests must present, or None when auth is off (no key in the spec nor in the env var)."""
    if auth.api_key:
        return auth.api_key
    if auth.api_key_env and environ.get(auth.api_key_env):
        return environ[auth.api_key_env]
    return None


def check_bearer(authorization: str | None, api_key: str | None) -> None:
    """Raises ServeError(unauthorized) unless `authorization` is `Bearer <api_key>` (or auth is off).
    Compared in constant time."""
    if api_key is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ServeError("unauthorized", "missing bearer token: send 'Authorization: Bearer <API key>'")
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ServeError("unauthorized", "invalid API key")
