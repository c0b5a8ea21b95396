"""DESIGN principle 1: nothing under omnivl/models imports ray or torch.distributed; sizes and the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import omnivl.models
from omnivl.cli import main

FORBIDDEN = ("ray", "torch.distributed")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_models_import_neither_ray_nor_torch_distributed():
    root = Path(omnivl.models.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) >= 5
    offenders = [f"{p.relative_to(root)}: {name}" for p in files for name in _imports(p)
                 if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)]
    assert offenders == []


def test_the_check_catches_an_offender(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch.distributed as dist\nfrom ray import train\n")
    assert {"torch.distributed", "ray"} <= set(_imports(bad))


def test_model_params_cli(capsys):
    assert main(["model", "params", "--size", "all"]) == 0
    out = capsys.readouterr().out
    assert "tiny:" in out and "small:" in out and "base:" in out and "video-only" in out
    totals = [int(line.split()[1].replace(",", "")) for line in out.splitlines() if line.strip().startswith("total")]
    assert totals[0] < 15e6 < totals[1] < totals[2]
