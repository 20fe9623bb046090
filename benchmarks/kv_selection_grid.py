"""Query-agnostic token-selection grid: many plans on one prefill and one re-reading per prompt, scored by NIAH.

    python benchmarks/kv_selection_grid.py --scores runs/smollm2-135m/lookup \
        --needles benchmarks/data/kv_needles_tune.jsonl --depths 30,70 --out /tmp/grid.jsonl \
        --variants "snapkv:0.15" "headkv:0.15:floor=0.5" "headkv:0.15:floor=0.5:needle" "kvzip:0.15"

``kv-eval --query-agnostic --selection reread`` runs one plan setting per call and re-reads every document
for it (about a minute per 4000-token document on a 2-core CPU). Choosing settings needs many plans on the same
evidence: here each prompt's document is prefilled and re-read once (``prefill.Evidence``, as kv-eval does),
then every variant compresses its own copy, prefills the question and decodes greedily (kv-eval's
``compress`` / ``extend`` / ``Engine.decode``), and is scored as NIAH scores it. A variant is
``POLICY:BUDGET[:floor=F][:full=S][:needle][:guide=mean|max][:own=S][:guides=T][:pool=K][:mix=mean|max]``:

    POLICY   a kv-eval token policy (snapkv, retrieval-snapkv, headkv), ``full``, or ``kvzip``: KVzip's own
             budgets, one ranking of every (KV head, token) re-reading score across heads (each KV head
             keeps at least ``floor`` x the equal share, default 0)
    needle   an oracle, not a selector: the needle's tokens outrank every other token in every compressed
             head (same bytes), to measure how much of the gap to the full cache is token selection
    guide    every head ranks tokens by the retrieval KV heads' (``--scores`` > 0.1) pooled scores, each
             divided by its mean and combined by mean or max: the tokens retrieval heads re-read, kept everywhere
             (``mean`` is ``kv-eval --token-ranking retrieval-heads --own-share 0``)
    own      with guide=mean: this share of each head's chosen tokens are its own best (``--own-share``)
    guides   the score above which a KV head guides (default 0.1; retrieval-snapkv's full heads too)
    pool     the max-pooling kernel of the re-reading scores (default SnapKV's 7; 1: none)
    mix      the same guide added to each head's own mean-normalised scores

``--evidence DIR`` keeps each prompt's re-reading maxima (before pooling) in ``DIR/<id>-<key>.pt``: a later run with
new variants prefills the document again (about 10 s at 4000 tokens) but skips the re-reading (about a minute).
``<key>`` hashes everything the maxima depend on (``evidence_key``: model, dtype, the document's tokens, which
follow from needles, haystack, length and depth, the instruction, window and chunk size), so a run with other
inputs re-reads instead of reusing another run's evidence.
Each (prompt, variant) line goes to ``--out`` (JSONL, resumed by id and variant) with the score, whether
the answer is contained, and the share of the needle's tokens the compressed KV heads keep (all of them, and
the ten with the best ``--scores``). The table at the end: mean score, share of full with a paired bootstrap
interval (2000 resamples), and the paired difference against ``--against``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch


@dataclass(frozen=True)
class Variant:
    label: str
    policy: str
    budget: float | None
    floor: float | None = None
    full_share: float | None = None
    needle: bool = False
    guide: str | None = None  # "mean" / "max": every head ranks by the retrieval KV heads' pooled scores
    mix: str | None = None  # the same guide, added to each head's own (mean-normalised) scores
    pool: int = 7  # max-pooling kernel of the re-reading scores (SnapKV's 7; 1: none)
    guides: float = 0.1  # the guide heads are those scoring above this
    own: float = 0.0  # with guide=mean: this share of each head's chosen tokens by its own ranking first


def parse_variant(text: str) -> Variant:
    parts = text.split(":")
    policy = parts[0]
    budget = float(parts[1]) if len(parts) > 1 else None
    fields = {}
    for part in parts[2:]:
        if part == "needle":
            fields["needle"] = True
        elif part.startswith("floor="):
            fields["floor"] = float(part[6:])
        elif part.startswith("full="):
            fields["full_share"] = float(part[5:])
        elif part.startswith("pool="):
            fields["pool"] = int(part[5:])
        elif part.startswith("guides="):
            fields["guides"] = float(part[7:])
        elif part.startswith("own="):
            fields["own"] = float(part[4:])
            if "guide=mean" not in parts:
                raise SystemExit(f"own= goes with guide=mean (kv-eval's --own-share), in {text!r}")
        elif part.startswith("guide=") or part.startswith("mix="):
            key, value = part.split("=")
            if value not in ("mean", "max"):
                raise SystemExit(f"{key} is mean or max, not {value!r}")
            fields[key] = value
        else:
            raise SystemExit(f"unknown variant option {part!r} in {text!r}")
    return Variant(text, policy, budget, **fields)


def kvzip_counts(observed, eligible: np.ndarray, num_kv_heads: int, budget: float, *, sink: int,
                 floor: float) -> np.ndarray:
    """(layers, kv_heads) tokens kept: sink + window per head, a floor, then one ranking of all heads' scores."""
    total, window = observed.total, observed.window
    layers = np.flatnonzero(eligible).tolist()
    fixed = min(total, sink + window)
    pool = int(round(budget * total)) * len(layers) * num_kv_heads
    base = max(fixed, int(round(floor * budget * total)))
    counts = np.zeros((len(eligible), num_kv_heads), dtype=np.int64)
    counts[layers] = base
    left = pool - counts.sum()
    if left <= 0:
        return counts
    # scores of the candidate tokens beyond each head's first ``base - window`` best (those are kept anyway)
    extra = []
    for layer in layers:
        scores = observed.scores[layer][:, sink:total - window]  # (Hkv, candidates)
        ranked = scores.sort(dim=-1, descending=True).values[:, max(0, base - fixed):]
        extra.append(ranked)
    flat = torch.cat([r.reshape(-1) for r in extra])
    if left >= flat.numel():
        threshold = -float("inf")
    else:
        threshold = torch.topk(flat, int(left)).values[-1].item()
    for i, layer in enumerate(layers):
        counts[layer] += (extra[i] >= threshold).sum(-1).numpy()
    return np.minimum(counts, total)


