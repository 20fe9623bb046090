"""Retrieval-head-aware KV cache: full KV for chosen KV heads, sink + recent window for the rest.

The paper finds that only retrieval heads need the whole context. ``HeadwiseCache`` keeps, per global
attention layer, one key/value tensor for the *full* KV heads and one for the *streaming* KV heads:

    full    (B, F, T, D)                       every token seen
    stream  (B, S, min(T, sink + window), D)   the first ``sink`` tokens and the ``window`` most recent

so the bytes actually allocated shrink with the streaming heads (``kv_bytes`` sums
``numel * element_size`` over the stored tensors). The layer evicts after every forward pass (each
prefill chunk, each decode step), so peak KV memory stays bounded during chunked prefill too; only the
chunk in flight (``q`` extra keys per streaming head) exceeds sink + window.

What a streaming head sees (``prefill="lambda"``, the default): the query at absolute position ``i``
attends the keys ``j <= i`` with ``j < sink`` or ``j >= i - window`` (DuoAttention's Lambda-shaped
mask), in prefill and decode alike. Its output then does not depend on the prefill chunk size, and it
never sees during prefill what it could not see while decoding. ``prefill="chunk"`` is
StreamingLLM-style chunked prefill instead: sink + window + the whole current chunk, causally (more
context while prefilling, results depend on the chunk size; decoding is the same). ``prefill="full"``
is RazorAttention-style (``kv-eval``'s default, the mode that keeps accuracy on smollm2-135m):
streaming heads see everything while prefilling and are cut to sink + window at the first
single-token forward, so prefill saves no memory (peak = a full cache), decoding does. RoPE is applied
before caching, so kept keys keep their rotation; the positions of the kept keys are implicit:
``[0, sink)`` and ``[T - window, T)``.

Attention: a layer with streaming heads hands the attention function a ``HeadwiseKV`` instead of two
tensors. The function installed by ``HeadwiseAttention`` runs the model's own kernel (the one it was
loaded with, ``hooks.model_kernel``) once for the full group and once for the streaming group and
scatters the outputs back to head order; with grouped-query attention query head ``h`` follows KV
head ``h // (H // Hkv)``. Layers without streaming heads return plain tensors, which go to the model's
own attention function untouched, so an all-full cache reproduces ``DynamicCache`` exactly.

Sliding-window layers (Gemma 2/3 local layers) are already windowed: they keep transformers'
``DynamicSlidingWindowLayer`` and any plan applies to global (``full_attention``) layers only.

Limits: no ``crop`` (evicted tokens cannot come back, so no assisted decoding or prefix reuse); with a
left-padded batch the sinks of a short row fall on its (masked) pad tokens. The head ablation of
``hooks.attention_control`` applies to plain layers only, and its top-1 probe records nothing for a
head-wise layer (``take_top1`` fills it with ``hooks.NO_KEY``), so run head-wise caches with
``probe=False`` (as ``run_niah`` does).
A layer holding both groups runs two attention calls instead of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers.cache_utils import CacheLayerMixin, DynamicCache, DynamicLayer

PREFILL_MODES = ("lambda", "chunk", "full")


@dataclass
class HeadwiseKV:
    """What a head-wise layer hands to attention for one forward pass (cached + new tokens).

    Attributes:
        full_keys, full_values: (B, F, T + q, D) the full KV heads, every position.
        stream_keys, stream_values: (B, S, n, D) the streaming KV heads, kept + new positions.
        stream_positions: (n,) int64 absolute positions of the streaming keys, ascending.
        full_heads, stream_heads: (F,), (S,) int64 KV-head indices of each group.
        sink, window, prefill: the streaming heads' shape and prefill mask (see the module docstring).
    """

    full_keys: torch.Tensor | None
    full_values: torch.Tensor | None
    stream_keys: torch.Tensor
    stream_values: torch.Tensor
    stream_positions: torch.Tensor
    full_heads: torch.Tensor
    stream_heads: torch.Tensor
    sink: int
    window: int
    prefill: str = "lambda"


def kept_positions(total: int, sink: int, window: int) -> torch.Tensor:
    """(n,) absolute positions a streaming head keeps after ``total`` tokens: sinks, then the recent window."""
    if total <= sink + window:
        return torch.arange(total)
    return torch.cat([torch.arange(sink), torch.arange(total - window, total)])


class HeadwiseLayer(CacheLayerMixin):
    """One global attention layer: full KV for ``full_heads``, sink + window for the other KV heads."""

    is_sliding = False
    is_croppable = False
    is_compileable = False

    def __init__(self, full_heads: Sequence[int], num_kv_heads: int, *, sink: int, window: int,
                 prefill: str = "lambda"):
        super().__init__()
        if prefill not in PREFILL_MODES:
            raise ValueError(f"prefill must be one of {PREFILL_MODES}, not {prefill!r}")
        full = sorted({int(h) for h in full_heads})
        if any(not 0 <= h < num_kv_heads for h in full):
            raise ValueError(f"KV head index out of range 0..{num_kv_heads - 1}: {full}")
        if sink < 0 or window < 0:
            raise ValueError("sink and window must be non-negative")
        self.num_kv_heads, self.sink, self.window, self.prefill = num_kv_heads, sink, window, prefill
        self.full_heads = torch.tensor(full, dtype=torch.long)
        self.stream_heads = torch.tensor([h for h in range(num_kv_heads) if h not in full], dtype=torch.long)
        self.cumulative_length = 0
        self._evicted = False
        self.decoding: bool | None = None  # set by the driver (see ``HeadwiseCache.decoding``)
        self.full_keys = self.full_values = self.stream_keys = self.stream_values = None

    def __repr__(self):
        return f"HeadwiseLayer(full={self.full_heads.tolist()}, sink={self.sink}, window={self.window})"

    @property
    def dense(self) -> bool:
        """True when every KV head is full: the layer behaves exactly like a ``DynamicLayer``."""
        return self.stream_heads.numel() == 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.full_heads = self.full_heads.to(self.device)
        self.stream_heads = self.stream_heads.to(self.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``key_states``/``value_states`` (B, Hkv, q, D); return what attention needs, then evict."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, q = self.cumulative_length, key_states.shape[-2]
        self.cumulative_length = start + q
        if self.dense:
            self.full_keys = _append(self.full_keys, key_states)
            self.full_values = _append(self.full_values, value_states)
            return self.full_keys, self.full_values
        if self.full_heads.numel():
            self.full_keys = _append(self.full_keys, key_states.index_select(1, self.full_heads))
            self.full_values = _append(self.full_values, value_states.index_select(1, self.full_heads))
        deferred = self.prefill == "full" and not self._evicted
        decoding = q == 1 if self.decoding is None else self.decoding
        if deferred and decoding:  # first decode step: drop what the prefill kept
            self.stream_keys = self._evict(self.stream_keys, start)
            self.stream_values = self._evict(self.stream_values, start)
            self._evicted, deferred = True, False
        keys = _append(self.stream_keys, key_states.index_select(1, self.stream_heads))  # (B, S, n, D)
        values = _append(self.stream_values, value_states.index_select(1, self.stream_heads))
        positions = torch.arange(start) if deferred else kept_positions(start, self.sink, self.window)
        positions = torch.cat([positions, torch.arange(start, start + q)]).to(self.device)
        kv = HeadwiseKV(self.full_keys, self.full_values, keys, values, positions, self.full_heads,
                        self.stream_heads, self.sink, self.window, self.prefill)
        if deferred:
            self.stream_keys, self.stream_values = keys, values
        else:
            self.stream_keys, self.stream_values = self._evict(keys, start + q), self._evict(values, start + q)
        return kv, kv

    def load(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Take a prefilled past (B, Hkv, T, D), as if prefilled with ``prefill="full"`` and then evicted:
        copies of the full heads' positions, the streaming heads' sinks and recent window."""
        self.lazy_initialization(keys, values)
        total = keys.shape[-2]
        self.cumulative_length, self._evicted = total, True
        if self.dense:
            self.full_keys, self.full_values = keys.clone(), values.clone()
            return
        if self.full_heads.numel():
            self.full_keys = keys.index_select(1, self.full_heads)
            self.full_values = values.index_select(1, self.full_heads)
        self.stream_keys = self._evict(keys.index_select(1, self.stream_heads), total)
        self.stream_values = self._evict(values.index_select(1, self.stream_heads), total)

    def _evict(self, states: torch.Tensor, total: int) -> torch.Tensor:
        """Keep sinks + the last ``window`` of ``total`` positions in a fresh tensor (freeing the chunk's storage)."""
        if states is None or total <= self.sink + self.window:
            return states
        n = states.shape[-2]
        return torch.cat([states.narrow(-2, 0, self.sink), states.narrow(-2, n - self.window, self.window)], dim=-2)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The mask covers absolute positions ``[0, T + q)``; streaming heads read their columns from it."""
        return self.cumulative_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1

    def stored(self) -> list[torch.Tensor]:
        return [t for t in (self.full_keys, self.full_values, self.stream_keys, self.stream_values) if t is not None]

    def kv_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored())

    def dense_kv_bytes(self) -> int:
        """What a ``DynamicLayer`` would hold for the same tokens: every KV head, every position."""
        if not self.stored():
            return 0
        t = self.stored()[0]
        return 2 * t.shape[0] * self.num_kv_heads * self.cumulative_length * t.shape[-1] * t.element_size()

    def reset(self) -> None:
        self.full_keys = self.full_values = self.stream_keys = self.stream_values = None
        self.cumulative_length = 0
        self._evicted = False
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise NotImplementedError("a head-wise KV cache evicts tokens and cannot be rolled back")

    def _map(self, fn) -> None:
        for name in ("full_keys", "full_values", "stream_keys", "stream_values"):
            if getattr(self, name) is not None:
                setattr(self, name, fn(getattr(self, name)))

    def offload(self):
        self._map(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self):
        if self.is_initialized:
            self._map(lambda t: t.to(self.device, non_blocking=True))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices, ...])


def _append(stored: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    if stored is None:  # a contiguous copy, as DynamicLayer's first torch.cat makes
        return new.contiguous()
    return torch.cat([stored, new], dim=-2)


class HeadwiseCache(DynamicCache):
    """A ``DynamicCache`` whose global layers keep full KV only for the KV heads in ``full``.

    Args:
        config: the model's config (its text config gives layer types and KV heads).
        full: (layers, kv_heads) bool, True = keep the full cache for this KV head. Rows of sliding
            layers are ignored (those layers stay ``DynamicSlidingWindowLayer``).
        sink, window: what the other KV heads keep (see the module docstring).
        prefill: what streaming heads see while prefilling: ``lambda`` (default), ``chunk`` or ``full``.

    Use it under ``HeadwiseAttention(model)`` with ``model(...)``, ``model.generate(cache=...)`` or the
    ``Engine`` (``cache_factory``). ``kv_bytes()`` and ``peak_kv_bytes`` report stored bytes.
    """

    def __init__(self, config, full, *, sink: int = 4, window: int = 64, prefill: str = "lambda"):
        super().__init__(config=config)
        text = config.get_text_config(decoder=True)
        num_kv = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        full = np.asarray(full, dtype=bool)
        if full.shape != (len(self.layers), num_kv):
            raise ValueError(f"full must be (layers, kv_heads) = ({len(self.layers)}, {num_kv}), got {full.shape}")
        self.sink, self.window, self.prefill = sink, window, prefill
        for i, layer in enumerate(self.layers):
            if type(layer) is DynamicLayer:  # a global attention layer
                self.layers[i] = HeadwiseLayer(np.flatnonzero(full[i]), num_kv, sink=sink, window=window,
                                              prefill=prefill)
        self.peak_kv_bytes = 0
        self.decode_steps = 0
        self._bytes = [0] * len(self.layers)
        self._decoding: bool | None = None

    @property
    def decoding(self) -> bool | None:
        """Phase of the next forward pass, set by whoever drives the model (the ``Engine``): True while
        generating, False while prefilling. None infers it from the query length (1 = decoding), which
        mistakes a one-token last prefill chunk for the first decode step."""
        return self._decoding

    @decoding.setter
    def decoding(self, value: bool | None) -> None:
        self._decoding = value
        for layer in self.layers:
            if isinstance(layer, HeadwiseLayer):
                layer.decoding = value

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx == 0 and is_decode_step(self, key_states):
            self.decode_steps += 1
        self._bytes[layer_idx] = layer_bytes(self.layers[layer_idx])
        self.peak_kv_bytes = max(self.peak_kv_bytes, sum(self._bytes))
        return out

    @classmethod
    def from_prefilled(cls, config, prefilled, full, *, sink: int = 4, window: int = 64) -> "HeadwiseCache":
        """A head-wise copy of ``prefilled`` (a plain cache of T prompt tokens), ready to decode.

        The same state as prefilling with ``prefill="full"`` and evicting at the first decode step: full KV
        heads keep all T positions, streaming heads their sinks and recent window, sliding layers their
        window. ``prefilled`` is left untouched and shares no storage with the copy, so one prefill can
        serve several plans. ``peak_kv_bytes`` starts at ``prefilled``'s bytes (the prefill held them).
        """
        cache = cls(config, full, sink=sink, window=window, prefill="full")
        for index, (mine, theirs) in enumerate(zip(cache.layers, prefilled.layers)):
            keys, values = getattr(theirs, "keys", None), getattr(theirs, "values", None)
            if not isinstance(keys, torch.Tensor):
                continue
            if isinstance(mine, HeadwiseLayer):
                mine.load(keys, values)
            else:  # a sliding-window layer: the last sliding_window - 1 positions, as it would keep
                mine.lazy_initialization(keys, values)
                keep = min(keys.shape[-2], mine.sliding_window - 1)
                mine.keys, mine.values = keys[:, :, -keep:].clone(), values[:, :, -keep:].clone()
                mine.cumulative_length = theirs.get_seq_length()
            cache._bytes[index] = layer_bytes(mine)
        cache.peak_kv_bytes = max(cache_kv_bytes(prefilled), sum(cache._bytes))
        return cache

    def kv_bytes(self) -> int:
        return cache_kv_bytes(self)

    def dense_kv_bytes(self) -> int:
        """Bytes a ``DynamicCache`` would hold for the same tokens."""
        return sum(l.dense_kv_bytes() if isinstance(l, HeadwiseLayer) else layer_bytes(l) for l in self.layers)

    def stream_lengths(self) -> dict[int, int]:
        """Tokens held per streaming head, by layer (only layers with streaming heads)."""
        return {i: l.stream_keys.shape[-2] for i, l in enumerate(self.layers)
                if isinstance(l, HeadwiseLayer) and l.stream_keys is not None}


def is_decode_step(cache, key_states: torch.Tensor) -> bool:
    """Whether ``cache`` is being updated by a decode step (its ``decoding`` flag, else one new token)."""
    flag = getattr(cache, "decoding", None)
    return key_states.shape[-2] == 1 if flag is None else flag


def layer_bytes(layer) -> int:
    """Bytes of the key/value tensors a cache layer stores (any transformers layer or ``HeadwiseLayer``)."""
    if isinstance(layer, HeadwiseLayer):
        return layer.kv_bytes()
    return sum(t.numel() * t.element_size() for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
               if isinstance(t, torch.Tensor))


def cache_kv_bytes(cache) -> int:
    """Bytes of every key/value tensor stored in ``cache`` (``DynamicCache`` or ``HeadwiseCache``)."""
    return sum(layer_bytes(layer) for layer in cache.layers)


# ---- attention -------------------------------------------------------------------------------------


def _group_queries(kv_heads: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Query-head indices reading ``kv_heads``: each KV head's ``n_rep`` query heads, in order."""
    return (kv_heads[:, None] * n_rep + torch.arange(n_rep, device=kv_heads.device)).flatten()


