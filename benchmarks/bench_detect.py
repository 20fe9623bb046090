"""Detection speed: the paper's one-sample-at-a-time strategy against the sweep engine, same prompts.

(a) baseline, faithful to the paper's code path: one sample at a time, SDPA prefill of the whole
    prompt (standing in for its FlashAttention) with full logits, then decoding with eager attention
    and ``output_attentions=True``, top-1 taken from the returned weights (vectorised per layer,
    which is kinder to the baseline than the paper's Python loop over heads);
(b) the engine: ``run_detection`` (shared-prefix chunked prefill, batched SDPA decoding with the probe).

(c) with ``--until-stable``: the engine with ``detect --until-stable`` defaults (balanced blocks of 20,
    stop when the bootstrap top-20 Jaccard reaches 0.95 with at least 20 successes) on the same grid.

Each side runs in its own subprocess so that peak memory (ru_maxrss, or CUDA max allocated) is its
own. Prints wall time, the ratio, peak memory, the share of time outside forward passes, and the
largest per-head score difference between the two; with ``--until-stable`` also the samples it ran and
the top-10, top-20 and retrieval-set (> 0.1) Jaccard of its heads with the full grid's.

(d) with ``--ceiling``: how reproducible the full grid's own top-10 and top-20 are, from the paper
    strategy's successful samples: two disjoint halves split at random and with no needle in common
    (``stability.split_half``), and random subsets of 20-120 successful samples against the whole
    (``stability.subsample_jaccards``): the agreement any early stop can expect at that many successes.

    python benchmarks/bench_detect.py                      # smollm2-135m, 2 needles x {2000,4000} x 10 depths
    python benchmarks/bench_detect.py --random-llama 1b --device cuda --lengths 16000,32000
    python benchmarks/bench_detect.py --needles-file benchmarks/data/heldout_needles.jsonl --needles 10 \
        --lengths 1000,1500,2000,2500 --num-depths 5 --until-stable --json adaptive.json   # issue 14
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIDES = ("baseline", "engine", "stable")
RANDOM_SHAPES = {  # Llama-style shapes for timing only (weights are random)
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=65536, rope_theta=500000.0),
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--random-llama", choices=sorted(RANDOM_SHAPES), default=None,
                   help="time a randomly initialised Llama of this size (tokenizer of --model)")
    p.add_argument("--needles", type=int, default=2, help="first N needles")
    p.add_argument("--needles-file", default=None, help="needles JSONL (default: the built-in set)")
    p.add_argument("--until-stable", action="store_true", help="also time the engine with --until-stable defaults")
    p.add_argument("--json", default=None, help="write every number (and per-side head means) to this file")
    p.add_argument("--saved", default=None, metavar="DIR",
                   help="keep each side's result in DIR/<side>.json and take the paper strategy's from there when "
                        "its settings match (time it once, then only what changed)")
    p.add_argument("--no-engine", action="store_true",
                   help="with --until-stable: skip the engine's full grid; the full grid's heads come from the "
                        "paper strategy's samples (the same scores up to float rounding)")
    p.add_argument("--ceiling", action="store_true",
                   help="also report how reproducible the full grid's top-10 and top-20 sets are (paper strategy's samples)")
    p.add_argument("--lengths", default="2000,4000")
    p.add_argument("--num-depths", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--only", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def load(args):
    from retrieval_heads.models import LoadedModel, load_model, resolve_dtype

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.random_llama:
        from transformers import LlamaConfig, LlamaForCausalLM

        start = time.perf_counter()
        config = LlamaConfig(vocab_size=len(loaded.tokenizer), **RANDOM_SHAPES[args.random_llama])
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(device=args.device, dtype=resolve_dtype(args.dtype, args.device)).eval()
        model.set_attn_implementation("sdpa")
        loaded = LoadedModel(model, loaded.tokenizer, f"random-llama-{args.random_llama}", time.perf_counter() - start)
    return loaded


def sweep_config(args, needles_file: str):
    from retrieval_heads.sweep.grid import SweepConfig, linear_grid

    return SweepConfig(model=args.model, needles=needles_file, lengths=[int(x) for x in args.lengths.split(",")],
                       depths=[round(d, 2) for d in linear_grid(0, 100, args.num_depths)], max_new_tokens=args.max_new_tokens,
                       device=args.device, dtype=args.dtype, chunk_size=args.chunk_size, batch_size=args.batch_size)


class ForwardClock:
    """Seconds spent inside the model's top-level forward (synchronised on CUDA)."""

    def __init__(self, model, device: str):
        self.seconds, self._start, self.cuda = 0.0, 0.0, device.startswith("cuda")
        self.handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def _pre(self, *_):
        self._sync()
        self._start = time.perf_counter()

    def _post(self, *_):
        self._sync()
        self.seconds += time.perf_counter() - self._start


