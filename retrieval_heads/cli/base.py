"""The shape every subcommand has, argument groups several commands share, and deprecated spellings.

A renamed flag or value keeps its old spelling for one release: accepted, with one line on stderr,
``retrieval-heads: warning: OLD is deprecated; use NEW``. Every rename goes through ``warn_deprecated``:
``add_alias`` (an old flag name), ``renamed_values`` (old values of a flag) and ``add_was_switch`` (a
switch that now takes a value, given bare).
"""

from __future__ import annotations

import argparse
import sys


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


def warn_deprecated(old: str, new: str) -> None:
    """The one-line warning of a deprecated spelling (``old``: what the user wrote, ``new``: what to write)."""
    print(f"retrieval-heads: warning: {old} is deprecated; use {new}", file=sys.stderr)


class _Alias(argparse.Action):
    """An old flag name: warns, then does what the new flag (``target``) does with the same values."""

    def __init__(self, option_strings, dest, *, target: argparse.Action, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.target = target

    def __call__(self, parser, namespace, values, option_string=None):
        warn_deprecated(option_string, self.target.option_strings[0])
        self.target(parser, namespace, values, self.target.option_strings[0])


def add_alias(group, old: str, new: argparse.Action, **overrides) -> argparse.Action:
    """Offer ``old`` as a deprecated spelling of the flag ``new`` (the action ``add_argument`` returned): it takes
    the same values (unless ``overrides`` says otherwise, e.g. ``nargs``) into the same destination."""
    spec = dict(dest=new.dest, nargs=new.nargs, const=new.const, type=new.type, choices=new.choices,
                metavar=new.metavar, default=argparse.SUPPRESS, help=f"deprecated spelling of {new.option_strings[0]}")
    return group.add_argument(old, action=_Alias, target=new, **{**spec, **overrides})


def renamed_values(flag: str, renamed: dict[str, str]):
    """A ``type=`` for ``flag`` whose values ``renamed`` (old -> new): an old value becomes the new one, with the
    warning; anything else is left to ``choices``."""

    def value(text: str) -> str:
        if text in renamed:
            warn_deprecated(f"{flag} {text}", f"{flag} {renamed[text]}")
            return renamed[text]
        return text

    value.__name__ = flag.lstrip("-")  # argparse names the flag in its error messages
    return value


_BARE = object()  # the const of a flag given without its value


class _WasSwitch(argparse.Action):
    """A flag that now takes a value but was a switch: given bare, it still acts as ``switch`` (deprecated); a
    value that is not one (a path after the old switch) goes to the positional ``spill``."""

    def __init__(self, option_strings, dest, *, convert, switch: argparse.Action, spill: str | None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.convert, self.switch, self.spill = convert, switch, spill

    def __call__(self, parser, namespace, values, option_string=None):
        if values is not _BARE:
            try:
                setattr(namespace, self.dest, self.convert(values))
                return
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                if self.spill is None or getattr(namespace, self.spill, None) is not None:
                    parser.error(f"argument {option_string}: invalid value: {values!r}")
                setattr(namespace, self.spill, values)
        warn_deprecated(f"{option_string} without a value", self.switch.option_strings[0])
        self.switch(parser, namespace, [], self.switch.option_strings[0])


def add_was_switch(group, flag: str, *, switch: argparse.Action, type, spill: str | None = None,
                   **kwargs) -> argparse.Action:
    """``flag`` taking one value of ``type``; bare (its old, switch spelling) it is a deprecated spelling of
    ``switch``. ``spill``: the positional (added with ``nargs="?"`` and ``default=argparse.SUPPRESS``) that takes
    a non-value written after the bare flag, as in ``analyze --stability RUN``."""
    return group.add_argument(flag, action=_WasSwitch, nargs="?", const=_BARE, convert=type, switch=switch,
                              spill=spill, **kwargs)
