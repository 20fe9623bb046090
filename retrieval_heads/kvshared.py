"""``kv-eval`` with one prefill per prompt: every condition decodes from a copy of the same prefilled cache.

Under ``prefill="full"`` a streaming head sees the whole prompt while prefilling and is cut to sink +
window when decoding starts (``kvcache``), so the prefill is the same computation under every plan.
``run_shared`` prefills each prompt once with the ``Engine`` (shared-prefix reuse included), copies the
cache into a ``HeadwiseCache.from_prefilled`` per condition and decodes there: the prefill work of a
kv-eval drops from conditions x prompts to about the unique prompt tokens. Each condition's run
directory gets the same files as a per-condition run (``kveval.run_condition``); the prefill seconds
and tokens in its timing are the shared ones, and the peak RSS is the whole process's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .engine import Engine, stop_condition
from .hooks import AttentionControl
from .io import append_jsonl, read_jsonl
from .kvpolicy import KvPlan
from .masking import MaskPlan
from .models import LoadedModel
from .niah import RESULTS, finalize, niah_identity, niah_record
from .rundir import RunDir
from .runner import SweepRun, progress_bar
from .sweep import SweepConfig, SweepInputs, prepare


@dataclass
class Branch:
    """One condition at one context length: its plan, its run directory and what it did in this call."""

    name: str
    plan: KvPlan
    run: RunDir
    done: set[str]
    stats: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"decode_s": 0.0, "scoring_s": 0.0, "io_s": 0.0})


def run_shared(loaded: LoadedModel, config: SweepConfig, out: str | Path, plans: dict[str, dict[int, KvPlan]], *,
               resume: bool, overwrite: bool, progress: bool) -> dict[str, dict]:
    """Run every condition (``plans``: name -> context length -> plan) on one prefill per prompt.

    Returns, per condition name, what ``kveval.run_condition`` returns (``plan``, ``by_length``, ``peak_rss_mb``).
    """
    from .errors import UserError
    from .kvcache import HeadwiseAttention
    from .kveval import reset_peak_rss, peak_rss_mb

    if loaded.layout.is_hybrid:  # from_prefilled copies keys and values; recurrent state would be lost
        raise UserError(f"{loaded.name} is a hybrid model whose cache also holds recurrent state, which one shared "
                        "prefill cannot hand to several conditions: pass --prefill-per-condition")
    reset_peak_rss()
    results = {name: {"plan": by_length[max(by_length)].describe(), "by_length": []} for name, by_length in plans.items()}
    with HeadwiseAttention(loaded.model):
        for length in config.lengths:
            one = replace(config, lengths=[length], batch_size=1)
            for name, stats in _run_length(loaded, one, Path(out), {n: p[length] for n, p in plans.items()},
                                           resume=resume, overwrite=overwrite, progress=progress).items():
                results[name]["by_length"].append(stats)
    peak = peak_rss_mb()
    for result in results.values():
        result["peak_rss_mb"] = peak
    return results


def _run_length(loaded: LoadedModel, config: SweepConfig, out: Path, plans: dict[str, KvPlan], *, resume: bool,
                overwrite: bool, progress: bool) -> dict[str, dict]:
    """Every condition at the one length of ``config``; returns each condition's length statistics."""
    from .kveval import check_plan

    start = time.perf_counter()
    inputs = prepare(config, loaded.tokenizer, loaded.max_context)
    control = AttentionControl()
    masking = niah_identity(MaskPlan(), control)
    identity = {**config.identity(inputs.needles, inputs.haystack_text), **masking}
    branches = []
    for name, plan in plans.items():
        run_dir = out / name / f"L{config.lengths[0]}"
        check_plan(run_dir, plan, resume=resume, overwrite=overwrite)
        run = RunDir(run_dir, RESULTS)
        branches.append(Branch(name, plan, run, run.start(identity, config.to_dict(), resume=resume, overwrite=overwrite)))
    todo = sorted((s for s in inputs.specs if any(s.id not in b.done for b in branches)),
                  key=lambda s: inputs.prompts[s.id].ids)
    engine = Engine(loaded.model, control, stop_condition(loaded.tokenizer, loaded.model), chunk_size=config.chunk_size,
                    share_prefix=config.share_prefix)
    bar = progress_bar(len(todo), progress, len(inputs.specs) - len(todo))
    try:
        for spec in todo:
            ids = inputs.prompts[spec.id].ids
            prefilled = engine.prefill(ids[:-1])
            for branch in branches:
                if spec.id not in branch.done:
                    _decode_branch(loaded, engine, branch, prefilled, spec, inputs, config.max_new_tokens)
            bar.update(1)
        bar.close()
    finally:
        timing = {"model_load_s": loaded.load_seconds, "prefill_s": engine.timer.seconds["prefill_s"],
                  "prefilled_tokens": engine.timer.prefilled_tokens, "reused_tokens": engine.timer.reused_tokens,
                  "prefill_shared_by": len(branches), "wall_s": time.perf_counter() - start}
        finished = {b.name: _finish(loaded, config, inputs, masking, b, timing) for b in branches}
    return finished


def _decode_branch(loaded: LoadedModel, engine: Engine, branch: Branch, prefilled, spec, inputs: SweepInputs,
                   max_new_tokens: int) -> None:
    """Decode one prompt from a head-wise copy of its prefilled cache; append its record and KV stats."""
    from .kvcache import HeadwiseCache, cache_stats
    from .kveval import SAMPLES

    t0 = time.perf_counter()
    cache = HeadwiseCache.from_prefilled(loaded.model.config, prefilled, branch.plan.full, sink=branch.plan.sink,
                                         window=branch.plan.window)
    generation = engine.decode(cache, inputs.prompts[spec.id].ids, max_new_tokens, probe=False)
    t1 = time.perf_counter()
    record = niah_record(loaded, MaskPlan(), spec, generation, inputs)
    t2 = time.perf_counter()
    stats = cache_stats(cache)
    branch.run.append(record)
    append_jsonl(branch.run.path / SAMPLES, stats)
    branch.stats.append(stats)
    branch.seconds["decode_s"] += t1 - t0
    branch.seconds["scoring_s"] += t2 - t1
    branch.seconds["io_s"] += time.perf_counter() - t2


def _finish(loaded: LoadedModel, config: SweepConfig, inputs: SweepInputs, masking: dict, branch: Branch,
            shared: dict) -> dict:
    """Write the branch's ``summary.json``, heatmap and KV timing; return its length statistics."""
    from .kveval import SAMPLES, add_timing, length_stats

    timing = {**shared, **branch.seconds}
    result = finalize(SweepRun(branch.run, inputs, timing), loaded.info, config, masking)
    total = add_timing(branch.run.path, timing, branch.stats)
    return length_stats(config.lengths[0], branch.plan, result.summary, list(read_jsonl(branch.run.path / SAMPLES)),
                         total)
