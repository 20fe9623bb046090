"""Memory and speed of the head-wise and compressed KV caches against DynamicCache on one long synthetic prompt.

Each cache runs in a fresh spawned process (so peak RSS is its own): chunked prefill of ``--tokens``
random tokens, then ``--steps`` greedy decode steps. Reports stored KV bytes, peak KV bytes, peak RSS,
RSS at the end of decoding, prefill seconds and decode tokens/s.

    python benchmarks/bench_kv.py --model smollm2-135m --tokens 4096 --scores /tmp/detect_kv --budget 0.2

``--budget`` is a fraction of the full cache's KV bytes for every cache, as ``kv-eval --budgets``.
``--policy headwise`` (the default) is the original setting: the best-scoring KV heads full, as many as
fit the budget at ``--tokens`` tokens with sink + window for the others (``retrieval``'s count), which
stream from the first token (``prefill="lambda"``). Any ``kv-eval`` policy (``retrieval``, ``random``,
``uniform``, ``snapkv``, ``retrieval-snapkv``, ``headkv``) prefills the prompt in full instead (token-level
policies record the observation window on the way), compresses it, then decodes, as ``kv-eval`` does.

    python benchmarks/bench_kv.py --tokens 8000 --scores runs/smollm2-135m/lookup --policy snapkv,retrieval-snapkv,headkv \
        --budget 0.15 --full-share 0.8 --sink 64

``--device cuda`` runs in bfloat16 and reports GPU memory (after loading; peaks while prefilling and while
decoding) instead of RSS. ``--random-init`` builds the model from ``--model``'s config with random weights, for
real shapes whose weights are not here (``benchmarks/shapes.py`` writes such configs); ``--scores random:SEED``
draws long-tailed per-KV-head scores so that ``headkv`` gets ragged budgets:

    python benchmarks/shapes.py llama-3.1-8b /tmp/llama-3.1-8b
    python benchmarks/bench_kv.py --model /tmp/llama-3.1-8b --random-init --device cuda --scores random:0 \
        --tokens 32000 --chunk 4096 --policy snapkv,headkv,uniform --budget 0.15 --sink 64
"""

from __future__ import annotations

import argparse
import json
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


def build_model(model_name: str, *, device: str, random_init: bool):
    """The model in eval mode on ``device``: loaded, or (``random_init``) built with random weights from the
    config in ``model_name`` (a directory or zoo name), for shapes whose weights are not here."""
    import torch

    from retrieval_heads.models import load_model, resolve_dtype

    if not random_init:
        return load_model(model_name, device=device).model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir(model_name))
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype("auto", device))
    return model.eval()


def config_dir(model_name: str) -> str:
    from retrieval_heads.models import converted_dir
    from retrieval_heads.zoo import looks_like_zoo_name

    return str(converted_dir(model_name)) if looks_like_zoo_name(model_name) else model_name


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(model_name: str, job: dict, tokens: int, chunk: int, steps: int, threads: int, device: str = "cpu",
            random_init: bool = False, warmup: int = 0) -> dict:
    """``job``: {"cache": "dynamic"} | {"cache": "headwise", "full", "sink", "window", "prefill"} |
    {"cache": "compressed", "plan", "obs_window"}. ``warmup`` decode steps run before the ``steps`` timed ones.
    On CUDA also the GPU memory after loading and its peaks while prefilling and decoding."""
    import torch

    from retrieval_heads.kv.attention import HeadwiseAttention
    from retrieval_heads.kv.cache import HeadwiseCache, StatsDynamicCache, cache_stats, num_kv_heads
    from retrieval_heads.kv.compressed import CompressedCache
    from retrieval_heads.kv.prefill import kept_positions
    from retrieval_heads.kv.records import peak_rss_mb
    from retrieval_heads.kv.snapkv import ObservationWindow, capture_window

    torch.set_num_threads(threads)
    model = build_model(model_name, device=device, random_init=random_init)
    rss_model = peak_rss_mb()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    gpu_model = torch.cuda.memory_allocated() / 2**20 if cuda else None
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    kind = job["cache"]
    observer = ObservationWindow(job["obs_window"]) if "obs_window" in job else ObservationWindow()
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
        synchronize(device)
        start = time.perf_counter()
        for pos in range(0, tokens, chunk):
            logits = model(input_ids=ids[:, pos:pos + chunk], cache=cache, use_cache=True, logits_to_keep=1).logits
        if kind == "compressed":
            cache.compress(kept_positions(job["plan"], observer.take(num_kv_heads(model.config))))
        synchronize(device)
        prefill_s = time.perf_counter() - start
        token = logits[:, -1].argmax(-1, keepdim=True)
        cache.decoding = True
        for _ in range(warmup):
            token = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        if cuda:
            gpu_prefill_peak = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
            gpu_decode_start = torch.cuda.memory_allocated() / 2**20
        start = time.perf_counter()
        for _ in range(steps):
            token = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        synchronize(device)
        decode_s = time.perf_counter() - start
    gpu = {}
    if cuda:
        gpu = {"gpu_after_load_mb": gpu_model, "peak_gpu_prefill_mb": gpu_prefill_peak,
               "gpu_decode_start_mb": gpu_decode_start,
               "peak_gpu_decode_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {**cache_stats(cache), "prefill_s": prefill_s, "decode_tokens_per_s": steps / decode_s,
            "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": rss_model, "rss_end_mb": rss_mb(), **gpu}


