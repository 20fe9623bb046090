"""``kv-frontier``: a task-set score (RULER's average over tasks) against KV bytes, from several runs at once.

Each ``kv-eval`` run is one task set (``--needles ruler:TASK...``) and holds one or both settings: the question
inside the compressed prompt, and query-agnostic (``OUT/query-agnostic/``). Peer runs are directories of
``benchmarks/kvpress_peer.py`` (``rows.jsonl`` + ``run.json``): kvpress's presses on the same prompts. Every
(setting, method, budget) becomes one point:

* **score**: RULER's average, the mean over tasks of each task's mean score, on the samples the method has;
* **full**: the full cache's average on the same samples (kv-eval's ``full`` condition; a peer run's own ``full``
  where no kv-eval run covers the task), so ``share`` = score / full is paired sample by sample;
* **interval**: 95% bootstrap over samples, resampled within each task (``draws`` resamples, the same draws for
  the score and its full), for the score and for the share;
* **kv_fraction**: the measured bytes kept for the compressed tokens, as a fraction of the full cache's (kv-eval's
  bytes right after compression; the peers' measured ``kept_fraction``), averaged over the samples.

A method is a kv-eval policy (with how its tokens were chosen where that is not SnapKV's own window and ranking)
or ``kvpress:PRESS``. Tasks are named by their needle set (``ruler:niah_single_2:seed=3:n=4`` -> ``niah_single_2``);
runs of one task must hold the same prompts (model, needles, haystack, lengths, depths), as samples pair by id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import read_jsonl
from .evaluate import Condition, setting_dir

SETTINGS = {False: "question in the prompt", True: "query-agnostic"}
PROMPT_KEYS = ("model", "needles", "haystack", "lengths", "depths")  # what makes two runs' samples the same prompts
PEER_SETTINGS = {"question": False, "agnostic": True}
FULL_METHODS = ("full", "kvpress:full")
DEFAULT_DRAWS = 2000


@dataclass
class Point:
    """One method at one budget in one setting: per task, sample id -> score, and the kept byte fractions."""

    query_agnostic: bool
    method: str
    budget: float
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    fractions: list[float] = field(default_factory=list)


def task_name(needles: str | None) -> str:
    """``ruler:niah_single_2:seed=3:n=4`` -> ``niah_single_2``; a file's stem; ``default`` for the built-in set."""
    if not needles:
        return "default"
    if needles.startswith("ruler:"):
        return needles.split(":")[1]
    return Path(needles).stem


def method_name(row: dict) -> str:
    """A kv-eval policy, with how its tokens were chosen unless that is SnapKV's own (window, own ranking), an
    adaptive policy's pool unless it is the whole model's, and ``--follow`` unless it is 0."""
    how = [part for part, plain in ((row.get("selection"), "window"), (row.get("token_ranking"), "own"))
           if part and part != plain]
    if row.get("pool") not in (None, "model"):
        how.append(f"{row['pool']} pool")
    if row.get("follow"):
        how.append(f"follow {row['follow']}")
    return row["policy"] + (f" ({', '.join(how)})" if how else "")


def check_same_prompts(prompts: dict[str, dict], task: str, config: dict, run: Path) -> None:
    """Runs of one task must hold the same prompts, else their sample ids pair different prompts."""
    mine = {k: config.get(k) for k in PROMPT_KEYS}
    seen = prompts.setdefault(task, {"config": mine, "run": run})
    if seen["config"] != mine:
        differ = ", ".join(f"{k} {seen['config'][k]!r} vs {mine[k]!r}" for k in PROMPT_KEYS if seen["config"][k] != mine[k])
        raise UserError(f"{seen['run']} and {run} are runs of {task} on other prompts ({differ})")


def _add(points: dict, key: tuple, task: str, sample: str, score: float, fraction: float | None) -> None:
    point = points.setdefault(key, Point(*key))
    point.scores.setdefault(task, {})[sample] = float(score)
    if fraction is not None:
        point.fractions.append(float(fraction))


