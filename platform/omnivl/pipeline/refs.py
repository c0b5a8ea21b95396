"""`${steps.NAME}` references inside step configs: finding them and substituting step outputs."""

from __future__ import annotations

import re
from typing import Any

REF = re.compile(r"\$\{steps\.([A-Za-z0-9_-]+)\}")


def find_refs(obj: Any) -> set[str]:
    """Names of every step referenced anywhere in a nested dict/list of strings."""
    if isinstance(obj, str):
        return set(REF.findall(obj))
    if isinstance(obj, dict):
        return set().union(*(find_refs(v) for v in obj.values())) if obj else set()
    if isinstance(obj, (list, tuple)):
        return set().union(*(find_refs(v) for v in obj)) if obj else set()
    return set()


def substitute(obj: Any, outputs: dict[str, str]) -> Any:
    """Copy of `obj` with each `${steps.NAME}` replaced by outputs[NAME]."""
    if isinstance(obj, str):
        return REF.sub(lambda m: outputs[m.group(1)], obj)
    if isinstance(obj, dict):
        return {k: substitute(v, outputs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, outputs) for v in obj]
    return obj
