"""Retrieval-head detection: run a needle sweep with the probe on and score every head."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .models import LoadedModel, ModelInfo
from .runner import SweepRun, run_sweep
from .scores import RETRIEVAL_THRESHOLD, HeadScores
from .scoring import is_success, retrieval_scores, rouge1_recall
from .sweep import SweepConfig

BUCKETS = (("zero", None, 0.0), ("(0, 0.1]", 0.0, 0.1), ("(0.1, 0.5]", 0.1, 0.5), ("> 0.5", 0.5, None))


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
) -> DetectionResult:
    """Detect retrieval heads of ``loaded`` over the sweep ``config``; results go to ``out``.

    Writes ``samples.jsonl`` (appended per sample), then ``head_scores.json`` (paper format) and
    ``summary.json``; these two are also written when the run is interrupted.
    """
    results: list[DetectionResult] = []

    def make_record(spec, generation, inputs):
        return _record(loaded, spec, inputs.prompts[spec.id], inputs.needles[spec.needle_index], generation)

    run_sweep(loaded, config, out, make_record, resume=resume, overwrite=overwrite, progress=progress,
              finalize=lambda sweep: results.append(finalize(sweep, loaded.info, config)))
    return results[0]


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


def scores_from_records(records: list[dict], shape: tuple[int, int], model: str | None = None) -> HeadScores:
    """HeadScores over the successful records (the paper averages over successful samples only)."""
    matrices = [r["head_scores"] for r in records if r["success"]]
    samples = np.asarray(matrices, dtype=np.float64).reshape(len(matrices), *shape)
    return HeadScores(samples, model=model)


def finalize(sweep: SweepRun, model: ModelInfo, config: SweepConfig) -> DetectionResult:
    """Aggregate every finished record into ``head_scores.json`` and ``summary.json``."""
    t0 = time.perf_counter()
    run, timing = sweep.run, sweep.timing
    records = sorted(run.records(), key=lambda r: r["id"])
    scores = scores_from_records(records, (model.num_layers, model.num_heads), model.name)
    scores.save_paper_json(run.path / "head_scores.json")
    mean = scores.mean
    summary = {
        **model.to_summary(),
        "config": config.to_dict(),
        "samples": len(records),
        "successes": scores.num_samples,
        "retrieval_threshold": RETRIEVAL_THRESHOLD,
        "n_retrieval_heads": int((mean > RETRIEVAL_THRESHOLD).sum()),
        "sparsity": sparsity_counts(mean),
        "top_heads": [{"layer": l, "head": h, "score": s} for l, h, s in scores.top(20)],
        "kv_head_scores": {reduce: scores.kv_view(model.num_kv_heads, reduce).round(6).tolist() for reduce in ("max", "mean")},
        "timing": timing,
    }
    timing["io_s"] += time.perf_counter() - t0
    run.write_json("summary.json", summary)
    return DetectionResult(scores, summary, run.path)


def _progress(items, enabled: bool, already: int):
    from tqdm.auto import tqdm

    postfix = {"resumed": already} if already else None
    return tqdm(items, desc="samples", unit="sample", disable=not enabled, postfix=postfix)
