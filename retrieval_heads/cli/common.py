"""Argument groups shared by every command that loads a model or runs a sweep."""

from __future__ import annotations

import argparse

from ..errors import UserError
from ..sweep.grid import DEFAULT_DEPTHS, DEFAULT_LENGTHS, SweepConfig, linear_grid, parse_shard
from ..zoo import DEFAULT_MODEL


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo name, hub id or local directory (default {DEFAULT_MODEL})")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    g.add_argument("--device-map", default=None, help="e.g. 'auto' to spread a large model over several GPUs")
    g.add_argument("--attn-implementation", default=None, metavar="NAME",
                   help="attention kernel to load the model with: sdpa, eager, flash_attention_2 or a "
                        "kernels-hub name (default: what transformers picks for the model); the hooks wrap it")


def add_sweep_args(parser: argparse.ArgumentParser, *, command: str, batch: bool = True, blocks: bool = True,
                   share_prefix: bool = True, resume: bool = True, generates: bool = True) -> None:
    """The model and sweep flags. A command offers only the flags it acts on: ``batch`` (``--batch-size``: it
    decodes several samples together), ``blocks`` (``--block-size``: it runs the grid in an order of its own),
    ``share_prefix`` (``--no-share-prefix``: its prefills reuse the previous prompt's prefix), ``resume``
    (``--resume``: it can continue a run), ``generates`` (``--max-new-tokens``: it generates answers). Flags left out read as their defaults (``sweep_config_from_args``)."""
    add_model_args(parser)
    g = parser.add_argument_group("sweep")
    g.add_argument("--needles", default=None, help="needles JSONL (needle, question, real_needle) or a named set, "
                   "ruler:TASK[:seed=S][:n=N], TASK one of RULER's niah_single_1|2|3, niah_multikey_1|2|3, "
                   "niah_multivalue, niah_multiquery, vt, cwe, fwe, qa_1, qa_2 (docs/data-sources.md); "
                   "default: built-in set")
    g.add_argument("--haystack", default=None, help="a name (python-docs, paul-graham, paul-graham-niah, ruler-noise), a .txt file or a "
                   "directory of them; default: the needle set's own, else python-docs")
    g.add_argument("--lengths", default=None, help=f"context lengths in tokens, comma separated (default {','.join(map(str, DEFAULT_LENGTHS))})")
    g.add_argument("--min-length", type=int, default=None)
    g.add_argument("--max-length", type=int, default=None)
    g.add_argument("--num-lengths", type=int, default=None)
    g.add_argument("--depths", default=None, help=f"needle depths in percent, comma separated (default {','.join(f'{d:g}' for d in DEFAULT_DEPTHS)}; "
                   "ruler:vt, cwe, fwe, qa_1 and qa_2 have no needle and no depth)")
    g.add_argument("--num-depths", type=int, default=None, help="evenly spaced depths from 0 to 100")
    if generates:
        g.add_argument("--max-new-tokens", type=int, default=SweepConfig.max_new_tokens,
                       help=f"greedy answer budget in tokens (default {SweepConfig.max_new_tokens})")
    g.add_argument("--chunk-size", type=int, default=512, help="prefill chunk in tokens")
    if share_prefix:
        g.add_argument("--no-share-prefix", action="store_true", help="prefill every prompt from scratch")
    if batch:
        g.add_argument("--batch-size", type=int, default=4, help="samples decoded together (default 4)")
    g.add_argument("--shard", default="0/1", help="run part i of n of the grid, e.g. 1/4")
    if blocks:
        g.add_argument("--block-size", type=int, default=None, metavar="N",
                       help="run the grid in blocks of N samples, each balanced over needles, lengths and depths "
                            "(default: 20 with detect --until-stable, else one block in prompt order, which shares "
                            "most prefix)")
    add_run_args(g, command, "samples", resume=resume)


