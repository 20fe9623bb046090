"""Prompts of tasks with no needle to hide: each sample's whole context is built to fill its length.

RULER's variable tracking, word extraction and QA tasks (``sources.ruler_synthetic``, ``sources.ruler_qa``)
have no needle that goes into a haystack at a depth: a sample is a context, a question and the values
expected. A ``ContextTask`` builds a sample's context at a size (noise lines, words, documents); the sweep
picks the largest size whose context fits the prompt's length, as RULER searches its haystack size, and
renders it in the project's prompt (``haystack.render_prompt``) with the sample's question.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..errors import UserError
from .haystack import Needle, Prompt, render_prompt

GROWTH = 1.25  # how far each step of the search for a size that overflows reaches past the last estimate


class ContextTask(Protocol):
    """Builds the contexts of a task's samples; ``items`` are their questions and expected values."""

    name: str
    identity: str  # what a run's identity hashes in place of a haystack's text (sources and generator version)
    items: tuple[Needle, ...]
    min_size: int  # the smallest context that still holds the task (its size may not go below)

    def max_size(self, index: int, context_length: int) -> int | None:
        """The largest size sample ``index`` can have (None: no limit)."""

    def context(self, index: int, size: int, context_length: int) -> str:
        """Sample ``index``'s context at ``size`` (its length grows with ``size``), for a prompt of about
        ``context_length`` tokens; the same arguments give the same text."""


@dataclass
class SeededTask:
    """What every seeded task without a needle shares: ``count`` samples drawn with ``seed`` (keyword-only), the
    ``name``, ``identity`` and ``items`` its ``__post_init__`` sets, and no size limit unless it says so."""

    seed: int = field(default=0, kw_only=True)
    count: int = field(default=8, kw_only=True)
    min_size: int = field(default=0, kw_only=True)
    name: str = field(init=False)
    identity: str = field(init=False)
    items: tuple = field(init=False)

    def max_size(self, index: int, context_length: int) -> int | None:
        return None


def fit_size(build: Callable[[int], str], count: Callable[[str], int], budget: int, *, low: int,
             high: int | None = None) -> int | None:
    """The largest size in [``low``, ``high``] whose ``build(size)`` has at most ``budget`` tokens (``count``), or
    None when not even ``low`` fits. The search assumes tokens grow with size; what it returns always fits.
    It never builds past the first size that overflows (``high`` may be far beyond any prompt)."""
    def tokens(size: int) -> int:
        return count(build(size))

    base = tokens(low)
    if base > budget:
        return None
    if high is not None and high <= low:
        return low
    # estimate from the tokens one unit adds to the smallest context, then reach past it until a size overflows
    per_unit = max(tokens(low + 1) - base, 1)
    good, bad = low, None
    size = low + max(1, (budget - base) // per_unit)
    while bad is None:
        if high is not None and size >= high:
            size = high
        if tokens(size) <= budget:
            good = size
            if size == high:
                return size
            size = max(size + 1, low + int((size - low) * GROWTH))
        else:
            bad = size
    while bad - good > 1:
        mid = (good + bad) // 2
        if tokens(mid) <= budget:
            good = mid
        else:
            bad = mid
    return good


def task_prompt(tokenizer, task: ContextTask, item: Needle, index: int, context_length: int) -> Prompt:
    """Sample ``index``'s prompt: its context at the largest size that keeps the whole prompt within about
    ``context_length`` tokens, in the project's prompt with its question. The prompt has no needle span."""
    overhead = len(_ids(tokenizer, render_prompt(tokenizer, "", item.question)[0]))
    budget = context_length - overhead
    if budget <= 0:
        raise UserError(f"context length {context_length} is shorter than the prompt's {overhead} fixed tokens")

    def build(size: int) -> str:
        return task.context(index, size, context_length)

    size = fit_size(build, lambda text: len(_ids(tokenizer, text)), budget, low=task.min_size,
                    high=task.max_size(index, context_length))
    if size is None:
        smallest = len(_ids(tokenizer, build(task.min_size)))
        raise UserError(f"context length {context_length} is too short for sample {index} of {task.name}: its "
                        f"smallest context takes {smallest} tokens and the prompt {overhead} more")
    text, _ = render_prompt(tokenizer, build(size), item.question)
    return Prompt(list(_ids(tokenizer, text)), None, text)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]
