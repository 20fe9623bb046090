"""``retrieval-heads lookup``: score heads by the attention the question and the answer put on the needle."""

from __future__ import annotations

from .base import Command
from .common import add_sweep_args, load_for, out_dir, sweep_config_from_args
from .tables import print_top_heads


class Lookup(Command):
    name = "lookup"
    help = ("score heads by the attention the question and the (teacher-forced) answer put on the needle "
            "(QRHead-style lookup score): the KV heads to keep whole when a cache is compressed before the "
            "question is known (kv-eval --query-agnostic --scores DIR)")

    def add_arguments(self, parser):
        # one forward pass per prompt from an empty cache: no batches, blocks or shared prefixes
        add_sweep_args(parser, command="lookup", batch=False, blocks=False, share_prefix=False, generates=False)

    def run(self, args) -> int:
        from ..kv.lookup import run_lookup
        from ..sweep.haystack import require_one_needle

        require_one_needle(args.needles, "lookup")  # by name, before any data is read
        config = sweep_config_from_args(args)
        out = out_dir(args, "lookup")
        loaded = load_for(args)
        result = run_lookup(loaded, config, out, resume=args.resume, overwrite=args.overwrite,
                            progress=not args.quiet)
        summary = result.summary
        print(f"{summary['samples']} samples; {summary['n_retrieval_heads']} of "
              f"{summary['num_layers'] * summary['num_heads']} heads put more than "
              f"{summary['retrieval_threshold']} of their attention on the needle")
        print_top_heads(result.scores, k=10)
        print(f"results in {out}/ (samples.jsonl, head_scores.json, summary.json)")
        return 0


COMMANDS = [Lookup]
