"""Run every sample of a sweep through the engine, appending one record per finished sample."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .engine import Engine, Generation, stop_condition
from .hooks import AblationPhase, AttentionControl, attention_control
from .models import LoadedModel
from .rundir import RunDir
from .sweep import SampleSpec, SweepConfig, SweepInputs, prepare

MakeRecord = Callable[[SampleSpec, Generation, SweepInputs], dict]


@dataclass
class SweepRun:
    """What a finished (or interrupted) sweep leaves behind."""

    run: RunDir
    inputs: SweepInputs
    timing: dict = field(default_factory=dict)


def run_sweep(
    loaded: LoadedModel,
    config: SweepConfig,
    out: str | Path,
    make_record: MakeRecord,
    *,
    records_name: str = "samples.jsonl",
    probe: bool = True,
    control: AttentionControl | None = None,
    ablation_for: Callable[[int], object] | None = None,
    extra_identity: dict | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    finalize: Callable[[SweepRun], object] | None = None,
    cache_factory: Callable[[], object] | None = None,
) -> SweepRun:
    """Generate every unfinished sample of ``config`` and append ``make_record(spec, generation, inputs)``.

    Samples run in lexicographic order of their prompt tokens so consecutive prompts share the
    longest prefixes. ``ablation_for(grid_index)`` may set per-sample heads on ``control``.
    ``finalize`` runs in any case, also after an interrupt, over the records finished so far.
    ``cache_factory`` supplies a custom KV cache per prompt (see ``Engine``).
    """
    start = time.perf_counter()
    inputs = prepare(config, loaded.tokenizer, loaded.max_context)
    run = RunDir(out, records_name)
    identity = {**config.identity(inputs.needles, inputs.haystack_text), **(extra_identity or {})}
    done = run.start(identity, config.to_dict(), resume=resume, overwrite=overwrite)
    index = {spec.id: i for i, spec in enumerate(inputs.specs)}
    todo = sorted((s for s in inputs.specs if s.id not in done), key=lambda s: inputs.prompts[s.id].ids)
    result = SweepRun(run, inputs, {"scoring_s": 0.0, "io_s": 0.0, "model_load_s": loaded.load_seconds})
    control = control or AttentionControl()
    engine = None
    try:
        with attention_control(loaded.model, control):
            engine = Engine(loaded.model, control, stop_condition(loaded.tokenizer, loaded.model),
                            chunk_size=config.chunk_size, share_prefix=config.share_prefix, cache_factory=cache_factory)
            for spec in _progress(todo, progress, len(done)):
                tag = ablation_for(index[spec.id]) if ablation_for else None
                prefill_tag = tag if control.phase is AblationPhase.ALL else None
                generation = engine.generate(inputs.prompts[spec.id].ids, config.max_new_tokens, probe=probe, cache_tag=prefill_tag)
                t0 = time.perf_counter()
                record = make_record(spec, generation, inputs)
                t1 = time.perf_counter()
                run.append(record)
                result.timing["scoring_s"] += t1 - t0
                result.timing["io_s"] += time.perf_counter() - t1
    finally:
        if engine is not None:
            result.timing.update(engine.timer.seconds)
            result.timing["prefilled_tokens"] = engine.timer.prefilled_tokens
            result.timing["reused_tokens"] = engine.timer.reused_tokens
        result.timing["wall_s"] = time.perf_counter() - start
        if finalize is not None:
            finalize(result)
    return result


def _progress(items, enabled: bool, already: int):
    from tqdm.auto import tqdm

    postfix = {"resumed": already} if already else None
    return tqdm(items, desc="samples", unit="sample", disable=not enabled, postfix=postfix)
