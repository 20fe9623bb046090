"""``retrieval-heads ground``: which words of an answer were copied from the context, from where, and which not."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .base import Command, add_json_flag
from .common import add_model_args, add_run_args, load_for, out_dir
from .tables import format_table


class Ground(Command):
    name = "ground"
    help = "ground answers in their context with the retrieval heads: per-token provenance and a grounding score"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from ..grounding.grounder import DEFAULT_MAX_NEW_TOKENS, DEFAULT_THRESHOLD
        from ..grounding.prompt import STYLES

        g = parser.add_argument_group("grounding")
        source = g.add_mutually_exclusive_group(required=True)
        source.add_argument("--items", metavar="FILE.jsonl",
                            help='one {"context", "question", optional "answer", "id", "label"} per line; '
                                 "without an answer the model answers greedily")
        source.add_argument("--run", metavar="DIR", help="ground every sample of a detect, niah or tasks run in its own prompt")
        g.add_argument("--scores", required=True, help="head scores: a detection run directory or a score file")
        g.add_argument("--top-k", type=int, default=None, metavar="K",
                       help="use the K best heads (default: every head scoring above 0.1)")
        g.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                       help=f"token threshold on the weighted share of heads copying it (default {DEFAULT_THRESHOLD})")
        g.add_argument("--prompt", choices=STYLES, default="document",
                       help="--items prompts: document (as NIAH prompts, default) or task (as task prompts)")
        g.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                       help=f"budget of greedy answers (default {DEFAULT_MAX_NEW_TOKENS})")
        g.add_argument("--chunk-size", type=int, default=512, help="prefill chunk in tokens")
        add_run_args(g, "ground", "items")
        add_json_flag(parser)
        add_model_args(parser)

    def run(self, args: argparse.Namespace) -> int:
        import json

        from ..analysis.formats import load_scores
        from ..grounding.grounder import Grounder
        from ..grounding.items import load_items, run_items
        from ..grounding.run import ground_items

        if args.max_new_tokens < 1 or args.chunk_size < 1:
            raise UserError("--max-new-tokens and --chunk-size must be at least 1")
        scores = load_scores(args.scores)
        items = load_items(args.items) if args.items else None
        out = out_dir(args, "ground")
        loaded = load_for(args)
        if items is None:
            items = run_items(args.run, loaded.tokenizer, loaded.max_context)
        grounder = Grounder.from_scores(loaded, scores, top_k=args.top_k, threshold=args.threshold,
                                        chunk_size=args.chunk_size)
        identity = {"model": loaded.name, "scores": str(args.scores), "source": args.items or args.run}
        summary = ground_items(grounder, items, out, style=args.prompt,
                               max_new_tokens=args.max_new_tokens, identity=identity, resume=args.resume,
                               overwrite=args.overwrite, progress=not args.quiet)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary, out))
        return 0


def format_summary(summary: dict, out: str) -> str:
    mean = summary["mean_grounding"]
    heads = ", ".join(f"{h['layer']}-{h['head']}" for h in summary["heads_used"])
    lines = [f"{summary['model']}: {summary['n']} items, mean grounding {'-' if mean is None else f'{mean:.3f}'} "
             f"(token threshold {summary['threshold']}; heads {heads})"]
    if summary.get("auroc"):
        rows = [[r["score"], "-" if r["auroc"] is None else f"{r['auroc']:.3f}",
                 "-" if r["ci_low"] is None else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]", r["n"], r["positives"]]
                for r in summary["auroc"]]
        lines.append(format_table(["score", "AUROC", "95% CI (bootstrap)", "n", "correct"], rows))
    lines.append(f"results in {out}/ (results.jsonl, summary.json, report.html); {summary['wall_seconds']} s")
    return "\n".join(lines)


COMMANDS = [Ground]