def streaming_mask(mask: torch.Tensor | None, positions: torch.Tensor, q_len: int, sink: int, window: int,
                   *, additive: bool, dtype: torch.dtype, prefill: str = "lambda") -> torch.Tensor | None:
    """Mask of the streaming group: (B|1, 1, Q, n) from the layer's full mask and the ``prefill`` rule.

    ``mask`` covers absolute key positions ``[0, T + q)`` (None = plain causal, no padding); queries
    sit at ``[T, T + q)``. Returns None when every kept key is visible to every query (decoding).
    """
    end = int(positions[-1]) + 1
    q_pos = torch.arange(end - q_len, end, device=positions.device)[:, None]  # (Q, 1)
    k_pos = positions[None, :]  # (1, n)
    lam = k_pos <= q_pos  # (Q, n); "chunk": every kept key and the chunk so far
    if prefill == "lambda":
        lam = lam & ((k_pos < sink) | (k_pos >= q_pos - window))
    if mask is None:
        if bool(lam.all()):
            return None
        visible = lam[None, None]
    elif mask.dtype == torch.bool:
        visible = mask.index_select(-1, positions) & lam
    else:
        visible = (mask.index_select(-1, positions) == 0) & lam
    return _as_additive(visible, dtype) if additive else visible


def headwise_attention_forward(inner, kernel_name: str):
    """Wrap the attention function ``inner``: plain tensors go to it; a ``HeadwiseKV`` runs per group.

    Each group runs on the model's own kernel for ``kernel_name`` (``hooks.model_kernel``: SDPA, the
    modeling file's eager function with its soft-caps and sinks, FlashAttention, ...).
    """
    from .hooks import model_kernel

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if not isinstance(key, HeadwiseKV):
            return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        # query: (B, H, Q, D); key.full_*: (B, F, K, D); key.stream_*: (B, S, n, D)
        b, h, q_len, d = query.shape
        n_rep = module.num_key_value_groups
        kernel = model_kernel(module, kernel_name)
        additive = kernel_name == "eager" or (attention_mask is not None and attention_mask.dtype != torch.bool)
        kwargs.pop("sliding_window", None)  # global layer
        sinks = kwargs.pop("s_aux", None)  # (H,): per query head, split with the heads
        out = query.new_empty(b, q_len, h, value.stream_values.shape[-1])  # (B, Q, H, D)

        def run(idx, keys, values, mask):
            extra = {"s_aux": sinks.index_select(0, idx)} if sinks is not None else {}
            o, _ = kernel(module, query.index_select(1, idx), keys, values, mask, scaling=scaling, dropout=dropout,
                          **kwargs, **extra)
            out.index_copy_(2, idx, o)

        if key.full_heads.numel():
            mask = _as_additive(attention_mask, query.dtype) if additive else attention_mask
            run(_group_queries(key.full_heads, n_rep), key.full_keys, key.full_values, mask)
        mask = streaming_mask(attention_mask, key.stream_positions, q_len, key.sink, key.window,
                              additive=additive, dtype=query.dtype, prefill=key.prefill)
        run(_group_queries(key.stream_heads, n_rep), key.stream_keys, key.stream_values, mask)
        return out, None

    return attention


