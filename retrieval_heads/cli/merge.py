"""``retrieval-heads merge``: combine shard run directories into one."""

from __future__ import annotations

from .base import Command


class Merge(Command):
    name = "merge"
    help = "merge shard run directories (detect, lookup or niah) into one run directory"

    def add_arguments(self, parser):
        parser.add_argument("dirs", nargs="+", metavar="DIR", help="shard run directories")
        parser.add_argument("--out", required=True, help="merged run directory")

    def run(self, args) -> int:
        from ..merge import merge_runs

        summary = merge_runs(args.dirs, args.out)
        print(f"merged {len(args.dirs)} shards: {summary['samples']} samples into {args.out}/")
        return 0


COMMANDS = [Merge]
