"""Lookup scores: how much of each head's attention the question and the answer put on the needle.

The paper's retrieval score counts copies while the answer is decoded. A cache compressed before the
question is known (``kv-eval --query-agnostic``) also needs the heads that *find* the needle while the
question is read, copying or not. The lookup score measures that, as QRHead (Zhang et al. 2025) scores
query-focused heads by attention mass: one teacher-forced forward pass over the NIAH prompt followed by the
expected answer (``real_needle``), and for every head the attention weight that the query rows from the
question's first token to the answer's last put on the needle's tokens, averaged over those rows. A head's
score is the mean over samples (no success criterion: the answer is forced). The attention weights are the
model's own (``kv.snapkv.ObservationWindow`` computes them beside the model's kernel, which runs unchanged);
sliding-window layers score 0, as no cache plan touches them.

A lookup run directory has the files of a detection run (``samples.jsonl``, ``head_scores.json``,
``summary.json``), so ``kv-eval --scores``, ``analyze`` and ``convert`` read it as they read ``detect``'s; its
``criterion`` (in ``config.json``'s identity and ``summary.json``) tells them apart, and ``merge`` keeps it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.head_scores import HeadScores, head_fields
from ..models import LoadedModel, ModelInfo
from ..sweep.grid import SweepConfig, prepare
from ..sweep.merge import MergedShards
from ..sweep.rundir import RunDir

CRITERION = "lookup"


@dataclass
class LookupResult:
    scores: HeadScores
    summary: dict
    out: Path


@torch.no_grad()
def needle_attention(model, ids: list[int], needle_span: tuple[int, int], rows_from: int, *,
                     chunk_size: int = 512) -> np.ndarray:
    """(layers, heads) float: per head, the mean over query rows ``[rows_from, len(ids))`` of the attention
    weight on keys ``needle_span`` ([start, end)). Layers the observer skips (sliding windows) are 0."""
    from transformers import DynamicCache

    from .prefill import extend
    from .snapkv import ObservationWindow, capture_window

    text = model.config.get_text_config(decoder=True)
    mass = np.zeros((text.num_hidden_layers, text.num_attention_heads))
    observer = ObservationWindow(len(ids) - rows_from)
    with capture_window(model, observer):
        observer.arm(len(ids))
        extend(model, DynamicCache(config=model.config), ids, 0, chunk_size=chunk_size)
        for layer, per_head in observer.mass_on(*needle_span).items():
            mass[layer] = per_head.numpy()
    return mass


def run_lookup(loaded: LoadedModel, config: SweepConfig, out: str | Path, *, resume: bool = False,
               overwrite: bool = False, progress: bool = True) -> LookupResult:
    """Lookup scores of ``loaded`` over the NIAH grid of ``config``; results go to ``out``.

    Writes ``samples.jsonl`` (appended per sample, so ``resume`` continues), then ``head_scores.json`` and
    ``summary.json``, also when interrupted.
    """
    from ..sweep.haystack import question_start, require_one_needle
    from ..sweep.runner import progress_bar
    from .policy import check_eligible, eligible_layers

    require_one_needle(config.needles, "lookup")
    check_eligible(eligible_layers(loaded.model.config), loaded.name)
    inputs = prepare(config, loaded.tokenizer, loaded.max_context)
    run = RunDir(out)
    done = run.start({**config.identity(inputs.needles, inputs.haystack_text), "criterion": CRITERION},
                     config.to_dict(), resume=resume, overwrite=overwrite)
    todo = [s for s in inputs.specs if s.id not in done]
    start, bar = time.perf_counter(), progress_bar(len(todo), progress, len(inputs.specs) - len(todo))
    try:
        for spec in todo:
            prompt, needle = inputs.prompts[spec.id], inputs.needles[spec.needle_index]
            answer = loaded.tokenizer(" " + needle.real_needle, add_special_tokens=False)["input_ids"]
            rows_from = question_start(loaded.tokenizer, prompt)
            mass = needle_attention(loaded.model, prompt.ids + answer, prompt.needle_span, rows_from,
                                    chunk_size=config.chunk_size)
            run.append({"id": spec.id, "model": loaded.name, "context_length": spec.context_length,
                        "prompt_tokens": len(prompt.ids), "depth_percent": spec.depth_percent,
                        "needle_index": spec.needle_index, "needle_span": list(prompt.needle_span),
                        "question_start": rows_from, "answer_tokens": len(answer), "success": True,
                        "head_scores": mass.round(6).tolist()})
            bar.update(1)
        bar.close()
    finally:
        timing = {"model_load_s": loaded.load_seconds, "wall_s": time.perf_counter() - start}
        result = finalize(loaded.info, config, run, timing)
    return result


def finalize(info: ModelInfo, config: SweepConfig, run: RunDir, timing: dict) -> LookupResult:
    """Average the finished samples into ``head_scores.json`` and ``summary.json`` (a run's, or merged shards')."""
    records = sorted(run.records(), key=lambda r: r["id"])
    samples = np.asarray([r["head_scores"] for r in records], dtype=np.float64)
    samples = samples.reshape(len(records), info.num_layers, info.num_heads)
    scores = HeadScores(samples, model=info.name, applicable=info.applicable())
    scores.save_paper_json(run.path / "head_scores.json")
    summary = {
        **info.to_summary(),
        "criterion": CRITERION,
        "config": config.to_dict(),
        **run.grid_summary(),
        "samples": len(records),
        "successes": len(records),
        **head_fields(scores, info.num_kv_heads),
        "timing": timing,
    }
    run.write_json("summary.json", summary)
    scores.meta.update(format="run", source=str(run.path), run_dir=str(run.path), summary=summary)
    return LookupResult(scores, summary, run.path)


def merged_summary(merged: MergedShards) -> dict:
    """The summary of merged lookup shards (the finalizer ``sweep.merge.merge_shards`` takes for ``lookup``)."""
    return finalize(merged.info, merged.config, merged.sweep.run, merged.sweep.timing).summary