def needle_first(observed, span: tuple[int, int]):
    """A copy of ``observed`` whose scores rank the needle's tokens [start, end) above every other token."""
    from retrieval_heads.kv.snapkv import Observed

    start, end = span
    scores = {}
    for layer, s in observed.scores.items():
        s = s.clone()
        s[:, start:min(end, s.shape[-1])] += 1e6
        scores[layer] = s
    return Observed(observed.total, observed.window, scores)


def guided(observed, heads: list[tuple[int, int]], how: str, *, mix: bool):
    """``observed.shared_from(heads, how)`` (what ``kv-eval --token-ranking retrieval-heads`` does with ``mean``);
    ``mix``: that guide added to each head's own mean-normalised scores."""
    from retrieval_heads.kv.snapkv import Observed

    shared = observed.shared_from(heads, how)
    if not mix:
        return shared
    return Observed(observed.total, observed.window,
                    {layer: s / s.mean(-1, keepdim=True).clamp_min(1e-12) + shared.scores[layer]
                     for layer, s in observed.scores.items()})


def evidence_key(model: str, dtype: str, document: list[int], evidence, chunk_size: int) -> str:
    """16 hex digits of a hash of everything the re-reading maxima of ``document`` depend on."""
    inputs = {"model": model, "dtype": dtype, "document": document, "instruction": evidence.instruction,
              "window": evidence.window, "chunk_size": chunk_size}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def raw_evidence(engine, evidence, ids: list[int], num_kv_heads: int, path: str | None):
    """``evidence.gather`` (``evidence.pool`` 1: the re-reading maxima, not pooled), with the maxima read from
    ``path`` when it exists (then only the document is prefilled) and written there otherwise."""
    from retrieval_heads.kv.prefill import cache_to_compress
    from retrieval_heads.kv.snapkv import Observed

    if path and os.path.exists(path):
        saved = torch.load(path)
        cache = cache_to_compress(engine, ids, room=len(evidence.instruction) + engine.chunk_size + 1)
        return cache, Observed(saved["total"], saved["window"], saved["scores"])
    cache, observed = evidence.gather(engine, ids, num_kv_heads)
    if path:
        torch.save({"total": observed.total, "window": observed.window, "scores": observed.scores}, path)
    return cache, observed


def pooled(raw, kernel: int):
    from retrieval_heads.kv.snapkv import Observed, pool_scores

    return Observed(raw.total, raw.window, {layer: pool_scores(s, kernel) for layer, s in raw.scores.items()})


def needle_kept(keep: dict, span: tuple[int, int], heads: list[tuple[int, int]] | None = None) -> float:
    """Mean share of the needle's positions the listed (layer, kv head)s keep (all compressed heads: None)."""
    start, end = span
    shares = []
    for layer, per_head in keep.items():
        for h, positions in enumerate(per_head):
            if heads is not None and (layer, h) not in heads:
                continue
            inside = ((positions >= start) & (positions < end)).sum().item()
            shares.append(inside / (end - start))
    return float(np.mean(shares)) if shares else float("nan")


