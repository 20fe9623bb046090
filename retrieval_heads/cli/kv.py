"""``retrieval-heads kv-eval``: NIAH accuracy against KV bytes for a retrieval-head-aware cache."""

from __future__ import annotations

from .base import Command
from .common import add_sweep_args, load_for, numbers, out_dir, sweep_config_from_args
from .tables import format_table


class KvEval(Command):
    name = "kv-eval"
    help = ("NIAH score vs KV-cache bytes: full KV for retrieval KV heads, sink + window for the rest, "
            "against random heads and uniform streaming at the same bytes")

    def add_arguments(self, parser):
        from ..kveval import DEFAULT_BUDGETS
        from ..kvpolicy import POLICIES

        add_sweep_args(parser, command="kv-eval")
        g = parser.add_argument_group("KV cache")
        g.add_argument("--scores", required=True, help="head scores: a detection run directory or a score file")
        g.add_argument("--budgets", default=",".join(f"{b:g}" for b in DEFAULT_BUDGETS),
                       help="fractions of KV heads kept full, comma separated")
        g.add_argument("--sink", type=int, default=64, help="first tokens every streaming head keeps")
        g.add_argument("--window", type=int, default=384, help="recent tokens every streaming head keeps")
        g.add_argument("--prefill", default="full", choices=["lambda", "chunk", "full"],
                       help="what streaming heads see while prefilling: lambda = sink + the window before each token "
                            "(chunk-size independent, as when decoding); chunk = sink + window + the whole current "
                            "chunk (StreamingLLM-style); full = everything, evicted when decoding starts "
                            "(the default: keeps accuracy, but the prefill still peaks at a full cache)")
        g.add_argument("--policies", default=",".join(POLICIES), help=f"subset of {','.join(POLICIES)}")
        g.add_argument("--seed", type=int, default=0, help="seed of the random-heads baseline")
        g.add_argument("--prefill-per-condition", action="store_true",
                       help="prefill every prompt again for each condition (with --prefill full one prefill per prompt "
                            "serves every condition by default); each condition then runs in its own process, so its "
                            "peak RSS is its own")
        g.add_argument("--no-isolate", action="store_true",
                       help="with a prefill per condition, run them all in this process (peak RSS then carries over)")

    def run(self, args) -> int:
        from ..errors import UserError
        from ..formats import load_scores
        from ..kveval import run_kv_eval

        config = sweep_config_from_args(args)
        budgets = numbers(args.budgets, float, "--budgets")
        if any(not 0 <= b <= 1 for b in budgets):
            raise UserError("--budgets are fractions of KV heads in [0, 1]")
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        scores = load_scores(args.scores)
        loaded = load_for(args)
        summary = run_kv_eval(loaded, config, out_dir(args, "kv-eval"), scores, budgets=budgets, policies=policies,
                              sink=args.sink, window=args.window, prefill=args.prefill, seed=args.seed,
                              isolate=not args.no_isolate,
                              share_prefill=not args.prefill_per_condition, resume=args.resume, overwrite=args.overwrite,
                              progress=not args.quiet)
        print(f"{summary['model']}, lengths {config.lengths}, sink {args.sink}, prefill {args.prefill}")
        headers = ["policy", "budget", "full KV heads", "window", "KV bytes %", "mean score", "peak RSS MB", "decode tok/s"]
        print(format_table(headers, [
            [r["policy"], f"{r['budget']:g}", r["num_full_kv_heads"], "-" if r["window"] is None else r["window"],
             _pct(r["kv_fraction"]), _num(r["mean_score"]), _num(r["peak_rss_mb"], 0), _num(r["decode_tokens_per_s"], 2)]
            for r in summary["rows"]]))
        print(f"results in {args.out}/ (summary.json, kv_frontier.png, one NIAH run per condition and length)")
        return 0


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


COMMANDS = [KvEval]
