"""``kv-eval`` with one prefill per prompt: every condition compresses its own copy of the same prefilled cache.

Every plan starts from the same full prefill: head-level plans cut their streaming heads to sink + window
when decoding starts (``HeadwiseCache.from_prefilled``, the ``prefill="full"`` state), token-level plans
keep per KV head the tokens their selection chooses (``CompressedCache.from_prefilled``). ``run_shared`` prefills
each prompt once with the ``Engine`` (shared-prefix reuse included), under ``snapkv.capture_window`` when
a plan selects tokens by the observation window (``selection="window"``, as SnapKV does), so the window's
attention is recorded on the way; plans that select by re-reading (``selection="reread"`` or
``"reread-chunk"``, ``reconstruct.py``) have the context re-read once after the prefill (the cache is put back
as it was). Then, per condition:

    compress   a copy of the prefilled cache under the condition's plan
    question   (``query_agnostic``) the question's tokens prefilled into the compressed cache
    decode     greedy, with NIAH's stopping and scoring

With the question in the prompt (the default) the prefill covers the prompt up to its last token and
the observation window is its last ``obs_window`` tokens (the question). ``query_agnostic`` prefills only
the context (everything up to the end of the document, ``haystack.question_start``), so the cache is compressed
before the question is known. Each condition's run directory gets the same files as a per-condition run
(``evaluate.run_condition``); the prefill seconds and tokens in its timing are the shared ones, and the
peak RSS is the whole process's.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..core.engine import Engine, stop_condition
from ..core.hooks import AttentionControl
from ..errors import UserError
from ..io import append_jsonl, read_jsonl
from ..masking.heads import MaskPlan
from ..masking.niah import RESULTS, finalize, niah_identity, niah_record
from ..models import LoadedModel
from ..sweep.grid import SweepConfig, SweepInputs, prepare
from ..sweep.haystack import question_start
from ..sweep.rundir import RunDir
from ..sweep.runner import SweepRun, progress_bar
from .attention import HeadwiseAttention
from .cache import HeadwiseCache, cache_stats, num_kv_heads
from .compressed import CompressedCache
from .policy import DEFAULT_OBS_WINDOW, REREADS, KvPlan, current
from .reconstruct import CHUNK_SIZE, reconstruction_scores, repeat_ids
from .records import SAMPLES, add_timing, check_plan, length_stats, peak_rss_mb, reset_peak_rss, with_kv_rows
from .snapkv import (POOL_KERNEL, ObservationWindow, Observed, capture_window, evidence_counts, own_first,
                     select_positions)

@dataclass
class Branch:
    """One condition at one context length: its plan, its run directory and what it did in this call.
    ``done``: samples with their record and KV row; ``recorded``: with their record."""

    name: str
    plan: KvPlan
    run: RunDir
    done: set[str]
    recorded: set[str]
    stats: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"decode_s": 0.0, "compress_s": 0.0,
                                                                "question_prefill_s": 0.0, "scoring_s": 0.0,
                                                                "io_s": 0.0})


def describe(plan: KvPlan, query_agnostic: bool) -> dict:
    """What ``kv_plan.json`` records: the plan and the setting."""
    return {**plan.describe(), "query_agnostic": query_agnostic}


def run_shared(loaded: LoadedModel, config: SweepConfig, out: str | Path, planners: dict[str, Callable[[int], KvPlan]],
               *, query_agnostic: bool = False, obs_window: int = DEFAULT_OBS_WINDOW, resume: bool, overwrite: bool,
               progress: bool) -> dict[str, dict]:
    """Run every condition (``planners``: name -> tokens compressed -> plan) on one prefill per prompt.

    At each length the plans are made for the median, over that length's prompts, of the tokens in the cache
    when it is compressed. Run directories are ``out/<name>/L<length>``. Returns, per condition name, what
    ``evaluate.run_condition`` returns (``plan`` at the longest length, ``by_length``, ``peak_rss_mb``).
    """
    if loaded.layout.is_hybrid:  # the copies take keys and values; recurrent state would be lost
        raise UserError(f"{loaded.name} is a hybrid model whose cache also holds recurrent state, which one shared "
                        "prefill cannot hand to several conditions: pass --prefill-per-condition")
    reset_peak_rss()
    results = {name: {"by_length": []} for name in planners}
    selection = selection_of([planner(max(config.lengths)) for planner in planners.values()])
    observer = ObservationWindow(obs_window) if selection == "window" else None
    instruction = repeat_ids(loaded.tokenizer) if selection in REREADS else []
    with HeadwiseAttention(loaded.model), (capture_window(loaded.model, observer) if observer else nullcontext()):
        for length in sorted(config.lengths):
            one = replace(config, lengths=[length], batch_size=1)
            evidence = Evidence(selection, obs_window, observer, instruction)  # per length: its own seconds
            found = _run_length(loaded, one, Path(out), planners, query_agnostic=query_agnostic, evidence=evidence,
                                resume=resume, overwrite=overwrite, progress=progress)
            for name, (plan, stats) in found.items():
                results[name]["by_length"].append(stats)
                results[name]["plan"] = plan.describe()
    peak = peak_rss_mb()
    for result in results.values():
        result["peak_rss_mb"] = peak
    return results


def selection_of(plans: list[KvPlan]) -> str | None:
    """What chooses the tokens of ``plans`` (one shared prefill serves one kind of evidence); None when no plan
    selects tokens."""
    found = {plan.selection for plan in plans if plan.selects_tokens}
    if len(found) > 1:
        raise UserError(f"one shared prefill serves one token selection, not {', '.join(sorted(found))}")
    return found.pop() if found else None


@dataclass
class Evidence:
    """How the plans of one shared prefill choose their tokens: ``selection`` (None: they do not), the
    observation window (``window``: also its ``observer``; the re-reads: the tokens always kept), the
    repeat instruction's ids and the re-reading scores' pooling kernel (``reread``; ``reread-chunk`` re-reads as
    KVzip: ``reconstruct.CHUNK_SIZE`` tokens a pass, the chunk softmax, no pooling). ``seconds``: spent
    re-reading."""

    selection: str | None
    window: int
    observer: ObservationWindow | None = None
    instruction: list[int] = field(default_factory=list)
    seconds: float = 0.0
    pool: int = POOL_KERNEL

    def __post_init__(self):
        self.selection = current("selection", self.selection)

    def gather(self, engine: Engine, ids: list[int], num_kv_heads: int):
        """Prefill ``ids`` with the engine; return the cache and the ``Observed`` scores (None: no selection)."""
        if self.selection in REREADS:
            kvzip = self.selection == "reread-chunk"  # KVzip's scores: chunk softmax, its chunks, no pooling
            chunk_size = CHUNK_SIZE if kvzip else engine.chunk_size
            cache = cache_to_compress(engine, ids, room=len(self.instruction) + chunk_size + 1)
            start = time.perf_counter()
            observed = reconstruction_scores(engine.model, cache, ids, self.instruction, window=self.window,
                                             chunk_size=chunk_size, pool=1 if kvzip else self.pool,
                                             softmax="chunk" if kvzip else "context")
            self.seconds += time.perf_counter() - start
            return cache, observed
        cache = prefill_observed(engine, ids, self.observer)
        return cache, self.observer.take(num_kv_heads) if self.observer else None


def _run_length(loaded: LoadedModel, config: SweepConfig, out: Path, planners: dict[str, Callable[[int], KvPlan]],
                *, query_agnostic: bool, evidence: Evidence, resume: bool, overwrite: bool,
                progress: bool) -> dict[str, tuple[KvPlan, dict]]:
    """Every condition at the one length of ``config``; returns each condition's plan and length statistics."""
    start = time.perf_counter()
    inputs = prepare(config, loaded.tokenizer, loaded.max_context)
    splits = {s.id: question_start(loaded.tokenizer, inputs.prompts[s.id]) if query_agnostic
              else len(inputs.prompts[s.id].ids) - 1 for s in inputs.specs}
    tokens = int(np.median(list(splits.values())))
    plans = {name: planner(tokens) for name, planner in planners.items()}
    control = AttentionControl()
    masking = niah_identity(MaskPlan(), control)
    identity = {**config.identity(inputs.needles, inputs.haystack_text), **masking}
    branches = []
    for name, plan in plans.items():
        run_dir = out / name / f"L{config.lengths[0]}"
        check_plan(run_dir, describe(plan, query_agnostic), resume=resume, overwrite=overwrite)
        run = RunDir(run_dir, RESULTS)
        recorded = run.start(identity, config.to_dict(), resume=resume, overwrite=overwrite)
        branches.append(Branch(name, plan, run, with_kv_rows(run_dir, recorded), recorded))
    todo = sorted((s for s in inputs.specs if any(s.id not in b.done for b in branches)),
                  key=lambda s: inputs.prompts[s.id].ids)
    engine = Engine(loaded.model, control, stop_condition(loaded.tokenizer, loaded.model), chunk_size=config.chunk_size,
                    share_prefix=config.share_prefix)
    bar = progress_bar(len(todo), progress, len(inputs.specs) - len(todo))
    try:
        for spec in todo:
            prompt, split = inputs.prompts[spec.id], splits[spec.id]
            prefilled, observed = evidence.gather(engine, prompt.ids[:split], num_kv_heads(loaded.model.config))
            for branch in branches:
                if spec.id not in branch.done:
                    _decode_branch(loaded, engine, branch, prefilled, observed, spec, inputs, split,
                                   config.max_new_tokens)
            bar.update(1)
        bar.close()
    finally:
        timing = {"model_load_s": loaded.load_seconds, "prefill_s": engine.timer.seconds["prefill_s"],
                  "prefilled_tokens": engine.timer.prefilled_tokens, "reused_tokens": engine.timer.reused_tokens,
                  "prefill_shared_by": len(branches), "query_agnostic": query_agnostic,
                  "selection": evidence.selection, "selection_s": evidence.seconds,
                  "wall_s": time.perf_counter() - start}
        finished = {b.name: (b.plan, _finish(loaded, config, inputs, masking, b, timing, tokens)) for b in branches}
    return finished


