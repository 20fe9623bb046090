"""The grounding signal: which heads copy each answer word out of the context, and from where.

The paper's copy criterion (``scoring.retrieval_scores``) with the needle replaced by a region of
the prompt (the context, or the question), read word by word. Head (l, h) has **evidence** for
answer token i from the region when either

* **copy**: the top-1 key ``k`` of the query row that produces token i lies in the region and
  prompt token ``k`` holds token i's word (row i; its query is token i-1, the last prompt token for
  i = 0); or
* **located**: the top-1 key ``k`` of the next row (row i+1, whose query *is* token i) lies right
  after a region token holding token i's word (``k - 1``). A head that has found token i in the
  context attends to what follows it there, to produce token i+1; what it attends to need not be
  token i+1 (row i+1 cannot see token i+1), so this is evidence for token i only.

Why ``located``: on the row that produces the first answer token (query: the chat template's last
token) the retrieval heads of SmolLM2-135M rest on the ``<|im_start|>`` sink or read the question;
they find the answer in the context only once its first token is fed in (with g00's
``"Or"+"v"+"hor"`` they point at ``" Or"``'s successor ``"v"`` on row 1, with ``"bar"+"ley"`` at the
``"."`` after ``" barley"``). The Grounder's pass therefore has a row more than the answer: row R
reads the last answer token, so a one-token answer has a located row as well. Attending to the
token *before* a copy (``k + 1`` holds token i) counts for nothing.

**Words.** A token's word is the run of letters and digits around its first letter or digit
(``word_spans``; a character of an unspaced script such as CJK is compared token for token instead)
and words match case-insensitively (``holds``). So different BPE splits of one word match
(``"bar"+"ley"`` opening an answer, ``" barley"`` inside a sentence of the context), digits split
one by one match their number, and a fabricated name that shares a first piece with a real one
(``"Or"+"lan"`` against ``" Or"+"v"+"hor"``) does not. A head's evidence for one piece of a word
counts for every piece of it (``pool_words``): a head can point at ``" barley"`` for only one of
``"bar"`` and ``"ley"``.

A token's **share** is the head-score-weighted fraction of the selected heads with evidence for
it: ``sum_h w_h * evidence_h / sum_h w_h``; it is **grounded** when its context share reaches the
threshold. Its **source** (``token_sources``) is the matching characters of the context word
occurrence the evidence points at (the one with the most weight, or the one continuing the
previous word's occurrence when the text between them agrees with the answer's, so a copied phrase
keeps one contiguous source).
"""

from __future__ import annotations

import re
import unicodedata

import torch

from ..core.head_scores import RETRIEVAL_THRESHOLD
from ..errors import UserError

Range = tuple[int, int]


