"""How a task response is scored against an item's answers.

Text is normalised SQuAD-style (lowercase, punctuation to spaces, the
articles a/an/the dropped, whitespace collapsed). A response is correct when one accepted answer
occurs in the scored text as a whole-word span **and** none of the item's distractors (other
candidate answers in the context, e.g. the values of the passage's other facts) does, so a
response that repeats the whole passage earns no credit. Direct suites score the whole response
(decoding stops at the end of its first line of text, or of the line after a lead-in ending in
``:`` such as ``The answer is:``). Chain-of-thought suites score the final answer only: the rest
of the line after the last ``Answer:`` in the response (plus the next non-empty line when that
rest is empty or ends in ``:``; when there is no ``Answer:``, the last non-empty line), so the
reasoning before it may name anything.

The real suites (``squad``, ``hotpotqa``) use the same rule with no distractors: a response
containing any accepted spelling counts (SQuAD: every distinct annotated span, e.g. ``10th
century``, ``the first half of the 10th century`` and ``10th`` for one question, so the loosest,
``10th``, decides), which is SQuAD's exact match over its gold answers loosened from equality to
containment. Without distractors, a response that copies its paragraph is credited when the
answer falls within the token budget (32 by default).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .suites import Item

_PUNCT = re.compile(r"[^\w\s]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Lowercase, punctuation to spaces, articles dropped, whitespace collapsed."""
    text = _PUNCT.sub(" ", text.lower().replace("_", " "))
    return " ".join(_ARTICLES.sub(" ", text).split())


def contains(response: str, phrase: str) -> bool:
    """Whether normalised ``phrase`` occurs in normalised ``response`` as whole words."""
    p = normalize(phrase)
    return bool(p) and f" {p} " in f" {normalize(response)} "


def final_answer(response: str) -> str:
    """The final answer of a chain-of-thought response (see the module docstring)."""
    lines = response.splitlines()
    marks = [(i, m) for i, line in enumerate(lines) for m in re.finditer(r"answer\s*:", line, re.IGNORECASE)]
    if not marks:
        rest = [line for line in lines if line.strip()]
        return rest[-1].strip() if rest else ""
    i, m = marks[-1]
    after = lines[i][m.end():].strip()
    following = [line.strip() for line in lines[i + 1:] if line.strip()]
    if not after or (after.endswith(":") and following):
        return " ".join([after, *following[:1]]).strip()
    return after


def score(item: Item, response: str, *, cot: bool = False) -> tuple[bool, str]:
    """(correct, the text that was scored) for ``response`` to ``item``."""
    text = final_answer(response) if cot else response
    hit = any(contains(text, a) for a in item.answers)
    if hit:
        hit = not any(contains(text, d) for d in item.distractors if not any(contains(a, d) for a in item.answers))
    return hit, text
