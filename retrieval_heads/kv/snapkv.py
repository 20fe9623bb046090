"""SnapKV's evidence: the attention of an observation window over the earlier keys, and the tokens it selects.

SnapKV (Li et al. 2024) keeps, per KV head, the earlier tokens the last ``w`` prompt tokens (the
*observation window*) attend to most. ``capture_window(model, window)`` registers an attention wrapper
(``hooks.register_wrapper``: it wraps the model's own function, whatever it is, and never changes its
output) that, while armed for a prefill of ``total`` tokens, computes for every global attention layer
the attention weights of the window's query rows, as the model computes them (``q.k^T * scale``,
soft-cap, position bias, softmax; attention sinks in the denominator), and sums them over the rows.
Prefill chunks are accumulated: a window that spans two chunks is seen in both. ``Observed`` then holds,
per layer, the sum averaged over the query heads of each KV head's group and max-pooled along the keys
(kernel 7, SnapKV's default), and ``select_positions`` picks a head's tokens: the first ``sink`` tokens,
the observation window itself, and the top-scoring tokens in between.

The window's rows are located by key length: in a global layer of a plain (or preallocated) cache the
keys are positions ``[0, K)`` and the ``Q`` queries of a call are ``[K - Q, K)``. Sliding-window layers are
skipped (no plan touches them).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .policy import DEFAULT_OBS_WINDOW, EPS, KvPlan

POOL_KERNEL = 7  # SnapKV's default max-pooling along keys


@dataclass
class Observed:
    """SnapKV scores of one prefill of ``total`` tokens whose last ``window`` tokens were observed.

    ``scores[layer]``: (Hkv, total - window) float32, pooled per KV head over the keys before the window.
    """

    total: int
    window: int
    scores: dict[int, torch.Tensor]

    def followed(self, follow: int) -> "Observed":
        """These scores with each token scoring as high as the best of the ``follow`` tokens before it
        (``follow_scores``); ``self`` when ``follow`` is 0."""
        if follow <= 0:
            return self
        return Observed(self.total, self.window, {layer: follow_scores(s, follow) for layer, s in self.scores.items()})

    def shared_from(self, heads, combine: str = "mean") -> "Observed":
        """Every KV head ranked by the same scores: those of ``heads`` ((layer, kv head) pairs), each divided by
        its mean over the tokens (attention weights differ in scale from head to head), combined by ``combine``
        (``mean`` or ``max``). A head then keeps the tokens the ``heads`` rank high, whatever it attends to."""
        if not heads:
            raise ValueError("no KV heads to share scores from")
        normal = torch.stack([self.scores[layer][head] / self.scores[layer][head].mean().clamp_min(1e-12)
                              for layer, head in heads])  # (len(heads), total - window)
        shared = normal.mean(0) if combine == "mean" else normal.amax(0)
        return Observed(self.total, self.window, {layer: shared.expand_as(s).clone() for layer, s in self.scores.items()})


@dataclass
class ObservationWindow:
    """State of ``capture_window``: what to observe, and what the attention calls of one prefill left.

    ``arm(total)`` before a prefill of ``total`` tokens (only the chunks holding the last ``window``
    tokens need to pass under the wrapper), ``take(num_kv_heads)`` after it.
    """

    window: int = DEFAULT_OBS_WINDOW
    total: int | None = None
    sums: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, H, total) float32
    rows: dict[int, int] = field(default_factory=dict)  # layer -> window rows seen

    def arm(self, total: int) -> None:
        if total < 1:
            raise ValueError("nothing to observe in an empty prefill")
        self.total = total
        self.sums.clear()
        self.rows.clear()

    def observe(self, module, query: torch.Tensor, key: torch.Tensor, mask, scaling, kwargs: dict) -> None:
        """Add one attention call's window rows: query (B, H, Q, D), key (B, Hkv, K, D)."""
        layer = getattr(module, "layer_idx", None)
        if self.total is None or layer is None or kwargs.get("sliding_window"):
            return
        k_len, q_len = key.shape[2], query.shape[2]
        if k_len > self.total:
            raise RuntimeError(f"layer {layer} holds {k_len} keys, more than the {self.total} armed for")
        window = min(self.window, self.total)
        rows = k_len - max(k_len - q_len, self.total - window)  # the window's rows are a suffix of the chunk
        if rows <= 0:
            return
        weights = attention_weights(query, key, mask, scaling, kwargs, rows)
        found = self.sums.get(layer)
        if found is None:
            found = self.sums[layer] = weights.new_zeros(weights.shape[0], weights.shape[1], self.total)
        found[..., :k_len] += weights.sum(-2)
        self.rows[layer] = self.rows.get(layer, 0) + rows

    def mass_on(self, start: int, end: int) -> dict[int, torch.Tensor]:
        """Per layer, (H,) float32: the attention weight each query head's window rows put on keys
        [start, end), averaged over the rows (batch row 0); disarms. For ``lookup.needle_attention``."""
        self._check_complete()
        window = min(self.window, self.total)
        mass = {layer: sums[0, :, start:end].sum(-1) / window for layer, sums in self.sums.items()}
        self.disarm()
        return mass

    def disarm(self) -> None:
        """Forget the armed prefill and whatever it left."""
        self.total = None
        self.sums.clear()
        self.rows.clear()

    def _check_complete(self) -> None:
        if self.total is None:
            raise RuntimeError("ObservationWindow used without arm()")
        window = min(self.window, self.total)
        incomplete = [layer for layer, n in self.rows.items() if n != window]
        if incomplete or not self.sums:
            raise RuntimeError(f"the observation window was not seen whole (layers {incomplete or 'none'}): "
                               "were its chunks prefilled under capture_window?")

    def take(self, num_kv_heads: int) -> Observed:
        """The pooled per-KV-head scores of the armed prefill; disarms. Batch row 0 (one prompt)."""
        self._check_complete()
        total, window = self.total, min(self.window, self.total)
        scores = {}
        for layer, sums in self.sums.items():
            b, h, _ = sums.shape
            per_kv = sums[0].reshape(num_kv_heads, h // num_kv_heads, total).mean(1)  # (Hkv, T)
            scores[layer] = pool_scores(per_kv[:, : total - window])
        self.disarm()
        return Observed(total, window, scores)


def attention_weights(query: torch.Tensor, key: torch.Tensor, mask, scaling, kwargs: dict, rows: int) -> torch.Tensor:
    """(B, H, rows, K) float32: the attention weights of the last ``rows`` query rows as the model computes
    them (``hooks.query_logits``: scale, soft-cap, position bias, mask), a learned sink (``s_aux``) in the
    softmax's denominator."""
    from ..core.hooks import query_logits

    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    logits = query_logits(query, key, mask, scale, rows=rows, softcap=kwargs.get("softcap"),
                          position_bias=kwargs.get("position_bias"))  # (B, H, rows, K)
    sinks = kwargs.get("s_aux")
    if sinks is None:
        return logits.softmax(-1)
    column = sinks.float().reshape(1, -1, 1, 1).expand(*logits.shape[:3], 1)  # joins the denominator, then goes
    return torch.cat([logits, column], dim=-1).softmax(-1)[..., :-1]


def pool_scores(scores: torch.Tensor, kernel: int = POOL_KERNEL) -> torch.Tensor:
    """Max-pool (..., P) scores along the last axis (stride 1, same length), as SnapKV smooths its votes."""
    if scores.shape[-1] == 0 or kernel <= 1:
        return scores
    flat = scores.reshape(-1, 1, scores.shape[-1])
    return F.max_pool1d(flat, kernel_size=kernel, stride=1, padding=kernel // 2).reshape(scores.shape)


def follow_scores(scores: torch.Tensor, follow: int) -> torch.Tensor:
    """(..., P) scores where each token scores as high as the best of itself and the ``follow`` tokens before it:
    the tokens after a well-scored one rank with it (a copied value goes on past where attention points)."""
    if scores.shape[-1] == 0 or follow <= 0:
        return scores
    flat = F.pad(scores.reshape(-1, 1, scores.shape[-1]), (follow, 0), value=float("-inf"))
    return F.max_pool1d(flat, kernel_size=follow + 1, stride=1).reshape(scores.shape)


def evidence_counts(plan: KvPlan, observed: Observed) -> np.ndarray:
    """(layers, kv_heads) int: what each KV head of a ``pooled`` plan keeps of a ``total``-token context.

    ``observed``: the selection scores of the prompt (``Observed``: ``total`` tokens, the last ``window`` kept
    whatever they score). Whole heads keep everything. The other heads pool their counts, across the model or
    within each layer (``plan.pool``), and each pool is divided by the evidence: every head keeps its sink and
    window and a floor, ``floor_share`` of its count before pooling, of its own best tokens; the rest of the
    pool goes to the best scores among its heads' remaining tokens, wherever they fall. A pool too small for
    its floors keeps the counts before pooling. Every head's count stays within ``total``.
    """
    total = observed.total
    counts = plan.token_counts(total)
    pooled = [(int(l), h) for l in np.flatnonzero(plan.eligible) for h in range(counts.shape[1])
              if counts[l, h] < total]
    pools = [pooled] if plan.pool == "model" else [[(l, h) for l, h in pooled if l == layer]
                                                   for layer in sorted({l for l, _ in pooled})]
    for heads in pools:
        if heads:
            divided = _divide_pool(observed, [int(counts[l, h]) for l, h in heads], heads, plan)
            for (l, h), count in zip(heads, divided):
                counts[l, h] = count
    return counts


def _divide_pool(observed: Observed, before: list[int], heads: list[tuple[int, int]], plan: KvPlan) -> np.ndarray:
    """The counts of ``heads`` (their counts ``before`` pooling) once the evidence divides their pool."""
    total, window = observed.total, min(observed.window, observed.total)
    sink = min(plan.sink, total - window)
    before = np.asarray(before)
    floors = np.minimum(total, np.maximum(window + sink, np.floor(plan.floor_share * before + EPS))).astype(np.int64)
    left = int(before.sum() - floors.sum())
    if left <= 0:
        return before
    rest, owner = [], []
    for i, (l, h) in enumerate(heads):
        ranked = observed.scores[l][h, sink:].float().sort(descending=True).values
        taken = int(floors[i]) - window - sink  # the floor's own best
        rest.append(ranked[taken:])
        owner.append(np.full(ranked.numel() - taken, i))
    rest_scores, owners = torch.cat(rest), np.concatenate(owner)
    best = torch.topk(rest_scores, min(left, rest_scores.numel())).indices.numpy()
    return floors + np.bincount(owners[best], minlength=len(heads))


def select_positions(scores: torch.Tensor, total: int, count: int, *, sink: int, window: int) -> torch.Tensor:
    """(min(count, total),) ascending positions one KV head keeps of ``total`` tokens.

    ``scores``: (total - window,) pooled scores of the keys before the observation window. Kept: the last
    ``window`` tokens (the observation window), the first ``sink`` tokens, then the ``count - window - sink``
    best-scoring tokens in between; when ``count`` is smaller, the window first, then the sinks.
    """
    if count >= total:
        return torch.arange(total)
    recent = min(window, count)
    sinks = min(sink, count - recent, total - window)
    top = count - recent - sinks
    candidates = scores[sinks: total - window]  # positions [sinks, total - window)
    if top > candidates.numel():  # only when the window was smaller than ``window`` (never for count < total)
        raise ValueError(f"cannot keep {count} of {total} tokens with a window of {window}")
    chosen = torch.topk(candidates.float(), top).indices.cpu() + sinks if top else torch.zeros(0, dtype=torch.long)
    kept = torch.cat([torch.arange(sinks), chosen, torch.arange(total - recent, total)])
    return kept.sort().values


def own_first(own: torch.Tensor, ranking: torch.Tensor, count: int, share: float, *, sink: int,
              window: int) -> torch.Tensor:
    """A copy of ``ranking`` (total - window,) in which one KV head's ``share`` of its ``count`` - sink - window
    chosen tokens are its own best by ``own`` (same shape), ranked above every other token."""
    n = int(share * max(0, count - sink - window))
    candidates = own.shape[-1] - sink
    if n <= 0 or candidates <= 0:
        return ranking
    best = torch.topk(own[sink:].float(), min(n, candidates)).indices + sink
    ranking = ranking.clone()
    ranking[best] += 1e6  # above every other score: weights, or weights over their mean (below the context length)
    return ranking


def observing_attention(observer: ObservationWindow, inner):
    """Wrap the attention function ``inner``: same output; window rows of plain-tensor calls go to ``observer``."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if observer.total is not None and isinstance(key, torch.Tensor):
            observer.observe(module, query, key, attention_mask, scaling, kwargs)
        return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    return attention


@contextmanager
def capture_window(model, observer: ObservationWindow) -> Iterator[ObservationWindow]:
    """Run ``model`` with ``observing_attention`` around its current attention function; always restore it."""
    from ..core.hooks import around_kernel

    try:
        with around_kernel(model, lambda kernel, _: observing_attention(observer, kernel), "retrieval_heads_obs"):
            yield observer
    finally:
        observer.disarm()