def cache_to_compress(engine: Engine, ids: list[int], *, room: int):
    """``engine.prefill(ids, room)``; a model that builds a cache type of its own is refused (one line)."""
    cache = engine.prefill(ids, room=room)
    if cache is None:
        raise UserError("this model builds a cache type of its own, which cannot be compressed")
    return cache


def prefill_observed(engine: Engine, ids: list[int], observer: ObservationWindow | None):
    """``engine.prefill(ids)``, with the chunks holding the last ``observer.window`` tokens computed (never
    reused from the previous prompt) while ``observer`` is armed.

    The engine prefills up to the chunk where the window starts (reusing shared prefixes); the rest runs
    here with the same chunk boundaries, so every cached number is what the engine alone computes. The
    engine's cache keeps the longer past; its next prefill cuts it back to the shared prefix.
    """
    if observer is None:
        return engine.prefill(ids)
    first = max(0, len(ids) - observer.window) // engine.chunk_size * engine.chunk_size
    cache = cache_to_compress(engine, ids[:first], room=len(ids) - first + 1)
    start = time.perf_counter()
    observer.arm(len(ids))
    extend(engine.model, cache, ids, first, chunk_size=engine.chunk_size)
    engine.timer.prefilled_tokens += len(ids) - first
    engine.timer.seconds["prefill_s"] += time.perf_counter() - start
    return cache