def _as_additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)


class HeadwiseAttention:
    """Route ``model``'s attention through ``headwise_attention_forward``; restore the model on exit.

    ``install()`` wraps whatever attention function the model uses *now* (SDPA, eager, or another
    registered function such as ``hooks.attention_control``'s) and registers the wrapper, plus the
    wrapped function's mask function, under a fresh name. It is idempotent, so a cache factory can
    call it before every prompt: ``run_niah`` switches the model to its own attention function inside,
    and the factory then wraps that one (see ``HeadwiseCacheFactory``). Exit restores the attention
    implementation the model had on entry and unregisters every name this object added.

        with HeadwiseAttention(model):
            out = model.generate(ids, cache=HeadwiseCache(model.config, full, sink=4, window=64))
    """

    def __init__(self, model):
        self.model = model
        self._names: list[str] = []
        self._original: str | None = None

    def __enter__(self) -> "HeadwiseAttention":
        self._original = self.model.config._attn_implementation
        self.install()
        return self

    def install(self) -> None:
        from .hooks import model_kernel, register_wrapper

        current = self.model.config._attn_implementation
        if current in self._names:
            return
        if self._original is None:
            raise RuntimeError("HeadwiseAttention.install() runs inside its `with` block")
        kernel_name = self._original

        def wrapper(implementation: str):
            def inner(module, *args, **kwargs):
                return model_kernel(module, implementation)(module, *args, **kwargs)
            return headwise_attention_forward(inner, kernel_name)

        name = register_wrapper(self.model, wrapper, "retrieval_heads_kv")
        self._names.append(name)
        self.model.set_attn_implementation(name)

    def __exit__(self, *exc) -> None:
        from .hooks import unregister

        try:
            if self._original is not None:
                self.model.set_attn_implementation(self._original)
        finally:
            for name in self._names:
                unregister(name)
            self._names.clear()
            self._original = None


