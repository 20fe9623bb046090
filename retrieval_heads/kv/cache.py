"""Head-wise KV storage: full KV for chosen KV heads, sink + recent window for the rest; shared cache machinery.

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

What a layer hands to attention: a layer that splits its KV heads returns a ``GroupedKV`` (groups of KV
heads, each with its keys, values and visibility rule) instead of two tensors; ``attention.py`` runs the
model's own kernel once per group. A layer whose KV heads all hold every position returns plain tensors,
which go to the model's own attention function untouched, so an all-full cache reproduces
``DynamicCache`` exactly. ``compressed.py`` stores the other kind of head-split layer (each KV head its own
kept positions); both share ``HeadSplitLayer`` and ``TrackedCache`` from here.

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

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from transformers.cache_utils import CacheLayerMixin, DynamicCache, DynamicLayer

from .policy import DEFAULT_SINK, DEFAULT_WINDOW

PREFILL_MODES = ("lambda", "chunk", "full")

# ``visible(layer_mask) -> mask``: which of a group's keys each query sees, from the mask the model built for
# absolute positions ``[0, T + q)``; returns a bool (B|1, 1, Q, n) mask (True = visible) or None (all visible).
Visibility = Callable[[torch.Tensor | None], torch.Tensor | None]


@dataclass
class KVGroup:
    """KV heads that attend alike in one forward pass.

    Attributes:
        heads: (G,) int64 KV-head indices, ascending.
        keys, values: (B, G, n, D) their cached + new positions.
        visible: the group's mask rule (see ``Visibility``); None = the layer's mask as is (the group holds
            every position ``[0, T + q)``).
    """

    heads: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    visible: Visibility | None = None


@dataclass
class GroupedKV:
    """What a head-split layer hands to attention for one forward pass, as both ``key`` and ``value``."""

    groups: list[KVGroup]


def streaming_positions(total: int, sink: int, window: int) -> torch.Tensor:
    """(n,) absolute positions a streaming head keeps after ``total`` tokens: sinks, then the recent window."""
    if total <= sink + window:
        return torch.arange(total)
    return torch.cat([torch.arange(sink), torch.arange(total - window, total)])


class HeadSplitLayer(CacheLayerMixin):
    """A global attention layer whose KV heads are stored apart: bookkeeping shared by both kinds.

    Subclasses name their tensor attributes in ``_tensors()`` and implement ``update``/``load``.
    """

    is_sliding = False
    is_croppable = False
    is_compileable = False

    def __init__(self, num_kv_heads: int):
        super().__init__()
        self.num_kv_heads = num_kv_heads
        self.cumulative_length = 0
        self.decoding: bool | None = None  # set by the driver (see ``TrackedCache.decoding``)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def stored(self) -> list[torch.Tensor]:
        """Every key/value tensor the layer holds."""
        raise NotImplementedError

    def held(self) -> list[torch.Tensor]:
        """Every tensor the layer holds: ``stored()`` and the index tensors that say whose keys they are."""
        raise NotImplementedError

    def _map(self, fn) -> None:
        """Replace every stored tensor ``t`` by ``fn(t)``."""
        raise NotImplementedError

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The mask covers absolute positions ``[0, T + q)``; groups read their columns from it."""
        return self.cumulative_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1

    def kv_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored())

    def dense_kv_bytes(self) -> int:
        """What a ``DynamicLayer`` would hold for the same tokens: every KV head, every position."""
        if not self.stored():
            return 0
        keys, values = self.stored()[:2]
        per_position = keys.shape[0] * self.num_kv_heads * (keys.shape[-1] + values.shape[-1]) * keys.element_size()
        return per_position * self.cumulative_length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise NotImplementedError("a head-wise KV cache evicts tokens and cannot be rolled back")

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


