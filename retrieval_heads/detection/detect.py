"""Retrieval-head detection: run a needle sweep with the probe on and score every head."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.head_scores import HeadScores, head_fields
from ..core.scoring import is_success, retrieval_scores, rouge1_recall
from ..errors import UserError
from ..models import LoadedModel, ModelInfo
from ..sweep.distributed import Launch, all_gather
from ..sweep.grid import DEFAULT_BLOCK_SIZE, SampleSpec, SweepConfig, build_grid, prefix_reuse, sample_blocks
from ..sweep.haystack import load_needles, require_one_needle
from ..sweep.merge import MergedShards
from ..sweep.runner import SweepRun, run_sweep
from ..sweep.stability import (CurvePoint, StopRule, bootstrap, checkpoint_seed, failing_needles, measure, run_curve,
                               successes_by_id)

STABILITY_PLOT = "stability.png"


@dataclass
class DetectionResult:
    scores: HeadScores
    summary: dict
    out: Path


def sparsity_counts(mean: np.ndarray) -> dict[str, int]:
    """Heads per bucket of the paper's Fig. 3: = 0, (0, 0.1], (0.1, 0.5], > 0.5."""
    return {
        "zero": int((mean == 0).sum()),
        "(0, 0.1]": int(((mean > 0) & (mean <= 0.1)).sum()),
        "(0.1, 0.5]": int(((mean > 0.1) & (mean <= 0.5)).sum()),
        "> 0.5": int((mean > 0.5).sum()),
    }


def run_detection(
    loaded: LoadedModel,
    config: SweepConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    until_stable: StopRule | None = None,
    launch: Launch | None = None,
) -> DetectionResult:
    """Detect retrieval heads of ``loaded`` over the sweep ``config``; results go to ``out``.

    Writes ``samples.jsonl`` (appended per sample), then ``head_scores.json`` (paper format),
    ``summary.json`` and ``stability.png``; these are also written when the run is interrupted.
    With ``until_stable``, the grid runs in balanced blocks (``config.block_size``, default
    ``DEFAULT_BLOCK_SIZE``) and stops after the first block at which the rule is met; needles
    that failed ``until_stable.drop_after`` times without a success are left out of later blocks
    (``summary.json``: ``dropped_needles``). ``resume`` continues such a run over the rest
    of the grid. ``launch``: this process is one rank of a
    data-parallel run over ``config.shard``; the stop decision is then taken for all ranks together.
    A needle set whose answers are not copied from one needle (RULER's multi-value and multi-query sets, its
    tasks with no needle) is refused; RULER's multi-key sets are scored on the needle asked about.
    """
    require_one_needle(config.needles, "detect")
    results: list[DetectionResult] = []
    watch = StabilityWatch(until_stable, (loaded.num_layers, loaded.num_heads), launch) if until_stable else None
    if until_stable and not config.block_size:
        config = dataclasses.replace(config, block_size=DEFAULT_BLOCK_SIZE)

    def make_record(spec, generation, inputs):
        record = _record(loaded, spec, inputs.prompts[spec.id], inputs.needles[spec.needle_index], generation)
        if watch is not None:
            watch.add(record)
        return record

    sweep = run_sweep(loaded, config, out, make_record, resume=resume, overwrite=overwrite, progress=progress,
                      should_stop=watch, skip=watch.skips if watch is not None else None,
                      finalize=lambda sweep: results.append(finalize(sweep, loaded.info, config, until_stable)))
    if watch is not None and not sweep.stopped_early:
        watch.drain(sweep)
    return results[0]