def cache_job(policy: str, budget: float, tokens: int, *, kv_scores, eligible, settings):
    """The ``measure`` job and the plan of ``policy`` at ``budget``, a fraction of the full cache's KV bytes after
    ``tokens`` tokens, whatever the cache: ``headwise`` keeps whole as many of the best-scoring KV heads as fit
    (``retrieval``'s count, with a shrunk window when sink + window alone exceed the bytes) and streams the
    others from the first token; a ``kv-eval`` policy compresses a full prefill as ``kv-eval`` does."""
    from retrieval_heads.kv.policy import make_plan, retrieval_for_bytes

    if policy == "headwise":
        plan = retrieval_for_bytes(kv_scores, budget, tokens, eligible=eligible, sink=settings.sink,
                                   window=settings.window)
        return {"cache": "headwise", "full": plan.full, "sink": plan.sink, "window": plan.recent_window,
                "prefill": "lambda"}, plan
    plan = make_plan(policy, budget, tokens, kv_scores=kv_scores, eligible=eligible, settings=settings)
    if plan.selects_tokens:
        return {"cache": "compressed", "plan": plan, "obs_window": settings.obs_window}, plan
    return {"cache": "headwise", "full": plan.full, "sink": plan.sink, "window": plan.recent_window,
            "prefill": "full"}, plan


def main() -> None:
    from retrieval_heads.kv.policy import DEFAULT_FULL_SHARE, DEFAULT_OBS_WINDOW, DEFAULT_SINK, DEFAULT_WINDOW

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scores", default=None, help="head scores (run dir or file); default: first KV heads")
    parser.add_argument("--policy", default="headwise",
                        help="comma separated: headwise (the best KV heads full, as many as --budget's bytes hold, "
                             "the others streaming from the first token: lambda prefill) or kv-eval policies: "
                             "retrieval, random, uniform, snapkv, retrieval-snapkv, headkv")
    parser.add_argument("--budget", type=float, default=0.2,
                        help="fraction of the full cache's KV bytes, for every cache (headwise: as many full KV heads "
                             "as fit it at --tokens tokens, the others sink + window)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--sink", type=int, default=DEFAULT_SINK)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--obs-window", type=int, default=DEFAULT_OBS_WINDOW)
    parser.add_argument("--full-share", type=float, default=DEFAULT_FULL_SHARE)
    parser.add_argument("--floor-share", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bfloat16 there)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed decode steps first (default: 3 on CUDA, else 0)")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights from --model's config (a directory holding config.json): real shapes "
                             "without their weights")
    args = parser.parse_args()

    import numpy as np
    from transformers import AutoConfig

    from retrieval_heads.analysis.formats import kv_level, load_scores
    from retrieval_heads.kv.policy import POLICIES, PolicySettings, eligible_layers

    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    unknown = [p for p in policies if p != "headwise" and p not in POLICIES]
    if unknown or not policies:
        parser.error(f"--policy: headwise or one of {', '.join(POLICIES)} (comma separated), got {args.policy!r}")
    config = AutoConfig.from_pretrained(config_dir(args.model))
    text = config.get_text_config()
    shape = (text.num_hidden_layers, text.num_key_value_heads)
    if args.scores and args.scores.startswith("random:"):  # a long tail, as retrieval scores have: ragged budgets
        kv = np.random.default_rng(int(args.scores[7:])).exponential(0.03, shape)
    elif args.scores:
        kv = kv_level(load_scores(args.scores), shape[1])
    else:
        kv = -np.arange(shape[0] * shape[1]).reshape(shape)
    eligible = eligible_layers(config)
    settings = PolicySettings(sink=args.sink, window=args.window, obs_window=args.obs_window,
                              full_share=args.full_share, floor_share=args.floor_share)
    jobs = [("DynamicCache", {"cache": "dynamic"}, None)]
    for policy in policies:
        job, plan = cache_job(policy, args.budget, args.tokens, kv_scores=kv, eligible=eligible, settings=settings)
        jobs.append((f"{policy} {args.budget:g}", job, plan))
    warmup = args.warmup if args.warmup is not None else 3 if args.device.startswith("cuda") else 0
    rows = []
    for label, one, plan in jobs:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            r = pool.submit(measure, args.model, one, args.tokens, args.chunk, args.steps, args.threads,
                            args.device, args.random_init, warmup).result()
        rows.append((label, r, plan))
        print(f"{label}: {json.dumps(r)}", flush=True)  # each cache as it finishes, in case a later one does not
    if args.device.startswith("cuda"):
        print_gpu_table(args, rows)
        return
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


def print_gpu_table(args, rows) -> None:
    """One markdown row per cache: KV bytes, GPU memory (after loading, peak while prefilling and compressing,
    peak while decoding), prefill seconds and decode tokens/s."""
    import torch

    base = rows[0][1]["kv_bytes"]
    print(f"{args.model}{' (random weights)' if args.random_init else ''}, {torch.cuda.get_device_name()}, "
          f"{args.tokens} prompt tokens + {args.steps} decode steps; sink {args.sink}, window {args.window}")
    print("| cache | full KV heads | KV held while decoding | peak KV | GPU after load | peak GPU, prefill | "
          "peak GPU, decode | prefill s | decode tok/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r, plan in rows:
        full = "-" if plan is None else f"{plan.num_full}/{plan.num_eligible}"
        print(f"| {label} | {full} | {r['kv_bytes'] / 2**20:.1f} MiB ({100 * r['kv_bytes'] / base:.1f}%) | "
              f"{r['peak_kv_bytes'] / 2**20:.1f} MiB | {r['gpu_after_load_mb']:.0f} MiB | {r['peak_gpu_prefill_mb']:.0f} MiB | "
              f"{r['peak_gpu_decode_mb']:.0f} MiB | {r['prefill_s']:.2f} | {r['decode_tokens_per_s']:.1f} |")


if __name__ == "__main__":
    main()
