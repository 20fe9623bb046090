"""``retrieval-heads kv-eval``: NIAH accuracy against KV bytes for a retrieval-head-aware cache."""

from __future__ import annotations

from .base import Command, add_json_flag, renamed_values
from .common import add_sweep_args, load_for, numbers, out_dir, sweep_config_from_args
from .tables import format_table


class KvEval(Command):
    name = "kv-eval"
    help = ("NIAH score vs KV-cache bytes: retrieval-aware policies (retrieval KV heads full, HeadKV budgets, "
            "retrieval heads + SnapKV) against random heads, uniform streaming and SnapKV at the same bytes")

    def add_arguments(self, parser):
        from ..kv.evaluate import DEFAULT_BUDGETS
        from ..kv.policy import POLICIES, POOLS, RENAMED, SELECTIONS, TOKEN_RANKINGS, PolicySettings

        defaults = PolicySettings()
        # every prompt decodes alone, in prompt order (which shares most prefix): no --batch-size, no --block-size
        add_sweep_args(parser, command="kv-eval", batch=False, blocks=False)
        g = parser.add_argument_group("KV cache")
        g.add_argument("--scores", required=True,
                       help="head scores: a detect or lookup run directory (lookup scores suit --query-agnostic), "
                            "or a score file")
        g.add_argument("--budgets", default=",".join(f"{b:g}" for b in DEFAULT_BUDGETS),
                       help="fractions of the full cache's KV bytes (global attention layers), comma separated; "
                            "the same for every policy")
        g.add_argument("--policies", default=",".join(POLICIES), help=f"subset of {','.join(POLICIES)}")
        g.add_argument("--query-agnostic", action="store_true",
                       help="compress the context's cache before the question is known, then prefill the question "
                            "into the compressed cache (results under OUT/query-agnostic/)")
        g.add_argument("--sink", type=int, default=defaults.sink, help="first tokens every non-full KV head keeps")
        g.add_argument("--window", type=int, default=defaults.window,
                       help="recent tokens every streaming KV head keeps (retrieval, random)")
        g.add_argument("--obs-window", type=int, default=defaults.obs_window,
                       help="SnapKV's observation window: the last tokens before compression, whose attention "
                            "chooses what the other tokens keep (the token-level policies)")
        g.add_argument("--selection", default=defaults.selection, choices=SELECTIONS,
                       type=renamed_values("--selection", RENAMED["selection"]),
                       help="what chooses the tokens of the token-level policies (snapkv, retrieval-snapkv, headkv, "
                            "adaptive, retrieval-adaptive): window = the "
                            "observation window's attention (SnapKV-style); reread = the attention each token gets "
                            "while the model re-reads the context (KVzip-style; question-agnostic, costs a second "
                            "prefill); reread-chunk = the same scored as KVzip scores (each re-reading row's softmax "
                            "over the chunk it re-reads, 2048 tokens a pass, no pooling). Old names: snapkv, "
                            "reconstruct (deprecated)")
        g.add_argument("--token-ranking", default=defaults.token_ranking, choices=TOKEN_RANKINGS,
                       type=renamed_values("--token-ranking", RENAMED["token_ranking"]),
                       help="whose evidence ranks each KV head's tokens (snapkv, retrieval-snapkv, headkv): own = its "
                            "own; retrieval-heads = the retrieval KV heads' (scoring above 0.1), so every head keeps "
                            "the tokens they attend to (with --selection reread: what they re-read). Old name: "
                            "retrieval (deprecated)")
        g.add_argument("--own-share", type=float, default=defaults.own_share,
                       help="with --token-ranking retrieval-heads: this share of each KV head's chosen tokens (beyond "
                            "sink and window) are its own best, the rest the retrieval heads'")
        g.add_argument("--pool", default=defaults.pool, choices=POOLS,
                       help="adaptive, retrieval-adaptive: which KV heads share one budget that the evidence divides: "
                            "model = all of them (KVzip-style), layer = each layer's (AdaKV-style)")
        g.add_argument("--follow", type=int, default=defaults.follow,
                       help="token-level policies: each token scores as high as the best of the N tokens before it, "
                            "so the N tokens after a well-scored one are kept with it (a value the model copies goes "
                            "on past the token the evidence points at); 0 = the evidence's own scores")
        g.add_argument("--full-share", type=float, default=None,
                       help="retrieval-snapkv, retrieval-adaptive: at most this share of the budget goes to full retrieval "
                            "KV heads "
                            f"(default: the share a restore run given as --scores chose its heads with, so they are "
                            f"the heads kept whole; else {defaults.full_share:g})")
        g.add_argument("--floor-share", type=float, default=defaults.floor_share,
                       help="headkv, adaptive, retrieval-adaptive: every KV head keeps at least this share of an equal "
                            "split of the budget (adaptive: its own best tokens; the evidence divides the rest)")
        g.add_argument("--prefill", default="full", choices=["lambda", "chunk", "full"],
                       help="what streaming heads see while prefilling: lambda = sink + the window before each token "
                            "(chunk-size independent, as when decoding); chunk = sink + window + the whole current "
                            "chunk (StreamingLLM-style); full = everything, evicted when decoding starts "
                            "(the default and the only mode of the token-selection policies: keeps accuracy, but "
                            "the prefill still peaks at a full cache)")
        g.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random-heads baseline")
        g.add_argument("--prefill-per-condition", action="store_true",
                       help="prefill every prompt again for each condition (with --prefill full one prefill per prompt "
                            "serves every condition by default); each condition then runs in its own process, so its "
                            "peak RSS is its own")
        g.add_argument("--no-isolate", action="store_true",
                       help="with a prefill per condition, run them all in this process (peak RSS then carries over)")

    def run(self, args) -> int:
        from ..analysis.formats import load_scores
        from ..kv.evaluate import conditions, full_share_for, run_kv_eval
        from ..kv.policy import PolicySettings, check_budget

        config = sweep_config_from_args(args)
        budgets = numbers(args.budgets, float, "--budgets")
        for budget in budgets:
            check_budget(budget)
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        conditions(policies, budgets)  # unknown names fail before the model loads
        scores = load_scores(args.scores)
        full_share, source = full_share_for(scores, args.full_share)  # None: a restore run's, else the default
        PolicySettings(sink=args.sink, window=args.window, obs_window=args.obs_window, full_share=full_share,
                       floor_share=args.floor_share, selection=args.selection, token_ranking=args.token_ranking,
                       own_share=args.own_share, pool=args.pool, follow=args.follow).check()
        for policy in {"retrieval-snapkv", "retrieval-adaptive"} & set(policies):
            print(f"{policy}: full share {full_share:g} ({'--full-share' if source == 'given' else source})")
        loaded = load_for(args)
        summary = run_kv_eval(loaded, config, out_dir(args, "kv-eval"), scores, budgets=budgets, policies=policies,
                              sink=args.sink, window=args.window, obs_window=args.obs_window,
                              full_share=args.full_share, floor_share=args.floor_share, selection=args.selection,
                              token_ranking=args.token_ranking, own_share=args.own_share, pool=args.pool,
                              follow=args.follow, prefill=args.prefill,
                              query_agnostic=args.query_agnostic, seed=args.seed, isolate=not args.no_isolate,
                              share_prefill=not args.prefill_per_condition, resume=args.resume, overwrite=args.overwrite,
                              progress=not args.quiet)
        print(f"{summary['model']}, lengths {config.lengths}, sink {args.sink}, window {args.window}, "
              f"observation window {args.obs_window}, selection {args.selection}, token ranking {args.token_ranking}"
              f"{f' (own share {args.own_share:g})' if args.token_ranking == 'retrieval-heads' else ''}, "
              f"full share {full_share:g}{f', follow {args.follow}' if args.follow else ''}, prefill {args.prefill}")
        headers = ["setting", "policy", "budget", "full KV heads", "window", "KV bytes %", "mean score", "samples",
                   "peak RSS MB", "decode tok/s"]
        print(format_table(headers, [
            ["query-agnostic" if r.get("query_agnostic") else "question in prompt", r["policy"], f"{r['budget']:g}",
             r["num_full_kv_heads"], _window(r), _pct(r["kv_fraction"]), _num(r["mean_score"]), r["samples"],
             _num(r["peak_rss_mb"], 0), _num(r["decode_tokens_per_s"], 2)]
            for r in summary["rows"]]))
        print(f"results in {args.out}/ (summary.json, kv_frontier.png, one NIAH run per condition and length)")
        return 0


