"""Calling our CLI in-process and writing specs, shared by the jobs tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from omnivl.cli import main


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `omnivl ARGV...` in this process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path
