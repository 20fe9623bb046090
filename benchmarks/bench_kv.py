"""Memory and speed of the head-wise KV cache against DynamicCache on one long synthetic prompt.

Each cache runs in a fresh spawned process (so peak RSS is its own): chunked prefill of ``--tokens``
random tokens, then ``--steps`` greedy decode steps. Reports stored KV bytes, peak KV bytes, peak RSS,
prefill seconds and decode tokens/s.

    python benchmarks/bench_kv.py --model smollm2-135m --tokens 4096 --scores /tmp/detect_kv --budget 0.2
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor


def measure(model_name: str, full, tokens: int, chunk: int, steps: int, sink: int, window: int, threads: int) -> dict:
    import torch

    from retrieval_heads.kvcache import HeadwiseAttention, HeadwiseCache, StatsDynamicCache, cache_stats
    from retrieval_heads.kveval import peak_rss_mb
    from retrieval_heads.models import load_model

    torch.set_num_threads(threads)
    model = load_model(model_name).model
    rss_model = peak_rss_mb()
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), HeadwiseAttention(model):
        cache = StatsDynamicCache(config=model.config) if full is None else HeadwiseCache(model.config, full, sink=sink, window=window)
        start = time.perf_counter()
        for pos in range(0, tokens, chunk):
            logits = model(input_ids=ids[:, pos:pos + chunk], cache=cache, use_cache=True, logits_to_keep=1).logits
        prefill_s = time.perf_counter() - start
        token = logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(steps):
            token = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        decode_s = time.perf_counter() - start
    return {**cache_stats(cache), "prefill_s": prefill_s, "decode_tokens_per_s": steps / decode_s,
            "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": rss_model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scores", default=None, help="head scores (run dir or file); default: first KV heads")
    parser.add_argument("--budget", type=float, default=0.2, help="fraction of KV heads kept full")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    from transformers import AutoConfig

    from retrieval_heads.formats import kv_level, load_scores
    from retrieval_heads.kvpolicy import eligible_layers, top_fraction
    from retrieval_heads.models import converted_dir
    from retrieval_heads.zoo import looks_like_zoo_name

    config = AutoConfig.from_pretrained(str(converted_dir(args.model)) if looks_like_zoo_name(args.model) else args.model)
    text = config.get_text_config()
    shape = (text.num_hidden_layers, text.num_key_value_heads)
    kv = kv_level(load_scores(args.scores), shape[1]) if args.scores else -np.arange(shape[0] * shape[1]).reshape(shape)
    plan = top_fraction(kv, args.budget, eligible=eligible_layers(config), sink=args.sink, window=args.window)
    rows = []
    for label, full in (("DynamicCache", None), (f"headwise {args.budget:g}", plan.full)):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            r = pool.submit(measure, args.model, full, args.tokens, args.chunk, args.steps, args.sink, args.window,
                            args.threads).result()
        rows.append((label, r))
    base = rows[0][1]["kv_bytes"]
    print(f"{args.model}, {args.tokens} prompt tokens + {args.steps} decode steps, sink {args.sink}, window {args.window}")
    print(f"{'cache':>16} {'KV MiB':>8} {'KV %':>6} {'peak KV MiB':>11} {'peak RSS MiB':>12} {'RSS after load':>14} "
          f"{'prefill s':>9} {'decode tok/s':>12}")
    for label, r in rows:
        print(f"{label:>16} {r['kv_bytes'] / 2**20:8.1f} {100 * r['kv_bytes'] / base:6.1f} {r['peak_kv_bytes'] / 2**20:11.1f} "
              f"{r['peak_rss_mb']:12.0f} {r['rss_after_load_mb']:14.0f} {r['prefill_s']:9.1f} {r['decode_tokens_per_s']:12.2f}")


if __name__ == "__main__":
    main()
