"""``retrieval-heads detect``: find retrieval heads with the paper's retrieval score."""

from __future__ import annotations

from .base import Command
from .common import add_sweep_args, load_for, out_dir, sweep_config_from_args
from .tables import print_top_heads


class Detect(Command):
    name = "detect"
    help = "detect retrieval heads (needle-in-a-haystack copy-paste score)"

    def add_arguments(self, parser):
        add_sweep_args(parser, command="detect")

    def run(self, args) -> int:
        from ..detection import run_detection

        config = sweep_config_from_args(args)
        out = out_dir(args, "detect")
        loaded = load_for(args)
        result = run_detection(loaded, config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
        s = result.summary
        print(f"{s['successes']}/{s['samples']} samples retrieved the needle; "
              f"{s['n_retrieval_heads']} of {s['num_layers'] * s['num_heads']} heads score > {s['retrieval_threshold']}")
        print_top_heads(result.scores, k=10)
        print(f"results in {result.out}/ (samples.jsonl, head_scores.json, summary.json)")
        return 0
