"""What ``kv-eval`` keeps next to each NIAH run: the plan, per-sample KV statistics, timing, peak memory.

    kv_plan.json     the plan and the setting (refuses to resume under another; older files are read under
                     today's names, ``policy.read_plan``)
    kv_samples.jsonl one line per finished sample: tokens, stored and dense-equivalent KV bytes at the end,
                     peak bytes held (``cache.TrackedCache``: buffers, index tensors and, with a shared
                     prefill, the prefilled cache beside the copy), decode steps, and the tokens in the
                     cache when it was compressed (decoding starts; query-agnostic: before the question),
                     with (shared prefill) its stored and dense-equivalent bytes right then and the sample's
                     ``id``: the row is written before the sample's NIAH record, which marks it done
                     (``with_kv_rows``)
    kv_timing.json   decode seconds and steps, prefill seconds and tokens, summed over invocations, and
                     the peak RSS of the process that ran them
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import read_jsonl, repair_jsonl, write_json_atomic, write_text_atomic
from .policy import KvPlan, read_plan

SAMPLES, TIMING, PLAN = "kv_samples.jsonl", "kv_timing.json", "kv_plan.json"


def check_plan(run_dir: Path, described: dict, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix plans (``described``: the plan and setting) in one run directory; reset KV statistics
    on overwrite."""
    from ..masking.niah import RESULTS

    saved_path = run_dir / PLAN
    results = run_dir / RESULTS
    if results.exists() and results.stat().st_size and not (resume or overwrite):
        raise UserError(f"{run_dir} already holds results; pass --resume to continue them or --overwrite to start "
                        "again")
    if overwrite:
        for name in (SAMPLES, TIMING):
            (run_dir / name).unlink(missing_ok=True)
    elif resume and saved_path.exists():
        saved = read_plan(json.loads(saved_path.read_text(encoding="utf-8")))
        if saved != json.loads(json.dumps(described)):
            raise UserError(f"cannot resume {run_dir}: it was run with another KV plan or setting (see {saved_path})")
    repair_jsonl(run_dir / SAMPLES)  # a kill mid-write leaves a torn last line: the next row starts a fresh one
    write_json_atomic(saved_path, described)


def with_kv_rows(run_dir: Path, recorded: set[str]) -> set[str]:
    """The samples of ``recorded`` (ids with a NIAH record) whose KV row is in ``kv_samples.jsonl``: the others
    run again. Rows of samples without a record (a run stopped between the two writes) and repeated rows are
    dropped, so a sample that runs again has its row once. A file written before rows carried ids is taken as
    it is (its samples are all done)."""
    path = run_dir / SAMPLES
    rows = list(read_jsonl(path))
    if any("id" not in row for row in rows):
        return recorded
    kept: dict[str, dict] = {}
    for row in rows:
        if row["id"] in recorded:
            kept.setdefault(row["id"], row)
    if len(kept) < len(rows):
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in kept.values()))
    return set(kept)


def add_timing(run_dir: Path, timing: dict, found: list[dict]) -> dict:
    """Add this invocation's decode/prefill work to ``kv_timing.json``; keep the peak RSS of invocations that ran."""
    path = run_dir / TIMING
    saved = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    new = {"decode_s": timing.get("decode_s", 0.0), "decode_steps": sum(s["decode_steps"] for s in found),
           "prefill_s": timing.get("prefill_s", 0.0), "prefilled_tokens": timing.get("prefilled_tokens", 0),
           "question_prefill_s": timing.get("question_prefill_s", 0.0), "compress_s": timing.get("compress_s", 0.0),
           "selection_s": timing.get("selection_s", 0.0)}
    total = {k: saved.get(k, 0) + v for k, v in new.items()}
    peaks = [saved.get("peak_rss_mb")] + ([peak_rss_mb()] if found else [])  # a resume with nothing to do: not a peak
    total["peak_rss_mb"] = max((p for p in peaks if p is not None), default=None)
    write_json_atomic(path, total)
    return total


def length_stats(length: int, plan: KvPlan, summary: dict, samples: list[dict], timing: dict, *,
                 planned_tokens: int) -> dict:
    """One length's row part; ``planned_tokens``: the context the plan was sized for."""
    def mean(key):
        found = [s[key] for s in samples if s.get(key) is not None]
        return float(np.mean(found)) if found else None

    return {
        "context_length": length, "window": None if plan.selects_tokens else plan.recent_window,
        "obs_window": plan.obs_window, "samples": summary["samples"],
        "mean_score": summary["mean_score"], "kv_bytes": mean("kv_bytes"), "dense_kv_bytes": mean("dense_kv_bytes"),
        "peak_kv_bytes": max((s["peak_kv_bytes"] for s in samples), default=None), "tokens": mean("tokens"),
        "compressed_tokens": mean("compressed_tokens"), "compressed_kv_bytes": mean("compressed_kv_bytes"),
        "compressed_dense_kv_bytes": mean("compressed_dense_kv_bytes"),
        "planned_tokens": planned_tokens, "planned_byte_fraction": plan.byte_fraction(planned_tokens),
        "decode_tokens_per_s": timing["decode_steps"] / timing["decode_s"] if timing["decode_s"] else None,
        "prefill_tokens_per_s": timing["prefilled_tokens"] / timing["prefill_s"] if timing["prefill_s"] else None,
        "decode_s": timing["decode_s"], "decode_steps": timing["decode_steps"], "peak_rss_mb": timing["peak_rss_mb"],
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM, falling back to ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