class StabilityWatch:
    """``should_stop`` for ``run_sweep``: ``rule`` over the successful samples finished so far.

    Records are added as they are made; at the first check, those already on disk (a resumed
    run) are read once. Samples are taken in id order, like ``stability_summary``'s curve.
    ``skips`` (``run_sweep``'s ``skip``) names the samples of a block whose needle the rule drops.

    Under a launcher (``launch``), each check is one round in which every rank shares what it
    finished since the last round and measures the union, so all ranks take one decision for the
    whole run and stop at the same round; a rank done with its shard keeps taking rounds
    (``drain``) until every rank is done or the rule is met.
    """

    def __init__(self, rule: StopRule, shape: tuple[int, int], launch: Launch | None = None):
        self.rule, self.shape, self.launch = rule, shape, launch
        # id -> (needle index, (layers, heads) scores or None when failed); ``fresh``: added since the last round
        # (shared with the other ranks)
        self.known: dict[str, tuple[int, list | None]] = {}
        self.fresh: dict[str, tuple[int, list | None]] = {}
        self.synced = False
        self.last: CurvePoint | None = None

    def add(self, record: dict) -> None:
        outcome = (record["needle_index"], record["head_scores"] if record["success"] else None)
        self.known[record["id"]] = self.fresh[record["id"]] = outcome

    def __call__(self, sweep: SweepRun) -> bool:
        self._sync(sweep)
        met, _ = self._round(finished=False)
        return met

    def skips(self, sweep: SweepRun, block: list[SampleSpec]) -> set[str]:
        """Ids in ``block`` whose needle failed ``rule.drop_after`` times, with no success, in the samples known."""
        self._sync(sweep)
        outcomes = ((needle, scores is not None) for needle, scores in self.known.values())
        failing = failing_needles(outcomes, self.rule.drop_after)
        return {spec.id for spec in block if spec.needle_index in failing}

    def drain(self, sweep: SweepRun) -> None:
        """After this rank's last sample (not stopped): take rounds until every rank is done or the rule is met."""
        if self.launch is None:
            return
        self._sync(sweep)
        while True:
            met, all_done = self._round(finished=True)
            if met or all_done:
                return

    def _sync(self, sweep: SweepRun) -> None:
        if not self.synced:
            for record in sweep.run.records():
                self.add(record)
            self.synced = True

    def _round(self, *, finished: bool) -> tuple[bool, bool]:
        """(rule met on every sample known, every rank finished), after sharing this rank's new samples."""
        all_done = finished
        if self.launch is not None:
            shared = all_gather((self.fresh, finished))
            for fresh, _ in shared:
                self.known.update(fresh)
            all_done = all(done for _, done in shared)
        self.fresh = {}
        ids = sorted(i for i, (_, scores) in self.known.items() if scores is not None)
        samples = np.asarray([self.known[i][1] for i in ids], dtype=np.float64).reshape(len(ids), *self.shape)
        self.last = measure(samples, len(self.known), self.rule)
        return self.rule.met(self.last), all_done


def _record(loaded, spec, prompt, needle, generation) -> dict:
    response = loaded.tokenizer.decode(generation.generated_ids, skip_special_tokens=True).strip()
    recall = rouge1_recall(needle.real_needle, response)
    head = retrieval_scores(
        generation.top1, torch.tensor(generation.generated_ids), torch.tensor(prompt.ids), prompt.needle_span
    )
    return {
        "id": spec.id,
        "model": loaded.name,
        "context_length": spec.context_length,
        "prompt_tokens": len(prompt.ids),
        "depth_percent": spec.depth_percent,
        "needle_index": spec.needle_index,
        "prompt_ids": prompt.ids,
        "needle_span": list(prompt.needle_span),
        "generated_ids": generation.generated_ids,
        "response": response,
        "rouge1_recall": recall,
        "success": is_success(recall),
        "head_scores": head.tolist(),
    }


def scores_from_records(records: list[dict], shape: tuple[int, int], model: str | None = None,
                        applicable: np.ndarray | None = None) -> HeadScores:
    """HeadScores over the successful records (the paper averages over successful samples only).

    ``applicable``: (layers, heads) bool, the heads that exist (``ModelInfo.applicable``).
    """
    matrices = [r["head_scores"] for r in records if r["success"]]
    samples = np.asarray(matrices, dtype=np.float64).reshape(len(matrices), *shape)
    return HeadScores(samples, model=model, applicable=applicable)


