"""Run every sample of a sweep through the engine, appending one record per finished sample."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.engine import Engine, Generation, stop_condition
from ..core.hooks import AblationPhase, AttentionControl, attention_control, head_mask
from ..models import LoadedModel
from .grid import SampleSpec, SweepConfig, SweepInputs, prepare, sample_blocks
from .rundir import RunDir

MakeRecord = Callable[[SampleSpec, Generation, SweepInputs], dict]


@dataclass
class SweepRun:
    """What a finished (or interrupted) sweep leaves behind."""

    run: RunDir
    inputs: SweepInputs
    timing: dict = field(default_factory=dict)
    stopped_early: bool = False  # ``should_stop`` ended the run before the grid was done


def run_sweep(
    loaded: LoadedModel,
    config: SweepConfig,
    out: str | Path,
    make_record: MakeRecord,
    *,
    records_name: str = "samples.jsonl",
    probe: bool = True,
    control: AttentionControl | None = None,
    heads_for: Callable[[SampleSpec], tuple] | None = None,
    extra_identity: dict | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    finalize: Callable[[SweepRun], object] | None = None,
    cache_factory: Callable[[], object] | None = None,
    should_stop: Callable[[SweepRun], bool] | None = None,
    skip: Callable[[SweepRun, list[SampleSpec]], set[str]] | None = None,
) -> SweepRun:
    """Generate every unfinished sample of ``config`` and append ``make_record(spec, generation, inputs)``.

    Samples run block by block (``config.block_size``, each block balanced over needles, lengths
    and depths; one block by default), inside a block in lexicographic order of their prompt
    tokens so consecutive prompts share the longest prefixes, and are decoded
    ``config.batch_size`` at a time. ``heads_for(spec)`` names the (layer, head) pairs to ablate
    for a sample; only samples with the same heads share a batch.
    ``finalize`` runs in any case, also after an interrupt, over the records finished so far.
    ``cache_factory`` supplies a custom KV cache per prompt (see ``Engine``).
    ``should_stop(run)`` is asked after each completed block but the last (batches end at block
    ends); True ends the run there. ``skip(run, block)`` is asked once when a block starts; the ids
    it returns are not run.
    """
    start = time.perf_counter()
    layout = loaded.layout  # one dry forward pass: refuses models the hook cannot see before any work
    inputs = prepare(config, loaded.tokenizer, loaded.max_context)
    run = RunDir(out, records_name)
    identity = {**config.identity(inputs.needles, inputs.haystack_text), **(extra_identity or {})}
    done = run.start(identity, config.to_dict(), resume=resume, overwrite=overwrite)
    blocks = sample_blocks(inputs.specs, config.block_size)
    todo = sorted((s for s in inputs.specs if s.id not in done), key=lambda s: (blocks[s.id], inputs.prompts[s.id].ids))
    heads_for = heads_for or (lambda spec: ())
    shape = (loaded.num_layers, loaded.num_heads)
    result = SweepRun(run, inputs, {"scoring_s": 0.0, "io_s": 0.0, "model_load_s": loaded.load_seconds})
    control = control or AttentionControl()
    engine = None
    try:
        with attention_control(loaded.model, control):
            engine = Engine(loaded.model, control, stop_condition(loaded.tokenizer, loaded.model),
                            chunk_size=config.chunk_size, share_prefix=config.share_prefix, cache_factory=cache_factory,
                            num_heads=layout.num_heads)
            result.timing.update(engine_notes(engine))
            bar = progress_bar(len(todo), progress, len(done))
            todo_blocks = in_blocks(todo, blocks)
            for number, block in enumerate(todo_blocks):
                left_out = skip(result, block) if skip is not None else set()
                chosen = [spec for spec in block if spec.id not in left_out]
                bar.update(len(block) - len(chosen))
                for batch, heads in batches(chosen, heads_for, config.batch_size):
                    control.ablate = head_mask(list(heads), *shape) if heads else None
                    prompts = [inputs.prompts[spec.id].ids for spec in batch]
                    tag = heads if control.phase is AblationPhase.ALL else None

                    def save(index: int, generation: Generation, batch=batch) -> None:  # as soon as a sample stops
                        t0 = time.perf_counter()
                        record = make_record(batch[index], generation, inputs)
                        t1 = time.perf_counter()
                        run.append(record)
                        result.timing["scoring_s"] += t1 - t0
                        result.timing["io_s"] += time.perf_counter() - t1
                        bar.update(1)

                    engine.generate_batch(prompts, config.max_new_tokens, probe=probe, cache_tag=tag, on_done=save)
                if should_stop is not None and number < len(todo_blocks) - 1 and should_stop(result):
                    result.stopped_early = True
                    break
            bar.close()
    finally:
        if engine is not None:
            result.timing.update(engine.timer.seconds)
            result.timing["prefilled_tokens"] = engine.timer.prefilled_tokens
            result.timing["reused_tokens"] = engine.timer.reused_tokens
        result.timing["wall_s"] = time.perf_counter() - start
        if finalize is not None:
            finalize(result)
    return result


def engine_notes(engine: Engine) -> dict:
    """How the engine ran this model: prefix reuse (and why not) and batched decoding."""
    notes = {"prefix_reuse": engine.share_prefix, "batched_decoding": engine.can_batch}
    if engine.reuse_off:
        notes["prefix_reuse_off"] = engine.reuse_off
    return notes


def in_blocks(specs: list[SampleSpec], blocks: dict[str, int]) -> list[list[SampleSpec]]:
    """``specs`` (sorted by block) cut into their blocks of ``blocks`` (id -> block), in order.

    The runner batches each block on its own, so a block's end is a batch's end: a stop check
    after a block sees exactly the samples up to it, whatever the batch size.
    """
    cut: list[list[SampleSpec]] = []
    for spec in specs:
        if not cut or blocks[spec.id] != blocks[cut[-1][-1].id]:
            cut.append([])
        cut[-1].append(spec)
    return cut


def batches(specs: list[SampleSpec], heads_for, size: int):
    """Consecutive runs of at most ``size`` specs that ablate the same heads, with those heads."""
    batch: list[SampleSpec] = []
    heads = None
    for spec in specs:
        these = tuple(heads_for(spec))
        if batch and (these != heads or len(batch) == size):
            yield batch, heads
            batch = []
        batch.append(spec)
        heads = these
    if batch:
        yield batch, heads


def progress_bar(total: int, enabled: bool, already: int):
    from tqdm.auto import tqdm

    postfix = {"resumed": already} if already else None
    return tqdm(total=total, desc="samples", unit="sample", disable=not enabled, postfix=postfix)
