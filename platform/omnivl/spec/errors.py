"""Spec errors that name the dotted path, the bad value and what is allowed.

    stages[1].batch_size.video: must be > 0, got 0
    stages[0].optimzer: unknown key; did you mean 'optimizer'? allowed: batch_size, epochs, ...
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class SpecIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """A spec failed to load. `issues` holds one entry per problem; str() lists them, one per line."""

    def __init__(self, issues: list[SpecIssue], source: str | None = None) -> None:
        self.issues = issues
        self.source = source
        head = f"invalid spec {source}" if source else "invalid spec"
        body = "\n".join(f"  {i}" for i in issues)
        super().__init__(f"{head}:\n{body}")


def join_path(parts: typing.Iterable[str | int]) -> str:
    """('stages', 1, 'batch_size') -> 'stages[1].batch_size'."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CONSTRAINT_WORDS = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "string_too_short": "must have at least {min_length} character(s)",
}


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that owns the last element of `loc` (to list allowed keys for unknown-key errors)."""
    current: Any = root
    for part in loc[:-1]:
        current = _unwrap(current)
        if isinstance(part, int) or part not in getattr(current, "model_fields", {}):
            # inside a list/dict: descend into the element type
            args = [a for a in typing.get_args(current) if a is not type(None)]
            if not args:
                return None
            current = args[-1]
            if isinstance(part, int) or not hasattr(_unwrap(current), "model_fields"):
                continue
            current = _unwrap(current)
        current = current.model_fields[part].annotation
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """Optional[X] / X | None / Annotated[X, ...] -> X (the first model-like arm)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        for a in arms:
            if isinstance(a, type) and issubclass(a, BaseModel):
                return a
        return arms[0] if len(arms) == 1 else tp
    return tp


def _unknown_key_message(root: type[BaseModel], loc: tuple) -> str:
    owner = _model_at(root, loc)
    key = str(loc[-1])
    if owner is None:
        return "unknown key"
    allowed = sorted(owner.model_fields)
    hint = difflib.get_close_matches(key, allowed, n=1)
    did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
    return f"unknown key; {did_you_mean}allowed: {', '.join(allowed)}"


def _message(root: type[BaseModel], err: dict) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = f", got {_short(err['input'])}" if "input" in err else ""
    if kind == "extra_forbidden":
        return _unknown_key_message(root, tuple(err["loc"]))
    if kind == "missing":
        return "required field is missing"
    if kind in _CONSTRAINT_WORDS:
        return _CONSTRAINT_WORDS[kind].format(**ctx) + got
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected', '?')}{got}"
    msg = err["msg"]
    if kind == "value_error":  # our own validators: the message already names the values at fault
        return msg.removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:] if msg else msg
    return f"{msg}{got}"


def from_validation_error(
    exc: ValidationError, root: type[BaseModel], prefix: tuple = (), source: str | None = None
) -> SpecError:
    issues = []
    for err in exc.errors(include_url=False):
        # pydantic adds the union arm / function name to loc for some errors; drop non-field parts
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        issues.append(SpecIssue(join_path(prefix + loc), _message(root, {**err, "loc": loc})))
    return SpecError(issues, source)