def _unspaced(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def word_spans(text: str, offsets: list[Range]) -> list[Range | None]:
    """[start, end) characters of the word each token belongs to, None for a token without a letter or digit.

    The word is the run of letters and digits around the token's first letter or digit; for a
    character of an unspaced script (CJK and other wide characters) it is the token's own letters.
    """
    out: list[Range | None] = []
    for start, end in offsets:
        first = next((i for i in range(start, end) if text[i].isalnum()), None)
        if first is None:
            out.append(None)
        elif _unspaced(text[first]):
            last = max(i for i in range(start, end) if text[i].isalnum())
            out.append((first, last + 1))
        else:
            a, b = first, first
            while a > 0 and text[a - 1].isalnum() and not _unspaced(text[a - 1]):
                a -= 1
            while b < len(text) and text[b].isalnum() and not _unspaced(text[b]):
                b += 1
            out.append((a, b))
    return out


def holds(answer_words: list[str | None], prompt_words: list[str | None]) -> torch.Tensor:
    """(R, P) bool: prompt token j belongs to the same word as answer token r (case-insensitive).

    Arguments are the words' texts (``text[start:end]`` of ``word_spans``), None for no word.
    """
    vocab: dict[str, int] = {}
    a = torch.tensor([vocab.setdefault(w.casefold(), len(vocab)) if w else -1 for w in answer_words], dtype=torch.long)
    p = torch.tensor([vocab.setdefault(w.casefold(), len(vocab)) if w else -2 for w in prompt_words], dtype=torch.long)
    return a.view(-1, 1) == p.view(1, -1)


def word_parts(offsets: list[Range], spans: list[Range | None]) -> list[Range | None]:
    """Each token's characters inside its word (``offsets`` clipped to ``word_spans``), None without a word."""
    return [None if w is None else (max(o[0], w[0]), min(o[1], w[1])) for o, w in zip(offsets, spans)]


def word_index(spans: list[Range | None]) -> list[int]:
    """Answer token -> number of its word (tokens of one word share it), -1 for tokens without a word."""
    numbers: dict[Range, int] = {}
    return [-1 if s is None else numbers.setdefault(s, len(numbers)) for s in spans]


def head_weights(mean_scores, *, threshold: float = RETRIEVAL_THRESHOLD, top_k: int | None = None,
                 applicable=None) -> torch.Tensor:
    """(layers, heads) float64 weight of each head: its score when selected, else 0.

    Selected: the ``top_k`` best heads when given, else every head scoring above ``threshold``.
    ``mean_scores``: (layers, heads) array of mean retrieval scores; ``applicable`` (layers, heads)
    bool marks heads that exist. Raises UserError when nothing is selected.
    """
    scores = torch.as_tensor(mean_scores, dtype=torch.float64).clone()
    if applicable is not None:
        scores[~torch.as_tensor(applicable, dtype=torch.bool)] = 0
    if top_k is not None:
        if top_k < 1:
            raise UserError("--top-k must be at least 1")
        flat = scores.flatten()
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.argsort(descending=True, stable=True)[:top_k]] = True
        selected = keep.view_as(scores) & (scores > 0)
    else:
        selected = scores > threshold
    if not selected.any():
        which = f"the top {top_k}" if top_k is not None else f"above {threshold}"
        raise UserError(f"no head with a positive score {which}: the scores select no retrieval head")
    return torch.where(selected, scores, torch.zeros_like(scores))


def absolute_keys(offsets: torch.Tensor, total_length: int) -> torch.Tensor:
    """Top-1 keys as absolute positions, one row per query row.

    Args:
        offsets: (L, H, Q) top-1 keys as offsets from the end of the key sequence (``take_top1``
            of one sample); ``hooks.NO_KEY`` (0) for layers without softmax attention.
        total_length: number of positions the forward pass ended at (cache plus new tokens).
    Returns:
        (Q, L, H) int64; NO_KEY maps to ``total_length``, which is no prompt position.
    """
    return (offsets + total_length).permute(2, 0, 1).contiguous()


def copy_events(keys: torch.Tensor, holds: torch.Tensor, region: Range) -> torch.Tensor:
    """(R, L, H) bool: the top-1 key of row r lies in ``region`` on a prompt token holding answer token r.

    Args:
        keys: (R, L, H) absolute top-1 key of the query row producing answer token r.
        holds: (R, P) bool, prompt token j holds answer token r (``holds``).
        region: [start, end) prompt positions that count as a source.
    """
    start, end = region
    if end <= start:
        return torch.zeros(keys.shape, dtype=torch.bool)
    inside = (keys >= start) & (keys < end)
    rows = torch.arange(keys.shape[0]).view(-1, 1, 1).expand_as(keys)
    return inside & holds[rows, keys.clamp(0, holds.shape[1] - 1)]


def next_row_keys(keys: torch.Tensor, answer_length: int) -> torch.Tensor:
    """(R, L, H): the key one before row r+1's top-1 key (-1 where there is no row r+1).

    ``keys``: (R + 1, L, H) (the Grounder's pass: row R reads the last answer token) or (R, L, H).
    """
    after = keys[1:answer_length + 1] - 1
    if after.shape[0] < answer_length:
        after = torch.cat([after, torch.full((answer_length - after.shape[0], *keys.shape[1:]), -1, dtype=keys.dtype)])
    return after


