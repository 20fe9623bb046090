"""KVzip's query-agnostic evidence: the attention each context token gets while the model re-reads the context.

SnapKV's observation window is the context's last tokens when the question is not yet known, and they say
little about what a later question will need. KVzip (Kim et al. 2025) asks the model to reproduce the
context instead: on top of the context's cache it prefills a repeat instruction (``REPEAT_PROMPT``) and then
the context's own tokens again, teacher-forced, and scores every (KV head, context token) by the largest
attention weight any query head of the head's group gives that token from any re-reading row. A token the
model must look up to reproduce the context scores high; one it can predict without looking scores low.

The re-reading runs in chunks of ``chunk_size`` context tokens, each chunk after the instruction on the
context's cache alone, and the cache's layers are put back as they were after each chunk
(``cache.put_back``), so the cache a plan compresses is exactly the prefilled one. ``reconstruction_scores``
returns ``snapkv.Observed`` (scores of the tokens before the last ``window``, max-pooled along the keys as
SnapKV smooths its votes), so every token-selection policy (``policy.py``) takes either evidence
(``PolicySettings.selection``: ``window`` or, this module's, ``reread`` and ``reread-chunk``).

What a row's weights are normalised over (``softmax``): ``context``, the model's own softmax over the whole
context and the re-reading rows (``reread``); or ``chunk``, KVzip's: over the context's first ``CHUNK_SINK``
tokens, the chunk being re-read and the re-reading rows only, so a row that looks at its own chunk is not
diluted by the rest of the document (``reread-chunk``, which also re-reads ``CHUNK_SIZE`` tokens a pass and
does not pool, as KVzip). The chunk softmax is the model's weights renormalised over those keys, which is
exactly the softmax of their logits alone (a learned sink's share, where a model has one, leaves the
denominator too).

Cost: the context is prefilled a second time over twice the keys, with the weights of every row computed
beside the model's kernel (``snapkv.attention_weights``); that is the price of compressing once for any
later question. Sliding-window layers are skipped, as no plan touches them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .cache import put_back
from .snapkv import POOL_KERNEL, Observed, attention_weights, observing_attention, pool_scores

REPEAT_PROMPT = "\n\nRepeat the document above exactly.\n"
SOFTMAXES = ("context", "chunk")
CHUNK_SINK = 4  # KVzip's n_sink: the first tokens every chunk softmax keeps in its denominator
CHUNK_SIZE = 2048  # KVzip's chunk_size: context tokens re-read a pass


@dataclass
class ReconstructionMaxima:
    """Per global layer, (Hkv, total) float32: the largest weight each context token got from a re-reading row.

    ``total`` (the context's length) is set while re-reading; ``observe`` is ``snapkv.observing_attention``'s
    callback, as ``ObservationWindow.observe`` is. ``chunk``: the context positions [start, end) being re-read,
    set for each pass when ``softmax`` is ``chunk`` (then a row's weights are renormalised over them, the first
    ``CHUNK_SINK`` tokens and the re-reading rows, and only they score).
    """

    total: int | None = None
    maxima: dict[int, torch.Tensor] = field(default_factory=dict)
    softmax: str = "context"
    chunk: tuple[int, int] | None = None

    def observe(self, module, query: torch.Tensor, key: torch.Tensor, mask, scaling, kwargs: dict) -> None:
        """Fold one call's rows in: query (B, H, Q, D), key (B, Hkv, K, D), the context at keys [0, total)."""
        layer = getattr(module, "layer_idx", None)
        if layer is None or kwargs.get("sliding_window"):
            return
        weights = attention_weights(query, key, mask, scaling, kwargs, rows=query.shape[2])[0]  # (H, rows, K)
        if self.softmax == "chunk":
            weights = chunk_softmax(weights, self.total, *self.chunk)
        weights = weights[..., : self.total]
        heads, kv_heads = weights.shape[0], key.shape[1]
        found = weights.reshape(kv_heads, heads // kv_heads, -1, weights.shape[-1]).amax(dim=(1, 2))  # (Hkv, total)
        seen = self.maxima.get(layer)
        self.maxima[layer] = found if seen is None else torch.maximum(seen, found)


def chunk_softmax(weights: torch.Tensor, total: int, start: int, end: int) -> torch.Tensor:
    """(..., K) weights over a ``total``-token context and the re-reading rows after it, renormalised over the
    first ``CHUNK_SINK`` context tokens, the chunk [start, end) and the rows (KVzip's softmax); other keys 0."""
    keep = torch.zeros(weights.shape[-1], dtype=torch.bool, device=weights.device)
    keep[: min(CHUNK_SINK, start)] = True
    keep[start:end] = True
    keep[total:] = True
    kept = weights * keep
    return kept / kept.sum(-1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny)


def repeat_ids(tokenizer) -> list[int]:
    """The repeat instruction's token ids (no special tokens)."""
    return list(tokenizer(REPEAT_PROMPT, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def reconstruction_scores(model, cache, ids: list[int], instruction: list[int], *, window: int,
                          chunk_size: int = 512, pool: int = POOL_KERNEL, softmax: str = "context") -> Observed:
    """KVzip scores of the context ``ids`` whose keys and values a plain ``cache`` holds (and holds again after).

    ``instruction``: the repeat prompt's ids (``repeat_ids``). ``window``: the context's last tokens, kept by
    every plan whatever they score (``Observed.window``). ``softmax``: ``SOFTMAXES`` (module docstring). Returns
    per global layer (Hkv, len(ids) - window) scores, max-pooled along the keys with kernel ``pool`` (1: the
    maxima themselves).
    """
    if softmax not in SOFTMAXES:
        raise ValueError(f"softmax must be one of {', '.join(SOFTMAXES)}, not {softmax!r}")
    from ..core.hooks import around_kernel

    total = len(ids)
    if total < 1:
        raise ValueError("nothing to score in an empty context")
    device = next(model.parameters()).device
    found = ReconstructionMaxima(softmax=softmax)
    with around_kernel(model, lambda kernel, _: observing_attention(found, kernel), "retrieval_heads_rec"):
        found.total = total
        try:
            for start in range(0, total, chunk_size):
                found.chunk = (start, min(start + chunk_size, total))
                part = torch.tensor([instruction + ids[start:start + chunk_size]], device=device)  # (1, I + chunk)
                with put_back(cache):
                    model(input_ids=part, cache=cache, use_cache=True, logits_to_keep=1)
        finally:
            found.total, found.chunk = None, None
    window = min(window, total)
    return Observed(total, window, {layer: pool_scores(m[:, : total - window], pool) for layer, m in found.maxima.items()})
