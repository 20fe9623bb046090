"""How far can choosing heads and tokens go, query-agnostic? Answer log-probability bounds at one budget.

    python benchmarks/kv_restore_bounds.py --restore runs/smollm2-135m/restore --lookup runs/smollm2-135m/lookup \
        --needles benchmarks/data/kv_needles_tune.jsonl --depths 50

For each NIAH prompt the document is prefilled once and the full cache's greedy answer decoded (as
``retrieval-heads restore`` does); then the mean log-probability per answer token is measured with the
gated attention of ``kv/restore.py`` (exact, no gradient) under:

    full            every KV head whole
    none            every KV head compressed to the budget's share (SnapKV tokens from the document's end)
    lookup / restore  the heads a lookup or restore run keeps whole (``retrieval-snapkv``'s count), the rest
                    compressed to what is left
    ... +needle     the same, with the needle's tokens added to every compressed head (an oracle: a selection
                    that knew where the answer is)
    ... +stream     compressed heads keep sink + the document's last tokens instead of SnapKV's choice

The gap between ``+needle`` and ``full`` is what no choice of needle tokens can recover at this budget.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main() -> None:
    from retrieval_heads.analysis.formats import load_scores
    from retrieval_heads.kv.policy import eligible_layers, top_count, whole_head_count
    from retrieval_heads.kv.restore import Gates, compressed_count, gating, keep_masks, objective, prepare_sample
    from retrieval_heads.models import load_model
    from retrieval_heads.sweep.grid import SweepConfig, prepare
    from retrieval_heads.sweep.haystack import question_start

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--needles", required=True)
    parser.add_argument("--haystack", default=None)
    parser.add_argument("--length", type=int, default=4000)
    parser.add_argument("--depths", default="50")
    parser.add_argument("--budget", type=float, default=0.15)
    parser.add_argument("--full-share", type=float, default=0.8)
    parser.add_argument("--sink", type=int, default=64)
    parser.add_argument("--obs-window", type=int, default=32)
    parser.add_argument("--restore", default=None, help="a restore run directory")
    parser.add_argument("--lookup", default=None, help="a lookup (or detect) run directory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write per-sample values here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    config = SweepConfig(model=args.model, needles=args.needles, haystack=args.haystack, lengths=[args.length],
                         depths=[float(d) for d in args.depths.split(",")], batch_size=1)
    inputs = prepare(config, loaded.tokenizer, loaded.max_context)
    eligible = eligible_layers(loaded.model.config)
    layers = np.flatnonzero(eligible).tolist()
    heads = len(layers) * loaded.num_kv_heads
    whole_count = whole_head_count(args.full_share, args.budget, heads)
    sets = {"none": np.zeros((len(eligible), loaded.num_kv_heads))}
    for name, path in (("lookup", args.lookup), ("restore", args.restore)):
        if path:
            kv = load_scores(path).kv_view(loaded.num_kv_heads, "max")
            sets[name] = top_count(kv, whole_count, eligible=eligible).full.astype(float)

    samples, spans = [], []
    for spec in inputs.specs:
        prompt = inputs.prompts[spec.id]
        doc_len = question_start(loaded.tokenizer, prompt)
        samples.append(prepare_sample(loaded.model, loaded.tokenizer, spec.id, prompt.ids, doc_len,
                                      obs_window=args.obs_window, max_new_tokens=50))
        spans.append(prompt.needle_span)
        print(spec.id, repr(samples[-1].answer[:70]), flush=True)

    def masks(whole_n: int, mode: str) -> list[dict]:
        found = []
        for sample, (start, end) in zip(samples, spans):
            count = compressed_count(args.budget, heads, whole_n, sample.doc_len)
            keep = keep_masks(sample.observed, layers, count, sink=args.sink)
            for rows in keep.values():
                if mode == "needle":
                    rows[:, start:end] = True
                elif mode == "stream":
                    rows[:] = False
                    rows[:, :args.sink] = True
                    rows[:, sample.doc_len - (count - args.sink):] = True
            found.append(keep)
        return found

    results, state = {}, Gates()
    with gating(loaded.model, state):
        every = np.ones((len(eligible), loaded.num_kv_heads))
        results["full"] = objective(loaded.model, samples, state, masks(0, ""), every, grad=False)[0]
        for name, whole in sets.items():
            whole_n = int(whole[eligible].sum())
            for mode in ("", "needle", "stream"):
                label = name + (f" +{mode}" if mode else "")
                results[label] = objective(loaded.model, samples, state, masks(whole_n, mode), whole, grad=False)[0]
                print(f"{label:<18} {results[label]:.3f}", flush=True)
    print(f"full               {results['full']:.3f}  ({len(samples)} prompts, budget {args.budget:g}, "
          f"{whole_count} KV heads whole)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "ids": [s.id for s in samples], "budget": args.budget,
                       "whole_kv_heads": whole_count}, f, indent=1)


if __name__ == "__main__":
    main()