def finalize(sweep: SweepRun, model: ModelInfo, config: SweepConfig, until_stable: StopRule | None = None,
             *, stopped_early: bool | None = None) -> DetectionResult:
    """Aggregate every finished record into ``head_scores.json``, ``summary.json`` and ``stability.png``.

    The stability fields use ``until_stable``'s rule, or the default ``StopRule`` (then with no
    target). ``stopped_early`` defaults to ``sweep.stopped_early``.
    """
    t0 = time.perf_counter()
    run, timing = sweep.run, sweep.timing
    records = sorted(run.records(), key=lambda r: r["id"])
    shape = (model.num_layers, model.num_heads)
    scores = scores_from_records(records, shape, model.name, model.applicable())
    scores.save_paper_json(run.path / "head_scores.json")
    mean = scores.mean[scores.applicable]  # (existing heads,)
    summary = {
        **model.to_summary(),
        "config": config.to_dict(),
        **run.grid_summary(),
        "samples": len(records),
        "successes": scores.num_samples,
        **head_fields(scores, model.num_kv_heads),
        "sparsity": sparsity_counts(mean),
        "stopped_early": sweep.stopped_early if stopped_early is None else stopped_early,
        **stability_summary(records, grid_specs(sweep, config), config, shape, until_stable),
        "prefix_reuse": prefix_reuse_summary(sweep, config),
        "timing": timing,
    }
    _plot_stability(run.path / STABILITY_PLOT, summary, model.name)
    timing["io_s"] += time.perf_counter() - t0
    run.write_json("summary.json", summary)
    return DetectionResult(scores, summary, run.path)


def prefix_reuse_summary(sweep: SweepRun, config: SweepConfig) -> dict:
    """The share of prefill tokens this run reused, beside the share its whole grid reuses in prompt
    order (the most one pass over the grid shares; None when the prompts are not at hand, e.g. merged)."""
    timing = sweep.timing
    done = timing.get("reused_tokens", 0) + timing.get("prefilled_tokens", 0)
    grid = None
    if sweep.inputs is not None and sweep.inputs.prompts:
        reused, total = prefix_reuse(sorted(p.ids for p in sweep.inputs.prompts.values()), config.chunk_size)
        grid = reused / total if total else None
    return {"share": timing.get("reused_tokens", 0) / done if done else None, "grid_in_prompt_order": grid,
            "chunk_size": config.chunk_size}


def grid_specs(sweep: SweepRun, config: SweepConfig) -> list[SampleSpec] | None:
    """The samples of this run's grid (its shard), or None when the needles can no longer be read."""
    if sweep.inputs is not None:
        return sweep.inputs.specs
    try:
        needles = load_needles(config.needles)
    except UserError:
        return None
    return build_grid(len(needles), config.lengths, config.depths, tuple(config.shard))


def stability_summary(records: list[dict], specs: list[SampleSpec] | None, config: SweepConfig,
                      shape: tuple[int, int], until_stable: StopRule | None) -> dict:
    """``samples_run``, ``grid_samples``, ``stability`` and ``stability_curve`` of a run's records.

    The curve takes the records block by block in the balanced order of ``config``'s grid (blocks
    of ``config.block_size``, or ``DEFAULT_BLOCK_SIZE``), whatever order they ran in. Without
    ``until_stable``, ``target`` is None and ``stable`` says whether the default rule is met.
    """
    rule = until_stable or StopRule()
    block_size = config.block_size or DEFAULT_BLOCK_SIZE
    block_of = sample_blocks(specs or [], block_size)
    ids, blocks, success, samples = _in_block_order(records, block_of, shape)
    curve = run_curve(ids, blocks, success, samples, rule)
    last = curve[-1] if curve else CurvePoint(0, 0, float("nan"), float("nan"))
    chosen = samples[successes_by_id(ids, success)]  # (successes, L, H)
    final = bootstrap(chosen, k=rule.k, draws=rule.draws, seed=checkpoint_seed(rule.seed, len(ids)))
    top = [h for h in HeadScores(chosen).top(rule.k) if h[2] > 0]
    return {
        "samples_run": len(records),
        "grid_samples": len(specs) if specs is not None else None,
        "stability": {
            "k": rule.k, "target": until_stable.stability if until_stable else None,
            "min_successes": rule.min_successes, "draws": rule.draws, "seed": rule.seed, "block_size": block_size,
            "drop_after": until_stable.drop_after if until_stable else None,
            **_point_dict(last), "stable": rule.met(last), "top_heads": final.head_intervals(top),
        },
        "stability_curve": [_point_dict(p) for p in curve],
        **dropped_needles(records, specs or [], block_of, until_stable),
    }


