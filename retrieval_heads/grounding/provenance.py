"""Provenance: grounded answer tokens grouped into spans, each mapped to characters of the answer and the context.

Every grounded token has a source: its letters and digits at the same place inside the context
word it was copied from (``signal.token_sources``). Consecutive grounded tokens form one span when
the answer text between them equals the context text between their sources (whitespace runs
counted as one space): the pieces of one word, and words copied in order with the same spaces and
punctuation between them. Tokens without a letter or digit (spaces, punctuation) never break a
span, they are checked as part of that text; an ungrounded word does. A span is reported as
[answer_start, answer_end) characters of the answer and [context_start, context_end) characters of
the context, so ``answer[answer_start:answer_end]`` is the cited text and
``context[context_start:context_end]`` the passage it came from (equal up to case and whitespace).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .signal import Range, squash


@dataclass(frozen=True)
class Span:
    """A run of answer tokens copied from one run of context text (characters, end exclusive)."""

    answer_start: int
    answer_end: int
    context_start: int
    context_end: int
    tokens: tuple[int, int]  # [first, last + 1) answer token indices

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens"] = list(self.tokens)
        return d


def token_runs(parts: list[Range | None], sources: list[Range | None], answer: str, context: str) -> list[Range]:
    """[start, end) answer-token runs of tokens with a source (see the module docstring).

    ``parts``: each token's characters of the answer inside its word (None: no letter or digit, such a
    token does not break a run); ``sources``: its characters of the context, None when not grounded.
    """
    runs: list[Range] = []
    first = last = None
    for i, (part, source) in enumerate(zip(parts, sources)):
        if source is None:
            if part is not None and first is not None:  # an ungrounded word ends the run
                runs.append((first, last + 1))
                first = None
            continue
        joins = first is not None and source[0] >= sources[last][1] and (
            squash(answer[parts[last][1]:part[0]]) == squash(context[sources[last][1]:source[0]]))
        if first is not None and not joins:
            runs.append((first, last + 1))
            first = None
        if first is None:
            first = i
        last = i
    if first is not None:
        runs.append((first, last + 1))
    return runs


def spans(parts: list[Range | None], sources: list[Range | None], answer: str, context: str) -> list[Span]:
    """The spans of one grounded answer (see the module docstring)."""
    return [Span(parts[first][0], parts[end - 1][1], sources[first][0], sources[end - 1][1], (first, end))
            for first, end in token_runs(parts, sources, answer, context)]
