"""The registered attention function: per-head top-1 probe and head ablation, on stock transformers.

``attention_control(model, control)`` registers one function through transformers'
``AttentionInterface`` (plus the matching mask function through ``AttentionMaskInterface``),
switches the model to it, and restores the model's own implementation on exit. The function
delegates the real attention to the model's built-in backend (SDPA, or eager where SDPA cannot
express the model, e.g. logit soft-capping) and, when asked:

* records, for the last query row, each query head's top-1 key from ``q.k^T * scale + mask``;
* ablates chosen heads: ``uniform`` zeroes the head's query (uniform attention over visible keys,
  the paper's masking), ``zero`` zeroes the head's output.
"""

from __future__ import annotations

import enum
import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

_names = itertools.count()


class AblationMode(str, enum.Enum):
    """How an ablated head is silenced."""

    UNIFORM = "uniform"  # query zeroed: attends uniformly over the visible keys (the paper's masking)
    ZERO = "zero"  # output zeroed


class AblationPhase(str, enum.Enum):
    """When ablation applies."""

    DECODE = "decode"  # only single-token forward passes (generation), as in the paper
    ALL = "all"  # prefill too


@dataclass
class AttentionControl:
    """State shared by the registered attention function for one ``attention_control`` block.

    Attributes:
        probe: when True, every attention call stores ``top1[layer]``: (batch, heads) int64, the
            top-1 key of the last query row as a negative offset from the end of the key sequence
            (-1 is the query token itself). Offsets are cache-agnostic: sliding-window caches
            return only their most recent keys, but always end at the current token.
        ablate: (layers, heads) bool, heads to silence, or None.
    """

    probe: bool = False
    ablate: torch.Tensor | None = None
    mode: AblationMode = AblationMode.UNIFORM
    phase: AblationPhase = AblationPhase.DECODE
    top1: dict[int, torch.Tensor] = field(default_factory=dict)

    def ablated_heads(self, layer: int, q_len: int) -> torch.Tensor | None:
        """Indices of the heads to silence in ``layer`` for a call with ``q_len`` queries, or None."""
        if self.ablate is None or (self.phase is AblationPhase.DECODE and q_len != 1):
            return None
        heads = self.ablate[layer].nonzero().flatten()
        return heads if heads.numel() else None

    def take_top1(self, num_layers: int) -> torch.Tensor:
        """Pop the recorded offsets as a (layers, batch, heads) tensor."""
        stacked = torch.stack([self.top1[i] for i in range(num_layers)])
        self.top1.clear()
        return stacked


def last_row_top1(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Top-1 key of the last query row for every query head.

    Args:
        query: (B, H, Q, D); key: (B, Hkv, K, D) with H a multiple of Hkv (grouped-query attention:
            query head h reads KV head h // (H // Hkv)).
        mask: None (every key visible), bool (B|1, 1|H, Q, K) with True = visible, or additive float.
    Returns:
        (B, H) int64 offsets from the end of the key sequence, in [-K, -1].
    """
    b, h, _, d = query.shape
    hkv, k_len = key.shape[1], key.shape[2]
    q = query[:, :, -1, :].reshape(b, hkv, h // hkv, d).float()  # (B, Hkv, R, D)
    scores = torch.einsum("bgrd,bgkd->bgrk", q, key.float()).reshape(b, h, k_len) * scaling  # (B, H, K)
    if mask is not None:
        row = mask[:, :, -1, -k_len:]  # (B|1, 1|H, K)
        scores = scores.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else scores + row.float()
    return scores.argmax(dim=-1) - k_len


def _base_backend(name: str):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import eager_attention_forward

    return eager_attention_forward if name == "eager" else sdpa_attention_forward


def controlled_attention(control: AttentionControl, base_name: str):
    """Build the attention function bound to ``control`` (signature of transformers' interface)."""
    base = _base_backend(base_name)
    eager = _base_backend("eager")

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        # query: (B, H, Q, D); key, value: (B, Hkv, K, D)
        layer, q_len = module.layer_idx, query.shape[2]
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        heads = control.ablated_heads(layer, q_len)
        if heads is not None and control.mode is AblationMode.UNIFORM:
            query = query.clone()
            query[:, heads.to(query.device)] = 0
        if control.probe:
            control.top1[layer] = last_row_top1(query, key, attention_mask, scaling)
        needs_eager = kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None
        backend = eager if needs_eager else base
        out, weights = backend(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if heads is not None and control.mode is AblationMode.ZERO:
            out = out.clone()
            out[:, :, heads.to(out.device)] = 0  # out: (B, Q, H, D)
        return out, weights

    return attention


@contextmanager
def attention_control(model, control: AttentionControl | None = None) -> Iterator[AttentionControl]:
    """Run ``model`` with the controlled attention function; always restore it afterwards.

    Yields the control object, whose fields may be changed between forward passes.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    control = control or AttentionControl()
    original = model.config._attn_implementation
    base_name = original if original in ("sdpa", "eager") else "sdpa"
    name = f"retrieval_heads_{next(_names)}"
    AttentionInterface.register(name, controlled_attention(control, base_name))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base_name])
    try:
        model.set_attn_implementation(name)
        yield control
    finally:
        model.set_attn_implementation(original)
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)
        control.top1.clear()
