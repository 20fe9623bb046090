"""``kv-eval``: NIAH accuracy against KV bytes for head-wise caches and their same-budget baselines.

For every condition (``full``; then ``retrieval``, ``random`` and ``uniform`` at each budget) and
every context length, one NIAH run goes to ``OUT/<condition>/L<length>/``. Each length gets its own
run because the ``uniform`` baseline sizes its window from the context length so its bytes match the
budget. With ``prefill="full"`` (the default) the prefill is the same under every plan, so each prompt
is prefilled once and every condition decodes from its own head-wise copy (``kvshared``); otherwise
each condition is an ordinary ``run_niah`` with a ``cache_factory``. Next to each run:

    kv_plan.json     the plan (refuses to resume under a different plan)
    kv_samples.jsonl one line per finished sample: tokens, stored and dense-equivalent KV bytes,
                     peak KV bytes, decode steps
    kv_timing.json   decode seconds and steps, prefill seconds and tokens, summed over invocations, and
                     the peak RSS of the process that ran them

``OUT/summary.json`` holds ``rows``, one per (policy, budget), and ``OUT/kv_frontier.png`` the
frontier. With a prefill per condition and ``isolate``, every condition runs in a fresh spawned
process so its peak RSS is its own (model load included); in-process the peak is reset through
``/proc/self/clear_refs`` where Linux allows it and includes allocator memory kept from earlier
conditions (with a shared prefill every row reports the one process's peak).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import UserError
from .formats import kv_level
from .io import append_jsonl, read_jsonl, write_json_atomic
from .kvpolicy import (
    POLICIES,
    KvPlan,
    eligible_layers,
    full_plan,
    heads_for_fraction,
    matching_uniform,
    random_plan,
    top_fraction,
)
from .models import LoadedModel
from .scores import HeadScores
from .sweep import SweepConfig

DEFAULT_BUDGETS = (0.1, 0.25, 0.5)
SAMPLES, TIMING, PLAN = "kv_samples.jsonl", "kv_timing.json", "kv_plan.json"


@dataclass(frozen=True)
class Condition:
    """One line of the frontier: a policy at a budget (fraction of eligible KV heads kept full)."""

    policy: str
    budget: float | None = None

    @property
    def name(self) -> str:
        return self.policy if self.budget is None else f"{self.policy}-{self.budget:g}"


def conditions(policies: list[str], budgets: list[float]) -> list[Condition]:
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise UserError(f"unknown policy {unknown[0]!r}; choose from {', '.join(POLICIES)}")
    found = [Condition("full")] if "full" in policies else []
    for budget in budgets:
        found += [Condition(p, budget) for p in ("retrieval", "random", "uniform") if p in policies]
    return found


def plan_for(condition: Condition, tokens: int, *, kv_scores: np.ndarray, eligible: np.ndarray, sink: int,
             window: int, seed: int) -> KvPlan:
    """The plan of ``condition`` for prompts of about ``tokens`` tokens (only ``uniform`` depends on it)."""
    shape = kv_scores.shape
    if condition.policy == "full":  # no streaming head: sink and window do not apply (nor tie its runs)
        return full_plan(shape, eligible)
    retrieval = top_fraction(kv_scores, condition.budget, eligible=eligible, sink=sink, window=window)
    if condition.policy == "retrieval":
        return retrieval
    if condition.policy == "random":
        count = heads_for_fraction(condition.budget, retrieval.num_eligible)
        return random_plan(shape, count, eligible=eligible, seed=seed, sink=sink, window=window,
                           budget=condition.budget)
    return matching_uniform(retrieval, tokens)


def run_kv_eval(
    loaded: LoadedModel,
    config: SweepConfig,
    out: str | Path,
    scores: HeadScores,
    *,
    budgets: list[float] = list(DEFAULT_BUDGETS),
    policies: list[str] = list(POLICIES),
    sink: int = 64,
    window: int = 384,
    prefill: str = "full",
    seed: int = 0,
    isolate: bool = False,
    share_prefill: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Run NIAH under every condition and length; write ``summary.json`` and ``kv_frontier.png``.

    ``scores``: per-query-head retrieval scores (or KV-level ones); a KV head takes the max of its group.
    ``prefill``: what streaming heads see while prefilling, ``lambda``, ``chunk`` or ``full`` (see ``kvcache``).
    ``share_prefill``: with ``prefill="full"`` (same prefill under every plan) prefill each prompt once for
    all conditions, in this process (``kvshared``); otherwise every condition prefills on its own, each in
    a fresh process when ``isolate`` (so its peak RSS is its own).
    """
    from .kvshared import run_shared
    from .kvcache import PREFILL_MODES
    from .plots.kv import frontier_plot

    if sink < 0 or window < 0:
        raise UserError("--sink and --window must be non-negative")
    if prefill not in PREFILL_MODES:
        raise UserError(f"--prefill must be one of {', '.join(PREFILL_MODES)}, not {prefill!r}")
    out = Path(out)
    kv_scores = kv_level(scores, loaded.num_kv_heads, "max")
    if kv_scores.shape != (loaded.num_layers, loaded.num_kv_heads):
        raise UserError(f"scores are {kv_scores.shape[0]} layers x {kv_scores.shape[1]} KV heads, the model has "
                        f"{loaded.num_layers} x {loaded.num_kv_heads}")
    eligible = eligible_layers(loaded.model.config)
    plans = {}
    for cond in conditions(policies, budgets):
        by_length = {length: plan_for(cond, length, kv_scores=kv_scores, eligible=eligible, sink=sink, window=window,
                                      seed=seed) for length in config.lengths}
        if cond.policy != "full":  # the full cache has no streaming heads: its runs are shared by every --prefill
            by_length = {length: replace(plan, prefill=prefill) for length, plan in by_length.items()}
        plans[cond] = by_length
    shared = share_prefill and prefill == "full"
    if shared:
        found = run_shared(loaded, config, out, {cond.name: p for cond, p in plans.items()}, resume=resume,
                           overwrite=overwrite, progress=progress)
        results = {cond: found[cond.name] for cond in plans}
    else:
        results = {}
        for cond, by_length in plans.items():
            job = dict(config=config, out=out / cond.name, plans=by_length, resume=resume, overwrite=overwrite,
                       progress=progress)
            results[cond] = _isolated(loaded.name, job) if isolate else run_condition(loaded, **job, reset_rss=True)
    rows = summarize(results)
    summary = {"model": loaded.name, "config": config.to_dict(), "sink": sink, "window": window, "prefill": prefill,
               "seed": seed, "budgets": list(budgets), "shared_prefill": shared, "isolated": isolate and not shared,
               "eligible_layers": int(eligible.sum()),
               "kv_heads_per_layer": loaded.num_kv_heads, "rows": rows}
    write_json_atomic(out / "summary.json", summary)
    lengths = "/".join(str(l) for l in config.lengths)
    frontier_plot(rows, out / "kv_frontier.png",
                  title=f"{loaded.name}: NIAH vs KV bytes ({lengths} tokens, sink {sink}, {prefill} prefill)")
    return summary


