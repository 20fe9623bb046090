"""``analyze``, ``compare``, ``report`` and ``convert``: thin commands over analysis, formats and report."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .base import Command, add_json_flag
from .tables import format_table as table


class Analyze(Command):
    name = "analyze"
    help = "sparsity, dynamic activation and KV-head view of a run's (or a score file's) retrieval heads"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        # nargs="?" only so that the old ``analyze --stability RUN`` still finds its run (see add_stop_args)
        parser.add_argument("source", metavar="RUN_OR_SCORES", nargs="?", default=argparse.SUPPRESS,
                            help="run directory, or a .json/.csv/.tsv score file")
        _add_top(parser)
        _add_kv_heads(parser)
        add_json_flag(parser)
        parser.add_argument("--plots", metavar="DIR", help="also write the figures as PNG files into DIR")
        _add_stability(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ..analysis import properties
        from ..analysis.formats import load_scores
        from ..errors import UserError

        if not hasattr(args, "source"):
            raise UserError("analyze needs RUN_OR_SCORES: a run directory or a score file")
        scores = load_scores(args.source, num_kv_heads=args.kv_heads)
        if args.until_stable:
            return _run_stability(scores, args)
        kv = scores.meta.get("num_kv_heads")
        result = properties.analyze(scores, top=args.top, num_kv_heads=kv)
        if properties.has_per_sample_scores(scores):
            from ..sweep.stability import reproducibility

            result["reproducibility"] = reproducibility(scores, args.top)
        if args.plots:
            from ..analysis.report import write_plots

            result["plots"] = [str(p.path) for p in write_plots(scores, args.plots, top=args.top, num_kv_heads=kv)]
        print(json.dumps(result, indent=2) if args.json else format_analysis(result))
        return 0


class Compare(Command):
    name = "compare"
    help = "correlation, top-K overlap and Jaccard of two models' retrieval heads"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("a", metavar="A", help="run directory or score file")
        parser.add_argument("b", metavar="B", help="run directory or score file of the same shape")
        _add_top(parser)
        _add_kv_heads(parser, extra=" (used to compare query-head scores with a KV-head TSV)")
        add_json_flag(parser)
        parser.add_argument("--plot", metavar="FILE.png", help="also write a scatter plot of the two score maps")

    def run(self, args: argparse.Namespace) -> int:
        from ..analysis.formats import as_kv_level, load_scores
        from ..analysis.properties import compare, is_kv_level

        a, b = load_scores(args.a), load_scores(args.b)
        if is_kv_level(a) != is_kv_level(b):
            a, b = as_kv_level(a, args.kv_heads), as_kv_level(b, args.kv_heads)
        result = compare(a, b, top=args.top).to_dict()
        result.update(a=args.a, b=args.b)
        if args.plot:
            from ..analysis.plots import comparison_scatter

            label_a, label_b = a.model or "A", b.model or "B"
            if label_a == label_b:
                label_a, label_b = f"A ({label_a})", f"B ({label_b})"
            result["plot"] = str(comparison_scatter(
                a.mean, b.mean, args.plot, label_a=label_a, label_b=label_b,
                title=f"{label_a} vs {label_b}: Pearson {_num(result['pearson'])}"))
        print(json.dumps(result, indent=2) if args.json else format_comparison(result))
        return 0


class Report(Command):
    name = "report"
    help = "write one self-contained HTML report of a run directory"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", metavar="RUN_DIR", help="a detection run directory")
        parser.add_argument("--out", metavar="DIR",
                            help="output directory: the report goes to DIR/report.html (default: RUN_DIR)")
        _add_top(parser)

    def run(self, args: argparse.Namespace) -> int:
        from pathlib import Path

        from ..analysis.report import REPORT, build_report
        from .base import warn_deprecated

        target = None
        if args.out is not None:
            target = Path(args.out)
            if target.suffix.lower() == ".html":  # --out was the file itself
                warn_deprecated("--out FILE.html", "--out DIR (the report is DIR/report.html)")
            else:
                target = target / REPORT
        print(build_report(args.run_dir, target, top=args.top))
        return 0


def _add_stability(parser: argparse.ArgumentParser) -> None:
    """detect's stopping rule (``--until-stable``, ``--stable-k``, ``--stability S``, ``--min-successes``) and how
    the replay draws its orders."""
    from .common import add_stop_args

    g = add_stop_args(parser, replay=True)
    g.add_argument("--step", type=_positive_int, default=10, metavar="N", help="check every N samples (default 10)")
    g.add_argument("--orders", type=_positive_int, default=20, metavar="N", help="random orders replayed (default 20)")
    g.add_argument("--seed", type=int, default=0, help="seed of the orders and the bootstrap (default 0)")


def _run_stability(scores, args: argparse.Namespace) -> int:
    from ..analysis.properties import has_per_sample_scores
    from ..errors import UserError
    from ..sweep.stability import StopRule, check_stopping

    if not has_per_sample_scores(scores):
        raise UserError(f"{args.source}: --until-stable needs per-sample scores (a run directory or the paper's JSON)")
    rule = StopRule(k=args.stable_k, stability=args.stability, min_successes=args.min_successes, seed=args.seed,
                    drop_after=0)  # a replay draws from a finished file: nothing to leave out
    result = check_stopping(scores, rule, step=args.step, orders=args.orders, seed=args.seed)
    print(json.dumps(result, indent=2) if args.json else format_stability(result))
    return 0


def format_stability(result: dict) -> str:
    """The ``analyze --until-stable`` result as readable text."""
    rule, k, n = result["rule"], result["rule"]["k"], result["n_samples"]
    layers, heads = result["shape"]
    direct = result["direct"]
    return "\n".join([
        f"{result['model'] or 'scores'}: {n} successful samples, {layers} layers x {heads} heads, "
        f"{result['n_retrieval_heads']} retrieval heads (> 0.1)",
        f"Rule: stop when the top-{k} bootstrap Jaccard ({rule['draws']} draws) reaches {rule['stability']:g} "
        f"with >= {rule['min_successes']} successful samples, checked every {result['step']} samples",
        f"Replayed on {result['orders']} random orders of the samples (seed {result['seed']}):",
        f"  samples needed: median {result['median_samples']} ({100 * result['median_samples'] / n:.0f}% of the file), "
        f"range {result['min_samples']}-{result['max_samples']}; rule never met in {result['never_stopped']} orders",
        f"  top-{k} Jaccard with the full file:       mean {result['topk_jaccard_mean']:.3f}, "
        f"min {result['topk_jaccard_min']:.3f}",
        f"  retrieval-set Jaccard with the full file: mean {result['retrieval_jaccard_mean']:.3f}, "
        f"min {result['retrieval_jaccard_min']:.3f}",
        f"Direct subsampling of {direct['samples']} samples ({direct['draws']} draws): top-{k} Jaccard "
        f"{direct['topk_jaccard']:.3f}, retrieval-set Jaccard {direct['retrieval_jaccard']:.3f}",
    ])


def format_analysis(result: dict) -> str:
    """The ``analyze`` result as readable text tables."""
    shape = result["shape"]
    unit = "KV heads" if shape["level"] == "kv" else "heads"
    total = shape["layers"] * shape["heads"]
    samples = "mean scores only" if result["aggregate"] else f"{result['n_samples']} samples"
    lines = [
        f"{result['model'] or 'scores'}: {shape['layers']} layers x {shape['heads']} {unit}, {samples}",
        "",
        "Sparsity (mean score per head)",
        table(["mean score", unit, "percent"],
              [[b["label"], b["count"], f"{b['percent']:.2f}%"] for b in result["buckets"]]),
        "",
        f"Retrieval heads (mean > {result['threshold']:g}): {result['n_retrieval_heads']} of {total} "
        f"({result['percent_retrieval_heads']:.2f}%)",
        "Per layer: " + (", ".join(f"L{l}: {n}" for l, n in enumerate(result["retrieval_heads_per_layer"]) if n)
                         or "none"),
        "",
        f"Top {len(result['top_heads'])} heads",
        _top_table(result["top_heads"], active=result["activation"] is not None),
    ]
    lines += ["", *_activation_lines(result)]
    if result.get("reproducibility"):
        lines += ["", *_reproducibility_lines(result["reproducibility"])]
    if result["kv_heads"]:
        kv = result["kv_heads"]
        lines += [
            "",
            f"KV heads: {kv['num_kv_heads']} per layer (groups of {kv['group_size']}); "
            f"{kv['n_retrieval_kv_heads']} serve a retrieval head",
            table(["layer", "KV head", "max score"], [[h["layer"], h["head"], h["score"]] for h in kv["top"]]),
        ]
    if result.get("plots"):
        lines += ["", "Plots: " + ", ".join(result["plots"])]
    return "\n".join(lines)


def _reproducibility_lines(rep: dict) -> list[str]:
    def cells(values):
        return ["-" if v is None else f"{v:.3f}" for v in values]

    rows = [["random halves of the samples", *cells(rep["samples"])]]
    if rep["needles"] is not None:
        rows.append(["halves with no needle in common", *cells(rep["needles"])])
    return ["Reproducibility: mean Jaccard of the top-k sets of two disjoint halves (200 random splits)",
            table(["split", *(f"top-{k}" for k in rep["k"])], rows)]


def _top_table(heads: list[dict], *, active: bool) -> str:
    headers = ["rank", "layer", "head", "score"] + (["active"] if active else [])
    rows = [[i + 1, h["layer"], h["head"], h["score"]] + ([h["active_fraction"]] if active else [])
            for i, h in enumerate(heads)]
    return table(headers, rows)


def _activation_lines(result: dict) -> list[str]:
    act = result["activation"]
    if act is None:
        why = "the file holds mean scores only" if result["aggregate"] else "there are no successful samples"
        return [f"Dynamic activation: not available ({why})"]
    always = ", ".join(f"L{h['layer']}H{h['head']}" for h in result["always_active"]) or "none"
    lines = [
        "Dynamic activation (active = score > 0 in a sample)",
        f"Active in all {act['n_samples']} samples: {act['n_always_active']} heads: {always}",
    ]
    if act["n_empty_samples"]:
        lines.append(f"Warning: {act['n_empty_samples']} samples have no active head at all (a needle-span "
                     f"mismatch?); excluding them, {act['n_always_active_nonempty']} heads are always active")
    if act["retrieval_heads"]:
        lines += ["How often each retrieval head is active",
                  table(["layer", "head", "score", "active"],
                        [[h["layer"], h["head"], h["score"], h["active_fraction"]] for h in act["retrieval_heads"]])]
    return lines


def format_comparison(result: dict) -> str:
    """The ``compare`` result as readable text."""
    layers, heads = result["shape"]
    return "\n".join([
        f"A: {result['a']}",
        f"B: {result['b']}",
        f"shape: {layers} layers x {heads} heads",
        f"Pearson r (mean scores):   {_num(result['pearson'])}",
        f"Spearman rho:              {_num(result['spearman'])}",
        f"top-{result['top_k']} overlap:            {result['topk_overlap']} "
        f"({_num(result['topk_overlap_fraction'])})",
        f"retrieval heads (> 0.1):   A {result['n_retrieval_a']}, B {result['n_retrieval_b']}, "
        f"both {result['n_retrieval_both']}, Jaccard {_num(result['jaccard'])}",
        *([f"plot: {result['plot']}"] if result.get("plot") else []),
    ])


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _add_top(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top", type=_positive_int, default=20, metavar="K", help="how many top heads (default 20)")


def _add_kv_heads(parser: argparse.ArgumentParser, extra: str = "") -> None:
    parser.add_argument("--kv-heads", type=_positive_int, metavar="N",
                        help="number of KV heads per layer, for grouped-query models" + extra)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value
