"""What gets grounded: items from a JSONL file, or every sample of an existing detect / niah / tasks run.

JSONL items: one object per line with ``context``, ``question``, optional ``answer`` (teacher
forced; without it the model answers greedily), optional ``id`` (else ``line-N``), optional
``label`` (1 correct, 0 not), optional ``gold_answers`` (a list of strings: the answer, given or
generated, is graded against them, ``gold``, giving ``verdict`` and, unless given, ``label``) with
``unanswerable`` (true for a question the context cannot answer); every other field is kept in the
output. ``write_items`` writes items in this format (``datasets``' items, for instance).

Run directories: each sample is grounded in its own prompt, rebuilt from the run's
``config.json`` exactly as the run built it. ``detect`` samples keep their generated token ids
(token for token); ``niah`` and ``tasks`` results store the response text, which is tokenised
again. An empty response (a masked model that said nothing) is grounded as the empty answer it was
(grounding None), never answered anew: the label belongs to that response. Labels: ``success``
(detect), ROUGE-1 recall > 0.5 (niah), ``correct`` (tasks).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..io import read_items_jsonl, read_jsonl, write_text_atomic
from .prompt import GroundedPrompt, build_prompt, locate

RESERVED = ("id", "context", "question", "answer", "label", "gold_answers", "unanswerable")


@dataclass
class GroundItem:
    """One answer to ground: its prompt (built lazily from context and question unless given),
    its answer (text, token ids, or None to generate; "" or [] is the empty answer), its label, the
    gold answers to grade it against (None: not graded) and the fields to keep."""

    id: str
    context: str
    question: str
    answer: str | None = None
    answer_ids: list[int] | None = None
    label: int | None = None
    prompt: GroundedPrompt | None = None
    keep: dict = field(default_factory=dict)
    gold_answers: tuple[str, ...] | None = None
    unanswerable: bool = False


def load_items(path: str | Path) -> list[GroundItem]:
    """Items from JSONL (see the module docstring); UserError naming the line on anything malformed."""
    return read_items_jsonl(path, parse_item)


def parse_item(row: dict, where: str, default_id: str) -> GroundItem:
    context, question, answer, label = (row.get(k) for k in ("context", "question", "answer", "label"))
    context = "" if context is None else context
    if not isinstance(context, str):
        raise UserError(f"{where}: 'context' must be a string")
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: 'question' must be a non-empty string")
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise UserError(f"{where}: 'answer' must be a non-empty string when given")
    if label is not None:
        if isinstance(label, bool) or label not in (0, 1):
            raise UserError(f"{where}: 'label' must be 0 or 1")
        label = int(label)
    gold, unanswerable = row.get("gold_answers"), row.get("unanswerable", False)
    if gold is not None and (not isinstance(gold, list) or not all(isinstance(g, str) for g in gold)):
        raise UserError(f"{where}: 'gold_answers' must be a list of strings")
    if not isinstance(unanswerable, bool) or (unanswerable and gold is None):
        raise UserError(f"{where}: 'unanswerable' must be true or false, and comes with 'gold_answers'")
    if gold is not None and not gold and not unanswerable:
        raise UserError(f"{where}: 'gold_answers' is empty for a question not marked 'unanswerable'")
    keep = {k: v for k, v in row.items() if k not in RESERVED}
    return GroundItem(str(row.get("id", default_id)), context, question, answer, None, label, None, keep,
                      None if gold is None else tuple(gold), unanswerable)


def item_row(item: GroundItem) -> dict:
    """The JSONL object ``parse_item`` reads back as ``item`` (its prompt is rebuilt; token ids are not written)."""
    row = {"id": item.id, "context": item.context, "question": item.question}
    if item.answer is not None:
        row["answer"] = item.answer
    if item.label is not None:
        row["label"] = item.label
    if item.gold_answers is not None:
        row.update(gold_answers=list(item.gold_answers), unanswerable=item.unanswerable)
    return {**row, **item.keep}


def write_items(path: str | Path, items: list[GroundItem]) -> Path:
    """``items`` as a JSONL file ``load_items`` (``ground --items``) reads."""
    write_text_atomic(path, "".join(json.dumps(item_row(it), ensure_ascii=False) + "\n" for it in items))
    return Path(path)


def prompt_of(item: GroundItem, tokenizer, style: str) -> GroundedPrompt:
    return item.prompt or build_prompt(tokenizer, item.context, item.question, style=style)


# ---- run directories -----------------------------------------------------------------------------

def run_kind(path: Path) -> str:
    """``detect``, ``niah`` or ``tasks``, from the records a run directory holds."""
    if (path / "samples.jsonl").is_file():
        return "detect"
    results = path / "results.jsonl"
    if not results.is_file():
        raise UserError(f"{path}: no samples.jsonl or results.jsonl; pass a detect, niah or tasks run directory")
    first = next(read_jsonl(results), None)
    if first is None:
        raise UserError(f"{results} is empty")
    if "suite" in first:
        return "tasks"
    if "needle_index" in first:
        return "niah"
    raise UserError(f"{results}: not a niah or tasks run")


def run_items(path: str | Path, tokenizer, max_context: int | None = None) -> list[GroundItem]:
    """Every sample of a detect, niah or tasks run, with its prompt rebuilt as the run built it."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"run directory not found: {p}")
    config_path = p / "config.json"
    if not config_path.is_file():
        raise UserError(f"{p}: no config.json, so its prompts cannot be rebuilt")
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    kind = run_kind(p)
    if kind == "tasks":
        return list(_task_items(p, saved, tokenizer))
    return list(_sweep_items(p, kind, saved, tokenizer, max_context))