@torch.no_grad()
def baseline(loaded, config) -> dict[str, list]:
    """The paper's strategy; returns per-sample head scores and responses by sample id."""
    from transformers import DynamicCache

    from retrieval_heads.core.engine import stop_condition
    from retrieval_heads.core.scoring import retrieval_scores
    from retrieval_heads.sweep.grid import prepare

    model, inputs = loaded.model, prepare(config, loaded.tokenizer, loaded.max_context)
    stop = stop_condition(loaded.tokenizer, model)
    out = {}
    for spec in inputs.specs:
        prompt = inputs.prompts[spec.id]
        ids = torch.tensor([prompt.ids], device=loaded.device)
        model.set_attn_implementation("sdpa")
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :-1], cache=cache, use_cache=True)  # full logits, as the paper's code
        model.set_attn_implementation("eager")
        token, generated, top1 = ids[:, -1:], [], []
        for _ in range(config.max_new_tokens):
            step = model(input_ids=token, cache=cache, use_cache=True, output_attentions=True)
            top1.append(torch.stack([a[0, :, -1].argmax(-1) for a in step.attentions]).cpu())  # (L, H)
            token = step.logits[:, -1].argmax(-1, keepdim=True)
            generated.append(int(token))
            if stop(generated[-1]):
                break
        scores = retrieval_scores(torch.stack(top1), torch.tensor(generated), torch.tensor(prompt.ids), prompt.needle_span)
        out[spec.id] = [scores.tolist(), generated]
    model.set_attn_implementation("sdpa")
    return out


def engine(loaded, config, out_dir: Path, until_stable: bool = False) -> tuple[dict[str, list], dict]:
    """Rows ``id -> [head scores, generated ids, success]`` and the run's summary (timing, stop, means)."""
    from retrieval_heads.detection.detect import run_detection
    from retrieval_heads.io import read_jsonl
    from retrieval_heads.sweep.stability import StopRule

    result = run_detection(loaded, config, out_dir, overwrite=True, progress=False,
                           until_stable=StopRule() if until_stable else None)
    rows = {r["id"]: [r["head_scores"], r["generated_ids"], r["success"]] for r in read_jsonl(out_dir / "samples.jsonl")}
    summary = {k: result.summary.get(k) for k in ("timing", "stopped_early", "samples_run", "grid_samples", "successes",
                                                  "samples", "stability", "samples_skipped", "dropped_needles",
                                                  "prefix_reuse")}
    summary["mean"] = result.scores.mean.tolist()
    return rows, summary


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(args) -> None:
    from retrieval_heads.sweep.haystack import load_needles

    loaded = load(args)
    with tempfile.TemporaryDirectory() as tmp:
        needles = Path(tmp) / "needles.jsonl"
        chosen = load_needles(args.needles_file)[: args.needles]
        needles.write_text("".join(json.dumps(n.__dict__) + "\n" for n in chosen))
        config = sweep_config(args, str(needles))
        clock = ForwardClock(loaded.model, args.device)
        start = time.perf_counter()
        if args.only == "baseline":
            rows, run = baseline(loaded, config), {"timing": {}}
        else:
            rows, run = engine(loaded, config, Path(tmp) / "run", until_stable=args.only == "stable")
        wall = time.perf_counter() - start
    result = {"wall_s": wall, "forward_s": clock.seconds, "peak_mb": peak_memory_mb(args.device), "rows": rows,
              "timing": run["timing"], "run": run, "model": loaded.name, "samples": len(rows)}
    Path(args.result).write_text(json.dumps(result))


SIDE_SETTINGS = ("model", "random_llama", "needles", "needles_file", "lengths", "num_depths", "max_new_tokens",
                 "batch_size", "chunk_size", "device", "dtype")


