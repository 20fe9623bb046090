"""``retrieval-heads detect``: find retrieval heads with the paper's retrieval score."""

from __future__ import annotations

from .base import Command
from .common import add_stop_args, add_sweep_args, load_for, shard_for_launch, sweep_config_from_args
from .tables import print_top_heads


class Detect(Command):
    name = "detect"
    help = "detect retrieval heads (needle-in-a-haystack copy-paste score)"

    def add_arguments(self, parser):
        add_sweep_args(parser, command="detect")
        add_stop_args(parser)

    def run(self, args) -> int:
        from ..analysis.formats import load_scores
        from ..detection.detect import run_detection
        from ..sweep.distributed import finish
        from ..sweep.haystack import require_one_needle
        from .merge import merge_runs

        require_one_needle(args.needles, "detect")  # by name, before any data is read
        config = sweep_config_from_args(args)
        out, launch = shard_for_launch(args, config, "detect")
        rule = stop_rule_from_args(args)
        loaded = load_for(args)
        result = run_detection(loaded, config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                               until_stable=rule, launch=launch)
        summary, scores = result.summary, result.scores
        if launch is not None:
            summary = finish(launch, args.out, merge_runs)
            if not launch.is_main:
                return 0
            scores = load_scores(args.out)
        print(f"{summary['successes']}/{summary['samples']} samples retrieved the needle; "
              f"{summary['n_retrieval_heads']} of {summary['num_layers'] * summary['num_heads']} heads score > {summary['retrieval_threshold']}")
        print_top_heads(scores, k=10)
        print(stability_line(summary))
        print(f"results in {args.out}/ (samples.jsonl, head_scores.json, summary.json, stability.png)")
        return 0


def stop_rule_from_args(args):
    """The stop rule of ``--until-stable`` (None without it); bad values are a UserError."""
    from ..sweep.stability import StopRule

    if not args.until_stable:
        return None
    return StopRule(k=args.stable_k, stability=args.stability, min_successes=args.min_successes,
                    drop_after=args.drop_after)


def stability_line(summary: dict) -> str:
    """One line: how stable the result is, and whether (and where) the run stopped early."""
    info = summary["stability"]
    if info["topk_jaccard"] is None:
        return "stability: no successful samples yet"
    line = (f"stability after {info['samples']} samples ({info['successes']} successful): top-{info['k']} "
            f"{info['topk_jaccard']:.3f}, retrieval set {info['retrieval_jaccard']:.3f} (bootstrap Jaccard)")
    if summary["stopped_early"]:
        line += (f"; stopped early after {summary['samples_run']} of {summary['grid_samples']} samples "
                 f"(--resume without --until-stable runs the rest)")
    return line
