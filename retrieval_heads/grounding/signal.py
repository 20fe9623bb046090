"""The grounding signal: which heads copy each answer token out of the context, and from where.

The paper's copy criterion (``scoring.retrieval_scores``) with the needle replaced by a region of
the prompt (the context, or the question): head (l, h) copies answer token i when the top-1 key
``j`` of the query row that produces token i lies in the region and prompt token ``j`` is token
i. Tokens are compared by their text with surrounding whitespace ignored (``TokenMatcher``), so
``" Paris"`` inside a sentence of the context matches the ``"Paris"`` that opens an answer.

A token's **share** is the head-score-weighted fraction of the selected heads that copy it:
``sum_h w_h * copy_h / sum_h w_h``; it is **grounded** when its context share reaches the
threshold. Its **source** is the prompt position the copying heads point at (the one with the
most weight; the position right after the previous token's source when a copying head points
there, so a copied phrase keeps one contiguous source).
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..scores import RETRIEVAL_THRESHOLD


class TokenMatcher:
    """Decides whether an attended prompt token "holds" an answer token, by their text.

    Texts are compared with surrounding whitespace ignored; they also match when one (of at least
    two characters) contains the other, so the same word split differently by BPE still counts:
    ``" Orv" + "hor"`` inside a sentence of the context against ``"Or" + "v" + "hor"`` opening an answer.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._text: dict[int, str] = {}
        self._pair: dict[tuple[int, int], bool] = {}

    def text(self, token_id: int) -> str:
        if token_id not in self._text:
            raw = self.tokenizer.decode([token_id])
            self._text[token_id] = raw.strip() or raw
        return self._text[token_id]

    def same(self, a: int, p: int) -> bool:
        """Whether prompt token ``p`` holds answer token ``a``."""
        key = (a, p)
        if key not in self._pair:
            ta, tp = self.text(a), self.text(p)
            self._pair[key] = ta == tp or (len(ta) >= 2 and ta in tp) or (len(tp) >= 2 and tp in ta)
        return self._pair[key]

    def matrix(self, answer_ids: list[int], prompt_ids: list[int]) -> torch.Tensor:
        """(R, P) bool: prompt token j holds answer token r."""
        unique = sorted(set(prompt_ids))
        column = {p: i for i, p in enumerate(unique)}
        table = torch.tensor([[self.same(a, p) for p in unique] for a in answer_ids], dtype=torch.bool).view(
            len(answer_ids), len(unique))
        return table[:, torch.tensor([column[p] for p in prompt_ids], dtype=torch.long)]


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
    """Top-1 keys as absolute positions, one row per answer token.

    Args:
        offsets: (L, H, R) top-1 keys as offsets from the end of the key sequence (``take_top1``
            of one sample); ``hooks.NO_KEY`` (0) for layers without softmax attention.
        total_length: number of positions the forward pass ended at (cache plus new tokens).
    Returns:
        (R, L, H) int64; NO_KEY maps to ``total_length``, which is no prompt position.
    """
    return (offsets + total_length).permute(2, 0, 1).contiguous()


def copy_events(keys: torch.Tensor, holds: torch.Tensor, region: tuple[int, int]) -> torch.Tensor:
    """(R, L, H) bool: head (l, h) copies answer token r from ``region`` of the prompt.

    Args:
        keys: (R, L, H) absolute top-1 key of the query row producing answer token r.
        holds: (R, P) bool, prompt token j holds answer token r (``TokenMatcher.matrix``).
        region: [start, end) prompt positions that count as a source.
    """
    start, end = region
    if end <= start:
        return torch.zeros(keys.shape, dtype=torch.bool)
    inside = (keys >= start) & (keys < end)
    rows = torch.arange(keys.shape[0]).view(-1, 1, 1).expand_as(keys)
    return inside & holds[rows, keys.clamp(0, holds.shape[1] - 1)]


def weighted_share(copies: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(R,) float64 weighted share of the selected heads that copy each token.

    ``copies``: (R, L, H) bool; ``weights``: (L, H), zero for heads not selected.
    """
    return (copies.double() * weights).flatten(1).sum(1) / weights.sum()


def copy_rate(copies: torch.Tensor, applicable: torch.Tensor | None = None) -> torch.Tensor:
    """(R,) unweighted share of all (existing) heads that copy each token: the all-heads baseline."""
    mask = torch.ones(copies.shape[1:], dtype=torch.bool) if applicable is None else torch.as_tensor(applicable)
    return (copies & mask).flatten(1).sum(1).double() / mask.sum()


def token_sources(copies: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(R,) int64 prompt position each token was copied from, -1 where no selected head copies it.

    The position with the most copying weight (ties: the earliest), unless a copying head points
    right after the previous token's source, which then wins (a copied phrase keeps one source run).
    """
    sources = torch.full((keys.shape[0],), -1, dtype=torch.long)
    for r in range(keys.shape[0]):
        live = copies[r] & (weights > 0)  # (L, H)
        if not live.any():
            continue
        where, mass = keys[r][live], weights[live]
        previous = int(sources[r - 1]) if r else -1
        if previous >= 0 and bool((where == previous + 1).any()):
            sources[r] = previous + 1
            continue
        positions = where.unique()  # sorted
        votes = torch.stack([mass[where == p].sum() for p in positions])
        sources[r] = positions[int(votes.argmax())]
    return sources


def grounding_share(grounded: torch.Tensor, counted: torch.Tensor) -> float | None:
    """Share of the counted tokens that are grounded; None when no token counts."""
    n = int(counted.sum())
    return float((grounded & counted).sum()) / n if n else None
