"""The decoding engine: chunked prefill with shared-prefix KV reuse, then greedy decoding with the probe on.

Prompts in a sweep share long prefixes (the haystack before the needle). The engine keeps the KV
cache of the previous prompt and keeps its longest common prefix with the next one, rounded down
to whole prefill chunks. Chunks start at absolute multiples of ``chunk_size``, so every cached
token was computed by exactly the same operations (same inputs, same shapes) as in a cold,
one-sample-at-a-time run: reuse changes the work done, never the numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from .hooks import AttentionControl


@dataclass
class Generation:
    """A greedy answer and what every head attended to while producing it.

    Attributes:
        generated_ids: tokens produced, the stop token (newline or EOS) included.
        top1: (steps, layers, heads) int64 absolute position of each head's top-1 key at each step.
    """

    generated_ids: list[int]
    top1: torch.Tensor


@dataclass
class PhaseTimer:
    """Seconds spent per phase and tokens prefilled, accumulated over a sweep."""

    seconds: dict[str, float] = field(default_factory=lambda: {"prefill_s": 0.0, "decode_s": 0.0})
    prefilled_tokens: int = 0
    reused_tokens: int = 0


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reusable_length(cached_ids: list[int], ids: list[int], chunk_size: int) -> int:
    """Tokens of ``ids`` the engine keeps from a cache of ``cached_ids``: their common prefix, rounded
    down to whole chunks (so every kept token was computed as in a cold run)."""
    return common_prefix_length(cached_ids, ids) // chunk_size * chunk_size


def reuse_blocker(cache) -> str | None:
    """Why a prefix of ``cache`` cannot be kept and extended, or None when it can.

    Key/value layers can be cut back to any position; recurrent state (linear attention, Mamba,
    convolutions of hybrid models) summarises every token seen and cannot.
    """
    for layer in cache.layers:
        if not is_key_value_layer(layer):
            return f"{type(layer).__name__} holds recurrent state, which cannot be cut back to a shared prefix"
    return None


def is_key_value_layer(layer) -> bool:
    """True for plain key/value cache layers (dynamic, sliding, preallocated): a forward pass replaces their
    tensors or writes past their length, so they can be cut back or put back (``kv.cache.put_back``)."""
    return type(layer) in (PreallocatedLayer, DynamicLayer, DynamicSlidingWindowLayer)


def truncate_cache(cache, length: int) -> None:
    """Drop every cached position >= ``length`` in every layer (sliding layers must record their past)."""
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        if isinstance(layer, PreallocatedLayer):
            layer.crop(length)
            continue
        layer.keys = layer.keys[:, :, :length, :]
        layer.values = layer.values[:, :, :length, :]
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = length


def new_cache(model, *, keep_past: bool):
    """An empty cache for ``model``: full-attention layers preallocate (``PreallocatedLayer``), and
    sliding-window layers keep their past when ``keep_past``."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    cache.layers = [PreallocatedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    if keep_past:
        for layer in cache.layers:
            if hasattr(layer, "activate_past_recording"):
                layer.activate_past_recording()
    return cache


def builds_own_cache(model) -> bool:
    """True for models that refuse a ``DynamicCache`` and make a cache type of their own (MiniMax)."""
    return not getattr(model, "_supports_default_dynamic_cache", lambda: True)()


def returned_cache(output):
    """The cache a forward pass returned (the one a model made itself when given none)."""
    return getattr(output, "cache", None) or output.past_key_values


def reserve(cache, length: int) -> None:
    """Let the preallocated layers of ``cache`` allocate ``length`` positions when they (re)allocate."""
    for layer in getattr(cache, "layers", ()):  # None: the model makes its own cache on the first chunk
        if isinstance(layer, PreallocatedLayer):
            layer.reserve = max(layer.reserve, length)


