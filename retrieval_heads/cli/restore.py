"""``retrieval-heads restore``: choose the KV heads that, kept whole, best restore a compressed cache's answer."""

from __future__ import annotations

from ..errors import UserError
from .base import Command, add_alias
from .common import add_sweep_args, load_for, numbers, out_dir, sweep_config_from_args


class Restore(Command):
    name = "restore"
    help = ("choose KV heads to keep whole for a cache compressed before the question is known: greedily, by the "
            "gradient of the full cache's answer log-probability in per-head gates between whole and SnapKV-"
            "compressed attention (DuoAttention-style); kv-eval --query-agnostic --scores DIR keeps them whole")

    def add_arguments(self, parser):
        from ..kv.policy import DEFAULT_OBS_WINDOW, DEFAULT_SINK

        add_sweep_args(parser, command="restore", batch=False, blocks=False, share_prefix=False, resume=False)
        g = parser.add_argument_group("restore")
        budgets = g.add_argument("--budgets", default="0.15", metavar="B",
                                 help="the fraction of the full cache's KV bytes the compressed cache holds, as in "
                                      "kv-eval --budgets; restore chooses heads for one budget (default 0.15)")
        add_alias(g, "--budget", budgets)
        g.add_argument("--full-share", type=float, default=0.8,
                       help="share of the budget for whole KV heads: how many heads are chosen, as kv-eval's "
                            "retrieval-snapkv splits it; kv-eval --scores DIR uses the same share (default 0.8)")
        g.add_argument("--steps", type=int, default=None, help="number of KV heads to choose (default: from the above)")
        g.add_argument("--sink", type=int, default=DEFAULT_SINK, help="first tokens every compressed KV head keeps")
        g.add_argument("--obs-window", type=int, default=DEFAULT_OBS_WINDOW,
                       help="the document's last tokens, whose attention chooses what compressed heads keep")

    def run(self, args) -> int:
        from ..kv.restore import run_restore

        budgets = numbers(args.budgets, float, "--budgets")
        if len(budgets) != 1:
            raise UserError(f"restore chooses heads for one budget; --budgets {args.budgets} names {len(budgets)} "
                            "(run restore once per budget)")
        config = sweep_config_from_args(args)
        out = out_dir(args, "restore")
        loaded = load_for(args)
        result = run_restore(loaded, config, out, budget=budgets[0], full_share=args.full_share, sink=args.sink,
                             obs_window=args.obs_window, steps=args.steps, overwrite=args.overwrite,
                             progress=not args.quiet)
        s = result.summary
        print(f"{s['samples']} prompts; answer log-probability per token {s['objective_all_compressed']:.3f} with "
              f"every KV head compressed, {s['objective_chosen']:.3f} with {len(s['chosen_kv_heads'])} whole")
        print("KV heads, in the order chosen: " + ", ".join(s["chosen_kv_heads"]))
        print(f"results in {out}/ (steps.jsonl, head_scores.json, summary.json)")
        return 0


COMMANDS = [Restore]
