"""``docs/cli.md`` is generated from the parsers: it must be what the generator writes now."""

from __future__ import annotations

from pathlib import Path

from retrieval_heads.cli import build_parser
from retrieval_heads.cli.reference import cli_reference

CLI_DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_cli_reference_is_up_to_date():
    assert CLI_DOC.read_text(encoding="utf-8") == cli_reference(), (
        "docs/cli.md is out of date: run python -m retrieval_heads.cli.reference docs/cli.md")


def test_cli_reference_lists_every_command_and_flag_with_its_default():
    text = cli_reference()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        assert f"\n## {name}\n" in text
        for action in command._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in text, flag
    assert "| `--batch-size` BATCH_SIZE | `4` |" in text
