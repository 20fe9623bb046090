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
    """Maps token ids to comparison classes: tokens with the same text (whitespace-trimmed) share a class."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._class_of_id: dict[int, int] = {}
        self._class_of_text: dict[str, int] = {}

    def classes(self, ids: list[int]) -> torch.Tensor:
        """(N,) int64 class of each id."""
        for i in set(ids) - self._class_of_id.keys():
            raw = self.tokenizer.decode([i])
            text = raw.strip() or raw
            self._class_of_id[i] = self._class_of_text.setdefault(text, len(self._class_of_text))
        return torch.tensor([self._class_of_id[i] for i in ids], dtype=torch.long)


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


def copy_events(keys: torch.Tensor, answer_classes: torch.Tensor, prompt_classes: torch.Tensor,
                region: tuple[int, int]) -> torch.Tensor:
    """(R, L, H) bool: head (l, h) copies answer token r from ``region`` of the prompt.

    Args:
        keys: (R, L, H) absolute top-1 key of the query row producing answer token r.
        answer_classes: (R,) comparison class of each answer token (``TokenMatcher``).
        prompt_classes: (P,) comparison class of each prompt token.
        region: [start, end) prompt positions that count as a source.
    """
    start, end = region
    if end <= start:
        return torch.zeros(keys.shape, dtype=torch.bool)
    inside = (keys >= start) & (keys < end)
    attended = prompt_classes[keys.clamp(0, prompt_classes.numel() - 1)]  # (R, L, H)
    return inside & (attended == answer_classes.view(-1, 1, 1))


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
