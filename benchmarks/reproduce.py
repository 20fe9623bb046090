"""Rebuild a README result from scratch with the product's own commands.

    python benchmarks/reproduce.py --list                    # the studies, one line each
    python benchmarks/reproduce.py detection                 # run its commands, then print its result rows
    python benchmarks/reproduce.py kv-question --dry-run     # only print the commands
    python benchmarks/reproduce.py masking --out runs/repro  # outputs under runs/repro (default runs/reproduce)

Every results table in the README names the study that rebuilds it. A study is a list of commands
(``retrieval-heads ...`` or a script in ``benchmarks/``) and a function that reads what they wrote and
prints the table's rows. A command whose output already exists is skipped, so studies that share a run
(the detection behind masking, the lookup scores behind the KV rows) run it once; ``--force`` reruns.
The printed rows carry today's date, the machine's CPU count and the installed torch and transformers:
compare them with the README's row, which names the versions it was measured on (``constraints.txt``
reproduces those).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
PAPER_SCORES = ROOT.parent / "shared" / "reference" / "head_scores"
TUNE = ["--needles", "benchmarks/data/kv_needles_tune.jsonl", "--lengths", "4000", "--depths", "30,50,70"]
HELD_OUT_1 = ["--needles", "benchmarks/data/kv_needles_eval.jsonl", "--haystack", "benchmarks/data/grounding_haystack.txt",
              "--lengths", "4000", "--depths", "30,50,70"]
HELD_OUT_2 = ["--needles", "benchmarks/data/kv_needles_eval2.jsonl", "--haystack", "benchmarks/data/grounding_haystack.txt",
              "--lengths", "4000", "--depths", "30,50,70"]
QUESTION = ["--budgets", "0.1,0.15", "--policies", "full,uniform,snapkv,retrieval-snapkv,headkv"]
REREAD = ["--query-agnostic", "--selection", "reread", "--token-ranking", "retrieval-heads", "--policies", "full,snapkv",
          "--budgets", "0.1,0.15"]


@dataclass(frozen=True)
class Step:
    """One command; ``done`` (relative to the output directory) exists once it has run. With ``capture``, its
    standard output is saved to ``done`` (for scripts that print their table)."""

    argv: tuple[str, ...]
    done: str
    capture: bool = False

    def command(self, out: Path) -> list[str]:
        return [a.replace("{out}", str(out)) for a in self.argv]


def rh(*args: str, done: str, capture: bool = False) -> Step:
    """A ``retrieval-heads`` command."""
    return Step(("retrieval-heads", *args), done, capture)


def script(name: str, *args: str, done: str, capture: bool = False) -> Step:
    """A script of ``benchmarks/``."""
    return Step(("python", f"benchmarks/{name}", *args), done, capture)


KVPRESS_PYTHON = "RH_KVPRESS_PYTHON"  # the interpreter of kvpress's own environment (docs/kvpress.md)


def kvpress_script(name: str, *args: str, done: str) -> Step:
    """A script of ``benchmarks/`` run by kvpress's environment (``$RH_KVPRESS_PYTHON``, default
    ``.venv-kvpress/bin/python``) with this checkout on ``PYTHONPATH``; its printed table is saved to ``done``."""
    return Step(("kvpress-python", f"benchmarks/{name}", *args), done, capture=True)


@dataclass(frozen=True)
class Study:
    title: str
    steps: tuple[Step, ...]
    rows: Callable[[Path], list[str]]
    readme: str = field(default="")  # the README section whose table this rebuilds


# ---- what each study's rows read ----------------------------------------------------------------------------

def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def detection_rows(run: str) -> Callable[[Path], list[str]]:
    def rows(out: Path) -> list[str]:
        s = _json(out / run / "summary.json")
        total = sum(s["layer_heads"]) if s.get("layer_heads") else s["num_layers"] * s["num_heads"]
        top = ", ".join(f"{h['layer']}-{h['head']} {h['score']:.3f}" for h in s["top_heads"][:2])
        row = (f"{s['model']}: {s['n_retrieval_heads']} of {total} heads ({100 * s['n_retrieval_heads'] / total:.1f}%) "
               f"above {s['retrieval_threshold']}; {top}; {s['successes']} of {s['samples']} samples retrieved")
        if s.get("sparsity"):
            row += "; heads by mean score: " + ", ".join(f"{k} {v}" for k, v in s["sparsity"].items())
        if s.get("layer_kinds"):  # models with more than one kind of layer
            kinds = {s["layer_kinds"][h["layer"]] for h in s["top_heads"] if h["score"] > s["retrieval_threshold"]}
            row += f"; layer kinds of the retrieval heads: {', '.join(sorted(kinds)) or 'none'}"
        return [row]
    return rows


PAPER_FILES = {"llama-2-7b-80k": "llama-2-7b-80k.json", "llama-2-13b-64k": "llama-2-13b-64k.json",
               "mistral-7b-v0.2": "Mistral-7B-v0.2-hf.json", "qwen1.5-14b": "Qwen1.5-14B.json",
               "qwen1.5-14b-chat": "Qwen1.5-14B-Chat.json"}


def paper_rows(out: Path) -> list[str]:
    share = {name: _json(out / f"analyze-{name}.json") for name in PAPER_FILES}
    same, other = _json(out / "compare-qwen-base-chat.json"), _json(out / "compare-qwen-llama.json")
    percents = ", ".join(f"{n} {a['percent_retrieval_heads']:.1f}%" for n, a in share.items())
    active = share["llama-2-7b-80k"]["activation"]["n_always_active"]
    return [f"retrieval heads: {percents}", f"Qwen1.5-14B base vs chat Pearson {same['pearson']:.3f}, "
            f"vs Llama-2-13B {other['pearson']:.3f}", f"Llama-2-7B-80K: {active} heads active in every sample"]


def architecture_rows(out: Path) -> list[str]:
    data = _json(out / "architectures.json")
    counts: dict[str, int] = {}
    for row in data["rows"]:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return [f"transformers {data['transformers']}: {len(data['rows'])} architectures: " +
            ", ".join(f"{counts.get(k, 0)} {k}" for k in ("ok", "refused", "skip", "fail"))]


def mask_rows(out: Path) -> list[str]:
    lines = []
    for mode, run in (("uniform", "mask-sweep"), ("zero", "mask-sweep-zero")):
        by = {(r["selection"], r["k"]): r["mean_score"] for r in _json(out / run / "summary.json")["rows"]}
        none = by.get(("none", 0), by.get(("top", 0)))
        lines.append(f"{mode}: NIAH score {none:.1f} unmasked; top-20 masked {by[('top', 20)]:.1f}, "
                     f"20 random {by[('random', 20)]:.1f}")
    return lines


def task_rows(out: Path, run: str = "tasks") -> list[str]:
    rows = _json(out / run / "summary.json")["rows"]
    by: dict[str, dict[str, float]] = {}
    for r in rows:
        by.setdefault(r["suite"], {})[r["condition"]] = r["accuracy"]
    return [f"{suite}: " + " / ".join(f"{acc:.3f}" for acc in conditions.values()) + f" ({' / '.join(conditions)})"
            for suite, conditions in by.items()]


def real_task_rows(run: str) -> Callable[[Path], list[str]]:
    """Accuracy with its Wilson interval per suite and condition, the drop each masking causes, and top-K against
    random-K on the same items (the product's paired bootstrap, as ``tasks`` prints it)."""
    def rows(out: Path) -> list[str]:
        from retrieval_heads.cli.tasks import contrast_line

        summary = _json(out / run / "summary.json")
        by: dict[str, dict[str, dict]] = {}
        for r in summary["rows"]:
            by.setdefault(r["suite"], {})[r["condition"]] = r
        lines = []
        for suite, conditions in by.items():
            none = conditions["none"]["accuracy"]
            parts = [f"{name} {100 * r['accuracy']:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] "
                     f"(n {r['n']})" for name, r in conditions.items()]
            drops = [f"{name} -{100 * (none - r['accuracy']):.1f} pts" for name, r in conditions.items()
                     if name != "none"]
            lines.append(f"{suite}: " + "; ".join(parts) + " | drop: " + ", ".join(drops))
        return lines + [contrast_line(c) for c in summary.get("contrasts", [])]
    return rows


def ground_eval_rows(prefix: str) -> Callable[[Path], list[str]]:
    """Per fit run and test run: labelled answers, correct ones, and each detector's AUROC with its interval;
    then the HotpotQA report run's citation scores."""
    def rows(out: Path) -> list[str]:
        lines = []
        for fit in GROUND_REAL:
            for test in _json(out / f"{prefix}-eval-{fit}.json")["tests"]:
                cells = [f"{r['score']} {r['auroc']:.3f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
                         for r in test["rows"] if r["auroc"] is not None]
                lines.append(f"fit {fit} -> {Path(test['run']).name} ({test['labelled']} labelled, {test['correct']} "
                             "correct): " + "; ".join(cells))
        cited = _json(out / f"{prefix}-hotpotqa-report" / "summary.json").get("citations", {}).get("all")
        if cited:
            lines.append("hotpotqa report citations: " + ", ".join(
                f"{m['metric']} {m['mean']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" for m in cited["metrics"]))
        return lines

    return rows


def kv_share_rows(*settings: str, budget: float, policy: str, against: str) -> Callable[[Path], list[str]]:
    """Share of the full cache's mean score kept by ``policy`` at ``budget`` over the samples of every setting
    directory together, with the bootstrap interval of ``benchmarks/kv_table.py``."""
    def rows(out: Path) -> list[str]:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from kv_table import pooled_share

        result = pooled_share([out / s for s in settings], policy=policy, budget=budget, against=against)
        return [f"{policy} at {budget:.0%} of the bytes keeps {result['share']:.2f} [{result['low']:.2f}, "
                f"{result['high']:.2f}] of full (full {result['full_mean']:.1f}) over {result['samples']} samples; "
                f"{against} at the same bytes {result['against_share']:.2f}"]
    return rows


def stop_rows(out: Path) -> list[str]:
    rows = []
    for name in PAPER_FILES:
        s = _json(out / f"stability-{name}.json")
        rows.append(f"{name}: {s['n_samples']} samples; the rule stops after a median {s['median_samples']} "
                    f"({100 * s['median_samples'] / s['n_samples']:.0f}%), {s['min_samples']}-{s['max_samples']}; "
                    f"top-{s['rule']['k']} Jaccard with all {s['topk_jaccard_mean']:.2f}, min {s['topk_jaccard_min']:.2f}; "
                    f"retrieval set {s['retrieval_jaccard_mean']:.2f}, min {s['retrieval_jaccard_min']:.2f}; direct "
                    f"subsampling {s['direct']['topk_jaccard']:.2f} / {s['direct']['retrieval_jaccard']:.2f}")
    return rows


HAYSTACKS = ("python-docs", "paul-graham", "paul-graham-niah")  # the built-in prose, RULER's essays, the NIAH test's


def haystack_rows(out: Path) -> list[str]:
    rows = []
    for name in HAYSTACKS:
        s = _json(out / _haystack_run(name) / "summary.json")
        rows.append(f"{name}: {s['n_retrieval_heads']} heads above 0.1, {s['successes']} of {s['samples']} samples "
                    f"retrieved")
    for a, b in _haystack_pairs():
        c = _json(out / f"compare-{a}-{b}.json")
        k, overlap = c["top_k"], c["topk_overlap"]
        rows.append(f"{a} vs {b}: top-{k} Jaccard {overlap / (2 * k - overlap):.2f} ({overlap} of {k} shared), "
                    f"retrieval-set Jaccard {c['jaccard']:.2f}, Pearson {c['pearson']:.2f}")
    return rows


def _haystack_run(name: str) -> str:
    return "detect" if name == "python-docs" else f"detect-{name}"


def _haystack_pairs() -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(HAYSTACKS) for b in HAYSTACKS[i + 1:]]


