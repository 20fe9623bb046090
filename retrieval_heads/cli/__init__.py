"""Command-line interface: a thin layer of small command classes over the library."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError


def commands() -> list:
    """Every subcommand, in the order ``--help`` lists them."""
    from . import analyze, detect, models

    found = [detect.Detect(), models.Models(), analyze.Analyze(), analyze.Compare(), analyze.Report(), analyze.Convert()]
    for optional in ("niah", "merge", "kv", "tasks"):
        try:
            module = __import__(f"{__name__}.{optional}", fromlist=["COMMANDS"])
        except ModuleNotFoundError:
            continue
        found.extend(cls() for cls in module.COMMANDS)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrieval-heads",
        description="Find, test and use the retrieval heads of transformer language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``retrieval-heads`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_command", None):
        parser.print_help()
        return 2
    try:
        return int(args._command.run(args) or 0)
    except UserError as exc:
        print(f"retrieval-heads: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        where = f"; finished samples are saved in {out} (rerun with --resume)" if out else ""
        print(f"retrieval-heads: interrupted{where}", file=sys.stderr)
        return 130
