"""``kv-eval``: NIAH accuracy against KV bytes for every policy at the same byte budgets, in two settings.

For every condition (``full``; then each policy at each budget, a fraction of the full cache's KV bytes)
and every context length, one NIAH run goes to ``OUT/<condition>/L<length>/`` (the question inside the
compressed prompt) or ``OUT/query-agnostic/<condition>/L<length>/`` (``query_agnostic``: the context is
compressed before the question is prefilled into the compressed cache). Each length gets its own plans,
because head-level plans size sink + window against the tokens compressed (with a shared prefill: the
median over the length's prompts of the tokens in the cache when it is compressed; token-level plans are
sized per prompt). With ``prefill="full"`` (the default) every plan starts from the same prefill, so each
prompt is prefilled once and every condition compresses and decodes its own copy (``prefill.run_shared``);
otherwise, and with ``share_prefill=False``, each condition prefills for itself. Next to each run, the
files of ``records``.

``OUT/summary.json`` holds ``rows``, one per (setting, policy, budget): the rows of this call, plus the
rows of the other setting left there by an earlier call on the same sweep, so that one summary and
``OUT/kv_frontier.png`` show both settings. With a prefill per condition and ``isolate``, every
condition runs in a fresh spawned process so its peak RSS is its own (model load included); in-process
the peak is reset through ``/proc/self/clear_refs`` where Linux allows it and includes allocator memory
kept from earlier conditions (with a shared prefill every row reports the one process's peak).
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ..analysis.formats import kv_level
from ..core.head_scores import HeadScores
from ..errors import UserError
from ..io import append_jsonl, read_jsonl, write_json_atomic
from ..models import LoadedModel, LoadSettings
from ..sweep.grid import SweepConfig
from .policy import (DEFAULT_FULL_SHARE, DEFAULT_OBS_WINDOW, DEFAULT_SINK, DEFAULT_WINDOW, POLICIES, KvPlan,
                     PolicySettings, check_budget, check_eligible, current_names, eligible_layers, make_plan)
from .records import SAMPLES, add_timing, length_stats, peak_rss_mb, reset_peak_rss

DEFAULT_BUDGETS = (0.05, 0.1, 0.2)
AGNOSTIC_DIR = "query-agnostic"


@dataclass(frozen=True)
class Condition:
    """One line of the frontier: a policy at a byte budget (None for ``full``)."""

    policy: str
    budget: float | None = None

    @property
    def name(self) -> str:
        return self.policy if self.budget is None else f"{self.policy}-{self.budget:g}"


def conditions(policies: list[str], budgets: list[float]) -> list[Condition]:
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        close = difflib.get_close_matches(unknown[0], POLICIES, n=1)
        hint = f" Did you mean: {close[0]}?" if close else f" Choose from {', '.join(POLICIES)}."
        raise UserError(f"unknown policy {unknown[0]!r}.{hint}")
    found = [Condition("full")] if "full" in policies else []
    for budget in budgets:
        found += [Condition(p, budget) for p in POLICIES[1:] if p in policies]
    return found


Planner = Callable[[int], KvPlan]  # tokens compressed -> plan (picklable: a partial of ``plan_for``)


def plan_for(condition: Condition, tokens: int, *, kv_scores: np.ndarray, eligible: np.ndarray,
             settings: PolicySettings = PolicySettings(), prefill: str = "full") -> KvPlan:
    """The plan of ``condition`` for caches compressed at about ``tokens`` tokens; ``prefill``: what its
    streaming heads see while prefilling (head-level plans; the full cache has none, so its runs are shared
    by every ``prefill``)."""
    plan = make_plan(condition.policy, condition.budget, tokens, kv_scores=kv_scores, eligible=eligible,
                     settings=settings)
    return plan if plan.policy == "full" or plan.selects_tokens else replace(plan, prefill=prefill)


def setting_dir(out: str | Path, query_agnostic: bool) -> Path:
    """Where one setting's condition directories go: ``OUT`` or ``OUT/query-agnostic``."""
    return Path(out) / AGNOSTIC_DIR if query_agnostic else Path(out)


def full_share_for(scores: HeadScores, full_share: float | None = None) -> tuple[float, str]:
    """The full share to use with ``scores`` and where it comes from: ``full_share`` when given; else the one a
    ``restore`` run recorded in its summary (it chose as many heads as that share of its budget holds, so
    ``retrieval-snapkv`` at that budget keeps exactly those whole); else ``DEFAULT_FULL_SHARE``."""
    if full_share is not None:
        return full_share, "given"
    summary = scores.meta.get("summary", {})
    if summary.get("full_share") is not None:
        at = f", with its heads chosen for budget {summary['budget']:g}" if summary.get("budget") is not None else ""
        source = f"recorded by the {summary.get('criterion', 'copy')} run {scores.meta.get('source', '')}".rstrip()
        return float(summary["full_share"]), source + at
    return DEFAULT_FULL_SHARE, "default"


