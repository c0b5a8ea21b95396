"""Command-line overrides: `--set stages[0].epochs=2` edits the raw spec before validation, so an override
goes through exactly the same checks (and error messages) as the file."""

from __future__ import annotations

import re
from typing import Any

import yaml

from omnivl.spec.errors import SpecError, SpecIssue

_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def parse_path(path: str) -> list[str | int]:
    """'stages[0].batch_size.image' -> ['stages', 0, 'batch_size', 'image']; raises ValueError if malformed."""
    parts: list[str | int] = []
    for segment in path.split("."):
        if not segment:
            raise ValueError(f"empty segment in {path!r}")
        seg_pos = 0
        while seg_pos < len(segment):
            m = _TOKEN.match(segment, seg_pos)
            if not m or (m.group(1) and seg_pos != 0):
                raise ValueError(f"cannot parse {path!r} near {segment[seg_pos:]!r}")
            parts.append(m.group(1) if m.group(1) else int(m.group(2)))
            seg_pos = m.end()
    return parts


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `PATH=VALUE` (VALUE parsed as YAML) to `raw` in place; raises SpecError naming the override."""
    if "=" not in assignment:
        raise SpecError([SpecIssue(f"--set {assignment}", "expected PATH=VALUE")])
    path, _, text = assignment.partition("=")
    try:
        parts = parse_path(path.strip())
        value = yaml.safe_load(text) if text.strip() else ""
    except (ValueError, yaml.YAMLError) as exc:
        raise SpecError([SpecIssue(f"--set {assignment}", str(exc))]) from None
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = _render(parts[:depth]) or "the spec"
        if isinstance(part, int):
            if not isinstance(node, list):
                raise SpecError([SpecIssue(f"--set {assignment}", f"{where} is not a list")])
            if part >= len(node):
                raise SpecError(
                    [SpecIssue(f"--set {assignment}", f"index {part} out of range ({where} has {len(node)} item(s))")]
                )
        elif not isinstance(node, dict):
            raise SpecError([SpecIssue(f"--set {assignment}", f"{where} is not a mapping")])
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and part not in node:
                node[part] = {}  # a field left at its default: create it, validation judges the key
            node = node[part]


def _render(parts: list[str | int]) -> str:
    from omnivl.spec.errors import join_path

    return join_path(parts)