def run_side(args, side: str) -> dict:
    """One side's result, run in its own process; the paper strategy's is read from ``--saved`` when it ran with
    the same settings."""
    settings = {k: getattr(args, k) for k in SIDE_SETTINGS}
    saved = Path(args.saved) / f"{side}.json" if args.saved else None
    if saved is not None and saved.exists():
        result = json.loads(saved.read_text())
        if result.get("settings") == settings and side == "baseline":
            print(f"{side}: taken from {saved} (run {result.get('date')})")
            return result
    with tempfile.NamedTemporaryFile(suffix=".json") as fh:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--only", side, "--result", fh.name]
        subprocess.run(cmd, check=True)
        result = json.loads(Path(fh.name).read_text())
    result.update(settings=settings, date=time.strftime("%Y-%m-%d %H:%M"))
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(result))
    return result


def main() -> None:
    args = parse()
    if args.only:
        return run_one(args)
    if args.ceiling and not args.until_stable:  # the paper strategy's samples alone
        report = {"args": vars(args), "ceiling": ceiling(*successful_samples(args, run_side(args, "baseline")))}
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        return
    sides = ["baseline"] + ([] if args.no_engine and args.until_stable else ["engine"]) + (["stable"] if args.until_stable else [])
    results = {side: run_side(args, side) for side in sides}
    if "engine" not in results:
        return report_without_engine(args, results)
    base, eng = results["baseline"], results["engine"]
    diffs = [np.abs(np.asarray(base["rows"][k][0]) - np.asarray(eng["rows"][k][0])).max() for k in base["rows"]]
    same_tokens = sum(base["rows"][k][1] == eng["rows"][k][1] for k in base["rows"])
    outside = (eng["wall_s"] - eng["forward_s"]) / eng["wall_s"]
    print(f"model {eng['model']}, {eng['samples']} samples, lengths {args.lengths}, {args.num_depths} depths, "
          f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), "
          f"torch threads {torch.get_num_threads()}")
    print(f"baseline: {base['wall_s']:8.1f} s   peak {base['peak_mb']:8.0f} MB")
    print(f"engine:   {eng['wall_s']:8.1f} s   peak {eng['peak_mb']:8.0f} MB   "
          f"(prefill {eng['timing'].get('prefill_s', 0):.1f} s, decode {eng['timing'].get('decode_s', 0):.1f} s, "
          f"reused {eng['timing'].get('reused_tokens', 0)} of {eng['timing'].get('reused_tokens', 0) + eng['timing'].get('prefilled_tokens', 0)} prefill tokens)")
    print(f"speed-up: {base['wall_s'] / eng['wall_s']:.2f}x")
    print(f"engine time outside forward passes: {100 * outside:.1f}%")
    print(f"largest per-head score difference: {max(diffs):.3g}; identical generations: {same_tokens}/{len(diffs)}")
    report = {"args": vars(args), "threads": torch.get_num_threads(), "diff": float(max(diffs)), "same_tokens": same_tokens,
              **{side: {k: v for k, v in r.items() if k != "rows"} for side, r in results.items()}}
    if args.until_stable:
        report["stable_vs_full"] = compare_stable(results, base)
    if args.ceiling:
        report["ceiling"] = ceiling(*successful_samples(args, base))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def report_without_engine(args, results: dict) -> None:
    """``--no-engine``: the paper strategy against ``--until-stable``, the full grid's heads from the former's samples."""
    base = results["baseline"]
    print(f"model {base['model']}, {base['samples']} samples, lengths {args.lengths}, {args.num_depths} depths, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"baseline: {base['wall_s']:8.1f} s   peak {base['peak_mb']:8.0f} MB")
    report = {"args": vars(args), "threads": torch.get_num_threads(),
              **{side: {k: v for k, v in r.items() if k != "rows"} for side, r in results.items()}}
    report["stable_vs_full"] = compare_stable(results, base, full_mean=baseline_mean(args, base))
    if args.ceiling:
        report["ceiling"] = ceiling(*successful_samples(args, base))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def successful_samples(args, base: dict) -> tuple[np.ndarray, list[int]]:
    """(n, layers * heads) scores of the paper strategy's successful samples (needle recall as the engine
    scores it) and each one's needle."""
    from transformers import AutoTokenizer

    from retrieval_heads.core.scoring import is_success, rouge1_recall
    from retrieval_heads.models import pull
    from retrieval_heads.sweep.haystack import load_needles
    from retrieval_heads.zoo import looks_like_zoo_name

    tokenizer = AutoTokenizer.from_pretrained(pull(args.model) if looks_like_zoo_name(args.model) else args.model)
    needles = load_needles(args.needles_file)[: args.needles]
    chosen, which = [], []
    for sample_id, (scores, generated) in base["rows"].items():
        index = int(sample_id.split("-")[0][1:])
        response = tokenizer.decode(generated, skip_special_tokens=True).strip()
        if is_success(rouge1_recall(needles[index].real_needle, response)):
            chosen.append(scores)
            which.append(index)
    print(f"paper strategy: {len(chosen)} of {len(base['rows'])} samples retrieved the needle")
    return np.asarray(chosen, dtype=np.float64), which


def baseline_mean(args, base: dict) -> list:
    """Mean head scores over the paper strategy's successful samples."""
    return successful_samples(args, base)[0].mean(axis=0).tolist()


def ceiling(samples: np.ndarray, needles: list[int], sizes=(20, 40, 60, 80, 120), draws: int = 500) -> dict:
    """Print and return how reproducible the full grid's top-10 and top-20 sets are (see the module docstring)."""
    from retrieval_heads.sweep.stability import set_jaccards, split_half

    full = samples.mean(axis=0)
    out = {"successes": len(samples), "split_half": {}, "subsets": []}
    for k in (10, 20):
        out["split_half"][f"top{k}"] = {"samples": split_half(samples, k, draws=draws),
                                        "needles": split_half(samples, k, groups=needles, draws=draws)}
    rng = np.random.default_rng(0)
    for n in (m for m in sizes if m < len(samples)):
        pairs = [[set_jaccards(samples[rng.choice(len(samples), n, replace=False)].mean(axis=0), full, k)[0]
                  for k in (10, 20)] for _ in range(draws)]
        top10, top20 = np.asarray(pairs).T
        out["subsets"].append({"successes": n, "top10_mean": float(top10.mean()), "top20_mean": float(top20.mean()),
                               "top20_at_least_0.9": float((top20 >= 0.9 - 1e-9).mean())})
    print(f"reproducibility of the full grid ({len(samples)} successful samples, {draws} draws):")
    for k in (10, 20):
        half = out["split_half"][f"top{k}"]
        print(f"  top-{k}: two halves at random {half['samples']:.3f}, two halves with no needle in common "
              f"{half['needles']:.3f}")
    for row in out["subsets"]:
        print(f"  {row['successes']:4d} random successful samples vs the whole: top-10 {row['top10_mean']:.3f}, "
              f"top-20 {row['top20_mean']:.3f} (>= 0.9 in {100 * row['top20_at_least_0.9']:.0f}% of draws)")
    return out


def compare_stable(results: dict, base: dict, full_mean: list | None = None) -> dict:
    """Print and return what ``--until-stable`` ran and how close its heads are to the full grid's
    (the engine's, or ``full_mean``)."""
    from retrieval_heads.sweep.stability import set_jaccards

    stable = results["stable"]
    full = results.get("engine") or {"samples": base["samples"], "wall_s": float("nan"), "run": {"successes": None}}
    a, b = np.asarray(stable["run"]["mean"]), np.asarray(full_mean if full_mean is not None else full["run"]["mean"])
    top10, retrieval = set_jaccards(a, b, 10)
    top20, _ = set_jaccards(a, b, 20)
    out = {"samples_run": stable["samples"], "grid_samples": full["samples"],
           "successes": stable["run"]["successes"], "full_successes": full["run"]["successes"],
           "stopped_early": stable["run"]["stopped_early"], "stability": stable["run"]["stability"],
           "wall_s": stable["wall_s"], "vs_paper_strategy": stable["wall_s"] / base["wall_s"],
           "vs_engine_full": stable["wall_s"] / full["wall_s"],
           "top10_jaccard": top10, "top20_jaccard": top20, "retrieval_jaccard": retrieval}
    print(f"until-stable: {out['samples_run']} of {out['grid_samples']} samples ({out['successes']} successful, "
          f"stopped early: {out['stopped_early']}), {out['wall_s']:.1f} s = {out['vs_paper_strategy']:.3f} of the paper "
          f"strategy's wall time, {out['vs_engine_full']:.3f} of the engine's full grid")
    print(f"until-stable vs full grid: top-10 Jaccard {top10:.3f}, top-20 {top20:.3f}, retrieval set {retrieval:.3f}")
    return out


if __name__ == "__main__":
    main()
