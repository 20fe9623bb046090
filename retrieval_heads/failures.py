"""Why a needle-in-a-haystack answer is wrong: incomplete, hallucinated, wrongly extracted, or empty.

The rule, applied in order to a response that does not contain the whole answer:

1. **empty_or_refusal**: nothing left after stripping, or a refusal ("I don't know", "not
   mentioned", "cannot", "no information", ...), or no content word beyond the question's own.
2. **incomplete_retrieval**: some, not all, of the answer's content words appear (part of the needle).
3. **wrong_extraction**: at least half of the response's new content words (those not in the
   question) occur in the context outside the needle: it copied another part of the document.
4. **hallucination**: a fluent answer whose new content words are mostly not in the context.

Words are lower-cased alphanumeric runs; content words exclude a short stop-word list.
"""

from __future__ import annotations

import enum
import re

WORD = re.compile(r"[a-z0-9]+")
STOP = frozenset(
    "a an the of in on at to for from by with and or is are was were be been it its this that these those "
    "as what which who whom where when why how does do did has have had i you he she they we his her their "
    "our your my me him them there here than then so not no yes".split()
)
REFUSAL = re.compile(
    r"\b(i don'?t know|do not know|not mentioned|no information|cannot|can'?t|unable to|not (?:provided|specified|stated|given)|sorry)\b",
    re.IGNORECASE,
)


class FailureType(str, enum.Enum):
    INCOMPLETE = "incomplete_retrieval"
    HALLUCINATION = "hallucination"
    WRONG_EXTRACTION = "wrong_extraction"
    EMPTY = "empty_or_refusal"


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOP}


def contains_answer(response: str, answer: str) -> bool:
    """The answer's words appear in the response as one contiguous run (case and punctuation ignored)."""
    return f" {' '.join(words(answer))} " in f" {' '.join(words(response))} "


def classify(response: str, *, answer: str, needle: str, question: str, context: str) -> FailureType | None:
    """The failure type of ``response``, or None when it contains the answer."""
    if contains_answer(response, answer):
        return None
    if not response.strip() or REFUSAL.search(response):
        return FailureType.EMPTY
    said = content_words(response)
    if said & content_words(answer):
        return FailureType.INCOMPLETE
    new = said - content_words(question)
    if not new:
        return FailureType.EMPTY
    outside = content_words(context.replace(needle, " "))
    if len(new & outside) >= len(new) / 2:
        return FailureType.WRONG_EXTRACTION
    return FailureType.HALLUCINATION