def dropped_needles(records: list[dict], specs: list[SampleSpec], block_of: dict[str, int],
                    until_stable: StopRule | None) -> dict:
    """``dropped_needles`` (needle index, failures, samples skipped) and ``samples_skipped``.

    A dropped needle failed ``until_stable.drop_after`` times without a success; its skipped samples are those of
    the grid (``block_of``: id -> block) with no record in the blocks up to the last one run (a run that stopped
    early never reached the rest).
    """
    if until_stable is None:
        return {"dropped_needles": [], "samples_skipped": 0}
    failing = failing_needles(((r["needle_index"], r["success"]) for r in records), until_stable.drop_after)
    done = {r["id"] for r in records}
    reached = max((block_of[i] for i in done if i in block_of), default=-1)
    skipped: dict[int, int] = {}
    for spec in specs:
        if spec.needle_index in failing and spec.id not in done and block_of[spec.id] <= reached:
            skipped[spec.needle_index] = skipped.get(spec.needle_index, 0) + 1
    needles = [{"needle_index": n, "failures": failures, "skipped": skipped.get(n, 0)}
               for n, failures in sorted(failing.items())]
    return {"dropped_needles": needles, "samples_skipped": sum(skipped.values())}


def _in_block_order(records: list[dict], block_of: dict[str, int], shape: tuple[int, int]):
    """(ids, blocks, success, samples (n, L, H)) of ``records`` sorted by block (``block_of``: id -> block),
    then id.

    Records outside the grid go into one block after the last.
    """
    after = max(block_of.values(), default=0) + 1
    ordered = sorted(records, key=lambda r: (block_of.get(r["id"], after), r["id"]))
    ids = [r["id"] for r in ordered]
    samples = np.asarray([r["head_scores"] for r in ordered], dtype=np.float64).reshape(len(ordered), *shape)
    return ids, [block_of.get(i, after) for i in ids], [bool(r["success"]) for r in ordered], samples


def _point_dict(point: CurvePoint) -> dict:
    """A curve point for JSON: NaN (no successful sample yet) as None."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in point.to_dict().items()}


def stop_rule_of(summary: dict) -> StopRule | None:
    """The ``until_stable`` rule a run's summary records, or None when it ran without one."""
    info = summary.get("stability") or {}
    if info.get("target") is None:
        return None
    return StopRule(k=info["k"], stability=info["target"], min_successes=info["min_successes"],
                    draws=info["draws"], seed=info["seed"], drop_after=info.get("drop_after") or 0)


def merged_summary(merged: MergedShards) -> dict:
    """The summary of merged detect shards (the finalizer ``sweep.merge.merge_shards`` takes for ``detect``):
    the first shard's stop rule; stopped early when any shard was."""
    stopped = any(summary.get("stopped_early") for summary in merged.summaries)
    return finalize(merged.sweep, merged.info, merged.config, stop_rule_of(merged.summaries[0]),
                    stopped_early=stopped).summary


def _plot_stability(path: Path, summary: dict, name: str) -> None:
    """``stability.png`` from the summary's curve (nothing when there is no curve)."""
    from ..analysis.plots import stability_plot

    curve, info = summary["stability_curve"], summary["stability"]
    if curve:
        stop = summary["samples_run"] if summary["stopped_early"] else None
        stability_plot(curve, path, k=info["k"], target=info["target"], stop=stop,
                       title=f"{name}: stability of the detected heads")