def whole_head_rows(out: Path) -> list[str]:
    lines = []
    for run, prefill in (("kv-whole-heads", "full"), ("kv-whole-heads-lambda", "lambda")):
        for r in _json(out / run / "summary.json")["rows"]:
            speed = r.get("decode_tokens_per_s")
            lines.append(f"{r['policy']} (prefill {prefill}): {r['kv_fraction']:.1%} of the bytes, mean score "
                         f"{r['mean_score']:.1f}, peak RSS {r.get('peak_rss_mb') or 0:.0f} MiB, decode "
                         f"{speed or 0:.2f} tok/s")
    return lines


def niah_rows(*runs: str) -> Callable[[Path], list[str]]:
    def rows(out: Path) -> list[str]:
        found = []
        for run in runs:
            s = _json(out / run / "summary.json")
            found.append(f"{run}: mean score {s['mean_score']:.1f} ({s['samples']} samples)")
        return found
    return rows


def combined(*parts: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    return lambda out: [row for part in parts for row in part(out)]


def printed_rows(*files: str) -> Callable[[Path], list[str]]:
    """The tables the study's scripts printed (their own output, saved by the run)."""
    def rows(out: Path) -> list[str]:
        return [line for f in files for line in (out / f).read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


RULER_TASKS = ("niah_single_2", "niah_single_1", "niah_multivalue", "vt")  # smollm2 finds some at 4000 tokens (seed 1)
AGNOSTIC_REREAD = ("--query-agnostic", "--selection", "reread", "--token-ranking", "own")  # each head's own re-read
AGNOSTIC_REREAD_CHUNK = ("--query-agnostic", "--selection", "reread-chunk", "--token-ranking", "own")  # KVzip's scores


def ruler_sweep(task: str, seed: int = 3, *, n: int = 3, length: int = 4000) -> tuple[str, ...]:
    """2n samples of a RULER task: n items at depths 30 and 70, or 2n items where there is no depth."""
    if task == "vt":
        return ("--needles", f"ruler:vt:seed={seed}:n={2 * n}", "--lengths", str(length))
    haystack = () if task == "niah_single_1" else ("--haystack", "paul-graham")  # niah_single_1 is on its noise
    return ("--needles", f"ruler:{task}:seed={seed}:n={n}", *haystack, "--lengths", str(length), "--depths", "30,70")


def ruler_frontier_steps(task: str) -> tuple[Step, ...]:
    """Our policies in both settings and kvpress's presses on the same prompts, for one task."""
    sweep, run, peer = ruler_sweep(task), f"ruler-{task}", f"kvp-{task}"
    ours = ("--budgets", "0.05,0.1,0.2,0.5", "--out", f"{{out}}/{run}", "--resume")
    return (
        rh("kv-eval", "--scores", "{out}/detect", *sweep, "--policies", "full,uniform,snapkv,retrieval-snapkv,headkv",
           *ours, done=f"{run}/headkv-0.5/L4000/summary.json"),
        rh("kv-eval", "--scores", "{out}/detect", *sweep, "--policies", "full,snapkv,retrieval-snapkv,headkv",
           *AGNOSTIC_REREAD, *ours,
           done=f"{run}/query-agnostic/headkv-0.5/L4000/summary.json"),
        kvpress_script("kvpress_peer.py", *sweep, "--budgets", "0.1", "--presses",
                       "full,snapkv,knorm,streaming-llm,expected-attention,kvzip", "--settings", "agnostic",
                       "--scores", "{out}/detect", "--out", f"{{out}}/{peer}", "--resume", done=f"{peer}-agnostic.md"),
        kvpress_script("kvpress_peer.py", *sweep, "--budgets", "0.05,0.1", "--presses", "full,snapkv", "--settings",
                       "question", "--scores", "{out}/detect", "--out", f"{{out}}/{peer}", "--resume",
                       done=f"{peer}-question.md"),
    )


ADAPTIVE_SEED = 4  # unseen until this study; the adaptive policies' settings were chosen on seed 1
ADAPTIVE_POLICIES = "full,snapkv,retrieval-snapkv,adaptive,retrieval-adaptive"


def ruler_adaptive_steps(task: str) -> tuple[Step, ...]:
    """The adaptive policies beside the equal splits in both settings, and on the same prompts of seed
    ``ADAPTIVE_SEED`` kvpress's presses that divide budgets among heads too (KVzip, AdaKV over SnapKV,
    query-agnostic) and SnapKV with the question."""
    sweep, run, peer = ruler_sweep(task, ADAPTIVE_SEED), f"adaptive-{task}", f"kvp-adaptive-{task}"
    ours = ("--budgets", "0.05,0.1", "--policies", ADAPTIVE_POLICIES, "--out", f"{{out}}/{run}", "--resume")
    return (
        rh("kv-eval", "--scores", "{out}/detect", *sweep, *ours, done=f"{run}/retrieval-adaptive-0.1/L4000/summary.json"),
        rh("kv-eval", "--scores", "{out}/detect", *sweep, *ours, *AGNOSTIC_REREAD,
           done=f"{run}/query-agnostic/retrieval-adaptive-0.1/L4000/summary.json"),
        kvpress_script("kvpress_peer.py", *sweep, "--budgets", "0.05,0.1", "--presses", "kvzip,adakv-snapkv",
                       "--settings", "agnostic", "--scores", "{out}/detect", "--out", f"{{out}}/{peer}", "--resume",
                       done=f"{peer}-agnostic.md"),
        kvpress_script("kvpress_peer.py", *sweep, "--budgets", "0.05,0.1", "--presses", "snapkv", "--settings",
                       "question", "--scores", "{out}/detect", "--out", f"{{out}}/{peer}", "--resume",
                       done=f"{peer}-question.md"),
    )


GEMMA3_SEED = 5  # unseen until this study; every setting is kv-eval's default, chosen on smollm2 (seed 1)
GEMMA3_TASKS = ("niah_single_2", "niah_single_1", "niah_multivalue")  # vt: the full cache scored 0 on seed 1
GEMMA3_POLICIES = "full,uniform,snapkv,headkv,adaptive"  # retrieval-snapkv: no whole KV head fits below 67%
GEMMA3_BUDGETS = (0.05, 0.1, 0.2, 0.5)
GEMMA3_LENGTHS = (4000, 8000)


def ruler_gemma3_steps(task: str) -> tuple[Step, ...]:
    """gemma3-270m on 4 samples of ``task`` (seed ``GEMMA3_SEED``): both settings at 4000 and 8000 tokens."""
    ours = ("--model", "gemma3-270m", "--scores", "{out}/detect-gemma3", "--policies", GEMMA3_POLICIES, "--budgets",
            ",".join(map(str, GEMMA3_BUDGETS)), "--resume")
    return tuple(
        rh("kv-eval", *ours, *ruler_sweep(task, GEMMA3_SEED, n=2, length=length), *setting, "--out",
           f"{{out}}/{_gemma3_run(length, task)}",
           done=f"{_gemma3_run(length, task)}/{'query-agnostic/' if setting else ''}adaptive-0.5/L{length}/summary.json")
        for length in GEMMA3_LENGTHS for setting in ((), AGNOSTIC_REREAD))


def _gemma3_run(length: int, task: str) -> str:
    return f"gemma3-{length // 1000}k-{task}"


def gemma3_frontier(length: int) -> Step:
    """One frontier per context length over ``GEMMA3_TASKS``."""
    run = f"ruler-gemma3-{length // 1000}k"
    return rh("kv-frontier", *(f"{{out}}/{_gemma3_run(length, t)}" for t in GEMMA3_TASKS), "--title",
              f"gemma3-270m, RULER at {length} tokens (seed {GEMMA3_SEED})", "--out", f"{{out}}/{run}",
              done=f"{run}/frontier.json")


FOLLOW_SEED = 6  # unseen until this study; --follow 8 was chosen on seed 1 (niah_single_2, both models)
FOLLOW = "8"
FOLLOW_RUNS = (("smollm2", RULER_TASKS, 3, ("--scores", "{out}/detect", "--policies", "full,snapkv,retrieval-snapkv",
                                            "--budgets", "0.05,0.1")),
               ("gemma3", GEMMA3_TASKS, 2, ("--model", "gemma3-270m", "--scores", "{out}/detect-gemma3", "--policies",
                                           "full,snapkv,headkv,adaptive", "--budgets", "0.05,0.1,0.2")))


def follow_steps(model: str, tasks: tuple[str, ...], n: int, flags: tuple[str, ...]) -> tuple[Step, ...]:
    """Question in the prompt at 4000 tokens, seed ``FOLLOW_SEED``: each task with ``--follow 0`` and ``FOLLOW``."""
    return tuple(rh("kv-eval", *flags, *ruler_sweep(task, FOLLOW_SEED, n=n), "--follow", follow, "--out",
                    f"{{out}}/follow{follow}-{model}-{task}", "--resume",
                    done=f"follow{follow}-{model}-{task}/summary.json")
                 for task in tasks for follow in ("0", FOLLOW))


def follow_frontier(model: str, tasks: tuple[str, ...]) -> Step:
    return rh("kv-frontier", *(f"{{out}}/follow{f}-{model}-{t}" for t in tasks for f in ("0", FOLLOW)), "--title",
              f"{model}, RULER at 4000 tokens (seed {FOLLOW_SEED}), --follow 0 and {FOLLOW}", "--out",
              f"{{out}}/ruler-follow-{model}", done=f"ruler-follow-{model}/frontier.json")


CHECK_SEED = 7  # unseen until this study: the product's chosen settings, checked once, beside kvpress
CHECK_BUDGETS = "0.05,0.1,0.2,0.5"
CHECK_AGNOSTIC_TASKS = RULER_TASKS[:3]  # vt left out of the query-agnostic runs, for time (a re-read costs minutes)


def ruler_check_steps(task: str) -> tuple[Step, ...]:
    """4 samples of ``task`` (seed ``CHECK_SEED``): our policies with the question (``--follow 8``), kvpress's SnapKV
    and DuoAttention (our pattern) with the question; for ``CHECK_AGNOSTIC_TASKS`` also query-agnostic: ours
    re-reading (own ranking; and on KVzip's scores, ``reread-chunk``, in a run of its own) and kvpress's KVzip."""
    sweep, run = ruler_sweep(task, CHECK_SEED, n=2), f"check-{task}"
    ours = ("--scores", "{out}/detect", *sweep, "--budgets", CHECK_BUDGETS, "--resume")
    peer = ("--scores", "{out}/detect", "--resume", *sweep)
    question = (
        rh("kv-eval", *ours, "--out", f"{{out}}/{run}", "--policies", "full,uniform,snapkv,retrieval-snapkv,headkv",
           "--follow", FOLLOW, done=f"{run}/headkv-0.5/L4000/summary.json"),
        kvpress_script("kvpress_peer.py", *peer, "--budgets", "0.05,0.1", "--presses", "full,snapkv", "--settings",
                       "question", "--out", f"{{out}}/kvp-check-q-{task}", done=f"kvp-check-q-{task}.md"),
        kvpress_script("kvpress_peer.py", *peer, "--budgets", "0.2,0.5", "--presses", "duo-pattern", "--settings",
                       "question", "--out", f"{{out}}/kvp-check-q-{task}", done=f"kvp-check-duo-{task}.md"),
    )
    if task not in CHECK_AGNOSTIC_TASKS:
        return question
    return question + (
        rh("kv-eval", *ours, "--out", f"{{out}}/{run}", "--policies", "full,snapkv,retrieval-snapkv,adaptive",
           *AGNOSTIC_REREAD, done=f"{run}/query-agnostic/adaptive-0.5/L4000/summary.json"),
        rh("kv-eval", *ours, "--out", f"{{out}}/{run}-chunk", "--policies", "snapkv,retrieval-snapkv,adaptive",
           *AGNOSTIC_REREAD_CHUNK, done=f"{run}-chunk/query-agnostic/adaptive-0.5/L4000/summary.json"),
        kvpress_script("kvpress_peer.py", *peer, "--budgets", "0.05,0.1", "--presses", "full,kvzip", "--settings",
                       "agnostic", "--out", f"{{out}}/kvp-check-{task}", done=f"kvp-check-{task}.md"),
    )


def ruler_check_frontier() -> Step:
    runs = [f"{{out}}/check-{t}" for t in RULER_TASKS] + [f"{{out}}/check-{t}-chunk" for t in CHECK_AGNOSTIC_TASKS]
    peers = [f"{{out}}/kvp-check-q-{t}" for t in RULER_TASKS] + [f"{{out}}/kvp-check-{t}" for t in CHECK_AGNOSTIC_TASKS]
    return rh("kv-frontier", *runs, *(a for peer in peers for a in ("--peer", peer)), "--title",
              f"smollm2-135m, RULER at 4000 tokens (seed {CHECK_SEED})", "--out", "{out}/ruler-check",
              done="ruler-check/frontier.json")


CONFIRM_SEED = 8  # unseen until this study: the two settings seed 7 checked, again on every task, nothing else
CONFIRM_BUDGETS = "0.05,0.1"


def ruler_confirm_steps(task: str) -> tuple[Step, ...]:
    """4 samples of ``task`` (seed ``CONFIRM_SEED``), both settings: ``snapkv --follow 8`` with the question beside
    kvpress's SnapKV; query-agnostic ``adaptive`` on KVzip's scores beside kvpress's KVzip."""
    sweep, run, peer = ruler_sweep(task, CONFIRM_SEED, n=2), f"confirm-{task}", f"kvp-confirm-{task}"
    shared = ("--scores", "{out}/detect", *sweep, "--budgets", CONFIRM_BUDGETS)
    ours, theirs = ((*shared, "--out", f"{{out}}/{name}", "--resume") for name in (run, peer))
    return (
        rh("kv-eval", *ours, "--policies", "full,snapkv,retrieval-snapkv", "--follow", FOLLOW,
           done=f"{run}/retrieval-snapkv-0.1/L4000/summary.json"),
        rh("kv-eval", *ours, "--policies", "full,snapkv,adaptive", *AGNOSTIC_REREAD_CHUNK,
           done=f"{run}/query-agnostic/adaptive-0.1/L4000/summary.json"),
        kvpress_script("kvpress_peer.py", *theirs, "--presses", "full,snapkv", "--settings", "question",
                       done=f"{peer}-question.md"),
        kvpress_script("kvpress_peer.py", *theirs, "--presses", "full,kvzip", "--settings", "agnostic",
                       done=f"{peer}-agnostic.md"),
    )


def ruler_confirm_frontier() -> Step:
    return rh("kv-frontier", *(f"{{out}}/confirm-{t}" for t in RULER_TASKS),
              *(a for t in RULER_TASKS for a in ("--peer", f"{{out}}/kvp-confirm-{t}")), "--title",
              f"smollm2-135m, RULER at 4000 tokens (seed {CONFIRM_SEED})", "--out", "{out}/ruler-confirm",
              done="ruler-confirm/frontier.json")


def frontier_rows(run: str, budgets: tuple[float, ...]) -> Callable[[Path], list[str]]:
    """Per setting: the full cache's task-set average, then every method's share of it at ``budgets``."""
    def rows(out: Path) -> list[str]:
        found = _json(out / run / "frontier.json")
        lines = [f"tasks: {', '.join(found['tasks'])}"]
        for entry in found["entries"]:
            if entry["method"] == "full":
                lines.append(f"{entry['setting']}: full cache {entry['score']:.1f} [{entry['score_low']:.1f}, "
                             f"{entry['score_high']:.1f}] ({entry['samples']} samples)")
            elif entry["budget"] in budgets and entry["share"] is not None:
                lines.append(f"  {entry['method']} at {entry['budget']:.0%} (kept {entry['kv_fraction']:.1%}): "
                             f"{entry['score']:.1f}, {entry['share']:.2f} of full [{entry['share_low']:.2f}, "
                             f"{entry['share_high']:.2f}] ({entry['samples']} samples)")
        return lines
    return rows


def held_out_steps(i: int, held_out: list[str]) -> tuple[Step, ...]:
    """One held-out set, query-agnostic: the current setting; the retrieval ranking alone (own share 0); SnapKV
    and uniform on their own observation window; the tables of the differences."""
    base = f"{{out}}/kv-qa-{i}"
    return (
        rh("kv-eval", "--scores", "{out}/lookup", *held_out, *REREAD, "--out", base, done=f"kv-qa-{i}/summary.json"),
        rh("kv-eval", "--scores", "{out}/lookup", *held_out, *REREAD[:-4], "--policies", "snapkv", "--budgets", "0.15",
           "--own-share", "0", "--out", f"{base}-own0", done=f"kv-qa-{i}-own0/summary.json"),
        rh("kv-eval", "--scores", "{out}/lookup", *held_out, "--query-agnostic", "--policies", "snapkv,uniform",
           "--budgets", "0.15", "--out", f"{base}-window", done=f"kv-qa-{i}-window/summary.json"),
        script("kv_table.py", f"{base}/query-agnostic", "--extra", f"own0={base}-own0/query-agnostic", "--against",
               "own0:snapkv", done=f"kv-qa-{i}-vs-own0.txt", capture=True),
        script("kv_table.py", f"{base}/query-agnostic", "--extra", f"window={base}-window/query-agnostic",
               "--against", "window:snapkv", done=f"kv-qa-{i}-vs-window.txt", capture=True),
    )


# ---- the studies ----------------------------------------------------------------------------------------------

DETECT = rh("detect", "--out", "{out}/detect", done="detect/summary.json")
GEMMA3_DETECT = rh("detect", "--model", "gemma3-270m", "--lengths", "1000,2000", "--out", "{out}/detect-gemma3",
                   done="detect-gemma3/summary.json")
LOOKUP = rh("lookup", *TUNE, "--out", "{out}/lookup", done="lookup/summary.json")
BENCH_DETECT = ("--needles-file", "benchmarks/data/heldout_needles.jsonl", "--needles", "10", "--lengths",
                "1000,1500,2000,2500", "--num-depths", "5")

GROUND_REAL = ("squad2", "hotpotqa")
# item seed 11 fits the regressions and thresholds, seed 13 reports (seed 12 of HotpotQA was read while the
# grounding of new words was designed, so it reports nothing)
GROUND_SEEDS = (("fit", "11"), ("report", "13"))


def ground_steps(prefix: str, detect: str, n: str, *model: str) -> tuple[Step, ...]:
    """The four ground runs (two datasets x fit / report) and ground-eval fitted on each dataset."""
    runs = tuple(
        rh("ground", *model, "--scores", f"{{out}}/{detect}", "--dataset", data, "--n", n, "--item-seed", seed,
           "--out", f"{{out}}/{prefix}-{data}-{split}", done=f"{prefix}-{data}-{split}/summary.json")
        for split, seed in GROUND_SEEDS for data in GROUND_REAL)
    evals = tuple(
        rh("ground-eval", "--fit", f"{{out}}/{prefix}-{fit}-fit", "--on",
           *(f"{{out}}/{prefix}-{d}-report" for d in GROUND_REAL), "--out", f"{{out}}/{prefix}-eval-{fit}.json",
           done=f"{prefix}-eval-{fit}.json")
        for fit in GROUND_REAL)
    return runs + evals


STUDIES: dict[str, Study] = {
    "detection": Study("retrieval heads of smollm2-135m, default grid", (DETECT,), detection_rows("detect"),
                       "Detection"),
    "detection-gemma3": Study("retrieval heads of gemma3-270m", (GEMMA3_DETECT,), detection_rows("detect-gemma3"),
                              "Detection"),
    "paper-scores": Study(
        "the paper's published scores re-analysed (needs ../shared/reference/head_scores)",
        tuple(rh("analyze", str(PAPER_SCORES / f), "--json", done=f"analyze-{n}.json", capture=True)
              for n, f in PAPER_FILES.items())
        + (rh("compare", str(PAPER_SCORES / "Qwen1.5-14B.json"), str(PAPER_SCORES / "Qwen1.5-14B-Chat.json"), "--json",
              done="compare-qwen-base-chat.json", capture=True),
           rh("compare", str(PAPER_SCORES / "Qwen1.5-14B.json"), str(PAPER_SCORES / "llama-2-13b-64k.json"), "--json",
              done="compare-qwen-llama.json", capture=True)),
        paper_rows, "Detection"),
    "haystacks": Study(
        "how much the detected heads depend on the haystack: the default grid on three haystacks",
        (DETECT,
         *(rh("detect", "--haystack", h, "--out", f"{{out}}/{_haystack_run(h)}", done=f"{_haystack_run(h)}/summary.json")
           for h in HAYSTACKS[1:]),
         *(rh("compare", f"{{out}}/{_haystack_run(a)}", f"{{out}}/{_haystack_run(b)}", "--json",
              done=f"compare-{a}-{b}.json", capture=True) for a, b in _haystack_pairs())),
        haystack_rows, "Detection"),
    "architectures": Study("the compatibility matrix of the installed transformers",
                           (script("architectures.py", "--json", "{out}/architectures.json", done="architectures.json"),),
                           architecture_rows, "Architectures"),
    "masking": Study(
        "NIAH with the top-20 retrieval heads against 20 random heads masked (held-out needles, 1000 tokens)",
        (DETECT,
         rh("mask-sweep", "--scores", "{out}/detect", "--needles", "docs/needles_eval.jsonl", "--lengths", "1000",
            "--depths", "10,50,90", "--ks", "0,10,20", "--random-per-sample", "--out", "{out}/mask-sweep",
            done="mask-sweep/summary.json"),
         rh("mask-sweep", "--scores", "{out}/detect", "--needles", "docs/needles_eval.jsonl", "--lengths", "1000",
            "--depths", "10,50,90", "--ks", "0,10,20", "--random-per-sample", "--mask-mode", "zero", "--out",
            "{out}/mask-sweep-zero", done="mask-sweep-zero/summary.json"),
         rh("niah", "--scores", "{out}/detect", "--out", "{out}/niah", done="niah/summary.json"),
         rh("niah", "--scores", "{out}/detect", "--mask-top", "20", "--out", "{out}/niah-top20",
            done="niah-top20/summary.json"),
         rh("niah", "--scores", "{out}/detect", "--mask-random", "20", "--out", "{out}/niah-random20",
            done="niah-random20/summary.json")),
        combined(mask_rows, niah_rows("niah", "niah-top20", "niah-random20")), "Causality: masking"),
    "tasks": Study(
        "downstream suites with no heads, the top-20 and 20 random heads masked",
        (rh("detect", "--lengths", "1000", "--depths", "50", "--out", "{out}/detect-8", done="detect-8/summary.json"),
         rh("tasks", "--n", "100", "--scores", "{out}/detect-8", "--out", "{out}/tasks", done="tasks/summary.json")),
        task_rows, "Downstream tasks"),
    "tasks-real": Study(
        "SQuAD 2.0 and HotpotQA questions with no heads, the top-20 and 20 random heads masked",
        (DETECT,
         rh("tasks", "--suite", "squad", "--suite", "hotpotqa", "--n", "100", "--scores", "{out}/detect",
            "--random-per-sample", "--out", "{out}/tasks-real", done="tasks-real/summary.json"),
         rh("tasks", "--suite", "squad", "--n", "200", "--item-seed", "21", "--scores", "{out}/detect",
            "--random-per-sample", "--out", "{out}/squad-seed21", done="squad-seed21/summary.json")),
        combined(real_task_rows("tasks-real"), real_task_rows("squad-seed21")), "Downstream tasks"),
    "kv-ruler": Study(
        "KV cache with the question in the prompt on RULER niah_single_2 and niah_multikey_1 (seed 2), 4000 tokens",
        (DETECT, *(step for task in ("niah_single_2", "niah_multikey_1") for step in (
            rh("kv-eval", "--scores", "{out}/detect", "--needles", f"ruler:{task}:seed=2:n=4", "--haystack", "paul-graham",
               "--lengths", "4000", "--depths", "25,50,75", "--budgets", "0.05,0.1,0.2,0.5", "--policies",
               "full,uniform,snapkv,retrieval-snapkv", "--out", f"{{out}}/kv-ruler-{task}",
               done=f"kv-ruler-{task}/summary.json"),
            script("kv_table.py", f"{{out}}/kv-ruler-{task}", "--against", "snapkv", done=f"kv-ruler-{task}.txt",
                   capture=True)))),
        printed_rows("kv-ruler-niah_single_2.txt", "kv-ruler-niah_multikey_1.txt"), "KV cache"),
    "kv-ruler-frontier": Study(
        "KV cache on RULER (4 tasks, seed 3, 4000 tokens), both settings, beside kvpress 0.5.5's presses",
        (DETECT, *(step for task in RULER_TASKS for step in ruler_frontier_steps(task)),
         rh("kv-frontier", *(f"{{out}}/ruler-{t}" for t in RULER_TASKS),
            *(a for t in RULER_TASKS for a in ("--peer", f"{{out}}/kvp-{t}")), "--title",
            "smollm2-135m, RULER at 4000 tokens (seed 3)", "--out", "{out}/ruler-frontier",
            done="ruler-frontier/frontier.json")),
        frontier_rows("ruler-frontier", (0.05, 0.1)), "KV cache"),
    "kv-ruler-adaptive": Study(
        f"KV cache on RULER (4 tasks, seed {ADAPTIVE_SEED}, 4000 tokens): budgets divided by the evidence, beside "
        "kvpress's KVzip, AdaKV and SnapKV",
        (DETECT, *(step for task in RULER_TASKS for step in ruler_adaptive_steps(task)),
         rh("kv-frontier", *(f"{{out}}/adaptive-{t}" for t in RULER_TASKS),
            *(a for t in RULER_TASKS for a in ("--peer", f"{{out}}/kvp-adaptive-{t}")), "--title",
            f"smollm2-135m, RULER at 4000 tokens (seed {ADAPTIVE_SEED})", "--out", "{out}/ruler-adaptive",
            done="ruler-adaptive/frontier.json")),
        frontier_rows("ruler-adaptive", (0.05, 0.1)), "KV cache"),
    "kv-ruler-gemma3": Study(
        f"KV cache of gemma3-270m on RULER (3 tasks, seed {GEMMA3_SEED}): both settings at 4000 and 8000 tokens",
        (GEMMA3_DETECT, *(step for task in GEMMA3_TASKS for step in ruler_gemma3_steps(task)),
         *(gemma3_frontier(length) for length in GEMMA3_LENGTHS)),
        combined(frontier_rows("ruler-gemma3-4k", GEMMA3_BUDGETS), frontier_rows("ruler-gemma3-8k", GEMMA3_BUDGETS)),
        "KV cache"),
    "kv-ruler-follow": Study(
        f"KV cache with the question in the prompt on RULER (seed {FOLLOW_SEED}, 4000 tokens): --follow {FOLLOW} against "
        "the evidence's own scores, smollm2-135m and gemma3-270m",
        (DETECT, GEMMA3_DETECT, *(step for run in FOLLOW_RUNS for step in follow_steps(*run)),
         *(follow_frontier(model, tasks) for model, tasks, _, _ in FOLLOW_RUNS)),
        combined(frontier_rows("ruler-follow-smollm2", (0.05, 0.1)), frontier_rows("ruler-follow-gemma3",
                                                                                  (0.05, 0.1, 0.2))),
        "KV cache"),
    "kv-ruler-check": Study(
        f"KV cache on RULER (seed {CHECK_SEED}, 4000 tokens; 4 tasks, 3 query-agnostic): the chosen settings beside "
        "kvpress's KVzip, SnapKV and DuoAttention",
        (DETECT, *(step for task in RULER_TASKS for step in ruler_check_steps(task)),
         ruler_check_frontier()),
        frontier_rows("ruler-check", (0.05, 0.1, 0.2)), "KV cache"),
    "kv-ruler-confirm": Study(
        f"KV cache on RULER (seed {CONFIRM_SEED}, 4000 tokens, 4 tasks in both settings): the two settings seed "
        f"{CHECK_SEED} checked, beside kvpress's SnapKV and KVzip",
        (DETECT, *(step for task in RULER_TASKS for step in ruler_confirm_steps(task)), ruler_confirm_frontier()),
        frontier_rows("ruler-confirm", (0.05, 0.1)), "KV cache"),
    "kv-question": Study(
        "KV cache with the question in the prompt, held-out needles, 4000 tokens",
        (LOOKUP, DETECT,
         rh("kv-eval", "--scores", "{out}/lookup", *HELD_OUT_1, *QUESTION, "--out", "{out}/kv-question",
            done="kv-question/summary.json"),
         rh("kv-eval", "--scores", "{out}/detect", *HELD_OUT_1, *QUESTION, "--out", "{out}/kv-question-copy",
            done="kv-question-copy/summary.json"),
         script("kv_table.py", "{out}/kv-question", "--against", "snapkv", "--extra", "copy={out}/kv-question-copy",
                done="kv-question-table.txt", capture=True)),
        combined(kv_share_rows("kv-question", budget=0.1, policy="retrieval-snapkv", against="snapkv"),
                 printed_rows("kv-question-table.txt")), "KV cache"),
    "kv-query-agnostic": Study(
        "KV cache compressed before the question: re-read tokens ranked by the retrieval heads, both held-out sets",
        (LOOKUP, *(step for i, held_out in ((1, HELD_OUT_1), (2, HELD_OUT_2)) for step in held_out_steps(i, held_out))),
        combined(kv_share_rows("kv-qa-1/query-agnostic", "kv-qa-2/query-agnostic", budget=0.15, policy="snapkv",
                               against="full"),
                 printed_rows(*(f"kv-qa-{i}-vs-{b}.txt" for i in (1, 2) for b in ("own0", "window")))), "KV cache"),
    "kv-whole-heads": Study(
        "whole retrieval KV heads against random heads and uniform streaming at 33.9% of the bytes",
        (DETECT, rh("kv-eval", "--scores", "{out}/detect", "--needles", "docs/needles_eval.jsonl", "--lengths", "4000",
                    "--depths", "20,50", "--budgets", "0.339", "--policies", "full,retrieval,random,uniform", "--sink",
                    "64", "--window", "384", "--prefill-per-condition", "--out", "{out}/kv-whole-heads",
                    done="kv-whole-heads/summary.json"),
         rh("kv-eval", "--scores", "{out}/detect", "--needles", "docs/needles_eval.jsonl", "--lengths", "4000",
            "--depths", "20,50", "--budgets", "0.339", "--policies", "retrieval,random,uniform", "--sink", "64",
            "--window", "384", "--prefill-per-condition", "--prefill", "lambda", "--out", "{out}/kv-whole-heads-lambda",
            done="kv-whole-heads-lambda/summary.json")),
        whole_head_rows, "KV cache"),
    "adaptive": Study(
        "--until-stable against the paper's strategy on a 200-sample held-out grid",
        (script("bench_detect.py", *BENCH_DETECT, "--until-stable", done="bench-detect-until-stable.txt",
                capture=True),),
        printed_rows("bench-detect-until-stable.txt"), "Adaptive sweeps"),
    "adaptive-check": Study(
        "--until-stable against the paper's strategy on the 200-sample check grid (needles never used to choose)",
        (script("bench_detect.py", "--needles-file", "benchmarks/data/detect_needles_check.jsonl", "--needles", "10",
                "--lengths", "1000,1500,2000,2500", "--num-depths", "5", "--until-stable", "--no-engine", "--ceiling",
                "--saved", "{out}/bench-detect-check", done="bench-detect-check.txt", capture=True),),
        printed_rows("bench-detect-check.txt"), "Adaptive sweeps"),
    "adaptive-paper": Study(
        "the stop rule replayed on the paper's published score files",
        tuple(rh("analyze", str(PAPER_SCORES / f), "--until-stable", "--json", done=f"stability-{n}.json", capture=True)
              for n, f in PAPER_FILES.items()),
        stop_rows, "Adaptive sweeps"),
    "grounding": Study(
        "the grounding monitor on held-out questions",
        (DETECT, script("grounding_eval.py", "--scores", "{out}/detect", "--out", "{out}/grounding-eval",
                        done="grounding-eval.txt", capture=True)),
        printed_rows("grounding-eval.txt"), "Grounding"),
    "grounding-real": Study(
        "hallucination detectors on smollm2's own answers to SQuAD 2.0 and HotpotQA (fit: item seed 11, report: 13)",
        (DETECT, *ground_steps("ground", "detect", "100")), ground_eval_rows("ground"), "Grounding"),
    "grounding-real-gemma3": Study(
        "the same on gemma3-270m, 60 questions a run",
        (GEMMA3_DETECT, *ground_steps("ground-gemma3", "detect-gemma3", "60", "--model", "gemma3-270m")),
        ground_eval_rows("ground-gemma3"), "Grounding"),
    "speed-detect": Study("detection: the engine against the paper's strategy",
                          (script("bench_detect.py", done="bench-detect.txt", capture=True),),
                          printed_rows("bench-detect.txt"), "Speed"),
    "speed-kv": Study(
        "decoding from compressed caches at 8000 tokens",
        (LOOKUP, script("bench_kv.py", "--tokens", "8000", "--scores", "{out}/lookup", "--policy",
                        "snapkv,retrieval-snapkv,headkv,uniform", "--budget", "0.15", "--full-share", "0.8",
                        "--sink", "4", "--window", "64", "--threads", "2", done="bench-kv.txt", capture=True)),
        printed_rows("bench-kv.txt"), "Speed"),
}


# ---- running ----------------------------------------------------------------------------------------------------

def executable(argv: list[str]) -> list[str]:
    """``retrieval-heads`` and ``python`` as this interpreter runs them."""
    if argv[0] == "retrieval-heads":
        return [sys.executable, "-m", "retrieval_heads", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0] == "kvpress-python":
        python = Path(os.environ.get(KVPRESS_PYTHON, ROOT / ".venv-kvpress" / "bin" / "python"))
        if not python.exists():
            raise SystemExit(f"{python} not found: make kvpress's own environment (docs/kvpress.md) or set "
                             f"{KVPRESS_PYTHON} to its python")
        return [str(python), *argv[1:]]
    return argv


def run_step(step: Step, out: Path, force: bool) -> None:
    target = out / step.done
    if target.exists() and not force:
        print(f"# done already: {' '.join(step.command(out))}", flush=True)
        return
    print(f"$ {' '.join(step.command(out))}", flush=True)
    extra = ["--overwrite"] if force and step.argv[0] == "retrieval-heads" and "--out" in step.argv else []
    result = subprocess.run(executable(step.command(out)) + extra, cwd=ROOT, check=False, text=True,
                            stdout=subprocess.PIPE if step.capture else None,
                            env={**os.environ, "PYTHONPATH": str(ROOT)} if step.argv[0] == "kvpress-python"
                            else {**os.environ})
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(step.command(out))}")
    if step.capture:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(result.stdout, encoding="utf-8")


def setup_line() -> str:
    import torch
    import transformers

    return (f"{date.today().isoformat()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", choices=sorted(STUDIES), metavar="STUDY", help="which result to rebuild")
    parser.add_argument("--list", action="store_true", help="list the studies")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    parser.add_argument("--out", default="runs/reproduce", help="directory for every output (default runs/reproduce)")
    parser.add_argument("--force", action="store_true", help="rerun commands whose output exists")
    args = parser.parse_args(argv)
    if args.list or not args.study:
        for name, study in STUDIES.items():
            print(f"{name:18s} {study.title} (README: {study.readme})")
        return 0
    study, out = STUDIES[args.study], Path(args.out).resolve()
    if args.dry_run:
        for step in study.steps:
            print(" ".join(step.command(Path(args.out))))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for step in study.steps:
        run_step(step, out, args.force)
    print(f"\n{args.study}: {study.title} ({setup_line()})")
    for row in study.rows(out):
        print(f"  {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