class HeadwiseCacheFactory:
    """``() -> cache`` for the ``Engine``/``run_niah``: a fresh cache per prompt, with the wrapper installed.

    Args:
        attention: an entered ``HeadwiseAttention`` of the model.
        full: (layers, kv_heads) bool, or None for a plain ``DynamicCache`` (the full-cache baseline).
        on_done: called with each finished cache's stats (``cache_stats``) when the next one is made,
            and by ``close()`` for the last one.
    """

    def __init__(self, attention: HeadwiseAttention, full=None, *, sink: int = 4, window: int = 64,
                 prefill: str = "lambda", on_done=None):
        self.attention, self.full, self.on_done = attention, full, on_done
        self.sink, self.window, self.prefill = sink, window, prefill
        self._last = None

    def __call__(self):
        self.close()
        self.attention.install()
        model = self.attention.model
        if self.full is None:
            self._last = StatsDynamicCache(config=model.config)
        else:
            self._last = HeadwiseCache(model.config, self.full, sink=self.sink, window=self.window,
                                       prefill=self.prefill)
        return self._last

    def close(self) -> None:
        """Report the last cache's stats and drop it."""
        if self._last is not None and self.on_done is not None:
            self.on_done(cache_stats(self._last))
        self._last = None


class StatsDynamicCache(DynamicCache):
    """A plain ``DynamicCache`` that tracks the same numbers as ``HeadwiseCache`` (peak bytes, decode steps)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peak_kv_bytes = 0
        self.decode_steps = 0
        self.decoding: bool | None = None  # as ``HeadwiseCache.decoding``
        self._bytes: dict[int, int] = {}

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx == 0 and is_decode_step(self, key_states):
            self.decode_steps += 1
        self._bytes[layer_idx] = layer_bytes(self.layers[layer_idx])
        self.peak_kv_bytes = max(self.peak_kv_bytes, sum(self._bytes.values()))
        return out

    def kv_bytes(self) -> int:
        return cache_kv_bytes(self)

    def dense_kv_bytes(self) -> int:
        return cache_kv_bytes(self)


def cache_stats(cache) -> dict:
    """Tokens seen, stored and dense-equivalent bytes, peak bytes and decode steps of a finished cache."""
    return {
        "tokens": cache.get_seq_length(),
        "kv_bytes": cache.kv_bytes(),
        "dense_kv_bytes": cache.dense_kv_bytes(),
        "peak_kv_bytes": cache.peak_kv_bytes,
        "decode_steps": cache.decode_steps,
    }
