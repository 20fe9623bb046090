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
"""

from __future__ import annotations

from typing import Sequence

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
