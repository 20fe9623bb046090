"""``retrieval-heads niah`` and ``retrieval-heads mask-sweep``: the paper's causal test."""

from __future__ import annotations

from .base import Command
from .common import (
    add_mask_args,
    add_sweep_args,
    control_from_args,
    load_for,
    mask_plan_from_args,
    out_dir,
    shard_for_launch,
    sweep_config_from_args,
)
from .tables import format_table


class Niah(Command):
    name = "niah"
    help = "needle-in-a-haystack evaluation, optionally with heads masked"

    def add_arguments(self, parser):
        add_sweep_args(parser, command="niah")
        add_mask_args(parser)

    def run(self, args) -> int:
        from ..masking.niah import run_niah
        from ..sweep.distributed import finish
        from .merge import merge_runs

        config = sweep_config_from_args(args)
        out, launch = shard_for_launch(args, config, "niah")
        loaded = load_for(args)
        plan = mask_plan_from_args(args, loaded.num_layers, loaded.num_heads, loaded.info.applicable())
        result = run_niah(loaded, config, out, plan=plan, control=control_from_args(args),
                          resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
        s = result.summary
        if launch is not None:
            s = finish(launch, args.out, merge_runs)
            if not launch.is_main:
                return 0
        masked = s["masking"]["heads"]
        if not s["samples"]:
            print("no samples in this grid (or shard): nothing to score")
            return 0
        print(f"mean score {s['mean_score']:.1f} over {s['samples']} samples; answer contained in {100 * s['contains_rate']:.0f}%")
        if s["masking"].get("per_sample"):
            print(f"masked ({s['masking']['selection']}): {s['masking']['k']} heads drawn per sample (see results.jsonl)")
        elif masked:
            print(f"masked ({s['masking']['selection']}): {', '.join(masked)}")
        if s["failures"]:
            print("failures: " + ", ".join(f"{k} {v}" for k, v in sorted(s["failures"].items())))
        print(f"results in {args.out}/ (results.jsonl, summary.json, heatmap.png)")
        return 0


class MaskSweep(Command):
    name = "mask-sweep"
    help = "NIAH score vs K masked heads: top-K retrieval heads against K random heads (the paper's Fig. 7)"

    def add_arguments(self, parser):
        from ..masking.sweep import DEFAULT_KS

        add_sweep_args(parser, command="mask-sweep")
        g = parser.add_argument_group("masking")
        g.add_argument("--scores", required=True, help="head scores: a detection run directory or a score file")
        g.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="values of K (capped at the model's heads)")
        g.add_argument("--mask-mode", default="uniform", choices=["uniform", "zero"])
        g.add_argument("--mask-phase", default="decode", choices=["decode", "all"])
        g.add_argument("--random-per-sample", action="store_true",
                       help="draw new random heads for every sample (averages over many head sets)")
        g.add_argument("--seed", type=int, default=0)

    def run(self, args) -> int:
        from ..analysis.formats import load_scores
        from ..masking.heads import check_shape
        from ..masking.sweep import run_mask_sweep
        from .common import numbers

        config = sweep_config_from_args(args)
        ks = numbers(args.ks, int, "--ks")
        scores = load_scores(args.scores)
        loaded = load_for(args)
        check_shape(scores, loaded.num_layers, loaded.num_heads)
        summary = run_mask_sweep(loaded, config, out_dir(args, "mask-sweep"), scores, ks=ks, control=control_from_args(args),
                                 seed=args.seed, per_sample=args.random_per_sample, resume=args.resume,
                                 overwrite=args.overwrite, progress=not args.quiet)
        table = {}
        for row in summary["rows"]:
            table.setdefault(row["k"], {})[row["selection"]] = row["mean_score"]
        rows = [[k, v.get("top", v.get("none")), v.get("random", v.get("none"))] for k, v in sorted(table.items())]
        print(format_table(["K", "top-K masked", "random-K masked"], rows))
        print(f"results in {args.out}/ (summary.json, mask_sweep.png, one NIAH run per condition)")
        return 0


COMMANDS = [Niah, MaskSweep]