def read_kv_eval(run: str | Path, points: dict, prompts: dict) -> str:
    """Add every condition of one ``kv-eval`` output directory (both settings) to ``points``; returns its task."""
    run = Path(run)
    summary_path = run / "summary.json"
    if not summary_path.exists():
        raise UserError(f"{run} is not a kv-eval run (no summary.json)")
    summary = json.loads(summary_path.read_text())
    task = task_name(summary.get("config", {}).get("needles"))
    check_same_prompts(prompts, task, summary.get("config", {}), run)
    for row in summary["rows"]:
        agnostic = bool(row.get("query_agnostic"))
        condition = Condition(row["policy"], None if row["policy"] == "full" else float(row["budget"]))
        key = (agnostic, method_name(row), condition.budget or 1.0)
        for length_dir in sorted((setting_dir(run, agnostic) / condition.name).glob("L*")):
            fractions = {k["id"]: k.get("compressed_kv_bytes", k["kv_bytes"]) /
                         k.get("compressed_dense_kv_bytes", k["dense_kv_bytes"])
                         for k in read_jsonl(length_dir / "kv_samples.jsonl")}
            for record in read_jsonl(length_dir / "results.jsonl"):
                _add(points, key, task, record["id"], record["score"], fractions.get(record["id"]))
    return task


def read_peer(run: str | Path, points: dict, prompts: dict) -> str:
    """Add every scored row of one ``benchmarks/kvpress_peer.py`` output directory to ``points``; returns its task."""
    run = Path(run)
    if not (run / "rows.jsonl").exists() or not (run / "run.json").exists():
        raise UserError(f"{run} is not a kvpress peer run (no rows.jsonl and run.json)")
    config = json.loads((run / "run.json").read_text()).get("config", {})
    task = task_name(config.get("needles"))
    check_same_prompts(prompts, task, config, run)
    for row in read_jsonl(run / "rows.jsonl"):
        if row.get("score") is None:
            continue  # unreachable budgets and presses that failed have no score
        key = (PEER_SETTINGS[row["setting"]], f"kvpress:{row['press']}", float(row["budget"]))
        _add(points, key, task, row["id"], row["score"], row.get("kept_fraction"))
    return task


def full_reference(points: dict) -> dict[bool, dict[str, dict[str, float]]]:
    """Per setting and task, the full cache's score by sample: kv-eval's ``full``, else a peer run's."""
    reference: dict[bool, dict[str, dict[str, float]]] = {}
    for (agnostic, method, _), point in sorted(points.items(), key=lambda kv: kv[0][1] != "full"):
        if method in FULL_METHODS:
            for task, by_sample in point.scores.items():
                reference.setdefault(agnostic, {}).setdefault(task, dict(by_sample))
    return reference


def average(point: Point, reference: dict[str, dict[str, float]], *, draws: int = DEFAULT_DRAWS, seed: int = 0) -> dict:
    """RULER's average (mean of task means) for ``point`` and for the full cache on the same samples, with 95%
    bootstrap intervals resampled within each task and the paired share of full; ``by_task`` holds each task's
    means."""
    tasks = sorted(t for t in point.scores if t in reference)
    rng = np.random.default_rng(seed)
    means, fulls, boot, boot_full, samples, by_task = [], [], [], [], 0, {}
    for task in tasks:
        ids = sorted(set(point.scores[task]) & set(reference[task]))
        if not ids:
            continue
        mine = np.array([point.scores[task][i] for i in ids])
        full = np.array([reference[task][i] for i in ids])
        picks = rng.integers(0, len(ids), (draws, len(ids)))
        means.append(mine.mean()), fulls.append(full.mean())
        by_task[task] = {"score": float(mine.mean()), "full": float(full.mean()), "samples": len(ids)}
        boot.append(mine[picks].mean(1)), boot_full.append(full[picks].mean(1))
        samples += len(ids)
    if not means:
        return {}
    score, full_score = float(np.mean(means)), float(np.mean(fulls))
    boot_score, boot_full_score = np.mean(boot, axis=0), np.mean(boot_full, axis=0)
    shares = boot_score / np.maximum(boot_full_score, 1e-9)
    return {"tasks": len(means), "samples": samples, "score": score,
            "score_low": float(np.percentile(boot_score, 2.5)), "score_high": float(np.percentile(boot_score, 97.5)),
            "full": full_score, "share": score / full_score if full_score > 0 else None,
            "share_low": float(np.percentile(shares, 2.5)) if full_score > 0 else None,
            "share_high": float(np.percentile(shares, 97.5)) if full_score > 0 else None, "by_task": by_task}