def add_run_args(group, command: str, unit: str, *, resume: bool = True) -> None:
    """``--out``, ``--resume`` (unless ``resume`` is False), ``--overwrite``, ``--quiet``: where results go and what
    happens to earlier ones."""
    group.add_argument("--out", default=None, help=f"output directory (default runs/<model>/{command})")
    if resume:
        group.add_argument("--resume", action="store_true", help=f"skip {unit} already finished in --out")
    group.add_argument("--overwrite", action="store_true", help="discard results already in --out")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def add_stop_args(parser: argparse.ArgumentParser, *, replay: bool = False):
    """The stopping rule of ``detect --until-stable``; ``replay``: ``analyze``'s, replaying that rule on a score
    file (``--until-stable`` is the switch there too, ``--stability S`` the target everywhere). Returns the group."""
    from ..sweep.stability import DEFAULT_DROP_AFTER, DEFAULT_K, DEFAULT_MIN_SUCCESSES, DEFAULT_STABILITY
    from .base import add_alias, add_was_switch

    g = parser.add_argument_group("stopping rule replay (--until-stable)" if replay else "stopping early")
    until = g.add_argument(
        "--until-stable", action="store_true",
        help="instead of the analysis: replay detect --until-stable's rule on random orders of the file's samples"
        if replay else "stop after the first block of samples at which the top-K heads are stable under a bootstrap")
    g.add_argument("--stable-k", type=int, default=DEFAULT_K, metavar="K",
                   help=f"size of the top-K set checked (default {DEFAULT_K})")
    stability = dict(default=DEFAULT_STABILITY, metavar="S",
                     help=f"mean bootstrap Jaccard of the top-K set to reach (default {DEFAULT_STABILITY:g})")
    if replay:  # analyze --stability was the switch; bare (or before the positional) it still is, deprecated
        target = add_was_switch(g, "--stability", switch=until, type=float, spill="source", **stability)
        add_alias(g, "--target", target, nargs=None, const=None)
    else:
        g.add_argument("--stability", type=float, **stability)
    g.add_argument("--min-successes", type=int, default=DEFAULT_MIN_SUCCESSES, metavar="N",
                   help=f"never stop with fewer successful samples (default {DEFAULT_MIN_SUCCESSES})")
    if not replay:
        g.add_argument("--drop-after", type=int, default=DEFAULT_DROP_AFTER, metavar="N",
                       help="leave out the rest of a needle's samples once N of them failed and none succeeded "
                            f"(default {DEFAULT_DROP_AFTER}; 0: never)")
    return g


def numbers(text: str, kind, flag: str) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, got '{text}'") from None
    if not values:
        raise UserError(f"{flag} is empty")
    return values


def lengths_from_args(args) -> list[int]:
    if args.lengths:
        lengths = numbers(args.lengths, int, "--lengths")
    elif args.min_length is not None or args.max_length is not None or args.num_lengths is not None:
        if args.min_length is None or args.max_length is None:
            raise UserError("--min-length and --max-length go together")
        lengths = [int(round(x)) for x in linear_grid(args.min_length, args.max_length, args.num_lengths or 10)]
    else:
        lengths = list(DEFAULT_LENGTHS)
    if min(lengths) <= 0:
        raise UserError("context lengths must be positive")
    return lengths


def depths_from_args(args) -> list[float]:
    if args.depths:
        return numbers(args.depths, float, "--depths")
    if args.num_depths is not None:
        return [round(d, 2) for d in linear_grid(0.0, 100.0, args.num_depths)]
    return list(DEFAULT_DEPTHS)


