"""``retrieval-heads detect``: find retrieval heads with the paper's retrieval score."""

from __future__ import annotations

from .base import Command
from .common import add_sweep_args, load_for, shard_for_launch, sweep_config_from_args
from .tables import print_top_heads


class Detect(Command):
    name = "detect"
    help = "detect retrieval heads (needle-in-a-haystack copy-paste score)"

    def add_arguments(self, parser):
        add_sweep_args(parser, command="detect")

    def run(self, args) -> int:
        from ..detection import run_detection
        from ..distributed import finish
        from ..formats import load_scores
        from ..merge import merge_runs

        config = sweep_config_from_args(args)
        out, launch = shard_for_launch(args, config, "detect")
        loaded = load_for(args)
        result = run_detection(loaded, config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
        summary, scores = result.summary, result.scores
        if launch is not None:
            summary = finish(launch, args.out, merge_runs)
            if not launch.is_main:
                return 0
            scores = load_scores(args.out)
        print(f"{summary['successes']}/{summary['samples']} samples retrieved the needle; "
              f"{summary['n_retrieval_heads']} of {summary['num_layers'] * summary['num_heads']} heads score > {summary['retrieval_threshold']}")
        print_top_heads(scores, k=10)
        print(f"results in {args.out}/ (samples.jsonl, head_scores.json, summary.json)")
        return 0
