"""The shape every subcommand has, and argument groups several commands share."""

from __future__ import annotations

import argparse


class Command:
    """One subcommand: a name, a help line, its arguments, and ``run`` returning an exit code."""

    name: str = ""
    help: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