def main() -> None:
    from retrieval_heads.analysis.formats import load_scores
    from retrieval_heads.core.engine import Engine, stop_condition
    from retrieval_heads.core.hooks import AttentionControl
    from retrieval_heads.kv.attention import HeadwiseAttention
    from retrieval_heads.kv.cache import num_kv_heads
    from retrieval_heads.kv.compressed import CompressedCache
    from retrieval_heads.kv.policy import (DEFAULT_OBS_WINDOW, DEFAULT_SINK, SELECTIONS, PolicySettings, current,
                                           eligible_layers, full_plan, make_plan)
    from retrieval_heads.kv.prefill import Evidence, compress, extend, kept_positions
    from retrieval_heads.kv.reconstruct import repeat_ids
    from retrieval_heads.kv.snapkv import ObservationWindow, capture_window, select_positions
    from retrieval_heads.masking.heads import MaskPlan
    from retrieval_heads.masking.niah import niah_record
    from retrieval_heads.models import load_model
    from retrieval_heads.sweep.grid import SweepConfig, prepare
    from retrieval_heads.sweep.haystack import question_start

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scores", required=True, help="a lookup or detect run directory")
    parser.add_argument("--needles", required=True)
    parser.add_argument("--haystack", default=None)
    parser.add_argument("--length", type=int, default=4000)
    parser.add_argument("--depths", default="50")
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--selection", default="reread", choices=SELECTIONS, type=lambda v: current("selection", v),
                        help="what chooses the tokens, as kv-eval --selection (old names snapkv, reconstruct accepted)")
    parser.add_argument("--sink", type=int, default=DEFAULT_SINK)
    parser.add_argument("--obs-window", type=int, default=DEFAULT_OBS_WINDOW)
    parser.add_argument("--against", default=None, help="variant label for the paired differences")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True, help="per-(prompt, variant) JSONL, appended and resumed")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--evidence", default=None,
                        help="directory for each prompt's re-reading maxima (read when there, written otherwise)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = [Variant("full", "full", None)] + [parse_variant(v) for v in args.variants]

    done = {}
    if os.path.exists(args.out):
        for line in open(args.out):
            row = json.loads(line)
            done[(row["id"], row["variant"])] = row
    if not args.table_only:
        loaded = load_model(args.model)
        config = SweepConfig(model=args.model, needles=args.needles, haystack=args.haystack, lengths=[args.length],
                             depths=[float(d) for d in args.depths.split(",")], batch_size=1,
                             max_new_tokens=args.max_new_tokens)
        inputs = prepare(config, loaded.tokenizer, loaded.max_context)
        eligible = eligible_layers(loaded.model.config)
        n_kv = num_kv_heads(loaded.model.config)
        kv_scores = load_scores(args.scores).kv_view(n_kv, "max")
        order = np.argsort(-np.where(eligible[:, None], kv_scores, -np.inf), axis=None)[:10]
        top10 = [(int(i) // n_kv, int(i) % n_kv) for i in order]

        def guide_heads(threshold: float) -> list[tuple[int, int]]:
            return [(int(l), int(h)) for l, h in zip(*np.nonzero((kv_scores > threshold) & eligible[:, None]))]

        if args.evidence:
            os.makedirs(args.evidence, exist_ok=True)
        base = PolicySettings(sink=args.sink, obs_window=args.obs_window, selection=args.selection)
        instruction = repeat_ids(loaded.tokenizer) if args.selection == "reread" else []
        observer = ObservationWindow(args.obs_window) if args.selection == "window" else None
        with HeadwiseAttention(loaded.model), (capture_window(loaded.model, observer) if observer else nullcontext()):
            engine = Engine(loaded.model, AttentionControl(), stop_condition(loaded.tokenizer, loaded.model),
                            chunk_size=config.chunk_size, share_prefix=config.share_prefix)
            evidence = Evidence(args.selection, args.obs_window, observer, instruction, pool=1)  # pooled per variant
            for spec in sorted(inputs.specs, key=lambda s: inputs.prompts[s.id].ids):
                todo = [v for v in variants if (spec.id, v.label) not in done]
                if not todo:
                    continue
                prompt = inputs.prompts[spec.id]
                split = question_start(loaded.tokenizer, prompt)
                if args.selection == "reread":
                    key = evidence_key(args.model, config.dtype, prompt.ids[:split], evidence, engine.chunk_size)
                    path = os.path.join(args.evidence, f"{spec.id}-{key}.pt") if args.evidence else None
                    prefilled, raw = raw_evidence(engine, evidence, prompt.ids[:split], n_kv, path)
                    by_kernel = {}
                else:
                    prefilled, observed = evidence.gather(engine, prompt.ids[:split], n_kv)
                for v in todo:
                    if v.policy == "full":
                        cache, keep = compress(loaded.model.config, prefilled, full_plan(kv_scores.shape, eligible),
                                               None), {}
                    else:
                        if args.selection == "reread":
                            observed = by_kernel.setdefault(v.pool, pooled(raw, v.pool))
                        seen = needle_first(observed, prompt.needle_span) if v.needle else observed
                        package_guide = v.guide == "mean" and not v.mix  # kv-eval --token-ranking retrieval-heads
                        if (v.guide or v.mix) and not package_guide:
                            seen = guided(seen, guide_heads(v.guides), v.guide or v.mix, mix=bool(v.mix))
                        if v.policy == "kvzip":
                            counts = kvzip_counts(seen, eligible, n_kv, v.budget, sink=args.sink,
                                                  floor=v.floor or 0.0)
                            keep = {layer: [select_positions(seen.scores[layer][h], seen.total, int(counts[layer, h]),
                                                             sink=args.sink, window=seen.window)
                                            for h in range(n_kv)] for layer in np.flatnonzero(eligible).tolist()}
                        else:
                            settings = replace(base, **({"floor_share": v.floor} if v.floor is not None else {}),
                                               **({"full_share": v.full_share} if v.full_share is not None else {}),
                                               **({"token_ranking": "retrieval-heads", "threshold": v.guides,
                                                   "own_share": v.own} if package_guide else {}))
                            plan = make_plan(v.policy, v.budget, split, kv_scores=kv_scores, eligible=eligible,
                                             settings=settings)
                            keep = kept_positions(plan, seen)
                        cache = CompressedCache.from_prefilled(loaded.model.config, prefilled, keep)
                    kv_fraction = cache.kv_bytes() / cache.dense_kv_bytes() if keep else 1.0
                    extend(loaded.model, cache, prompt.ids[:-1], split, chunk_size=engine.chunk_size)
                    generation = engine.decode(cache, prompt.ids, args.max_new_tokens, probe=False)
                    record = niah_record(loaded, MaskPlan(), spec, generation, inputs)
                    row = {"id": spec.id, "variant": v.label, "score": record["score"],
                           "contains_answer": record["contains_answer"], "response": record["response"],
                           "kv_fraction": kv_fraction,
                           "needle_kept": needle_kept(keep, prompt.needle_span) if keep else 1.0,
                           "needle_kept_top10": needle_kept(keep, prompt.needle_span, top10) if keep else 1.0}
                    done[(spec.id, v.label)] = row
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
                print(spec.id, " ".join(f"{done[(spec.id, v.label)]['score']:.0f}" for v in variants), flush=True)
            print(f"re-reading {evidence.seconds:.0f} s", flush=True)
    print_table(done, variants, args.against)


def print_table(done: dict, variants: list[Variant], against: str | None) -> None:
    ids = sorted({i for i, v in done if v == "full" and all((i, w.label) in done for w in variants)})
    if not ids:
        print("no complete prompts")
        return
    rng = np.random.default_rng(0)
    boot = rng.integers(0, len(ids), size=(2000, len(ids)))
    full = np.array([done[(i, "full")]["score"] for i in ids])
    ref = np.array([done[(i, against)]["score"] for i in ids]) if against else None
    print(f"{len(ids)} prompts")
    print("| variant | KV bytes | mean score | share of full [95% CI] | contained | needle kept (all / top 10) |"
          + (f" vs {against} |" if against else ""))
    for v in variants:
        s = np.array([done[(i, v.label)]["score"] for i in ids])
        share = s.mean() / full.mean()
        lo, hi = np.percentile(s[boot].mean(1) / full[boot].mean(1), [2.5, 97.5])
        rows = [done[(i, v.label)] for i in ids]
        line = (f"| {v.label} | {np.mean([r['kv_fraction'] for r in rows]):.1%} | {s.mean():.1f} | "
                f"{share:.2f} [{lo:.2f}, {hi:.2f}] | {sum(r['contains_answer'] for r in rows)}/{len(ids)} | "
                f"{np.mean([r['needle_kept'] for r in rows]):.2f} / {np.mean([r['needle_kept_top10'] for r in rows]):.2f} |")
        if ref is not None:
            d = s - ref
            dlo, dhi = np.percentile(d[boot].mean(1), [2.5, 97.5])
            line += f" {d.mean():+.1f} [{dlo:+.1f}, {dhi:+.1f}] |"
        print(line)


if __name__ == "__main__":
    main()
