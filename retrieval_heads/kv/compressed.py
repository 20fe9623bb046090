"""A compressed KV cache: every KV head of a global layer keeps its own positions (ragged), then every new token.

Token-selection policies (``snapkv``, ``retrieval-snapkv``, ``headkv``; see ``policy.py``) choose, after a
full prefill of T tokens, which positions each KV head keeps. ``CompressedLayer`` stores them ragged:
KV heads that keep the same number of positions share one group,

    group   heads (G,), keys/values (B, G, n + new, D), kept (G, n) absolute positions, ascending

so ``kv_bytes`` is exactly the sum over KV heads of kept positions x head bytes. After compression every
new token is appended to every head (SnapKV semantics: nothing more is evicted). A forward pass after
compression attends, per group, to all kept positions plus the new tokens causally (a question prefilled
into the compressed cache, then decode steps); attention runs the model's kernel once per group
(``attention.grouped_attention_forward``). A layer whose heads all keep every position stores one group
and hands attention plain tensors, so it behaves exactly like a ``DynamicLayer`` (before compression too).

Kept positions are the same for every batch row (selection is made for one prompt: batch size 1, as
``kv-eval`` decodes); padding masks are not applied to compressed layers. Sliding-window and
non-attention layers are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from transformers.cache_utils import DynamicLayer

from .cache import GroupedKV, HeadSplitLayer, KVGroup, TrackedCache, append_tokens, layer_held_bytes, num_kv_heads


@dataclass
class _Stored:
    """One group of a ``CompressedLayer``: KV heads with equal kept counts."""

    heads: torch.Tensor  # (G,) int64, ascending
    kept: torch.Tensor  # (G, n) int64 absolute positions kept at compression, ascending per head
    keys: torch.Tensor | None = None  # (B, G, n + new, D)
    values: torch.Tensor | None = None


class CompressedLayer(HeadSplitLayer):
    """One global attention layer whose KV heads each keep their own positions (see the module docstring)."""

    def __init__(self, num_kv_heads: int):
        super().__init__(num_kv_heads)
        self.compressed_length = 0  # T: tokens seen when compressed (0: never compressed)
        self.groups = [_Stored(torch.arange(num_kv_heads), torch.zeros(num_kv_heads, 0, dtype=torch.long))]
        self.dense = True

    def __repr__(self):
        return f"CompressedLayer(kept={self.kept_counts()})"

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``key_states``/``value_states`` (B, Hkv, q, D) to every KV head; return what attention needs."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[-2]
        self.cumulative_length += q
        if self.dense:
            group = self.groups[0]
            group.keys = append_tokens(group.keys, key_states)
            group.values = append_tokens(group.values, value_states)
            return group.keys, group.values
        groups = []
        for group in self.groups:
            heads = group.heads.to(key_states.device)
            group.keys = append_tokens(group.keys, key_states.index_select(1, heads))  # (B, G, n + q, D)
            group.values = append_tokens(group.values, value_states.index_select(1, heads))
            visible = _new_tokens_causal(group.keys.shape[-2], q, group.keys.device)
            groups.append(KVGroup(heads, group.keys, group.values, visible))
        kv = GroupedKV(groups)
        return kv, kv

    def load(self, keys: torch.Tensor, values: torch.Tensor, positions: Sequence[torch.Tensor] | None) -> None:
        """Keep ``positions[h]`` (ascending absolute positions < T) of KV head ``h`` from (B, Hkv, T, D) tensors.

        ``positions`` None keeps everything. The kept keys and values are copies: ``keys``/``values`` are
        left as they are and share no storage with the layer.
        """
        self.lazy_initialization(keys, values)
        total = keys.shape[-2]
        if positions is None:
            positions = [torch.arange(total)] * self.num_kv_heads
        if len(positions) != self.num_kv_heads:
            raise ValueError(f"need kept positions for {self.num_kv_heads} KV heads, got {len(positions)}")
        positions = [torch.as_tensor(p, dtype=torch.long).cpu() for p in positions]
        for h, p in enumerate(positions):
            if p.numel() and (int(p.min()) < 0 or int(p.max()) >= total or bool((p[1:] <= p[:-1]).any())):
                raise ValueError(f"KV head {h}: kept positions must be ascending, distinct and in [0, {total})")
        self.groups = []
        for count in sorted({p.numel() for p in positions}):
            heads = torch.tensor([h for h, p in enumerate(positions) if p.numel() == count], dtype=torch.long)
            kept = torch.stack([positions[h] for h in heads.tolist()])  # (G, n)
            index = (heads[:, None].to(keys.device), kept.to(keys.device))
            self.groups.append(_Stored(heads, kept, keys[:, index[0], index[1]], values[:, index[0], index[1]]))
        self.cumulative_length = self.compressed_length = total
        self.dense = len(self.groups) == 1 and self.groups[0].kept.shape[1] == total

    def compress(self, positions: Sequence[torch.Tensor]) -> None:
        """Keep only ``positions[h]`` of what KV head ``h`` holds now (an uncompressed layer), in place."""
        if not self.dense or self.compressed_length:
            raise RuntimeError("only a layer that was never compressed can be compressed in place")
        group = self.groups[0]
        self.load(group.keys, group.values, positions)

    def positions(self, head: int) -> torch.Tensor:
        """(n,) absolute positions KV head ``head`` holds now: those kept at compression, then every new one."""
        for group in self.groups:
            rows = (group.heads == head).nonzero().flatten()
            if rows.numel():
                new = torch.arange(self.compressed_length, self.cumulative_length)
                return torch.cat([group.kept[int(rows[0])], new])
        raise IndexError(head)

    def kept_counts(self) -> list[int]:
        """Positions each KV head kept at compression (T for all before compression)."""
        counts = [0] * self.num_kv_heads
        for group in self.groups:
            for h in group.heads.tolist():
                counts[h] = group.kept.shape[1] if self.compressed_length else self.cumulative_length
        return counts

    def stored(self) -> list[torch.Tensor]:
        return [t for g in self.groups for t in (g.keys, g.values) if t is not None]

    def held(self) -> list[torch.Tensor]:
        return self.stored() + [t for g in self.groups for t in (g.heads, g.kept)]

    def _map(self, fn) -> None:
        for group in self.groups:
            if group.keys is not None:
                group.keys, group.values = fn(group.keys), fn(group.values)

    def reset(self) -> None:
        self.__init__(self.num_kv_heads)


def _new_tokens_causal(n: int, q: int, device):
    """Visibility of a group holding ``n`` keys, the last ``q`` of them new: old keys all visible, new ones
    causally (the layer's own mask, over absolute positions, does not apply). None (all visible) for one new
    token."""

    def visible(mask):
        if q == 1:
            return None
        new = torch.arange(q, device=device)[None, :] <= torch.arange(q, device=device)[:, None]  # (q, q)
        return torch.cat([torch.ones(q, n - q, dtype=torch.bool, device=device), new], dim=1)[None, None]

    return visible


class CompressedCache(TrackedCache):
    """A ``DynamicCache`` whose global layers are ``CompressedLayer`` (per-KV-head kept positions).

    Build it with ``from_prefilled`` (a compressed copy of a plain prefilled cache, so one prefill serves
    several plans), or prefill into it (it behaves as a ``DynamicCache`` until compressed) and call
    ``compress``. Run it under ``attention.HeadwiseAttention(model)``.
    """

    def __init__(self, config):
        super().__init__(config=config)
        kv = num_kv_heads(config)
        for i, layer in enumerate(self.layers):
            if type(layer) is DynamicLayer:  # a global attention layer
                self.layers[i] = CompressedLayer(kv)

    @classmethod
    def from_prefilled(cls, config, prefilled, keep: Mapping[int, Sequence[torch.Tensor]]) -> "CompressedCache":
        """A compressed copy of ``prefilled``: global layer ``l`` keeps ``keep[l][h]`` for KV head ``h``.

        Layers missing from ``keep`` keep everything; sliding layers their window. ``prefilled`` is left
        untouched. ``peak_kv_bytes`` counts ``prefilled``'s bytes too (the caller keeps it).
        """
        cache = cls(config)
        cache._take(prefilled, lambda index, layer, keys, values: layer.load(keys, values, keep.get(index)))
        return cache

    def compress(self, keep: Mapping[int, Sequence[torch.Tensor]]) -> None:
        """Compress the prefilled global layers in place (``keep`` as in ``from_prefilled``)."""
        for index, positions in keep.items():
            layer = self.layers[index]
            if not isinstance(layer, CompressedLayer):
                raise ValueError(f"layer {index} is not a global attention layer")
            layer.compress(positions)
            self._bytes[index] = layer_held_bytes(layer)

    def kept_counts(self) -> dict[int, list[int]]:
        """Positions each KV head kept at compression, by global layer."""
        return {i: l.kept_counts() for i, l in enumerate(self.layers) if isinstance(l, CompressedLayer)}