def _sweep_items(path: Path, kind: str, saved: dict, tokenizer, max_context) -> Iterator[GroundItem]:
    from ..sweep.grid import SweepConfig, prepare
    from ..sweep.haystack import DOC_CLOSE, DOC_OPEN

    names = {f.name for f in dataclasses.fields(SweepConfig)}
    config = SweepConfig(**{k: v for k, v in saved["config"].items() if k in names})
    config.shard = tuple(config.shard)
    inputs = prepare(config, tokenizer, max_context)
    records = read_jsonl(path / ("samples.jsonl" if kind == "detect" else "results.jsonl"))
    for row in records:
        prompt = inputs.prompts.get(row["id"])
        if prompt is None:
            raise UserError(f"{path}: sample {row['id']} is not in the run's own grid; was config.json changed?")
        needle = inputs.needles[row["needle_index"]]
        start = prompt.text.index(DOC_OPEN) + len(DOC_OPEN)
        end = prompt.text.rindex(DOC_CLOSE[: DOC_CLOSE.index("</document>") + len("</document>")])
        grounded = locate(tokenizer, prompt.text, prompt.text[start:end], start, needle.question)
        if "prompt_ids" in row and grounded.ids != row["prompt_ids"]:
            raise UserError(f"{path}: the rebuilt prompt of {row['id']} differs from the one the run used")
        keep = {k: row[k] for k in ("context_length", "depth_percent", "needle_index", "masked_heads", "failure")
                if k in row}
        keep["expected"] = needle.real_needle
        if kind == "detect":
            ids = _strip_stop(row["generated_ids"], tokenizer)
            yield GroundItem(row["id"], grounded.context, needle.question, None, ids, int(row["success"]), grounded, keep)
        else:
            # the response as recorded, empty ones too (a masked run's silence): never replaced by a new answer
            yield GroundItem(row["id"], grounded.context, needle.question, row["response"], None,
                             int(row["score"] > 50), grounded, keep)


def _task_items(path: Path, saved: dict, tokenizer) -> Iterator[GroundItem]:
    from ..tasks.run import SUITES
    from ..tasks.suites import suite_items

    seed, n = saved["identity"]["item_seed"], saved["config"]["n"]
    items = {}
    for name in saved["config"]["suites"]:
        if name in SUITES:
            items.update({(name, it.id): (it, SUITES[name].cot) for it in suite_items(name, n, seed)})
    skipped = 0
    for row in read_jsonl(path / "results.jsonl"):
        found = items.get((row["suite"], row["item"]))
        if found is None:  # a user's --items suite: its file is not recorded in the run
            skipped += 1
            continue
        item, cot = found
        prompt = build_prompt(tokenizer, item.context, item.question, style="task", cot=cot)
        keep = {"suite": row["suite"], "condition": row["condition"], "expected": list(item.answers)}
        yield GroundItem(row["id"], item.context, item.question, row["response"].strip(), None,
                         int(row["correct"]), prompt, keep)
    if skipped:
        import warnings

        warnings.warn(f"{path}: skipped {skipped} records of suites read from a user's file (not recorded in the run)")


def _strip_stop(ids: list[int], tokenizer) -> list[int]:
    """Generated ids without the trailing stop token when it carries no text (EOS, a bare newline)."""
    ids = list(ids)
    while ids and not tokenizer.decode([ids[-1]], skip_special_tokens=True).strip():
        ids.pop()
    return ids
