"""Needle-in-a-haystack evaluation, optionally with heads ablated (the paper's causal test)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..core.hooks import AttentionControl
from ..core.scoring import answer_score
from ..models import LoadedModel, ModelInfo
from ..sweep.grid import SweepConfig
from ..sweep.haystack import needles_metric
from ..sweep.merge import MergedShards
from ..sweep.runner import SweepRun, run_sweep
from .failures import classify, contains_answer
from .heads import MaskPlan

RESULTS = "results.jsonl"


@dataclass
class NiahResult:
    summary: dict
    out: Path


def run_niah(
    loaded: LoadedModel,
    config: SweepConfig,
    out: str | Path,
    *,
    plan: MaskPlan | None = None,
    control: AttentionControl | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    cache_factory=None,
    before_record=None,
) -> NiahResult:
    """Answer every needle question of the sweep with ``plan``'s heads ablated; score and classify answers.

    Writes ``results.jsonl`` (appended per sample), ``summary.json`` and ``heatmap.png`` under ``out``.
    ``cache_factory`` runs the model on a custom KV cache (see ``Engine``). ``before_record(record)`` is
    called with each sample's record before it is appended (what it writes is on disk before the record
    marks the sample done).
    """
    plan = plan or MaskPlan()
    control = control or AttentionControl()
    results: list[NiahResult] = []
    identity = niah_identity(plan, control)
    make_record = partial(niah_record, loaded, plan)
    if before_record is not None:
        make_record = _announced(make_record, before_record)
    run_sweep(loaded, config, out, make_record, records_name=RESULTS, probe=False, control=control,
              heads_for=lambda spec: plan.heads_for(spec.id), extra_identity=identity, resume=resume, overwrite=overwrite, progress=progress,
              cache_factory=cache_factory,
              finalize=lambda sweep: results.append(finalize(sweep, loaded.info, config, identity)))
    return results[0]


def _announced(make_record, before_record):
    def record(*args):
        made = make_record(*args)
        before_record(made)
        return made

    return record


def niah_identity(plan: MaskPlan, control: AttentionControl) -> dict:
    """What besides the sweep config makes NIAH results comparable: the heads masked, and how."""
    return {"masking": plan.describe(), "mask_mode": control.mode.value, "mask_phase": control.phase.value}


def niah_record(loaded: LoadedModel, plan: MaskPlan, spec, generation, inputs) -> dict:
    """One sample's result line: the response, its score (0-100, by the needle set's metric), its failure type,
    the heads masked. A sample with several values expected (RULER's multi-value, multi-query and task sets)
    also records them (``answers``); it contains the answer when it holds every value (any one, for RULER's QA
    and its "part" metric)."""
    needle, prompt = inputs.needles[spec.needle_index], inputs.prompts[spec.id]
    response = loaded.tokenizer.decode(generation.generated_ids, skip_special_tokens=True).strip()
    answers = needle.answers
    if answers == (needle.real_needle,):
        contains = contains_answer(response, needle.real_needle)
        failure = classify(response, answer=needle.real_needle, needle=needle.needle, question=needle.question,
                           context=prompt.text)
    else:
        found = [contains_answer(response, a) for a in answers]
        contains = any(found) if inputs.metric == "string_match_part" else all(found)
        context = prompt.text
        for sentence in needle.sentences[1:]:  # every needle counts as the needle, not as the rest of the context
            context = context.replace(sentence, " ")
        failure = None if contains else classify(response, answer=" ".join(answers), needle=needle.needle,
                                                 question=needle.question, context=context)
    record = {
        "id": spec.id, "model": loaded.name, "context_length": spec.context_length, "prompt_tokens": len(prompt.ids),
        "depth_percent": spec.depth_percent, "needle_index": spec.needle_index, "response": response,
        "score": 100 * answer_score(inputs.metric, list(answers), response),
        "contains_answer": contains,
        "failure": failure.value if failure else None,
        "masked_heads": [f"{l}-{h}" for l, h in plan.heads_for(spec.id)],
    }
    if answers != (needle.real_needle,):
        record["answers"] = list(answers)
    return record


def finalize(sweep: SweepRun, model: ModelInfo, config: SweepConfig, masking: dict) -> NiahResult:
    """Summarise finished results into ``summary.json`` and draw the length x depth heatmap."""
    from ..analysis.plots.niah import niah_heatmap

    t0 = time.perf_counter()
    rows = sweep.run.records()
    grid = grid_means(rows)
    mean = sum(r["score"] for r in rows) / len(rows) if rows else None
    summary = {
        **model.to_summary(),
        "config": config.to_dict(),
        **sweep.run.grid_summary(),
        **masking,
        "samples": len(rows),
        "metric": needles_metric(config.needles),
        "mean_score": mean,
        "contains_rate": sum(r["contains_answer"] for r in rows) / len(rows) if rows else None,
        "failures": dict(Counter(r["failure"] for r in rows if r["failure"])),
        "grid": [{"context_length": l, "depth_percent": d, "mean_score": s} for (l, d), s in sorted(grid.items())],
        "timing": sweep.timing,
    }
    if rows:
        label = masking["masking"]["selection"]
        title = f"{model.name}: mean score {mean:.1f}" + ("" if label == "none" else f" ({label}-{masking['masking']['k']} masked)")
        niah_heatmap(grid, sweep.run.path / "heatmap.png", title=title)
    sweep.timing["io_s"] += time.perf_counter() - t0
    sweep.run.write_json("summary.json", summary)
    return NiahResult(summary, sweep.run.path)


def merged_summary(merged: MergedShards) -> dict:
    """The summary of merged NIAH shards (the finalizer ``sweep.merge.merge_shards`` takes for ``niah``)."""
    masking = {k: merged.identity[k] for k in ("masking", "mask_mode", "mask_phase")}
    return finalize(merged.sweep, merged.info, merged.config, masking).summary


def grid_means(rows: list[dict]) -> dict[tuple[int, float], float]:
    """Mean score per (context_length, depth_percent) cell, over needles."""
    cells: dict[tuple[int, float], list[float]] = {}
    for r in rows:
        cells.setdefault((r["context_length"], r["depth_percent"]), []).append(r["score"])
    return {cell: sum(v) / len(v) for cell, v in cells.items()}
