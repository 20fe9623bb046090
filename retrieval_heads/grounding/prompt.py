"""The text being grounded: a tokenised prompt with its context and question located, and an answer's tokens.

A ``GroundedPrompt`` is built the way NIAH prompts are (``style="document"``: ``haystack.render_prompt``,
the long-document instruction) or the way task prompts are (``style="task"``: ``tasks.run.render``),
with the tokenizer's chat template when it has one. It keeps the character offset of every prompt
token, so a key position the probe reports maps back to characters of the context.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

STYLES = ("document", "task")


@dataclass(frozen=True)
class GroundedPrompt:
    """A tokenised prompt and where its context and question lie.

    Attributes:
        ids: (P,) prompt token ids, fed to the model as they are.
        text: the prompt text ``ids`` were tokenised from.
        offsets: (P,) [start, end) characters of each token in ``text``.
        context: the context string; ``context_chars`` is its [start, end) in ``text``.
        question: the question string; ``question_chars`` is its [start, end) in ``text``.
    """

    ids: list[int]
    text: str
    offsets: list[tuple[int, int]]
    context: str
    context_chars: tuple[int, int]
    question: str
    question_chars: tuple[int, int]

    @property
    def context_tokens(self) -> tuple[int, int]:
        """[start, end) token range of the context ((0, 0) when it is empty)."""
        return tokens_within(self.offsets, *self.context_chars)

    @property
    def question_tokens(self) -> tuple[int, int]:
        return tokens_within(self.offsets, *self.question_chars)

    def in_context(self, start: int, end: int) -> tuple[int, int]:
        """Prompt characters [start, end) as characters of ``context`` (clipped to it)."""
        base, limit = self.context_chars
        return max(start, base) - base, min(end, limit) - base

    def context_range(self, token: int) -> tuple[int, int]:
        """[start, end) characters of prompt token ``token`` inside ``context``, leading whitespace trimmed."""
        return trim(self.context, *self.in_context(*self.offsets[token]))


@dataclass(frozen=True)
class AnswerTokens:
    """An answer as the model reads it: ``ids`` (A,), ``text``, and (A,) [start, end) characters of
    each token in ``text`` with surrounding whitespace trimmed (start == end for whitespace tokens)."""

    ids: list[int]
    text: str
    offsets: list[tuple[int, int]]

    def token_text(self, i: int) -> str:
        start, end = self.offsets[i]
        return self.text[start:end]


def trim(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) narrowed to exclude whitespace at both ends (an all-whitespace range collapses to its end)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def tokens_within(offsets: list[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int]:
    """[start, end) of the tokens whose characters lie inside [char_start, char_end) ((0, 0) if none).

    A token straddling the boundary (e.g. ``" Tolvar"`` whose space belongs to the template) counts
    when any of its non-empty characters fall inside.
    """
    hits = [i for i, (s, e) in enumerate(offsets) if e > s and e > char_start and s < char_end]
    return (hits[0], hits[-1] + 1) if hits else (0, 0)


def build_prompt(tokenizer, context: str, question: str, *, style: str = "document", cot: bool = False) -> GroundedPrompt:
    """The prompt of one item, rendered as NIAH (``document``) or task (``task``, ``cot``: chain of
    thought) prompts are."""
    if style == "document":
        from ..sweep.haystack import render_prompt

        text, context_start = render_prompt(tokenizer, context, question)
    elif style == "task":
        from ..tasks.run import render
        from ..tasks.suites import Item

        text = render(tokenizer, Item("item", context, question, ("",)), cot=cot)
        context_start = text.find(context) if context else text.find("Question: ")
        if context_start < 0:
            raise UserError("the chat template changed the context text; use --prompt document")
    else:
        raise UserError(f"unknown prompt style {style!r}; choose from {', '.join(STYLES)}")
    return locate(tokenizer, text, context, context_start, question)


def locate(tokenizer, text: str, context: str, context_start: int, question: str) -> GroundedPrompt:
    """Tokenise ``text`` (whose ``context`` starts at ``context_start``) and find the question after it."""
    q_start = text.find(question, context_start + len(context)) if question else -1
    if question and q_start < 0:
        raise UserError(f"question not found in the rendered prompt: {question[:60]!r}")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    q_chars = (q_start, q_start + len(question)) if q_start >= 0 else (0, 0)
    return GroundedPrompt(list(enc["input_ids"]), text, [tuple(o) for o in enc["offset_mapping"]], context,
                          (context_start, context_start + len(context)), question, q_chars)


def answer_from_text(tokenizer, text: str) -> AnswerTokens:
    """Tokenise a given answer (teacher forcing), with the tokenizer's character offsets."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [trim(text, s, e) for s, e in enc["offset_mapping"]]
    return AnswerTokens(list(enc["input_ids"]), text, offsets)


def answer_from_ids(tokenizer, ids: list[int]) -> AnswerTokens:
    """An answer the model generated, token for token; offsets from decoding growing prefixes.

    Falls back to the tokenizer's offsets over the decoded text when decoding is not prefix-stable.
    """
    text = tokenizer.decode(ids, skip_special_tokens=True)
    prefixes = [tokenizer.decode(ids[: i + 1], skip_special_tokens=True) for i in range(len(ids))]
    if not all(text.startswith(p) for p in prefixes):
        again = answer_from_text(tokenizer, text)
        if again.ids == list(ids):
            return again
    ends = [len(p) for p in prefixes]
    starts = [0, *ends[:-1]]
    offsets = [trim(text, min(s, len(text)), min(max(s, e), len(text))) for s, e in zip(starts, ends)]
    return AnswerTokens(list(ids), text, offsets)


def countable(text: str) -> bool:
    """Whether a token counts towards grounding: it holds a letter or digit (not punctuation or whitespace only)."""
    return any(ch.isalnum() for ch in text)
