"""Command-line interface: a thin layer of small command classes over the library."""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import contextmanager

from ..errors import UserError


def commands() -> list:
    """Every subcommand, in the order ``--help`` lists them."""
    from . import analyze, convert, detect, ground, kv, lookup, merge, models, niah, restore, tasks

    return [
        detect.Detect(), models.Models(), analyze.Analyze(), analyze.Compare(), analyze.Report(), convert.Convert(),
        *(cls() for module in (lookup, restore, niah, merge, kv, tasks, ground) for cls in module.COMMANDS),
    ]


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


@contextmanager
def _sigterm_as_interrupt():
    """``kill`` stops a run like Ctrl-C does: summaries of the finished samples are still written."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``retrieval-heads`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_command", None):
        parser.print_help()
        return 2
    try:
        with _sigterm_as_interrupt():
            return int(args._command.run(args) or 0)
    except UserError as exc:
        print(f"retrieval-heads: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        where = f"; finished samples are saved in {out} (rerun with --resume)" if out else ""
        print(f"retrieval-heads: interrupted{where}", file=sys.stderr)
        return 130