def run_kv_eval(
    loaded: LoadedModel,
    config: SweepConfig,
    out: str | Path,
    scores: HeadScores,
    *,
    budgets: list[float] = list(DEFAULT_BUDGETS),
    policies: list[str] = list(POLICIES),
    sink: int = DEFAULT_SINK,
    window: int = DEFAULT_WINDOW,
    obs_window: int = DEFAULT_OBS_WINDOW,
    full_share: float | None = None,
    floor_share: float = 0.2,
    selection: str = "window",
    token_ranking: str = "own",
    own_share: float = 0.2,
    pool: str = "model",
    follow: int = 0,
    prefill: str = "full",
    query_agnostic: bool = False,
    seed: int = 0,
    isolate: bool = False,
    share_prefill: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Run NIAH under every condition and length; write ``summary.json`` and ``kv_frontier.png``.

    ``scores``: per-query-head retrieval scores (or KV-level ones); a KV head takes the max of its group.
    ``budgets``: fractions of the full cache's KV bytes. ``sink``/``window``: what streaming heads keep
    (head-level policies); ``obs_window``, ``full_share``, ``floor_share``, ``selection``, ``token_ranking``,
    ``own_share``, ``pool``, ``follow``: see ``policy.PolicySettings`` (``selection`` and ``token_ranking`` also
    under their old names).
    ``full_share`` None: ``full_share_for(scores)``, the share a restore run recorded, else the default
    (the summary's ``full_share_from`` says which).
    ``prefill``: what streaming heads see while prefilling, ``lambda``, ``chunk`` or ``full`` (see
    ``cache.py``); token-level policies and ``query_agnostic`` need ``full``.
    ``share_prefill``: with ``prefill="full"`` prefill each prompt once for all conditions, in this process
    (``prefill.run_shared``); otherwise every condition prefills on its own, each in a fresh process when
    ``isolate`` (so its peak RSS is its own). Isolated children load the model as ``loaded`` was loaded
    (``loaded.settings``: dtype, device, device map, attention kernel), and ``loaded`` lets go of its weights
    before the first child starts (``LoadedModel.release``: it cannot run the model afterwards).
    """
    from ..analysis.plots.kv import frontier_plot
    from .cache import PREFILL_MODES, latent_kv
    from .prefill import run_shared

    full_share, full_share_from = full_share_for(scores, full_share)
    settings = PolicySettings(sink=sink, window=window, obs_window=obs_window, full_share=full_share,
                              floor_share=floor_share, seed=seed, selection=selection, token_ranking=token_ranking,
                              own_share=own_share, pool=pool, follow=follow)
    settings.check()
    selection, token_ranking = settings.selection, settings.token_ranking  # today's names
    if prefill not in PREFILL_MODES:
        raise UserError(f"--prefill must be one of {', '.join(PREFILL_MODES)}, not {prefill!r}")
    for budget in budgets:
        check_budget(budget)
    if latent_kv(loaded.model):
        raise UserError(f"{loaded.name} uses multi-head latent attention: its cache holds one latent per layer, shared "
                        "by every head, so there are no KV heads to keep or compress apart")
    out = Path(out)
    kv_scores = kv_level(scores, loaded.num_kv_heads, "max")
    if kv_scores.shape != (loaded.num_layers, loaded.num_kv_heads):
        raise UserError(f"scores are {kv_scores.shape[0]} layers x {kv_scores.shape[1]} KV heads, the model has "
                        f"{loaded.num_layers} x {loaded.num_kv_heads}")
    eligible = eligible_layers(loaded.model.config)
    check_eligible(eligible, loaded.name)
    planners = {cond: partial(plan_for, cond, kv_scores=kv_scores, eligible=eligible, settings=settings,
                              prefill=prefill) for cond in conditions(policies, budgets)}
    selects = [c.policy for c, plan in planners.items() if plan(max(config.lengths)).selects_tokens]
    if prefill != "full" and (selects or query_agnostic):
        what = "--query-agnostic" if query_agnostic else f"policy {selects[0]}"
        raise UserError(f"{what} compresses a fully prefilled cache: use --prefill full")
    base = setting_dir(out, query_agnostic)
    shared = share_prefill and prefill == "full"
    if shared:
        found = run_shared(loaded, config, base, {cond.name: plan for cond, plan in planners.items()},
                           query_agnostic=query_agnostic, obs_window=obs_window, resume=resume, overwrite=overwrite,
                           progress=progress)
        results = {cond: found[cond.name] for cond in planners}
    else:
        if isolate:
            _release_for_children(loaded)
        results = {}
        for cond, planner in planners.items():
            job = dict(config=config, out=base, name=cond.name, planner=planner, query_agnostic=query_agnostic,
                       obs_window=obs_window, resume=resume, overwrite=overwrite, progress=progress)
            results[cond] = _isolated(loaded.settings, job) if isolate else run_condition(loaded, **job, reset_rss=True)
    label = scores_label(scores)
    made = summarize(results, query_agnostic=query_agnostic)
    for row in made:
        row["scores"] = label
    rows = merged_rows(out / "summary.json", made, model=loaded.name, config=config, query_agnostic=query_agnostic)
    summary = {"model": loaded.name, "config": config.to_dict(), "query_agnostic": query_agnostic, "sink": sink,
               "window": window, "obs_window": obs_window, "full_share": full_share,
               "full_share_from": full_share_from, "floor_share": floor_share,
               "selection": selection, "token_ranking": token_ranking, "own_share": own_share, "pool": pool,
               "follow": follow, "prefill": prefill, "seed": seed, "budgets": list(budgets), "shared_prefill": shared,
               "isolated": isolate and not shared, "eligible_layers": int(eligible.sum()),
               "kv_heads_per_layer": loaded.num_kv_heads, "scores": label, "rows": rows}
    write_json_atomic(out / "summary.json", summary)
    lengths = "/".join(str(l) for l in config.lengths)
    frontier_plot(rows, out / "kv_frontier.png",
                  title=f"{loaded.name}: NIAH vs KV bytes ({lengths} tokens, sink {sink}, {prefill} prefill)")
    return summary


def merged_rows(path: Path, rows: list[dict], *, model: str, config: SweepConfig, query_agnostic: bool) -> list[dict]:
    """``rows`` plus the other setting's rows of the summary at ``path``, if it is of the same model and sweep
    (question-in-prompt rows first)."""
    others = []
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        same = saved.get("model") == model and saved.get("config") == json.loads(json.dumps(config.to_dict()))
        if same:
            others = [current_names(r) for r in saved.get("rows", [])
                      if bool(r.get("query_agnostic", False)) != query_agnostic]
    return sorted(rows + others, key=lambda r: bool(r["query_agnostic"]))  # stable: each setting keeps its order


def run_condition(loaded: LoadedModel, *, config: SweepConfig, out: Path, name: str, planner: Planner,
                  query_agnostic: bool = False, obs_window: int = DEFAULT_OBS_WINDOW, resume: bool, overwrite: bool,
                  progress: bool, reset_rss: bool = False) -> dict:
    """One condition at every length of ``config`` (run directories ``out/<name>/L<length>``): NIAH runs plus
    their KV statistics. Token-level plans and the query-agnostic setting go through ``run_shared`` with
    this one condition; head-level plans (sized for the nominal length) prefill into a ``HeadwiseCache``
    (any ``prefill`` mode)."""
    from ..masking.niah import RESULTS, run_niah
    from .attention import HeadwiseAttention, HeadwiseCacheFactory
    from .cache import cache_stats
    from .prefill import describe, run_shared
    from .records import check_plan, with_kv_rows

    if reset_rss:
        reset_peak_rss()
    plans = {length: planner(length) for length in config.lengths}
    if query_agnostic or any(p.selects_tokens for p in plans.values()):
        return run_shared(loaded, config, out, {name: planner}, query_agnostic=query_agnostic, obs_window=obs_window,
                          resume=resume, overwrite=overwrite, progress=progress)[name]
    by_length = []
    with HeadwiseAttention(loaded.model) as attention:
        for length, plan in plans.items():
            run_dir = Path(out) / name / f"L{length}"
            check_plan(run_dir, describe(plan, False), resume=resume, overwrite=overwrite)
            found: list[dict] = []
            full = None if plan.policy == "full" else plan.full
            factory = HeadwiseCacheFactory(attention, full, sink=plan.sink, window=plan.recent_window,
                                           prefill=plan.prefill or "lambda")

            def write_kv_row(record: dict, run_dir=run_dir, found=found, factory=factory) -> None:
                stats = cache_stats(factory.current)
                stats = {"id": record["id"], **stats, "compressed_tokens": stats["tokens"] - stats["decode_steps"]}
                found.append(stats)
                append_jsonl(run_dir / SAMPLES, stats)  # before the record that marks the sample done

            if resume:
                with_kv_rows(run_dir, {r["id"] for r in read_jsonl(run_dir / RESULTS)})  # drops rows without a record
            one = replace(config, lengths=[length], batch_size=1)  # custom caches decode one prompt at a time anyway
            result = run_niah(loaded, one, run_dir, resume=resume, overwrite=overwrite, progress=progress,
                              cache_factory=factory, before_record=write_kv_row)
            factory.close()
            timing = add_timing(run_dir, result.summary["timing"], found)
            by_length.append(length_stats(length, plan, result.summary, list(read_jsonl(run_dir / SAMPLES)), timing,
                                          planned_tokens=length))
    return {"plan": plans[max(plans)].describe(), "by_length": by_length, "peak_rss_mb": peak_rss_mb()}


def scores_label(scores: HeadScores) -> str:
    """Which head scores chose the plans: ``"<criterion>: <source>"`` (criterion ``copy`` for detect runs and
    files, ``lookup`` for ``lookup`` runs)."""
    criterion = scores.meta.get("summary", {}).get("criterion", "copy")
    return f"{criterion}: {scores.meta.get('source', scores.model or 'scores')}"


def summarize(results: dict[Condition, dict], *, query_agnostic: bool = False) -> list[dict]:
    """One row per condition; ``full_kv_bytes`` from the ``full`` condition when it ran (else dense-equivalent).

    ``kv_fraction`` compares the bytes held at the end of decoding (the question and the answer included:
    token-level caches and full heads keep every new token, sink + window heads do not);
    ``compressed_kv_fraction`` the bytes right after compression, before anything is added (shared prefill
    only), where every policy holds its budget.
    """
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
        selects = plan.get("selection") is not None
        streaming = cond.policy != "full" and not selects
        rows.append({
            "policy": cond.policy,
            "query_agnostic": query_agnostic,
            "budget": 1.0 if cond.budget is None else cond.budget,
            "heads_budget": plan["num_full_kv_heads"] / plan["num_eligible_kv_heads"] if plan["num_eligible_kv_heads"] else None,
            "num_full_kv_heads": plan["num_full_kv_heads"],
            "window": plan["recent_window"] if streaming else None,
            "sink": plan["sink"] if cond.policy != "full" else None,
            "obs_window": plan["obs_window"] if selects else None,
            "selection": plan.get("selection"),
            "token_ranking": plan.get("token_ranking"),
            "own_share": plan.get("own_share"),
            "pool": plan.get("pool"),
            "follow": plan.get("follow", 0) if selects else None,
            "full_share": plan.get("full_share"),
            "floor_share": plan.get("floor_share"),
            "prefill": plan["prefill"],
            "samples": n,
            "mean_score": sum(p["mean_score"] * p["samples"] for p in parts if p["samples"]) / n if n else None,
            "kv_bytes": float(np.mean(kv)) if kv else None,
            "full_kv_bytes": float(np.mean(reference)) if reference else None,
            "kv_fraction": float(np.mean(kv) / np.mean(reference)) if kv and np.mean(reference) else None,
            "compressed_kv_fraction": _ratio(parts, "compressed_kv_bytes", "compressed_dense_kv_bytes"),
            "peak_kv_bytes": max((p["peak_kv_bytes"] for p in parts if p["peak_kv_bytes"] is not None), default=None),
            "peak_rss_mb": max((p["peak_rss_mb"] for p in parts if p["peak_rss_mb"] is not None),
                               default=result["peak_rss_mb"]),
            "decode_tokens_per_s": steps / seconds if seconds else None,
            "by_length": parts,
            "full_kv_heads": plan["full_kv_heads"],
        })
    return rows


def _ratio(parts: list[dict], key: str, reference: str) -> float | None:
    """mean(key) / mean(reference) over the lengths that have both."""
    pairs = [(p[key], p[reference]) for p in parts if p.get(key) is not None and p.get(reference)]
    return float(np.mean([a for a, _ in pairs]) / np.mean([b for _, b in pairs])) if pairs else None


def _release_for_children(loaded: LoadedModel) -> None:
    """Before isolated conditions run: make sure children can load ``loaded`` as it was loaded, then let go of
    the parent's weights, so that they are not held twice (on one GPU: twice in its memory) while children run."""
    if loaded.settings is None:
        raise UserError(f"{loaded.name} was built in this process, so a fresh process cannot load it: run the "
                        "conditions in this process (--no-isolate) or load the model by name")
    loaded.release()


def _isolated(settings: LoadSettings, job: dict) -> dict:
    """Run ``run_condition`` in a fresh spawned process that loads the model itself, with ``settings``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_child, settings, job).result()


def _child(settings: LoadSettings, job: dict) -> dict:
    import torch

    loaded = settings.load()
    with torch.no_grad():
        start = time.perf_counter()
        result = run_condition(loaded, **job)
    result["wall_s"] = time.perf_counter() - start
    return result