def evidence(keys: torch.Tensor, holds: torch.Tensor, region: Range) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy-or-located evidence (see the module docstring) and the prompt position it points at.

    Args:
        keys: (R + 1, L, H) (or (R, L, H): no located evidence for the last token) absolute top-1 keys.
        holds: (R, P) bool (``holds``); region: [start, end) prompt positions.
    Returns:
        events (R, L, H) bool, and positions (R, L, H) int64: the prompt token holding answer token
        r (the key for a copy, the key before row r+1's for a located token), -1 without evidence.
    """
    length = holds.shape[0]
    copied = copy_events(keys[:length], holds, region)
    before = next_row_keys(keys, length)
    located = copy_events(before, holds, region)
    positions = torch.where(copied, keys[:length], torch.where(located, before, torch.full_like(before, -1)))
    return copied | located, positions


def pool_words(events: torch.Tensor, index: list[int]) -> torch.Tensor:
    """(R, L, H): a head's evidence for any token of a word, on every token of that word (``word_index``)."""
    pooled = events.clone()
    idx = torch.tensor(index, dtype=torch.long)
    for w in set(index) - {-1}:
        rows = idx == w
        pooled[rows] = events[rows].any(0, keepdim=True)
    return pooled


def weighted_share(copies: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(R,) float64 weighted share of the selected heads with evidence for each token.

    ``copies``: (R, L, H) bool; ``weights``: (L, H), zero for heads not selected.
    """
    return (copies.double() * weights).flatten(1).sum(1) / weights.sum()


def copy_rate(copies: torch.Tensor, applicable: torch.Tensor | None = None) -> torch.Tensor:
    """(R,) unweighted share of all (existing) heads with evidence for each token: the all-heads baseline."""
    mask = torch.ones(copies.shape[1:], dtype=torch.bool) if applicable is None else torch.as_tensor(applicable)
    return (copies & mask).flatten(1).sum(1).double() / mask.sum()


def squash(text: str) -> str:
    """``text`` with every whitespace run as one space (how gaps between copied words are compared)."""
    return re.sub(r"\s+", " ", text)


def token_sources(positions: torch.Tensor, weights: torch.Tensor, grounded: list[bool], *, answer_text: str,
                  answer_spans: list[Range | None], answer_parts: list[Range | None], prompt_text: str,
                  prompt_spans: list[Range | None]) -> list[Range | None]:
    """[start, end) characters of ``prompt_text`` each grounded token was copied from; None for the others.

    Each grounded answer word gets one occurrence: the prompt word that the most head weight points
    at over the word's tokens (``positions`` (R, L, H) from ``evidence``; ties: the earliest), unless
    a candidate starts where the previous word's occurrence continues (the prompt text between them
    equals the answer's, whitespace runs counted as one space), which then wins. A token's source is
    its part of the word (``answer_parts``) at the same offset inside that occurrence.
    """
    index = word_index(answer_spans)
    sources: list[Range | None] = [None] * len(index)
    heads = (weights > 0).nonzero().tolist()
    previous: tuple[Range, Range] | None = None  # (answer word, prompt occurrence) of the last grounded word
    for w in sorted(set(index) - {-1}):
        rows = [r for r, x in enumerate(index) if x == w]
        if not any(grounded[r] for r in rows):
            continue
        votes: dict[Range, float] = {}
        for layer, head in heads:
            for span in {prompt_spans[p] for p in positions[rows, layer, head].tolist() if p >= 0} - {None}:
                votes[span] = votes.get(span, 0.0) + float(weights[layer, head])
        if not votes:
            continue
        word = answer_spans[rows[0]]
        candidates = sorted(votes)  # ties go to the earliest
        choice = max(candidates, key=lambda c: votes[c])
        if previous is not None:
            gap = squash(answer_text[previous[0][1]:word[0]])
            follow = [c for c in candidates
                      if c[0] >= previous[1][1] and squash(prompt_text[previous[1][1]:c[0]]) == gap]
            choice = follow[0] if follow else choice
        previous = (word, choice)
        for r in rows:
            start, end = answer_parts[r]
            sources[r] = (choice[0] + start - word[0], choice[0] + end - word[0])
    return sources


def grounding_share(grounded: torch.Tensor, counted: torch.Tensor) -> float | None:
    """Share of the counted tokens that are grounded; None when no token counts."""
    n = int(counted.sum())
    return float((grounded & counted).sum()) / n if n else None
