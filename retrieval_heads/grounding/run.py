"""Ground a list of items into a run directory: ``results.jsonl`` (one line per item, appended as
each finishes), ``summary.json`` and ``report.html``.

``results.jsonl`` lines: ``id``, ``question``, ``answer``, ``generated`` (True when the model wrote
the answer here), ``grounding``, ``restated``, ``mean_logprob``, ``all_heads_copy_rate``,
``lexical_overlap``, ``citation_relevance`` and ``grounding_x_relevance`` (``citations``), ``new_word_grounding``
(``metrics``),
``length_position`` (``metrics.length_position``), ``lookback`` (the answer's Lookback-Lens features,
layers x heads mean lookback ratios, ``lookback``; absent for an empty answer), ``tokens`` (``text``, ``start``, ``end``, ``counted``, ``grounded``,
``source`` [context_start, context_end) or null, ``share``, ``question_share``, ``all_heads``,
``logprob``), ``spans`` (``answer_start``, ``answer_end``, ``context_start``, ``context_end``,
``tokens``), ``forward_passes`` (the model calls grounding this item paid: ``prefill`` chunks,
``decode`` steps of a generated answer, ``teacher_forced`` passes; a prompt kept from the previous
item costs no prefill), ``label`` when known, ``verdict`` (``gold``) for items with gold answers,
and the item's other fields.

``summary.json``: mean grounding, the mean forward passes per answer, the verdicts, AUROC of each
per-item score when labels are present (``metrics``), and for items with supporting sentences the
citation metrics (``citations``).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..sweep.rundir import RunDir
from .citations import citation_relevance, citation_summary
from .gold import VERDICTS, label_of, verdict
from .grounder import DEFAULT_MAX_NEW_TOKENS, Grounder
from .items import GroundItem, prompt_of
from .lookback import LookbackRecorder, lookback_ratios
from .metrics import auroc_row, length_position, lexical_overlap, new_word_grounding
from .prompt import AnswerTokens, answer_from_ids, answer_from_text

RESULTS = "results.jsonl"
# per-item scores whose AUROC the summary reports when labels are present: (name, record field)
SCORES = (("grounding", "grounding"), ("grounding of new words", "new_word_grounding"),
          ("grounding x citation relevance", "grounding_x_relevance"),
          ("mean token log-prob", "mean_logprob"),
          ("copy rate of all heads", "all_heads_copy_rate"), ("lexical overlap", "lexical_overlap"))
PHASES = ("prefill", "decode", "teacher_forced")  # the Grounder's kinds of forward pass


def ground_item(grounder: Grounder, item: GroundItem, *, style: str = "document",
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, recorder: LookbackRecorder | None = None) -> dict:
    """One item's result line (see the module docstring). ``recorder``: a ``LookbackRecorder`` installed on the
    model (``lookback_ratios``), whose features of the grounding pass the line then carries."""
    tokenizer = grounder.tokenizer
    grounder.passes.clear()
    prompt = prompt_of(item, tokenizer, style)
    if item.answer_ids is not None:
        answer = answer_from_ids(tokenizer, item.answer_ids)
    elif item.answer is not None:  # "" is the empty answer (a run's empty response), grounded as it was
        answer = answer_from_text(tokenizer, item.answer) if item.answer else AnswerTokens([], "", [])
    else:
        answer = grounder.answer(prompt, max_new_tokens)
    if recorder is not None:
        recorder.expect(len(prompt.ids), len(answer.ids))
    result = grounder.ground(prompt, answer).to_record()
    relevance = citation_relevance(prompt.question, prompt.context, result["spans"])
    start, end = prompt.context_tokens
    record = {"id": item.id, "question": item.question, **result, "generated": item.answer is None and item.answer_ids is None,
              "lexical_overlap": lexical_overlap(answer.text, prompt.context), "citation_relevance": relevance,
              "grounding_x_relevance": None if result["grounding"] is None else result["grounding"] * relevance,
              "new_word_grounding": new_word_grounding(answer.text, result["tokens"], item.question)
              if result["tokens"] else None,
              "length_position": length_position(answer.text, len(answer.ids), prompt.context, end - start),
              "forward_passes": {phase: grounder.passes[phase] for phase in PHASES}}
    if recorder is not None:
        if answer.ids:
            features = recorder.features(grounder.num_layers, grounder.num_heads)
            record["lookback"] = [round(float(v), 5) for v in features]
        recorder.reset()
    label = item.label
    if item.gold_answers is not None:
        record.update(gold_answers=list(item.gold_answers), unanswerable=item.unanswerable,
                      verdict=verdict(answer.text, item.gold_answers, unanswerable=item.unanswerable))
        label = label_of(record["verdict"]) if label is None else label
    if label is not None:
        record["label"] = label
    return {**item.keep, **record}


def ground_items(grounder: Grounder, items: list[GroundItem], out: str | Path, *, style: str = "document",
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, identity: dict | None = None, resume: bool = False,
                 overwrite: bool = False, progress: bool = True) -> dict:
    """Ground every unfinished item into ``out``; returns (and writes) the summary, and writes the report."""
    from tqdm.auto import tqdm

    from .page import write_report

    run = RunDir(out, RESULTS)
    ident = {"threshold": grounder.threshold, "heads": [f"{l}-{h}" for l, h, _ in grounder.heads], "prompt": style,
             **(identity or {})}
    done = run.start(ident, {"items": len(items), "max_new_tokens": max_new_tokens}, resume=resume, overwrite=overwrite)
    start = time.perf_counter()
    recorder = LookbackRecorder()
    with lookback_ratios(grounder.model, recorder):
        for item in tqdm([it for it in items if it.id not in done], desc="grounding", unit="item", disable=not progress):
            t0 = time.perf_counter()
            record = ground_item(grounder, item, style=style, max_new_tokens=max_new_tokens, recorder=recorder)
            record["seconds"] = round(time.perf_counter() - t0, 3)
            run.append(record)
    records = run.records()
    summary = summarize(records, grounder, wall_seconds=time.perf_counter() - start, identity=ident)
    run.write_json("summary.json", summary)
    contexts = {it.id: it.prompt.context if it.prompt is not None else it.context for it in items}
    write_report(records, summary, run.path / "report.html", contexts=contexts)
    return summary


def summarize(records: list[dict], grounder: Grounder, *, wall_seconds: float = 0.0, identity: dict | None = None) -> dict:
    """Mean grounding, forward passes per answer, verdicts, and when present AUROC (bootstrap 95% interval)
    of each per-item score and the citation metrics."""
    scored = [r["grounding"] for r in records if r["grounding"] is not None]
    summary = {**(identity or {}), "n": len(records), "heads_used": [
        {"layer": l, "head": h, "weight": round(w, 4)} for l, h, w in grounder.heads],
        "mean_grounding": sum(scored) / len(scored) if scored else None,
        "items_without_counted_tokens": len(records) - len(scored), "wall_seconds": round(wall_seconds, 1)}
    paid = [r["forward_passes"] for r in records if "forward_passes" in r]
    if paid:
        summary["forward_passes_per_answer"] = {
            **{phase: round(sum(p[phase] for p in paid) / len(paid), 3) for phase in PHASES},
            "total": round(sum(sum(p.values()) for p in paid) / len(paid), 3)}
    verdicts = [r["verdict"] for r in records if "verdict" in r]
    if verdicts:
        summary["verdicts"] = {v: verdicts.count(v) for v in VERDICTS if v in verdicts}
    citations = citation_summary(records)
    if citations is not None:
        summary["citations"] = citations
    labelled = [r for r in records if "label" in r]
    if labelled:
        labels = [r["label"] for r in labelled]
        summary["labelled"] = len(labelled)
        summary["auroc"] = [auroc_row(name, [r.get(key) for r in labelled], labels,
                                      missing=-1e9 if key == "mean_logprob" else 0.0) for name, key in SCORES]
    return summary