class Engine:
    """Greedy generation for NIAH prompts with per-step top-1 probing, reusing shared prefixes.

    Args:
        model: a causal LM running under ``attention_control`` with ``control``.
        stop: ``stop(token_id) -> bool``, True for a newline or EOS token.
        chunk_size: prefill chunk (tokens); bounds activation memory and is the reuse granularity.
        share_prefix: reuse the previous prompt's KV for the common prefix (turned off, with the
            reason in ``reuse_off``, for caches that cannot be cut back: custom or recurrent).
        cache_factory: ``() -> Cache`` for a custom KV cache (e.g. a head-wise compressed one).
        num_heads: width of the recorded top-1 rows (the most query heads of any layer).
    """

    def __init__(self, model, control: AttentionControl, stop, *, chunk_size: int = 512, share_prefix: bool = True,
                 cache_factory=None, num_heads: int | None = None):
        self.model = model
        self.control = control
        self.stop = stop
        self.chunk_size = chunk_size
        self.cache_factory_is_default = cache_factory is None
        own = builds_own_cache(model)
        probe_cache = None if own else new_cache(model, keep_past=False)
        if cache_factory is not None:
            self.reuse_off = "a custom KV cache"
        else:
            self.reuse_off = "the model builds a cache type of its own" if own else reuse_blocker(probe_cache)
        self.share_prefix = share_prefix and self.reuse_off is None
        # batched decoding needs plain full-attention caches (no sliding windows, recurrent state or custom cache)
        self.can_batch = probe_cache is not None and self.cache_factory_is_default and all(
            type(l) is PreallocatedLayer for l in probe_cache.layers)
        self.cache_factory = cache_factory or (lambda: None if own else new_cache(model, keep_past=self.share_prefix))
        self.num_layers = model.config.get_text_config().num_hidden_layers
        self.num_heads = num_heads
        self.timer = PhaseTimer()
        self._cache = None
        self._cached_ids: list[int] = []
        self._cache_tag = None
        self._batch_buffers: list[tuple[torch.Tensor, torch.Tensor]] = []  # reused by every decoding batch

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, *, probe: bool = True, cache_tag=None) -> Generation:
        """Prefill ``prompt_ids[:-1]``, then decode from the last prompt token.

        ``probe`` records every head's top-1 key at each step. ``cache_tag`` names anything besides the
        tokens that changes the prefill (e.g. heads ablated during prefill): a new tag drops the cache.
        """
        if cache_tag != self._cache_tag:
            self._cache, self._cache_tag = None, cache_tag
        cache = self.prefill(prompt_ids[:-1], room=max_new_tokens + 1)
        start = time.perf_counter()
        try:
            return self.decode(cache, prompt_ids, max_new_tokens, probe)
        finally:
            if self.share_prefix:
                truncate_cache(cache, len(prompt_ids) - 1)
            self.timer.seconds["decode_s"] += time.perf_counter() - start

    @torch.no_grad()
    def prefill(self, ids: list[int], room: int = 0):
        """KV cache of ``ids`` (reusing the previous prompt's prefix), with ``room`` more positions reserved.

        The engine keeps the returned cache for the next prompt's prefix: decode into a copy, or let
        ``generate`` truncate it back after decoding.
        """
        start = time.perf_counter()
        reuse = 0
        if self.share_prefix and self._cache is not None:  # keep the buffers, even with nothing to reuse:
            reuse = reusable_length(self._cached_ids, ids, self.chunk_size)
            truncate_cache(self._cache, reuse)  # reallocating them per prompt fragments the heap (peak RSS)
        else:
            self._cache = self.cache_factory()
        reserve(self._cache, len(ids) + room)
        self._cached_ids = list(ids)
        self.control.probe = False
        self._phase(self._cache, decoding=False)
        tokens = torch.tensor(ids, device=self.device).unsqueeze(0)  # (1, P-1)
        pos = reuse
        while pos < len(ids):
            end = min((pos // self.chunk_size + 1) * self.chunk_size, len(ids))
            out = self.model(input_ids=tokens[:, pos:end], cache=self._cache, use_cache=True, logits_to_keep=1)
            if self._cache is None:  # a model that builds its own cache type returns it
                self._cache = returned_cache(out)
            pos = end
        self.timer.prefilled_tokens += len(ids) - reuse
        self.timer.reused_tokens += reuse
        self.timer.seconds["prefill_s"] += time.perf_counter() - start
        return self._cache

    @torch.no_grad()
    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int, *, probe: bool = True, cache_tag=None,
                       on_done=None) -> list[Generation]:
        """Generate for several prompts: each prefilled on its own (sharing prefixes), then decoded together.

        The prompts' caches are left-padded into one batch; a sample leaves the batch when it stops,
        and ``on_done(index, generation)`` is called right then (so an interrupt loses no finished
        sample). Results equal ``generate`` per prompt up to float rounding of batched kernels (see tests).
        """
        on_done = on_done or (lambda index, generation: None)
        if len(prompts) == 1 or not self.can_batch:
            done = []
            for index, p in enumerate(prompts):
                done.append(self.generate(p, max_new_tokens, probe=probe, cache_tag=cache_tag))
                on_done(index, done[-1])
            return done
        if cache_tag != self._cache_tag:
            self._cache, self._cache_tag = None, cache_tag
        batch = LeftPaddedBatch(len(prompts), max(len(p) for p in prompts) - 1, extra=max_new_tokens,
                                spare=self._batch_buffers)
        self._batch_buffers = batch.buffers
        for row, ids in enumerate(prompts):
            batch.write(row, self.prefill(ids[:-1]))
        start = time.perf_counter()
        try:
            return self._decode_batch(batch.cache(), prompts, max_new_tokens, probe, on_done)
        finally:
            self.timer.seconds["decode_s"] += time.perf_counter() - start

    def _decode_batch(self, cache, prompts: list[list[int]], max_new_tokens: int, probe: bool, on_done) -> list[Generation]:
        lengths = torch.tensor([len(p) for p in prompts])  # P_i
        padded = int(lengths.max()) - 1
        mask = (torch.arange(padded + 1) >= (padded + 1 - lengths).unsqueeze(1)).long()  # (B, T + 1), 0 = pad
        tokens = torch.tensor([[p[-1]] for p in prompts])  # (B, 1)
        positions = (lengths - 1).unsqueeze(1)  # (B, 1)
        alive = list(range(len(prompts)))
        generated: list[list[int]] = [[] for _ in prompts]
        top1: list[list[torch.Tensor]] = [[] for _ in prompts]
        results: list[Generation | None] = [None] * len(prompts)

        def finish(i: int) -> None:
            results[i] = self._generation(generated[i], top1[i])
            on_done(i, results[i])

        self.control.probe = probe
        self._phase(cache, decoding=True)
        try:
            for step in range(max_new_tokens):
                out = self.model(input_ids=tokens.to(self.device), attention_mask=mask.to(self.device),
                                 position_ids=positions.to(self.device), cache=cache, use_cache=True)
                next_tokens = out.logits[:, -1].argmax(dim=-1).cpu()  # (B_alive,)
                offsets = self.control.take_top1(self.num_layers, self.num_heads).cpu() if probe else None  # (L, B_alive, H)
                keep = []
                last = step == max_new_tokens - 1
                for row, i in enumerate(alive):
                    generated[i].append(int(next_tokens[row]))
                    if probe:
                        top1[i].append(offsets[:, row] + int(lengths[i]) + step)
                    if last or self.stop(generated[i][-1]):
                        finish(i)
                    else:
                        keep.append(row)
                if not keep:
                    break
                if len(keep) < len(alive):
                    rows = torch.tensor(keep)
                    cache.batch_select_indices(rows.to(self.device))
                    mask, positions, next_tokens = mask[rows], positions[rows], next_tokens[rows]
                    alive = [alive[r] for r in keep]
                mask = torch.cat([mask, torch.ones(len(alive), 1, dtype=mask.dtype)], dim=1)
                positions = positions + 1
                tokens = next_tokens.unsqueeze(1)
        finally:
            self.control.probe, self.control.decoding = False, None
        return [r if r is not None else self._generation(g, t) for r, g, t in zip(results, generated, top1)]

    def _phase(self, cache, *, decoding: bool) -> None:
        """Tell the hook and the cache which phase the next forward passes are (a one-token prefill chunk
        is not a decode step): ``AttentionControl.decoding`` and a cache's ``decoding`` flag (head-wise caches)."""
        self.control.decoding = decoding
        if hasattr(cache, "decoding"):
            cache.decoding = decoding

    def _generation(self, generated: list[int], top1: list[torch.Tensor]) -> Generation:
        empty = torch.zeros((0, self.num_layers, 0), dtype=torch.long)
        return Generation(generated, torch.stack(top1).cpu() if top1 else empty)

    @torch.no_grad()
    def decode(self, cache, prompt_ids: list[int], max_new_tokens: int, probe: bool) -> Generation:
        """Greedy decoding from ``cache`` (holding ``prompt_ids[:-1]``), starting with the last prompt token."""
        self.control.probe = probe
        self._phase(cache, decoding=True)
        token = torch.tensor([[prompt_ids[-1]]], device=self.device)  # (1, 1)
        generated, top1 = [], []
        try:
            for step in range(max_new_tokens):
                logits = self.model(input_ids=token, cache=cache, use_cache=True).logits  # (1, 1, V)
                if probe:
                    offsets = self.control.take_top1(self.num_layers, self.num_heads)[:, 0]  # (L, H), negative
                    top1.append(offsets + (len(prompt_ids) + step))
                token = logits[:, -1].argmax(dim=-1, keepdim=True)
                generated.append(int(token))
                if self.stop(generated[-1]):
                    break
        finally:
            self.control.probe, self.control.decoding = False, None
        return self._generation(generated, top1)


class LeftPaddedBatch:
    """Several prompts' KV caches, left-padded with zeros into one preallocated batch.

    Each prompt's cache is copied into its row right after its prefill, so no per-prompt copy is
    kept, and the buffers leave room for the tokens still to be decoded, so decoding writes in
    place instead of re-concatenating the whole cache at every step.

    Args:
        size: number of prompts B; longest: the longest prefilled length T; extra: decode steps to
            make room for (more still work, by growing the buffers).
        spare: buffers of an earlier batch, per layer, used again (as views) where they are big
            enough. Their pad positions then hold stale keys instead of zeros: finite values that
            the attention mask hides, so outputs do not change.
    """

    def __init__(self, size: int, longest: int, extra: int = 0, spare: list | None = None):
        self.size, self.longest, self.capacity = size, longest, longest + extra
        self.spare = spare or []
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer (>= B, Hkv, >= T + extra, D)

    def write(self, row: int, cache) -> None:
        """Copy ``cache``'s keys and values, (1, Hkv, T_row, D) per layer, to end at position T of ``row``."""
        for index, layer in enumerate(cache.layers):
            keys, values = layer.keys, layer.values
            if index == len(self.buffers):
                self.buffers.append(self._allocate(index, keys, values))
            start = self.longest - keys.shape[2]
            self.buffers[index][0][row, :, start:self.longest] = keys[0]
            self.buffers[index][1][row, :, start:self.longest] = values[0]

    def _allocate(self, index: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s buffers: the spare ones if they fit (same dtype and head shapes), else new zeros.

        Keys and values get their own head sizes: multi-head latent attention caches keys of
        ``qk_nope + qk_rope`` dims and values of ``v_head_dim``.
        """
        key_shape = (self.size, keys.shape[1], self.capacity, keys.shape[3])
        value_shape = (self.size, values.shape[1], self.capacity, values.shape[3])
        if index < len(self.spare):
            k, v = self.spare[index]
            if _fits(k, key_shape, keys) and _fits(v, value_shape, values):
                return k, v
        return keys.new_zeros(key_shape), values.new_zeros(value_shape)

    def cache(self):
        """A ``DynamicCache`` whose layers are views of the first B rows and ``T + extra`` positions of the buffers."""
        from transformers import DynamicCache

        cache = DynamicCache()
        rows, room = self.size, self.capacity
        cache.layers = [PreallocatedLayer.over(k[:rows, :, :room], v[:rows, :, :room], self.longest) for k, v in self.buffers]
        return cache


def _fits(buffer: torch.Tensor, shape: tuple, like: torch.Tensor) -> bool:
    """A spare (B', H, T', D) buffer can hold ``shape``: same heads, head size, dtype and device, no smaller."""
    return (buffer.shape[1] == shape[1] and buffer.shape[3] == shape[3] and buffer.dtype == like.dtype
            and buffer.device == like.device and buffer.shape[0] >= shape[0] and buffer.shape[2] >= shape[2])


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` over buffers with spare room: ``update`` writes in place, growing only when full.

    ``keys``/``values`` are always the (B, Hkv, length, D) views of the filled part, as in
    ``DynamicLayer``, so attention and the probe see the same values; what changes is that the
    cache is not re-concatenated (copied whole) at every forward pass, which costs time while
    decoding and leaves the allocator fragmented after long prefills. ``reserve``: positions to
    allocate at once when (re)allocating.
    """

    def __init__(self, reserve: int = 0):
        super().__init__()
        self.reserve, self.length = reserve, 0
        self._keys = self._values = None

    @classmethod
    def over(cls, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int) -> "PreallocatedLayer":
        """A layer whose first ``length`` positions of the (B, Hkv, capacity, D) buffers are filled."""
        layer = cls()
        layer.lazy_initialization(key_buffer, value_buffer)
        layer._keys, layer._values, layer.length = key_buffer, value_buffer, length
        layer._expose()
        return layer

    def _expose(self) -> None:
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def held(self) -> list[torch.Tensor]:
        """The buffers (``keys``/``values`` are views into them): what the layer holds."""
        return [t for t in (self._keys, self._values) if t is not None]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._keys is None or end > self._keys.shape[2]:
            self._keys, self._values = self._grown(self._keys, key_states, end), self._grown(self._values, value_states, end)
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def _grown(self, buffer: torch.Tensor | None, new: torch.Tensor, end: int) -> torch.Tensor:
        b, h, _, d = new.shape
        grown = new.new_zeros((b, h, max(end, self.reserve), d))
        if buffer is not None:
            grown[:, :, : self.length] = buffer[:, :, : self.length]
        return grown

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._expose()

    def crop(self, max_length: int) -> None:
        self.length = min(self.length, max_length if max_length >= 0 else self.length + max_length)
        if self._keys is not None:
            self._expose()


def stop_condition(tokenizer, model):
    """``stop(token_id)``: True for EOS ids (tokenizer and generation config) or a token whose text has a newline."""
    eos = set()
    for source in (getattr(tokenizer, "eos_token_id", None), getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            eos.add(source)
        elif source:
            eos.update(source)
    seen: dict[int, bool] = {}

    def stop(token_id: int) -> bool:
        if token_id not in seen:
            seen[token_id] = token_id in eos or "\n" in tokenizer.decode([token_id])
        return seen[token_id]

    return stop