class HeadwiseLayer(HeadSplitLayer):
    """One global attention layer: full KV for ``full_heads``, sink + window for the other KV heads."""

    _names = ("full_keys", "full_values", "stream_keys", "stream_values")

    def __init__(self, full_heads: Sequence[int], num_kv_heads: int, *, sink: int, window: int,
                 prefill: str = "lambda"):
        super().__init__(num_kv_heads)
        if prefill not in PREFILL_MODES:
            raise ValueError(f"prefill must be one of {PREFILL_MODES}, not {prefill!r}")
        full = sorted({int(h) for h in full_heads})
        if any(not 0 <= h < num_kv_heads for h in full):
            raise ValueError(f"KV head index out of range 0..{num_kv_heads - 1}: {full}")
        if sink < 0 or window < 0:
            raise ValueError("sink and window must be non-negative")
        self.sink, self.window, self.prefill = sink, window, prefill
        self.full_heads = torch.tensor(full, dtype=torch.long)
        self.stream_heads = torch.tensor([h for h in range(num_kv_heads) if h not in full], dtype=torch.long)
        self._evicted = False
        self.full_keys = self.full_values = self.stream_keys = self.stream_values = None

    def __repr__(self):
        return f"HeadwiseLayer(full={self.full_heads.tolist()}, sink={self.sink}, window={self.window})"

    @property
    def dense(self) -> bool:
        """True when every KV head is full: the layer behaves exactly like a ``DynamicLayer``."""
        return self.stream_heads.numel() == 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.full_heads = self.full_heads.to(self.device)
        self.stream_heads = self.stream_heads.to(self.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``key_states``/``value_states`` (B, Hkv, q, D); return what attention needs, then evict."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, q = self.cumulative_length, key_states.shape[-2]
        self.cumulative_length = start + q
        if self.dense:
            self.full_keys = append_tokens(self.full_keys, key_states)
            self.full_values = append_tokens(self.full_values, value_states)
            return self.full_keys, self.full_values
        groups = []
        if self.full_heads.numel():
            self.full_keys = append_tokens(self.full_keys, key_states.index_select(1, self.full_heads))
            self.full_values = append_tokens(self.full_values, value_states.index_select(1, self.full_heads))
            groups.append(KVGroup(self.full_heads, self.full_keys, self.full_values))
        deferred = self.prefill == "full" and not self._evicted
        decoding = q == 1 if self.decoding is None else self.decoding
        if deferred and decoding:  # first decode step: drop what the prefill kept
            self.stream_keys = self._evict(self.stream_keys, start)
            self.stream_values = self._evict(self.stream_values, start)
            self._evicted, deferred = True, False
        keys = append_tokens(self.stream_keys, key_states.index_select(1, self.stream_heads))  # (B, S, n, D)
        values = append_tokens(self.stream_values, value_states.index_select(1, self.stream_heads))
        positions = torch.arange(start) if deferred else streaming_positions(start, self.sink, self.window)
        positions = torch.cat([positions, torch.arange(start, start + q)]).to(self.device)
        prefill = "chunk" if self.prefill == "full" else self.prefill  # "full": every kept key and the chunk so far
        sink, window = self.sink, self.window

        def visible(mask, positions=positions, q=q):
            return streaming_mask(mask, positions, q, sink, window, prefill=prefill)

        groups.append(KVGroup(self.stream_heads, keys, values, visible))
        if deferred:
            self.stream_keys, self.stream_values = keys, values
        else:
            self.stream_keys, self.stream_values = self._evict(keys, start + q), self._evict(values, start + q)
        kv = GroupedKV(groups)
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

    def stored(self) -> list[torch.Tensor]:
        return [t for t in (getattr(self, n) for n in self._names) if t is not None]

    def held(self) -> list[torch.Tensor]:
        return self.stored() + [self.full_heads, self.stream_heads]

    def _map(self, fn) -> None:
        for name in self._names:
            if getattr(self, name) is not None:
                setattr(self, name, fn(getattr(self, name)))

    def reset(self) -> None:
        self.full_keys = self.full_values = self.stream_keys = self.stream_values = None
        self.cumulative_length = 0
        self._evicted = False
        self.is_initialized = False


def append_tokens(stored: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """``stored`` (B, G, n, D) with ``new`` (B, G, q, D) appended along the positions (a copy either way)."""
    if stored is None:  # a contiguous copy, as DynamicLayer's first torch.cat makes
        return new.contiguous()
    return torch.cat([stored, new], dim=-2)


def streaming_mask(mask: torch.Tensor | None, positions: torch.Tensor, q_len: int, sink: int, window: int, *,
                   prefill: str = "lambda") -> torch.Tensor | None:
    """Bool mask (B|1, 1, Q, n) of a streaming group from the layer's full mask and the ``prefill`` rule.

    ``mask`` covers absolute key positions ``[0, T + q)`` (None = plain causal, no padding; bool or
    additive); queries sit at ``[T, T + q)``. Returns None when every kept key is visible to every query
    (decoding).
    """
    end = int(positions[-1]) + 1
    q_pos = torch.arange(end - q_len, end, device=positions.device)[:, None]  # (Q, 1)
    k_pos = positions[None, :]  # (1, n)
    lam = k_pos <= q_pos  # (Q, n); "chunk": every kept key and the chunk so far
    if prefill == "lambda":
        lam = lam & ((k_pos < sink) | (k_pos >= q_pos - window))
    if mask is None:
        return None if bool(lam.all()) else lam[None, None]
    if mask.dtype == torch.bool:
        return mask.index_select(-1, positions) & lam
    return (mask.index_select(-1, positions) == 0) & lam


class TrackedCache(DynamicCache):
    """A ``DynamicCache`` that tracks peak stored bytes and decode steps, and knows the phase it is driven in.

    Base of ``HeadwiseCache``, ``CompressedCache`` and ``StatsDynamicCache``. ``kv_bytes()`` reports the
    key/value bytes stored (what budgets count); ``peak_kv_bytes`` the most bytes held at once after a forward
    pass (``held_bytes``): buffers rather than the views into them, index tensors, and for a copy made from a
    prefilled cache (``_take``) that cache too, which its caller keeps while the copy is built and decoded.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peak_kv_bytes = 0
        self.decode_steps = 0
        self._bytes: dict[int, int] = {}  # bytes held, by layer
        self._source_bytes = 0  # bytes held by the cache this one was copied from (``_take``)
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
            if isinstance(layer, HeadSplitLayer):
                layer.decoding = value

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx == 0 and is_decode_step(self, key_states):
            self.decode_steps += 1
        self._bytes[layer_idx] = layer_held_bytes(self.layers[layer_idx])
        self._note_peak()
        return out

    def _note_peak(self) -> None:
        self.peak_kv_bytes = max(self.peak_kv_bytes, self._source_bytes + sum(self._bytes.values()))

    def kv_bytes(self) -> int:
        return cache_kv_bytes(self)

    def dense_kv_bytes(self) -> int:
        """Bytes a ``DynamicCache`` would hold for the same tokens."""
        return sum(l.dense_kv_bytes() if isinstance(l, HeadSplitLayer) else layer_bytes(l) for l in self.layers)

    def _take(self, prefilled, load: Callable[[int, HeadSplitLayer, torch.Tensor, torch.Tensor], None]) -> None:
        """Fill this (empty) cache from ``prefilled``: ``load(index, layer, keys, values)`` for head-split
        layers, a copy of the recent window for sliding layers. The copy shares no storage with ``prefilled``,
        which stays alive alongside it: ``peak_kv_bytes`` counts both."""
        for index, (mine, theirs) in enumerate(zip(self.layers, prefilled.layers)):
            keys, values = getattr(theirs, "keys", None), getattr(theirs, "values", None)
            if not isinstance(keys, torch.Tensor):
                continue
            if isinstance(mine, HeadSplitLayer):
                load(index, mine, keys, values)
            else:  # a sliding-window layer: the last sliding_window - 1 positions, as it would keep
                mine.lazy_initialization(keys, values)
                keep = min(keys.shape[-2], mine.sliding_window - 1)
                mine.keys, mine.values = keys[:, :, -keep:].clone(), values[:, :, -keep:].clone()
                mine.cumulative_length = theirs.get_seq_length()
            self._bytes[index] = layer_held_bytes(mine)
        self._source_bytes = cache_held_bytes(prefilled)
        self._note_peak()


class HeadwiseCache(TrackedCache):
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

    def __init__(self, config, full, *, sink: int = DEFAULT_SINK, window: int = DEFAULT_WINDOW,
                 prefill: str = "lambda"):
        super().__init__(config=config)
        num_kv = num_kv_heads(config)
        full = np.asarray(full, dtype=bool)
        if full.shape != (len(self.layers), num_kv):
            raise ValueError(f"full must be (layers, kv_heads) = ({len(self.layers)}, {num_kv}), got {full.shape}")
        self.sink, self.window, self.prefill = sink, window, prefill
        for i, layer in enumerate(self.layers):
            if type(layer) is DynamicLayer:  # a global attention layer
                self.layers[i] = HeadwiseLayer(np.flatnonzero(full[i]), num_kv, sink=sink, window=window,
                                              prefill=prefill)

    @classmethod
    def from_prefilled(cls, config, prefilled, full, *, sink: int = DEFAULT_SINK,
                       window: int = DEFAULT_WINDOW) -> "HeadwiseCache":
        """A head-wise copy of ``prefilled`` (a plain cache of T prompt tokens), ready to decode.

        The same state as prefilling with ``prefill="full"`` and evicting at the first decode step: full KV
        heads keep all T positions, streaming heads their sinks and recent window, sliding layers their
        window. ``prefilled`` is left untouched and shares no storage with the copy, so one prefill can
        serve several plans. ``peak_kv_bytes`` counts ``prefilled``'s bytes too (the caller keeps it).
        """
        cache = cls(config, full, sink=sink, window=window, prefill="full")
        cache._take(prefilled, lambda index, layer, keys, values: layer.load(keys, values))
        return cache

    def stream_lengths(self) -> dict[int, int]:
        """Tokens held per streaming head, by layer (only layers with streaming heads)."""
        return {i: l.stream_keys.shape[-2] for i, l in enumerate(self.layers)
                if isinstance(l, HeadwiseLayer) and l.stream_keys is not None}


class StatsDynamicCache(TrackedCache):
    """A plain ``DynamicCache`` that tracks the same numbers as ``HeadwiseCache`` (peak bytes, decode steps)."""

    def dense_kv_bytes(self) -> int:
        return cache_kv_bytes(self)


@contextmanager
def put_back(cache) -> Iterator:
    """Run forward passes on a plain ``cache`` (``DynamicCache`` layers, ``engine.PreallocatedLayer``) and have
    its layers as they were afterwards. A forward pass replaces a layer's tensors or writes past its length,
    never edits what it holds, so shallow copies of the layers are the whole snapshot; other layers (ragged,
    recurrent) are refused with ``ValueError``."""
    from ..core.engine import is_key_value_layer

    odd = sorted({type(layer).__name__ for layer in cache.layers if not is_key_value_layer(layer)})
    if odd:
        raise ValueError(f"putting a cache back needs a plain key/value cache, not one with {', '.join(odd)} layers")
    snapshot = [copy.copy(layer) for layer in cache.layers]
    try:
        yield cache
    finally:
        cache.layers = snapshot


@torch.no_grad()
def latent_kv(model) -> bool:
    """True when the model caches fewer key heads than its KV heads: multi-head latent attention that caches one
    latent per layer, shared by every head and expanded after the cache (DeepSeek-V3, GLM-4 MoE Lite and kin in
    transformers 5.x), so no KV head can keep tokens of its own. Found by a two-token forward pass."""
    if not getattr(model, "_supports_default_dynamic_cache", lambda: True)():
        return False  # a cache type of its own: kv-eval refuses it elsewhere
    cache = DynamicCache(config=model.config)
    ids = torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device)
    model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    heads = num_kv_heads(model.config)
    return any(isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.dim() == 4
               and layer.keys.shape[1] < heads for layer in cache.layers)


def num_kv_heads(config) -> int:
    """KV heads per layer of ``config``'s text model."""
    text = config.get_text_config(decoder=True)
    return getattr(text, "num_key_value_heads", None) or text.num_attention_heads


def is_decode_step(cache, key_states: torch.Tensor) -> bool:
    """Whether ``cache`` is being updated by a decode step (its ``decoding`` flag, else one new token)."""
    flag = getattr(cache, "decoding", None)
    return key_states.shape[-2] == 1 if flag is None else flag


def layer_bytes(layer) -> int:
    """Bytes of the key/value tensors a cache layer stores (any transformers layer or ``HeadSplitLayer``)."""
    if isinstance(layer, HeadSplitLayer):
        return layer.kv_bytes()
    return sum(t.numel() * t.element_size() for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
               if isinstance(t, torch.Tensor))


def cache_kv_bytes(cache) -> int:
    """Bytes of every key/value tensor stored in ``cache`` (``DynamicCache`` or a ``TrackedCache``)."""
    return sum(layer_bytes(layer) for layer in cache.layers)


def held_bytes(tensors) -> int:
    """Bytes of the storage behind ``tensors``, each storage once: a view counts the whole buffer it looks into."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def layer_held_bytes(layer) -> int:
    """Bytes a cache layer holds: what it lists in ``held()`` (head-split layers, ``engine.PreallocatedLayer``:
    buffers, not the views it hands to attention, and index tensors), else its keys and values."""
    tensors = layer.held() if hasattr(layer, "held") else (getattr(layer, "keys", None), getattr(layer, "values", None))
    return held_bytes(t for t in tensors if isinstance(t, torch.Tensor))


def cache_held_bytes(cache) -> int:
    """Bytes every layer of ``cache`` holds (``layer_held_bytes``)."""
    return sum(layer_held_bytes(layer) for layer in cache.layers)


def cache_stats(cache) -> dict:
    """Tokens seen, stored and dense-equivalent bytes, peak bytes and decode steps of a finished cache."""
    return {
        "tokens": cache.get_seq_length(),
        "kv_bytes": cache.kv_bytes(),
        "dense_kv_bytes": cache.dense_kv_bytes(),
        "peak_kv_bytes": cache.peak_kv_bytes,
        "decode_steps": cache.decode_steps,
    }
