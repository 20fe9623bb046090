"""``docs/cli.md``, generated from the parsers themselves, so the documented flags and defaults are the code's.

    python -m retrieval_heads.cli.reference docs/cli.md      # rewrite it
    python -m retrieval_heads.cli.reference                  # print it

``tests/test_cli_reference.py`` fails when the committed file differs from what this writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HEADER = """# Command-line reference

Generated from the parsers by `python -m retrieval_heads.cli.reference docs/cli.md`; do not edit by hand
(`tests/test_cli_reference.py` fails when this file is out of date). `retrieval-heads COMMAND --help` prints
the same options.
"""


def cli_reference() -> str:
    """The markdown reference of every subcommand: its help line, then one table per argument group."""
    from . import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    parts = [HEADER, "| command | what it does |\n|---|---|"]
    parts[-1] += "".join(f"\n| [`{name}`](#{name}) | {_cell(helps.get(name, ''))} |" for name in sub.choices)
    for name, command in sub.choices.items():
        parts.append(_command_section(name, command))
    return "\n\n".join(parts) + "\n"


def _command_section(name: str, parser: argparse.ArgumentParser) -> str:
    lines = [f"## {name}", "", parser.description or ""]
    for group in parser._action_groups:
        rows = [_row(action) for action in group._group_actions if action.help is not argparse.SUPPRESS
                and not isinstance(action, argparse._HelpAction)]
        if not rows:
            continue
        title = {"positional arguments": "arguments", "options": "options"}.get(group.title, group.title)
        lines += ["", f"**{title}**", "", "| flag | default | what it does |", "|---|---|---|", *rows]
    return "\n".join(lines)


def _row(action: argparse.Action) -> str:
    flags = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.option_strings and action.nargs != 0:
        flags += f" {action.metavar or action.dest.upper()}"
    return f"| {flags} | {_default(action)} | {_cell(action.help or '')} |"


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.required:
        return ""
    return f"`{action.default}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|").replace("%%", "%")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = cli_reference()
    if argv:
        Path(argv[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