def sweep_config_from_args(args) -> SweepConfig:
    """The sweep flags as a validated SweepConfig (needles and haystack are read and checked here)."""
    from ..sweep.grid import check_inputs, grid_depths

    # flags a command does not offer read as SweepConfig's defaults (what its runs have always recorded)
    max_new_tokens = getattr(args, "max_new_tokens", SweepConfig.max_new_tokens)
    if max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    batch_size = getattr(args, "batch_size", SweepConfig.batch_size)
    block_size = getattr(args, "block_size", None)
    if args.chunk_size < 1 or batch_size < 1:
        raise UserError("--chunk-size and --batch-size must be at least 1")
    if block_size is not None and block_size < 0:
        raise UserError("--block-size must be 0 (one block) or positive")
    config = SweepConfig(
        model=args.model,
        needles=args.needles,
        haystack=args.haystack,
        lengths=lengths_from_args(args),
        depths=depths_from_args(args),
        max_new_tokens=max_new_tokens,
        dtype=args.dtype,
        device=args.device,
        chunk_size=args.chunk_size,
        share_prefix=not getattr(args, "no_share_prefix", False),
        batch_size=batch_size,
        shard=parse_shard(args.shard),
        block_size=block_size or 0,
    )
    needle_set, _ = check_inputs(config)
    if not needle_set.has_depth:  # a task with no needle: one sample per length, recorded at NO_DEPTH
        if args.depths or args.num_depths is not None:
            raise UserError(f"{needle_set.name} has no needle depth (it builds its own context); drop "
                            f"{'--depths' if args.depths else '--num-depths'}")
        config.depths = grid_depths(needle_set, config.depths)
    return config


def load_for(args):
    """Load the model named by ``--model`` with the device flags."""
    from ..models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                      attn_implementation=args.attn_implementation)


def out_dir(args, command: str) -> str:
    """``--out``, or ``runs/<model>/<command>`` when it was not given."""
    if args.out:
        return args.out
    safe = args.model.replace("/", "_").strip("._") or "model"
    args.out = f"runs/{safe}/{command}"
    return args.out


def add_mask_args(parser: argparse.ArgumentParser) -> None:
    """The head-masking flags shared by ``niah``, ``mask-sweep`` and ``tasks``."""
    g = parser.add_argument_group("head masking")
    g.add_argument("--scores", default=None, help="head scores: a detection run directory or a score file (JSON/CSV)")
    g.add_argument("--mask-top", type=int, default=None, metavar="K", help="ablate the K best retrieval heads")
    g.add_argument("--mask-random", type=int, default=None, metavar="K",
                   help="ablate K random heads drawn from the non-retrieval heads (score <= 0.1) outside the top K")
    g.add_argument("--mask-heads", default=None, metavar="L-H,...", help="ablate these heads, e.g. 16-19,11-15")
    g.add_argument("--mask-mode", default="uniform", choices=["uniform", "zero"],
                   help="uniform: zero the query (attend uniformly, the paper's); zero: zero the head's output")
    g.add_argument("--mask-phase", default="decode", choices=["decode", "all"],
                   help="decode: only while generating (the paper's); all: prefill too")
    g.add_argument("--random-per-sample", action="store_true", help="draw new random heads for every sample")
    g.add_argument("--seed", type=int, default=0, help="seed of the random head draw")


def mask_plan_from_args(args, num_layers: int, num_heads: int, applicable=None):
    """The masking flags as a MaskPlan, checked against the model's shape (``applicable``: heads that exist)."""
    from ..analysis.formats import load_scores
    from ..masking.heads import plan_masking

    scores = load_scores(args.scores) if args.scores else None
    return plan_masking(
        num_layers=num_layers, num_heads=num_heads, scores=scores, mask_top=args.mask_top,
        mask_random=args.mask_random, mask_heads=args.mask_heads, seed=args.seed, per_sample=args.random_per_sample,
        applicable=applicable,
    )


def control_from_args(args):
    """An AttentionControl carrying ``--mask-mode`` and ``--mask-phase`` (heads are set per run)."""
    from ..core.hooks import AblationMode, AblationPhase, AttentionControl

    return AttentionControl(mode=AblationMode(args.mask_mode), phase=AblationPhase(args.mask_phase))


def shard_for_launch(args, config, command: str):
    """Under torchrun/accelerate, give this rank its shard, its GPU and its own output directory.

    Returns (output directory of this process, Launch or None). An explicit ``--shard`` wins.
    """
    from ..sweep.distributed import current_launch

    out = out_dir(args, command)
    launch = current_launch()
    if launch is None or args.shard != "0/1":
        return out, None
    config.shard = (launch.rank, launch.world_size)
    args.device = config.device = launch.device(args.device)
    return str(launch.shard_dir(out)), launch