@torch.no_grad()
def extend(model, cache, ids: list[int], start: int, *, chunk_size: int) -> None:
    """Prefill ``ids[start:]`` into ``cache`` (holding ``ids[:start]``), in chunks that start at multiples of
    ``chunk_size``."""
    if hasattr(cache, "decoding"):
        cache.decoding = False
    device = next(model.parameters()).device
    tokens = torch.tensor(ids, device=device).unsqueeze(0)  # (1, P)
    pos = start
    while pos < len(ids):
        end = min((pos // chunk_size + 1) * chunk_size, len(ids))
        model(input_ids=tokens[:, pos:end], cache=cache, use_cache=True, logits_to_keep=1)
        pos = end


def compress(config, prefilled, plan: KvPlan, observed: Observed | None):
    """A copy of ``prefilled`` under ``plan``: ``HeadwiseCache`` for head-level plans, ``CompressedCache`` (the tokens
    each KV head keeps, chosen by ``observed``'s scores) for token-level ones. ``prefilled`` is left as it is."""
    if not plan.selects_tokens:
        return HeadwiseCache.from_prefilled(config, prefilled, plan.full, sink=plan.sink, window=plan.recent_window)
    if observed is None:
        raise RuntimeError(f"plan {plan.policy} selects tokens but the prefill was not observed")
    return CompressedCache.from_prefilled(config, prefilled, kept_positions(plan, observed))


def kept_positions(plan: KvPlan, observed: Observed) -> dict[int, list[torch.Tensor]]:
    """Per eligible layer, per KV head, the positions a token-level ``plan`` keeps of the observed prefill."""
    observed = observed.followed(plan.follow)
    counts = evidence_counts(plan, observed) if plan.pooled else plan.token_counts(observed.total)
    ranked = observed.shared_from(plan.guides) if plan.guides else observed
    keep = {}
    for layer in np.flatnonzero(plan.eligible).tolist():
        scores = ranked.scores.get(layer)
        if scores is None:
            raise RuntimeError(f"no observation-window scores for layer {layer}")
        keep[layer] = []
        for h in range(counts.shape[1]):
            count, ranking = int(counts[layer, h]), scores[h]
            if plan.guides and plan.own_share:
                ranking = own_first(observed.scores[layer][h], ranking, count, plan.own_share, sink=plan.sink,
                                    window=observed.window)
            keep[layer].append(select_positions(ranking, observed.total, count, sink=plan.sink,
                                                window=observed.window))
    return keep


def _decode_branch(loaded: LoadedModel, engine: Engine, branch: Branch, prefilled, observed, spec,
                   inputs: SweepInputs, split: int, max_new_tokens: int) -> None:
    """Compress a copy of the prefilled cache, prefill the question if it is not in it, decode; append the
    sample's KV stats, then its record (unless it has one: its KV row was lost), which marks it done."""
    ids = inputs.prompts[spec.id].ids
    t0 = time.perf_counter()
    cache = compress(loaded.model.config, prefilled, branch.plan, observed)
    at_compression = {"compressed_tokens": split, "compressed_kv_bytes": cache.kv_bytes(),
                      "compressed_dense_kv_bytes": cache.dense_kv_bytes()}
    t1 = time.perf_counter()
    extend(loaded.model, cache, ids[:-1], split, chunk_size=engine.chunk_size)
    t2 = time.perf_counter()
    generation = engine.decode(cache, ids, max_new_tokens, probe=False)
    t3 = time.perf_counter()
    record = niah_record(loaded, MaskPlan(), spec, generation, inputs)
    t4 = time.perf_counter()
    stats = {"id": spec.id, **cache_stats(cache), **at_compression}
    append_jsonl(branch.run.path / SAMPLES, stats)
    if spec.id not in branch.recorded:
        branch.run.append(record)
    branch.stats.append(stats)
    for key, seconds in (("compress_s", t1 - t0), ("question_prefill_s", t2 - t1), ("decode_s", t3 - t2),
                         ("scoring_s", t4 - t3), ("io_s", time.perf_counter() - t4)):
        branch.seconds[key] += seconds


def _finish(loaded: LoadedModel, config: SweepConfig, inputs: SweepInputs, masking: dict, branch: Branch,
            shared: dict, planned_tokens: int) -> dict:
    """Write the branch's ``summary.json``, heatmap and KV timing; return its length statistics."""
    timing = {**shared, **branch.seconds}
    result = finalize(SweepRun(branch.run, inputs, timing), loaded.info, config, masking)
    total = add_timing(branch.run.path, timing, branch.stats)
    return length_stats(config.lengths[0], branch.plan, result.summary, list(read_jsonl(branch.run.path / SAMPLES)),
                        total, planned_tokens=planned_tokens)