def run_condition(loaded: LoadedModel, *, config: SweepConfig, out: Path, plans: dict[int, KvPlan], resume: bool,
                  overwrite: bool, progress: bool, reset_rss: bool = False) -> dict:
    """One condition at every length of ``config``: NIAH runs plus their KV statistics."""
    from .kvcache import HeadwiseAttention, HeadwiseCacheFactory
    from .niah import run_niah

    if reset_rss:
        reset_peak_rss()
    by_length = []
    with HeadwiseAttention(loaded.model) as attention:
        for length, plan in plans.items():
            run_dir = Path(out) / f"L{length}"
            check_plan(run_dir, plan, resume=resume, overwrite=overwrite)
            found: list[dict] = []

            def done(stats: dict, run_dir=run_dir, found=found) -> None:
                found.append(stats)
                append_jsonl(run_dir / SAMPLES, stats)

            full = None if plan.policy == "full" else plan.full
            factory = HeadwiseCacheFactory(attention, full, sink=plan.sink, window=plan.window,
                                           prefill=plan.prefill or "lambda", on_done=done)
            one = replace(config, lengths=[length])
            if hasattr(one, "batch_size"):
                one = replace(one, batch_size=1)  # custom caches decode one prompt at a time anyway
            result = run_niah(loaded, one, run_dir, resume=resume, overwrite=overwrite, progress=progress,
                              cache_factory=factory)
            factory.close()
            timing = add_timing(run_dir, result.summary["timing"], found)
            by_length.append(length_stats(length, plan, result.summary, list(read_jsonl(run_dir / SAMPLES)), timing))
    return {"plan": plans[max(plans)].describe(), "by_length": by_length, "peak_rss_mb": peak_rss_mb()}


