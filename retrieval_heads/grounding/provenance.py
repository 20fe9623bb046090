"""Provenance: grounded answer tokens grouped into spans, each mapped to characters of the answer and the context.

Consecutive grounded tokens whose sources are consecutive context positions form one span. A span
is reported as [answer_start, answer_end) characters of the answer and [context_start,
context_end) characters of the context (from the tokenizer's offsets, whitespace at the edges
trimmed), so ``answer[answer_start:answer_end]`` is the cited text and
``context[context_start:context_end]`` the passage it came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .prompt import AnswerTokens, GroundedPrompt


@dataclass(frozen=True)
class Span:
    """A run of answer tokens copied from one run of context tokens (characters, end exclusive)."""

    answer_start: int
    answer_end: int
    context_start: int
    context_end: int
    tokens: tuple[int, int]  # [first, last + 1) answer token indices

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens"] = list(self.tokens)
        return d


def token_runs(grounded: list[bool], sources: list[int]) -> list[tuple[int, int]]:
    """[start, end) answer-token runs: grounded tokens whose sources advance by exactly one position."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, ok in enumerate(grounded):
        joins = start is not None and ok and sources[i] == sources[i - 1] + 1
        if start is not None and not joins:
            runs.append((start, i))
            start = None
        if ok and start is None:
            start = i
    if start is not None:
        runs.append((start, len(grounded)))
    return runs


def spans(prompt: GroundedPrompt, answer: AnswerTokens, grounded: list[bool], sources: list[int]) -> list[Span]:
    """The spans of one grounded answer (see the module docstring)."""
    out = []
    for first, end in token_runs(grounded, sources):
        a_start, a_end = answer.offsets[first][0], answer.offsets[end - 1][1]
        c_start, c_end = prompt.context_range(sources[first])[0], prompt.context_range(sources[end - 1])[1]
        out.append(Span(a_start, a_end, c_start, c_end, (first, end)))
    return out
