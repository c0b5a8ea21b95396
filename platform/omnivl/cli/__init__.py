"""`omnivl` command line: thin, one function per subcommand; each command group lives in its own module."""

from __future__ import annotations

import argparse
import sys

from omnivl.spec.errors import SpecError


def build_parser() -> argparse.ArgumentParser:
    from omnivl.cli import data_cmds, jobs_cmds, model_cmds, run_cmds, serve_cmds, spec_cmds, train_cmds

    parser = argparse.ArgumentParser(prog="omnivl", description="Pretrain, evaluate and serve OmniVL on Ray.")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups = {
        "top": top,
        "spec": _group(top, "spec", "inspect the job spec schema"),
        "data": _group(top, "data", "generate and inspect datasets"),
        "model": _group(top, "model", "model sizes and parameter counts"),
        "bench": _group(top, "bench", "benchmarks (same-run ratios against a baseline)"),
    }
    for module in (spec_cmds, run_cmds, jobs_cmds, serve_cmds, data_cmds, model_cmds, train_cmds):
        module.register(groups)
    return parser


def _group(top, name: str, help_text: str):
    p = top.add_parser(name, help=help_text)
    return p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", required=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
