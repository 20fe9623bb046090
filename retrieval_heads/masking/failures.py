"""Why a needle-in-a-haystack answer is wrong: incomplete, hallucinated, wrongly extracted, or empty.

The rule, applied in order to a response that does not contain the whole answer:

1. **empty_or_refusal**: nothing left after stripping, or a refusal ("I don't know", "not
   mentioned", "cannot", "no information", ...), or no content word beyond the question's own.
2. **incomplete_retrieval**: some, not all, of the answer's content words appear (part of the needle).
3. **wrong_extraction**: at least half of the response's new content words (those not in the
   question) occur in the context outside the needle: it copied another part of the document.
4. **hallucination**: a fluent answer whose new content words are mostly not in the context.

Words are lower-cased alphanumeric runs; content words exclude a short stop-word list (``core.scoring``).
"""

from __future__ import annotations

import enum
import re

from ..core.scoring import content_words, words

REFUSAL = re.compile(
    r"\b(i don'?t know|do not know|not mentioned|no information|cannot|can'?t|unable to|not (?:provided|specified|stated|given)|sorry)\b",
    re.IGNORECASE,
)


class FailureType(str, enum.Enum):
    INCOMPLETE = "incomplete_retrieval"
    HALLUCINATION = "hallucination"
    WRONG_EXTRACTION = "wrong_extraction"
    EMPTY = "empty_or_refusal"


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
    outside = content_words(context.replace(needle, " ") if needle else context)  # a task may have no needle
    if len(new & outside) >= len(new) / 2:
        return FailureType.WRONG_EXTRACTION
    return FailureType.HALLUCINATION
