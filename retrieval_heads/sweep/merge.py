"""Combine shard run directories into one, as if the whole grid had run in one process.

``merge_shards`` unites the records and the timing of the shards; the summary is the command's own, so
the caller passes a finalizer per run kind (``cli.merge.merge_runs``: detect, lookup and niah). A sweep
imports no experiment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ..errors import UserError
from ..io import write_text_atomic
from ..models import ModelInfo
from .grid import SweepConfig
from .rundir import CONFIG, RunDir
from .runner import SweepRun

KINDS = {"samples.jsonl": "detect", "results.jsonl": "niah"}  # records file -> command (lookup: its criterion)
PHASES = ("prefill_s", "decode_s", "scoring_s", "io_s", "prefilled_tokens", "reused_tokens")


@dataclass(frozen=True)
class MergedShards:
    """Shards united in one run directory, handed to the finalizer of their run kind."""

    kind: str  # detect, lookup or niah (``run_kind``)
    sweep: SweepRun  # the merged run directory and the shards' merged timing; no inputs
    info: ModelInfo
    config: SweepConfig  # the shards' settings, as one unsharded run
    identity: dict  # ``config.json``'s identity, the same in every shard
    summaries: list[dict]  # each shard's ``summary.json``, in the order given ({} where a shard has none)


Finalize = Callable[[MergedShards], dict]  # writes the merged run's summary files, returns its summary


def read_shard(path: Path) -> tuple[str, dict, dict]:
    """(records file name, config.json, summary.json) of one shard directory."""
    names = [name for name in KINDS if (path / name).exists()]
    if len(names) != 1 or not (path / CONFIG).exists():
        raise UserError(f"{path} is not a finished run directory (needs config.json and samples.jsonl or results.jsonl)")
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    return names[0], json.loads((path / CONFIG).read_text(encoding="utf-8")), summary


def run_kind(records_name: str, config: dict) -> str:
    """The command that wrote a run directory: ``niah``, ``detect``, or ``lookup`` (detect's files, with the
    ``criterion`` of ``config.json``'s identity)."""
    kind = KINDS[records_name]
    return config["identity"].get("criterion", kind) if kind == "detect" else kind


def merge_shards(dirs: list[str | Path], out: str | Path, finalizers: Mapping[str, Finalize]) -> dict:
    """Merge shard directories into ``out`` and summarise them with ``finalizers[kind]``; refuses shards of
    different kinds, models, inputs or settings, and a kind ``finalizers`` does not name.

    Records are united by sample id (a sample present in two shards counts once); the summary is
    recomputed from the merged records. Returns the merged summary.
    """
    if not dirs:
        raise UserError("merge needs at least one run directory")
    shards = [(Path(d), *read_shard(Path(d))) for d in dirs]
    records_name, first_config = shards[0][1], shards[0][2]
    kind = run_kind(records_name, first_config)
    if kind not in finalizers:
        raise UserError(f"{shards[0][0]} holds {kind} results; this merge takes {', '.join(finalizers)} runs")
    for path, name, config, _ in shards[1:]:
        if run_kind(name, config) != kind:
            raise UserError(f"{path} holds {run_kind(name, config)} results, {shards[0][0]} holds {kind} results")
        diff = sorted(k for k in set(config["identity"]) | set(first_config["identity"])
                      if config["identity"].get(k) != first_config["identity"].get(k))
        if diff:
            raise UserError(f"cannot merge {path} with {shards[0][0]}: their {', '.join(diff)} differ")
    run = RunDir(out, records_name)
    records: dict[str, dict] = {}
    for path, *_ in shards:
        for row in RunDir(path, records_name).records():
            records.setdefault(row["id"], row)
    ordered = [records[k] for k in sorted(records)]
    write_text_atomic(run.records_path, "".join(json.dumps(r) + "\n" for r in ordered))
    settings = {**first_config["config"], "shard": [0, 1]}
    run.write_json(CONFIG, {"identity": first_config["identity"], "config": settings, "merged_from": [str(p) for p, *_ in shards]})
    summaries = [s for *_, s in shards]
    merged = MergedShards(kind=kind, sweep=SweepRun(run, inputs=None, timing=merged_timing(summaries)),
                          info=model_info(shards), config=SweepConfig(**{**settings, "shard": (0, 1)}),
                          identity=first_config["identity"], summaries=summaries)
    return finalizers[kind](merged)


def model_info(shards: list[tuple]) -> ModelInfo:
    """The model shape from the first shard whose ``summary.json`` has it (an interrupted shard may have none)."""
    for path, _, _, summary in shards:
        if {"model", "num_layers", "num_heads", "num_kv_heads"} <= set(summary):
            return ModelInfo.from_summary(summary)
    raise UserError(f"none of {', '.join(str(p) for p, *_ in shards)} has a summary.json with the model's shape; "
                    "rerun a shard with --resume to write it")


def merged_timing(summaries: list[dict]) -> dict:
    """Phase seconds summed over shards; wall time of the slowest shard (they run in parallel)."""
    timings = [s.get("timing", {}) for s in summaries]
    merged = {key: sum(t.get(key, 0) for t in timings) for key in PHASES}
    merged["wall_s"] = max((t.get("wall_s", 0.0) for t in timings), default=0.0)
    merged["model_load_s"] = max((t.get("model_load_s", 0.0) for t in timings), default=0.0)
    merged["shards"] = len(summaries)
    return merged
