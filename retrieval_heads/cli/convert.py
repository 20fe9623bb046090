"""``convert``: head scores between our formats and those of other KV tools (DuoAttention, HeadKV)."""

from __future__ import annotations

import argparse

from .base import Command


class Convert(Command):
    name = "convert"
    help = ("convert head scores between a run directory, the paper's JSON, CSV, DuoAttention TSV or "
            "pattern directory, and a HeadKV score file")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from ..analysis.exports import DUO_RECENT, DUO_SINK
        from ..analysis.formats import OUTPUT_FORMATS

        parser.add_argument("source", metavar="IN",
                            help="run directory, DuoAttention pattern directory or .json/.csv/.tsv score file")
        parser.add_argument("dest", metavar="OUT", help="file to write (a directory for --format duo)")
        parser.add_argument(
            "--format", choices=OUTPUT_FORMATS,
            help="output format (default: from OUT's suffix); duo: DuoAttention/kvpress pattern directory "
                 "(full_attention_heads.tsv + config.json); headkv: HeadKV's score file")
        parser.add_argument("--kv-heads", type=_int_at_least(1), metavar="N",
                            help="number of KV heads per layer (needed for tsv/duo from a score file; a run "
                                 "directory's summary.json has it)")
        parser.add_argument("--sink", type=_int_at_least(0), metavar="TOKENS",
                            help=f"duo: sink_size, first tokens a streaming head keeps (default {DUO_SINK})")
        parser.add_argument("--recent", type=_int_at_least(1), metavar="TOKENS",
                            help=f"duo: recent_size, last tokens a streaming head keeps (default {DUO_RECENT})")

    def run(self, args: argparse.Namespace) -> int:
        from ..analysis.formats import load_scores, save_scores

        scores = load_scores(args.source, num_kv_heads=args.kv_heads)
        print(save_scores(scores, args.dest, args.format, sink=args.sink, recent=args.recent))
        return 0


def _int_at_least(least: int):
    """An argparse type: an integer >= ``least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
        return value

    return parse