def frontier(runs: list[str | Path], peers: list[str | Path] = (), *, draws: int = DEFAULT_DRAWS) -> dict:
    """Every (setting, method, budget) of ``runs`` (kv-eval) and ``peers`` (kvpress_peer) as one averaged point."""
    if not runs and not peers:
        raise UserError("give at least one kv-eval run or --peer run")
    points: dict[tuple, Point] = {}
    prompts: dict[str, dict] = {}
    tasks = sorted({read_kv_eval(run, points, prompts) for run in runs} | {read_peer(peer, points, prompts)
                                                                           for peer in peers})
    reference = full_reference(points)
    entries = []
    for key in sorted(points, key=lambda k: (k[0], k[1] not in FULL_METHODS, k[1].startswith("kvpress:"),
                                             k[1], k[2])):  # per setting: the full caches, ours, then the peers
        point = points[key]
        found = average(point, reference.get(point.query_agnostic, {}), draws=draws)
        if not found:
            continue
        entries.append({"setting": SETTINGS[point.query_agnostic], "query_agnostic": point.query_agnostic,
                        "method": point.method, "budget": point.budget,
                        "kv_fraction": float(np.mean(point.fractions)) if point.fractions else None, **found})
    return {"tasks": tasks, "runs": [str(r) for r in runs], "peers": [str(p) for p in peers], "draws": draws,
            "entries": entries}


def markdown(result: dict) -> str:
    """A table per setting: methods down, budgets across; 'score [95% CI], share of full (kept bytes)'."""
    lines = [f"Tasks: {', '.join(result['tasks'])}. Cells: RULER average (mean of task means) [95% bootstrap "
             f"interval], share of the full cache on the same samples [interval], measured KV bytes kept.", ""]
    for agnostic, title in SETTINGS.items():
        entries = [e for e in result["entries"] if e["query_agnostic"] == agnostic]
        if not entries:
            continue
        budgets = sorted({e["budget"] for e in entries if not _is_full(e)})
        lines += [f"### {title}", "", "| method | " + " | ".join(f"{b:.0%}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for e in (e for e in entries if _is_full(e)):
            lines.append(f"| {e['method']} ({e['samples']} samples, {e['tasks']} tasks) | "
                         f"{e['score']:.1f} [{e['score_low']:.1f}, {e['score_high']:.1f}] |" + " |" * (len(budgets) - 1))
        methods = list(dict.fromkeys(e["method"] for e in entries if not _is_full(e)))
        for method in methods:
            mine = {e["budget"]: e for e in entries if e["method"] == method}
            lines.append(f"| {method} | " + " | ".join(_cell(mine[b]) if b in mine else "" for b in budgets) + " |")
        lines.append("")
    return "\n".join(lines)


def _is_full(entry: dict) -> bool:
    return entry["method"] in FULL_METHODS


def _cell(e: dict) -> str:
    share = "" if e["share"] is None else f", {e['share']:.2f} [{e['share_low']:.2f}, {e['share_high']:.2f}]"
    kept = "" if e["kv_fraction"] is None else f" ({e['kv_fraction']:.1%})"
    return f"{e['score']:.1f} [{e['score_low']:.1f}, {e['score_high']:.1f}]{share}{kept}"


def write_frontier(result: dict, out: str | Path, *, title: str) -> list[Path]:
    """``OUT/frontier.json``, ``OUT/frontier.md`` and ``OUT/frontier.png``; returns their paths."""
    from ..analysis.plots.kv import task_frontier_plot
    from ..io import write_json_atomic, write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "frontier.json", result)
    write_text_atomic(out / "frontier.md", markdown(result))
    plot = task_frontier_plot(result["entries"], out / "frontier.png", title=title)
    return [out / "frontier.json", out / "frontier.md", plot]
