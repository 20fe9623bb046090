"""``retrieval-heads merge``: combine shard run directories into one."""

from __future__ import annotations

from pathlib import Path

from .base import Command


def merge_runs(dirs: list[str | Path], out: str | Path) -> dict:
    """Merge shard directories of a detect, lookup or niah run into ``out``; returns the merged summary.

    ``sweep.merge.merge_shards`` unites the shards; the run kind picks the command's own finalizer here,
    so the sweep layer imports no experiment. ``detect`` and ``niah`` under a launcher merge through it too.
    """
    from ..detection.detect import merged_summary as detect
    from ..kv.lookup import merged_summary as lookup
    from ..masking.niah import merged_summary as niah
    from ..sweep.merge import merge_shards

    return merge_shards(dirs, out, {"detect": detect, "lookup": lookup, "niah": niah})


class Merge(Command):
    name = "merge"
    help = "merge shard run directories (detect, lookup or niah) into one run directory"

    def add_arguments(self, parser):
        parser.add_argument("dirs", nargs="+", metavar="DIR", help="shard run directories")
        parser.add_argument("--out", required=True, help="merged run directory")

    def run(self, args) -> int:
        summary = merge_runs(args.dirs, args.out)
        print(f"merged {len(args.dirs)} shards: {summary['samples']} samples into {args.out}/")
        return 0


COMMANDS = [Merge]
