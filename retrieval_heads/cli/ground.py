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
        from ..grounding.datasets import DATASETS, DEFAULT_DISTRACTORS, DEFAULT_N, DEFAULT_SEED
        from ..grounding.grounder import DEFAULT_MAX_NEW_TOKENS, DEFAULT_THRESHOLD
        from ..grounding.prompt import STYLES

        g = parser.add_argument_group("grounding")
        source = g.add_mutually_exclusive_group(required=True)
        source.add_argument("--items", metavar="FILE.jsonl",
                            help='one {"context", "question", optional "answer", "id", "label", "gold_answers", '
                                 '"unanswerable"} per line; without an answer the model answers greedily')
        source.add_argument("--run", metavar="DIR", help="ground every sample of a detect, niah or tasks run in its own prompt")
        source.add_argument("--dataset", choices=DATASETS,
                            help="squad2 (SQuAD 2.0 dev, unanswerable questions included) or hotpotqa (HotpotQA "
                                 "distractor dev, with citation recall of the supporting sentences): real questions "
                                 "the model answers greedily, graded against their gold answers; the items are "
                                 "written to OUT/items.jsonl")
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
        d = parser.add_argument_group("--dataset")
        d.add_argument("--n", type=int, default=None, help=f"questions drawn (default {DEFAULT_N})")
        d.add_argument("--item-seed", type=int, default=None,
                       help=f"seed of the drawn questions and of each SQuAD context's paragraphs "
                            f"(default {DEFAULT_SEED})")
        d.add_argument("--answerable-only", action="store_true",
                       help="squad2: leave out the unanswerable questions (default: in their natural proportion)")
        d.add_argument("--distractors", type=int, default=None, metavar="K",
                       help=f"squad2: other paragraphs of the article around the question's "
                            f"(default {DEFAULT_DISTRACTORS})")
        add_run_args(g, "ground", "items")
        add_json_flag(parser)
        add_model_args(parser)

    def run(self, args: argparse.Namespace) -> int:
        import json

        from pathlib import Path

        from ..analysis.formats import load_scores
        from ..grounding.grounder import Grounder
        from ..grounding.items import load_items, run_items, write_items
        from ..grounding.run import ground_items

        if args.max_new_tokens < 1 or args.chunk_size < 1:
            raise UserError("--max-new-tokens and --chunk-size must be at least 1")
        sample = dataset_sample(args)
        scores = load_scores(args.scores)
        identity = {"scores": str(args.scores), "source": args.items or args.run or args.dataset}
        if args.dataset:
            from ..grounding.datasets import build_items, dataset_identity

            items = build_items(args.dataset, **sample)
            identity["dataset"] = dataset_identity(args.dataset, **sample)
        else:
            items = load_items(args.items) if args.items else None
        out = out_dir(args, "ground")
        loaded = load_for(args)
        if items is None:
            items = run_items(args.run, loaded.tokenizer, loaded.max_context)
        grounder = Grounder.from_scores(loaded, scores, top_k=args.top_k, threshold=args.threshold,
                                        chunk_size=args.chunk_size)
        summary = ground_items(grounder, items, out, style=args.prompt,
                               max_new_tokens=args.max_new_tokens, identity={"model": loaded.name, **identity},
                               resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
        if args.dataset:
            write_items(Path(out) / "items.jsonl", items)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary, out))
        return 0


def dataset_sample(args: argparse.Namespace) -> dict:
    """``build_items``' keyword arguments from the --dataset flags; UserError for a flag that would not act."""
    from ..grounding.datasets import DEFAULT_DISTRACTORS, DEFAULT_N, DEFAULT_SEED

    given = [flag for flag, value in (("--n", args.n), ("--item-seed", args.item_seed),
                                      ("--answerable-only", args.answerable_only or None),
                                      ("--distractors", args.distractors)) if value is not None]
    if not args.dataset:
        if given:
            raise UserError(f"{', '.join(given)} go with --dataset")
        return {}
    squad_only = [flag for flag in given if flag in ("--answerable-only", "--distractors")]
    if args.dataset != "squad2" and squad_only:
        raise UserError(f"{', '.join(squad_only)} go with --dataset squad2")
    sample = {"n": DEFAULT_N if args.n is None else args.n,
              "seed": DEFAULT_SEED if args.item_seed is None else args.item_seed}
    if args.dataset == "squad2":
        sample.update(unanswerable=not args.answerable_only,
                      distractors=DEFAULT_DISTRACTORS if args.distractors is None else args.distractors)
    return sample


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
    if summary.get("verdicts"):
        lines.append("verdicts: " + ", ".join(f"{k} {v}" for k, v in summary["verdicts"].items()))
    for group, cited in (summary.get("citations") or {}).items():
        rows = [[m["metric"], "-" if m["mean"] is None else f"{m['mean']:.3f}",
                 "-" if m["ci_low"] is None else f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]", m["n"]]
                for m in cited["metrics"]]
        lines.append(f"supporting sentences cited, {group} answers ({cited['answers']}, {cited['uncited']} citing "
                     "nothing):")
        lines.append(format_table(["metric", "mean", "95% CI (bootstrap)", "n"], rows))
    paid = summary.get("forward_passes_per_answer")
    if paid:
        lines.append("forward passes per answer: " + ", ".join(f"{k} {v:g}" for k, v in paid.items()))
    lines.append(f"results in {out}/ (results.jsonl, summary.json, report.html); {summary['wall_seconds']} s")
    return "\n".join(lines)


class GroundEval(Command):
    name = "ground-eval"
    help = ("compare hallucination detectors on ground runs: AUROC of the grounding and its baselines, regressions "
            "fitted on one run and measured on others")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--fit", required=True, metavar="DIR",
                            help="ground run whose labelled answers fit the regressions and the flagging thresholds")
        parser.add_argument("--on", required=True, nargs="+", metavar="DIR",
                            help="ground runs to measure every detector on (the fit run itself gives in-sample numbers)")
        parser.add_argument("--out", metavar="FILE.json", help="also write the comparison as JSON")
        add_json_flag(parser)

    def run(self, args: argparse.Namespace) -> int:
        import json

        from ..grounding.evaluate import evaluate_runs
        from ..io import write_text_atomic

        summary = evaluate_runs(args.fit, args.on)
        if args.out:
            write_text_atomic(args.out, json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary, indent=2) if args.json else format_comparison(summary))
        return 0


def format_comparison(summary: dict) -> str:
    fit = summary["fit"]
    lines = [f"fitted on {fit['run']} ({fit['labelled']} labelled answers, {fit['correct']} correct)"]
    for test in summary["tests"]:
        same = " (in-sample)" if test["run"] == fit["run"] else ""
        lines.append(f"\n{test['run']}{same}: {test['labelled']} labelled answers, {test['correct']} correct")
        rows = [[r["score"], _num(r["auroc"]), "-" if r["ci_low"] is None else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                 _num(r["balanced_accuracy"])] for r in test["rows"]]
        lines.append(format_table(["detector", "AUROC", "95% CI (bootstrap)", "balanced accuracy at the fit threshold"],
                                  rows))
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


COMMANDS = [Ground, GroundEval]
