"""Retrieval-head detection: run a needle sweep with the probe on and score every head."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .engine import Engine, stop_condition
from .hooks import AttentionControl, attention_control
from .models import LoadedModel
from .rundir import RunDir
from .scores import HeadScores
from .scoring import RETRIEVAL_THRESHOLD, is_success, retrieval_scores, rouge1_recall
from .sweep import SweepConfig, prepare

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
    start = time.perf_counter()
    tokenizer = loaded.tokenizer
    inputs = prepare(config, tokenizer, loaded.max_context)
    run = RunDir(out)
    done = run.start(config.identity(inputs.needles, inputs.haystack_text), config.to_dict(), resume=resume, overwrite=overwrite)
    todo = sorted((s for s in inputs.specs if s.id not in done), key=lambda s: inputs.prompts[s.id].ids)
    timing = {"scoring_s": 0.0, "io_s": 0.0}
    engine = None
    try:
        with attention_control(loaded.model, AttentionControl()) as control:
            engine = Engine(loaded.model, control, stop_condition(tokenizer, loaded.model),
                            chunk_size=config.chunk_size, share_prefix=config.share_prefix)
            for spec in _progress(todo, progress, len(done)):
                prompt, needle = inputs.prompts[spec.id], inputs.needles[spec.needle_index]
                generation = engine.generate(prompt.ids, config.max_new_tokens)
                t0 = time.perf_counter()
                record = _record(loaded, spec, prompt, needle, generation, tokenizer)
                t1 = time.perf_counter()
                run.append(record)
                timing["scoring_s"] += t1 - t0
                timing["io_s"] += time.perf_counter() - t1
    finally:
        if engine is not None:
            timing.update(engine.timer.seconds)
            timing["prefilled_tokens"] = engine.timer.prefilled_tokens
            timing["reused_tokens"] = engine.timer.reused_tokens
        timing["model_load_s"] = loaded.load_seconds
        result = finalize(run, loaded, config, timing, time.perf_counter() - start)
    return result


def _record(loaded, spec, prompt, needle, generation, tokenizer) -> dict:
    response = tokenizer.decode(generation.generated_ids, skip_special_tokens=True).strip()
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


def finalize(run: RunDir, loaded: LoadedModel, config: SweepConfig, timing: dict, wall: float) -> DetectionResult:
    """Aggregate every finished record into ``head_scores.json`` and ``summary.json``."""
    t0 = time.perf_counter()
    records = sorted(run.records(), key=lambda r: r["id"])
    scores = scores_from_records(records, (loaded.num_layers, loaded.num_heads), loaded.name)
    scores.save_paper_json(run.path / "head_scores.json")
    mean = scores.mean
    summary = {
        "model": loaded.name,
        "num_layers": loaded.num_layers,
        "num_heads": loaded.num_heads,
        "num_kv_heads": loaded.num_kv_heads,
        "config": config.to_dict(),
        "samples": len(records),
        "successes": scores.num_samples,
        "retrieval_threshold": RETRIEVAL_THRESHOLD,
        "n_retrieval_heads": int((mean > RETRIEVAL_THRESHOLD).sum()),
        "sparsity": sparsity_counts(mean),
        "top_heads": [{"layer": l, "head": h, "score": s} for l, h, s in scores.top(20)],
        "timing": {**timing, "wall_s": wall},
    }
    timing["io_s"] = timing.get("io_s", 0.0) + time.perf_counter() - t0
    summary["timing"]["io_s"] = timing["io_s"]
    run.write_json("summary.json", summary)
    return DetectionResult(scores, summary, run.path)


def _progress(items, enabled: bool, already: int):
    from tqdm.auto import tqdm

    postfix = {"resumed": already} if already else None
    return tqdm(items, desc="samples", unit="sample", disable=not enabled, postfix=postfix)