def _window(row: dict) -> str:
    if row.get("obs_window") is not None:
        return f"obs {row['obs_window']}"
    return "-" if row.get("window") is None else str(row["window"])


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


class KvFrontier(Command):
    name = "kv-frontier"
    help = ("a task set's average score against KV bytes from several kv-eval runs (one per task, e.g. RULER's), "
            "with kvpress's presses on the same prompts beside them: one table and one plot, with intervals")

    def add_arguments(self, parser):
        parser.add_argument("runs", nargs="*", metavar="RUN", help="kv-eval output directories, one per task")
        parser.add_argument("--peer", action="append", default=[], metavar="DIR",
                            help="a benchmarks/kvpress_peer.py output directory on the same prompts (repeatable)")
        parser.add_argument("--out", required=True, metavar="DIR",
                            help="where frontier.json, frontier.md and frontier.png go")
        parser.add_argument("--title", default=None, help="the plot's title (default: the tasks' names)")
        add_json_flag(parser)

    def run(self, args) -> int:
        import json

        from ..kv.frontier import frontier, markdown, write_frontier

        result = frontier(args.runs, args.peer)
        paths = write_frontier(result, args.out, title=args.title or ", ".join(result["tasks"]))
        print(json.dumps(result, indent=2) if args.json else markdown(result))
        if not args.json:
            print(f"written: {', '.join(map(str, paths))}")
        return 0


COMMANDS = [KvEval, KvFrontier]
