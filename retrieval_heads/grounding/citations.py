"""Citations scored against supporting sentences: do an answer's cited spans point at the sentences it rests on?

Each answer's spans (``provenance``: [context_start, context_end) characters of the context) are
mapped to the context's sentences (``sentence_spans``, [start, end) characters; HotpotQA items carry
them, ``datasets``): a sentence's weight is the number of cited characters inside it, summed over
the answer's spans. The cited sentences (weight > 0) are ranked by weight, ties by position in the
context. Against the gold supporting sentences S (``supporting_spans``):

* ``recall@k``: the share of S among the top k cited sentences (|top-k & S| / |S|, so recall@1 is
  at most 1/|S|: HotpotQA questions have two or more); an answer citing nothing scores 0;
* ``precision``: the share of the cited sentences that are supporting; answers citing nothing are
  left out of its mean (``uncited`` counts them).

``citation_summary`` averages these over answers, with bootstrap 95% intervals over answers, for
every answer and for the correct ones (``label`` 1).

``citation_relevance`` needs no gold: the share of the question's content words found in the
sentence an answer cites (its best span), a check that the answer was copied from a place that
talks about what was asked. ``grounding x citation relevance`` multiplies it into the grounding.
"""

from __future__ import annotations

from typing import Sequence

from ..core.scoring import content_words
from .metrics import mean_row

KS = (1, 2)


def sentence_weights(spans: Sequence[dict], sentences: Sequence[Sequence[int]]) -> list[int]:
    """Cited characters of each sentence: ``spans`` are provenance span dicts, ``sentences`` [start, end) pairs."""
    return [sum(max(0, min(end, s["context_end"]) - max(start, s["context_start"])) for s in spans)
            for start, end in sentences]


def ranked_sentences(spans: Sequence[dict], sentences: Sequence[Sequence[int]]) -> list[int]:
    """Indices of the cited sentences, most cited characters first, ties in context order."""
    weights = sentence_weights(spans, sentences)
    return sorted((i for i, w in enumerate(weights) if w > 0), key=lambda i: (-weights[i], sentences[i][0]))


def answer_citations(record: dict) -> dict | None:
    """``recall@k``, ``precision`` (None when nothing is cited), ``cited`` and ``supporting`` of one result
    line; None when the item has no supporting sentences."""
    sentences = [tuple(s) for s in record.get("sentence_spans") or ()]
    supporting = {sentences.index(tuple(s)) for s in record.get("supporting_spans") or () if tuple(s) in sentences}
    if not supporting:
        return None
    ranked = ranked_sentences(record.get("spans") or (), sentences)
    scores = {f"recall@{k}": len(supporting.intersection(ranked[:k])) / len(supporting) for k in KS}
    scores["precision"] = len(supporting.intersection(ranked)) / len(ranked) if ranked else None
    return {**scores, "cited": len(ranked), "supporting": len(supporting)}


def citation_summary(records: Sequence[dict]) -> dict | None:
    """Mean recall@1, recall@2 and precision over answers with supporting sentences, with bootstrap 95%
    intervals, for ``all`` answers and the ``correct`` ones; None when no record has supporting sentences."""
    scored = [(r.get("label"), s) for r in records if (s := answer_citations(r)) is not None]
    if not scored:
        return None
    summary = {}
    for group, rows in (("all", [s for _, s in scored]), ("correct", [s for label, s in scored if label == 1])):
        metrics = [mean_row(f"recall@{k}", [s[f"recall@{k}"] for s in rows]) for k in KS]
        metrics.append(mean_row("precision", [s["precision"] for s in rows if s["precision"] is not None]))
        summary[group] = {"answers": len(rows), "uncited": sum(s["precision"] is None for s in rows),
                          "metrics": metrics}
    return summary


def sentence_around(context: str, start: int, end: int) -> str:
    """The sentence of ``context`` holding characters [start, end): from after the previous ". " or
    line break to the next one."""
    left = max(context.rfind(". ", 0, start), context.rfind("\n", 0, start))
    right = [i for i in (context.find(". ", end), context.find("\n", end)) if i >= 0]
    return context[left + 1: min(right) + 1 if right else len(context)]


def citation_relevance(question: str, context: str, spans: Sequence[dict]) -> float:
    """Best share, over the answer's spans, of the question's content words found in the sentence a
    span cites; 0 when nothing is cited or the question has no content word."""
    asked = content_words(question)
    if not asked:
        return 0.0
    return max((len(asked & content_words(sentence_around(context, s["context_start"], s["context_end"])))
                / len(asked) for s in spans), default=0.0)
