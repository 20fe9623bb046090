"""Memory and speed of the head-wise and compressed KV caches against DynamicCache on one long synthetic prompt.

Each cache runs in a fresh spawned process (so peak RSS is its own): chunked prefill of ``--tokens``
random tokens, then ``--steps`` greedy decode steps. Reports stored KV bytes, peak KV bytes, peak RSS,
RSS at the end of decoding, prefill seconds and decode tokens/s.

    python benchmarks/bench_kv.py --model smollm2-135m --tokens 4096 --scores /tmp/detect_kv --budget 0.2

``--policy headwise`` (the default) is the original setting: the top ``--budget`` fraction of KV heads
full, the others sink + window from the first token (``prefill="lambda"``). Any ``kv-eval`` policy
(``retrieval``, ``random``, ``uniform``, ``snapkv``, ``retrieval-snapkv``, ``headkv``) takes ``--budget`` as a
fraction of the full cache's KV bytes instead: the prompt is prefilled in full (token-level policies
record SnapKV's observation window on the way), compressed, then decoded, as ``kv-eval`` does.

    python benchmarks/bench_kv.py --tokens 8000 --scores runs/smollm2-135m/lookup --policy snapkv,retrieval-snapkv,headkv \
        --budget 0.15 --full-share 0.8 --sink 64
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from contextlib import nullcontext
from concurrent.futures import ProcessPoolExecutor


def rss_mb() -> float | None:
    """Resident memory of this process now, in MiB."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure(model_name: str, job: dict, tokens: int, chunk: int, steps: int, threads: int) -> dict:
    """``job``: {"cache": "dynamic"} | {"cache": "headwise", "full", "sink", "window", "prefill"} |
    {"cache": "compressed", "plan", "obs_window"}."""
    import torch

    from retrieval_heads.kv.attention import HeadwiseAttention
    from retrieval_heads.kv.cache import HeadwiseCache, StatsDynamicCache, cache_stats, num_kv_heads
    from retrieval_heads.kv.compressed import CompressedCache
    from retrieval_heads.kv.prefill import kept_positions
    from retrieval_heads.kv.records import peak_rss_mb
    from retrieval_heads.kv.snapkv import ObservationWindow, capture_window
    from retrieval_heads.models import load_model

    torch.set_num_threads(threads)
    model = load_model(model_name).model
    rss_model = peak_rss_mb()
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    kind = job["cache"]
    observer = ObservationWindow(job.get("obs_window", 32))
    capture = capture_window(model, observer) if kind == "compressed" else nullcontext()
    with torch.no_grad(), HeadwiseAttention(model), capture:
        if kind == "dynamic":
            cache = StatsDynamicCache(config=model.config)
        elif kind == "headwise":
            cache = HeadwiseCache(model.config, job["full"], sink=job["sink"], window=job["window"],
                                  prefill=job["prefill"])
        else:
            cache = CompressedCache(model.config)
            observer.arm(tokens)
        cache.decoding = False
        start = time.perf_counter()
        for pos in range(0, tokens, chunk):
            logits = model(input_ids=ids[:, pos:pos + chunk], cache=cache, use_cache=True, logits_to_keep=1).logits
        if kind == "compressed":
            cache.compress(kept_positions(job["plan"], observer.take(num_kv_heads(model.config))))
        prefill_s = time.perf_counter() - start
        token = logits[:, -1].argmax(-1, keepdim=True)
        cache.decoding = True
        start = time.perf_counter()
        for _ in range(steps):
            token = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        decode_s = time.perf_counter() - start
    return {**cache_stats(cache), "prefill_s": prefill_s, "decode_tokens_per_s": steps / decode_s,
            "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": rss_model, "rss_end_mb": rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scores", default=None, help="head scores (run dir or file); default: first KV heads")
    parser.add_argument("--policy", default="headwise",
                        help="comma separated: headwise (top --budget fraction of KV heads full, lambda prefill) or "
                             "kv-eval policies: retrieval, random, uniform, snapkv, retrieval-snapkv, headkv")
    parser.add_argument("--budget", type=float, default=0.2,
                        help="headwise: fraction of KV heads kept full; other policies: fraction of the KV bytes")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--obs-window", type=int, default=32)
    parser.add_argument("--full-share", type=float, default=0.5)
    parser.add_argument("--floor-share", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    from transformers import AutoConfig

    from retrieval_heads.formats import kv_level, load_scores
    from retrieval_heads.kv.policy import POLICIES, PolicySettings, eligible_layers, make_plan, top_fraction
    from retrieval_heads.models import converted_dir
    from retrieval_heads.zoo import looks_like_zoo_name

    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    unknown = [p for p in policies if p != "headwise" and p not in POLICIES]
    if unknown or not policies:
        parser.error(f"--policy: headwise or one of {', '.join(POLICIES)} (comma separated), got {args.policy!r}")
    config = AutoConfig.from_pretrained(str(converted_dir(args.model)) if looks_like_zoo_name(args.model) else args.model)
    text = config.get_text_config()
    shape = (text.num_hidden_layers, text.num_key_value_heads)
    kv = kv_level(load_scores(args.scores), shape[1]) if args.scores else -np.arange(shape[0] * shape[1]).reshape(shape)
    eligible = eligible_layers(config)
    settings = PolicySettings(sink=args.sink, window=args.window, obs_window=args.obs_window,
                              full_share=args.full_share, floor_share=args.floor_share)
    jobs = [("DynamicCache", {"cache": "dynamic"}, None)]
    for policy in policies:
        if policy == "headwise":
            plan = top_fraction(kv, args.budget, eligible=eligible, sink=args.sink, window=args.window)
            job = {"cache": "headwise", "full": plan.full, "sink": args.sink, "window": args.window, "prefill": "lambda"}
        else:
            plan = make_plan(policy, args.budget, args.tokens, kv_scores=kv, eligible=eligible, settings=settings)
            job = ({"cache": "compressed", "plan": plan, "obs_window": args.obs_window} if plan.selects_tokens else
                   {"cache": "headwise", "full": plan.full, "sink": plan.sink, "window": plan.window, "prefill": "full"})
        jobs.append((f"{policy} {args.budget:g}", job, plan))
    rows = []
    for label, one, plan in jobs:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            r = pool.submit(measure, args.model, one, args.tokens, args.chunk, args.steps, args.threads).result()
        rows.append((label, r, plan))
    base = rows[0][1]["kv_bytes"]
    print(f"{args.model}, {args.tokens} prompt tokens + {args.steps} decode steps, {args.threads} thread(s); "
          f"sink {args.sink}, window {args.window}, observation window {args.obs_window}")
    print(f"{'cache':>22} {'full KV heads':>13} {'KV MiB':>8} {'KV %':>6} {'peak KV MiB':>11} {'peak RSS MiB':>12} "
          f"{'RSS after load':>14} {'RSS at end':>10} {'prefill s':>9} {'decode tok/s':>12}")
    for label, r, plan in rows:
        end = "-" if r["rss_end_mb"] is None else f"{r['rss_end_mb']:.0f}"
        full = "-" if plan is None else f"{plan.num_full}/{plan.num_eligible}"
        print(f"{label:>22} {full:>13} {r['kv_bytes'] / 2**20:8.1f} {100 * r['kv_bytes'] / base:6.1f} "
              f"{r['peak_kv_bytes'] / 2**20:11.1f} {r['peak_rss_mb']:12.0f} {r['rss_after_load_mb']:14.0f} {end:>10} "
              f"{r['prefill_s']:9.1f} {r['decode_tokens_per_s']:12.2f}")


if __name__ == "__main__":
    main()