def check_plan(run_dir: Path, plan: KvPlan, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix plans in one run directory; reset the KV statistics on overwrite."""
    from .niah import RESULTS

    described = plan.describe()
    saved_path = run_dir / PLAN
    results = run_dir / RESULTS
    if results.exists() and results.stat().st_size and not (resume or overwrite):
        raise UserError(f"{run_dir} already holds results; pass --resume to continue them or --overwrite to start "
                        "again")
    if overwrite:
        for name in (SAMPLES, TIMING):
            (run_dir / name).unlink(missing_ok=True)
    elif resume and saved_path.exists():
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        if saved != json.loads(json.dumps(described)):
            raise UserError(f"cannot resume {run_dir}: it was run with another KV plan (see {saved_path})")
    write_json_atomic(saved_path, described)


def add_timing(run_dir: Path, timing: dict, found: list[dict]) -> dict:
    """Add this invocation's decode/prefill work to ``kv_timing.json``; keep the peak RSS of invocations that ran."""
    path = run_dir / TIMING
    saved = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    new = {"decode_s": timing.get("decode_s", 0.0), "decode_steps": sum(s["decode_steps"] for s in found),
           "prefill_s": timing.get("prefill_s", 0.0), "prefilled_tokens": timing.get("prefilled_tokens", 0)}
    total = {k: saved.get(k, 0) + v for k, v in new.items()}
    peaks = [saved.get("peak_rss_mb")] + ([peak_rss_mb()] if found else [])  # a resume with nothing to do: not a peak
    total["peak_rss_mb"] = max((p for p in peaks if p is not None), default=None)
    write_json_atomic(path, total)
    return total


def length_stats(length: int, plan: KvPlan, summary: dict, samples: list[dict], timing: dict) -> dict:
    def mean(key):
        return float(np.mean([s[key] for s in samples])) if samples else None

    return {
        "context_length": length, "window": plan.window, "samples": summary["samples"],
        "mean_score": summary["mean_score"], "kv_bytes": mean("kv_bytes"), "dense_kv_bytes": mean("dense_kv_bytes"),
        "peak_kv_bytes": max((s["peak_kv_bytes"] for s in samples), default=None), "tokens": mean("tokens"),
        "planned_byte_fraction": plan.byte_fraction(length),
        "decode_tokens_per_s": timing["decode_steps"] / timing["decode_s"] if timing["decode_s"] else None,
        "prefill_tokens_per_s": timing["prefilled_tokens"] / timing["prefill_s"] if timing["prefill_s"] else None,
        "decode_s": timing["decode_s"], "decode_steps": timing["decode_steps"], "peak_rss_mb": timing["peak_rss_mb"],
    }


def summarize(results: dict[Condition, dict]) -> list[dict]:
    """One row per condition; ``full_kv_bytes`` from the ``full`` condition when it ran (else dense-equivalent)."""
    full = next((r for c, r in results.items() if c.policy == "full"), None)
    full_bytes = {l["context_length"]: l["kv_bytes"] for l in full["by_length"]} if full else {}
    rows = []
    for cond, result in results.items():
        parts = result["by_length"]
        n = sum(p["samples"] for p in parts)
        kv = [p["kv_bytes"] for p in parts if p["kv_bytes"] is not None]
        reference = [full_bytes.get(p["context_length"], p["dense_kv_bytes"])
                     for p in parts if p["kv_bytes"] is not None]
        steps, seconds = sum(p["decode_steps"] for p in parts), sum(p["decode_s"] for p in parts)
        plan = result["plan"]
        rows.append({
            "policy": cond.policy,
            "budget": plan["budget"] if cond.policy == "uniform" else (1.0 if cond.budget is None else cond.budget),
            "heads_budget": cond.budget,
            "num_full_kv_heads": plan["num_full_kv_heads"],
            "window": plan["window"] if cond.policy != "full" else None,
            "sink": plan["sink"] if cond.policy != "full" else None,
            "prefill": plan["prefill"],
            "samples": n,
            "mean_score": sum(p["mean_score"] * p["samples"] for p in parts if p["samples"]) / n if n else None,
            "kv_bytes": float(np.mean(kv)) if kv else None,
            "full_kv_bytes": float(np.mean(reference)) if reference else None,
            "kv_fraction": float(np.mean(kv) / np.mean(reference)) if kv and np.mean(reference) else None,
            "peak_kv_bytes": max((p["peak_kv_bytes"] for p in parts if p["peak_kv_bytes"] is not None), default=None),
            "peak_rss_mb": max((p["peak_rss_mb"] for p in parts if p["peak_rss_mb"] is not None),
                               default=result["peak_rss_mb"]),
            "decode_tokens_per_s": steps / seconds if seconds else None,
            "by_length": parts,
            "full_kv_heads": plan["full_kv_heads"],
        })
    return rows


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM, falling back to ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _isolated(model_name: str, job: dict) -> dict:
    """Run ``run_condition`` in a fresh spawned process that loads ``model_name`` itself."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_child, model_name, job).result()


def _child(model_name: str, job: dict) -> dict:
    import torch

    from .models import load_model

    config = job["config"]
    loaded = load_model(model_name, dtype=config.dtype, device=config.device)
    with torch.no_grad():
        start = time.perf_counter()
        result = run_condition(loaded, **job)
    result["wall_s"] = time.perf_counter() - start
    return result
