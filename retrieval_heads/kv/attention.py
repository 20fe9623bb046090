"""Attention over head-split KV layers: the model's own kernel, once per group of KV heads.

A head-split layer (``cache.HeadwiseLayer``, ``compressed.CompressedLayer``) hands the attention function a
``GroupedKV`` instead of two tensors. The function installed by ``HeadwiseAttention`` runs the model's own
kernel (the one it was loaded with, ``hooks.model_kernel``: SDPA, the modeling file's eager function with
its soft-caps and sinks, FlashAttention, ...) once per group, with the group's query heads and mask, and
scatters the outputs back to head order; with grouped-query attention query head ``h`` follows KV head
``h // (H // Hkv)``. Plain tensors go to the model's own attention function untouched.
"""

from __future__ import annotations

import torch

from .cache import GroupedKV, HeadwiseCache, StatsDynamicCache, cache_stats
from .policy import DEFAULT_SINK, DEFAULT_WINDOW


def _group_queries(kv_heads: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Query-head indices reading ``kv_heads``: each KV head's ``n_rep`` query heads, in order."""
    return (kv_heads[:, None] * n_rep + torch.arange(n_rep, device=kv_heads.device)).flatten()


def _as_additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)


def grouped_attention_forward(inner, kernel_name: str):
    """Wrap the attention function ``inner``: plain tensors go to it; a ``GroupedKV`` runs group by group.

    Each group runs on the model's own kernel for ``kernel_name`` (``hooks.model_kernel``).
    """
    from ..core.hooks import model_kernel

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if not isinstance(key, GroupedKV):
            return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        # query: (B, H, Q, D); each group: keys (B, G, n, D)
        b, h, q_len, _ = query.shape
        n_rep = module.num_key_value_groups
        kernel = model_kernel(module, kernel_name)
        additive = kernel_name == "eager" or (attention_mask is not None and attention_mask.dtype != torch.bool)
        kwargs.pop("sliding_window", None)  # global layer
        sinks = kwargs.pop("s_aux", None)  # (H,): per query head, split with the heads
        out = query.new_empty(b, q_len, h, key.groups[0].values.shape[-1])  # (B, Q, H, D)
        for group in key.groups:
            mask = attention_mask if group.visible is None else group.visible(attention_mask)
            mask = _as_additive(mask, query.dtype) if additive else mask
            if group.heads.numel() * n_rep == h:  # every head, in order (heads are ascending)
                o, _ = kernel(module, query, group.keys, group.values, mask, scaling=scaling, dropout=dropout,
                              **kwargs, **({"s_aux": sinks} if sinks is not None else {}))
                return o, None
            idx = _group_queries(group.heads, n_rep)
            extra = {"s_aux": sinks.index_select(0, idx)} if sinks is not None else {}
            o, _ = kernel(module, query.index_select(1, idx), group.keys, group.values, mask, scaling=scaling,
                          dropout=dropout, **kwargs, **extra)
            out.index_copy_(2, idx, o)
        return out, None

    return attention


class HeadwiseAttention:
    """Route ``model``'s attention through ``grouped_attention_forward``; restore the model on exit.

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
        from ..core.hooks import model_kernel, register_wrapper

        current = self.model.config._attn_implementation
        if current in self._names:
            return
        if self._original is None:
            raise RuntimeError("HeadwiseAttention.install() runs inside its `with` block")
        kernel_name = self._original

        def wrapper(implementation: str):
            def inner(module, *args, **kwargs):
                return model_kernel(module, implementation)(module, *args, **kwargs)
            return grouped_attention_forward(inner, kernel_name)

        name = register_wrapper(self.model, wrapper, "retrieval_heads_kv")
        self._names.append(name)
        self.model.set_attn_implementation(name)

    def __exit__(self, *exc) -> None:
        from ..core.hooks import unregister

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

    ``current`` is the cache of the prompt being (or last) run: when the engine hands over a finished
    sample, ``cache_stats(factory.current)`` are that sample's statistics.
    """

    def __init__(self, attention: HeadwiseAttention, full=None, *, sink: int = DEFAULT_SINK,
                 window: int = DEFAULT_WINDOW, prefill: str = "lambda"):
        self.attention, self.full = attention, full
        self.sink, self.window, self.prefill = sink, window, prefill
        self.current = None

    def __call__(self):
        self.close()
        self.attention.install()
        model = self.attention.model
        if self.full is None:
            self.current = StatsDynamicCache(config=model.config)
        else:
            self.current = HeadwiseCache(model.config, self.full, sink=self.sink, window=self.window,
                                         prefill=self.prefill)
        return self.current

    def close(self) -> None:
        """Drop the last cache."""
        self.current = None
