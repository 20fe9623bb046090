"""The registered attention function: per-head top-1 probe and head ablation, around the model's own kernel.

``attention_control(model, control)`` registers one function through transformers'
``AttentionInterface`` (plus the mask function of the implementation the model was loaded with,
through ``AttentionMaskInterface``), switches the model to it, and restores the model's own
implementation on exit. The function wraps the kernel the model was loaded with (``sdpa``,
``eager`` from the model's own modeling file, ``flash_attention_2``, a kernels-hub function, or
another wrapper such as the head-wise KV cache's; ``flex_attention`` is refused, see
``check_implementation``), so observing a model
never changes it: soft-caps, sinks and biases stay with the kernel that handles them. When asked it:

* records, for the last query row, each query head's top-1 key of the attention logits, computed
  as the model computes them: ``q.k^T * scale``, soft-capped, plus any additive ``position_bias``,
  restricted to the keys the mask and sliding window leave visible (sinks are not keys);
* ablates chosen heads: ``uniform`` zeroes the head's query (uniform attention over visible keys,
  the paper's masking), ``zero`` zeroes the head's output.
"""

from __future__ import annotations

import enum
import importlib
import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..errors import UserError

_names = itertools.count()

NO_KEY = 0  # top-1 offset recorded for layers and heads without softmax attention (never a key position)


class AblationMode(str, enum.Enum):
    """How an ablated head is silenced."""

    UNIFORM = "uniform"  # query zeroed: attends uniformly over the visible keys (the paper's masking)
    ZERO = "zero"  # output zeroed


class AblationPhase(str, enum.Enum):
    """When ablation applies."""

    DECODE = "decode"  # only while generating, as in the paper
    ALL = "all"  # prefill too


@dataclass(frozen=True)
class CallShape:
    """What one attention call of a layer looked like: query heads, KV heads, key and value head sizes."""

    heads: int
    kv_heads: int
    key_dim: int
    value_dim: int


def head_mask(heads: list[tuple[int, int]], num_layers: int, num_heads: int) -> torch.Tensor:
    """(layers, heads) bool with True at every listed ``(layer, head)``: ``AttentionControl.ablate``."""
    mask = torch.zeros(num_layers, num_heads, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    return mask


@dataclass
class AttentionControl:
    """State shared by the registered attention function for one ``attention_control`` block.

    Attributes:
        probe: when True, every attention call stores ``top1[layer]``: (batch, heads) int64, the
            top-1 key of the last query row as a negative offset from the end of the key sequence
            (-1 is the query token itself). Offsets are cache-agnostic: sliding-window caches
            return only their most recent keys, but always end at the current token.
        probe_rows: how many of the last query rows to probe; above 1, ``top1[layer]`` is
            (batch, heads, rows), row r being query ``Q - probe_rows + r`` (teacher-forced answers).
        ablate: (layers, heads) bool, heads to silence, or None.
        decoding: set by whoever drives the model (the ``Engine``): True while generating, False
            while prefilling. None (e.g. under ``model.generate``) infers it: one query = decoding.
        seen: every layer that called the attention function, with the shape of its last call.
    """

    probe: bool = False
    probe_rows: int = 1
    ablate: torch.Tensor | None = None
    mode: AblationMode = AblationMode.UNIFORM
    phase: AblationPhase = AblationPhase.DECODE
    decoding: bool | None = None
    top1: dict[int, torch.Tensor] = field(default_factory=dict)
    seen: dict[int, CallShape] = field(default_factory=dict)

    def is_decoding(self, q_len: int) -> bool:
        return self.decoding if self.decoding is not None else q_len == 1

    def ablated_heads(self, layer: int, q_len: int) -> torch.Tensor | None:
        """Indices of the heads to silence in ``layer`` for a call with ``q_len`` queries, or None."""
        if self.ablate is None or (self.phase is AblationPhase.DECODE and not self.is_decoding(q_len)):
            return None
        if layer >= self.ablate.shape[0]:
            return None
        heads = self.ablate[layer].nonzero().flatten()
        return heads if heads.numel() else None

    def take_top1(self, num_layers: int, num_heads: int | None = None) -> torch.Tensor:
        """Pop the recorded offsets as a (layers, batch, heads) tensor ((layers, batch, heads, rows) when
        ``probe_rows`` > 1).

        Layers that recorded nothing (no softmax attention: linear-attention, Mamba or convolution
        layers of hybrid models) and heads beyond a layer's own head count hold ``NO_KEY``.
        """
        if not self.top1:
            raise RuntimeError("no attention layer recorded a top-1 key: is the model running under attention_control?")
        some = next(iter(self.top1.values()))
        width = num_heads or max(t.shape[1] for t in self.top1.values())
        out = torch.full((num_layers, some.shape[0], width, *some.shape[2:]), NO_KEY, dtype=torch.long, device=some.device)
        for layer, offsets in self.top1.items():
            out[layer, :, : offsets.shape[1]] = offsets
        self.top1.clear()
        return out


def query_logits(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float, *, rows: int = 1,
    softcap: float | None = None, position_bias: torch.Tensor | None = None, sliding_window: int | None = None,
) -> torch.Tensor:
    """Attention logits of the last ``rows`` query rows of every query head, invisible keys at -inf.

    The queries are the last ``Q`` positions of the key sequence (the keys include the current
    tokens), so query row ``Q - rows + r`` sits at key index ``K - rows + r``.

    Args:
        query: (B, H, Q, D); key: (B, Hkv, K, D) with H a multiple of Hkv (grouped-query attention:
            query head h reads KV head h // (H // Hkv)).
        mask: None (causal), bool (B|1, 1|H, Q, K) with True = visible, additive float
            (B|1, 1|H, Q, K), or a (B, K) padding mask (1 = token) plus causality.
        softcap: logits become ``softcap * tanh(logits / softcap)`` (Gemma 2).
        position_bias: additive (B|1, H|1, Q, K) bias (relative-position models).
        sliding_window: with no 4-D mask, a query sees only the keys less than this many positions back.
    Returns:
        (B, H, rows, K) float32.
    """
    b, h, _, d = query.shape
    hkv, k_len = key.shape[1], key.shape[2]
    q = query[:, :, -rows:, :].reshape(b, hkv, h // hkv, rows, d).float()  # (B, Hkv, R, rows, D)
    logits = torch.einsum("bgrqd,bgkd->bgrqk", q, key.float()).reshape(b, h, rows, k_len) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if position_bias is not None:
        logits = logits + position_bias[..., -rows:, -k_len:].float()
    if mask is not None and mask.dim() == 4:
        window = mask[:, :, -rows:, -k_len:]  # (B|1, 1|H, rows, K)
        return logits.masked_fill(~window, float("-inf")) if window.dtype == torch.bool else logits + window.float()
    k_pos = torch.arange(k_len, device=logits.device)
    q_pos = (k_len - rows + torch.arange(rows, device=logits.device))[:, None]  # (rows, 1)
    hidden = k_pos > q_pos  # (rows, K) causal
    if sliding_window is not None:
        hidden = hidden | (k_pos <= q_pos - sliding_window)
    if mask is not None:  # (B, K) padding
        hidden = hidden | ~mask[:, None, None, -k_len:].bool()
    return logits.masked_fill(hidden, float("-inf"))


def last_row_logits(query, key, mask, scaling: float, **logit_kwargs) -> torch.Tensor:
    """(B, H, K) logits of the last query row (see ``query_logits``)."""
    return query_logits(query, key, mask, scaling, **logit_kwargs)[:, :, -1]


def last_row_top1(query, key, mask, scaling: float, **logit_kwargs) -> torch.Tensor:
    """(B, H) int64 top-1 key of the last query row, as offsets from the end of the keys, in [-K, -1].

    Arguments as ``query_logits``; ties go to the earliest key, as in ``argmax`` over eager weights.
    """
    logits = last_row_logits(query, key, mask, scaling, **logit_kwargs)
    return logits.argmax(dim=-1) - key.shape[2]


def rows_top1(query, key, mask, scaling: float, rows: int, **logit_kwargs) -> torch.Tensor:
    """(B, H, rows) int64 top-1 key of each of the last ``rows`` query rows, as offsets from the end of the keys."""
    return query_logits(query, key, mask, scaling, rows=rows, **logit_kwargs).argmax(dim=-1) - key.shape[2]


def model_kernel(module, implementation: str) -> Callable:
    """The attention function ``module`` runs under ``implementation``, as its own forward would pick it.

    ``eager`` (and any name not in the registry) is the module's own modeling file's
    ``eager_attention_forward``, which carries the model's soft-caps and sinks.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if implementation != "eager" and implementation in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[implementation]
    source = importlib.import_module(type(module).__module__)
    fn = getattr(source, "eager_attention_forward", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


def _probe_kwargs(kwargs: dict) -> dict:
    """The logit-changing arguments the model passed to its kernel (see ``last_row_logits``)."""
    return {
        "softcap": kwargs.get("softcap"),
        "position_bias": kwargs.get("position_bias"),
        "sliding_window": kwargs.get("sliding_window"),
    }


def controlled_attention(control: AttentionControl, implementation: str):
    """Build the attention function bound to ``control``, wrapping the kernel of ``implementation``."""
    kernels: dict[type, Callable] = {}

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        # query: (B, H, Q, D); key: (B, Hkv, K, D); value: (B, Hkv, K, Dv)
        kernel = kernels.get(type(module)) or kernels.setdefault(type(module), model_kernel(module, implementation))
        if not isinstance(key, torch.Tensor):  # a wrapper's own key object (head-wise KV cache)
            return kernel(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        layer, q_len = getattr(module, "layer_idx", None), query.shape[2]
        control.seen[layer] = CallShape(query.shape[1], key.shape[1], key.shape[-1], value.shape[-1])
        if layer is None:  # cannot be attributed to a layer (``inspect_attention`` refuses such models)
            return kernel(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        heads = control.ablated_heads(layer, q_len)
        if heads is not None and control.mode is AblationMode.UNIFORM:
            query = query.clone()
            query[:, heads.to(query.device)] = 0
        if control.probe:
            rows = min(control.probe_rows, q_len)
            top1 = rows_top1(query, key, attention_mask, scale, rows, **_probe_kwargs(kwargs))  # (B, H, rows)
            control.top1[layer] = top1 if control.probe_rows > 1 else top1[..., -1]
        out, weights = kernel(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if heads is not None and control.mode is AblationMode.ZERO:
            out = out.clone()
            out[:, :, heads.to(out.device)] = 0  # out: (B, Q, H, Dv)
        return out, weights

    return attention


def check_implementation(implementation: str | None) -> None:
    """Refuse (``UserError``) an attention implementation the hooks cannot wrap.

    ``flex_attention`` hands its kernel a ``BlockMask`` instead of a tensor mask; the probe and the head-wise
    KV caches read tensor masks only. Wrapped names keep the wrapped implementation as a suffix
    (``register_wrapper``), so a wrapper of flex is refused too.
    """
    if implementation and implementation.endswith("flex_attention"):
        raise UserError("flex_attention is not supported: its block masks reach neither the top-1 probe nor the "
                        "head-wise KV caches; use --attn-implementation sdpa, eager or flash_attention_2")


def register_wrapper(model, wrapper: Callable[[str], Callable], prefix: str) -> str:
    """Register ``wrapper(current_implementation)`` and the current mask function under a fresh name.

    The name keeps the wrapped implementation as a suffix, so transformers' checks on the name
    (``"flash" in name`` for FlashAttention's unpadded inputs) still see what runs underneath.
    Returns the name; the caller switches the model to it and unregisters it afterwards.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    current = model.config._attn_implementation or "sdpa"
    check_implementation(current)
    name = f"{prefix}_{next(_names)}_{current}"
    AttentionInterface.register(name, wrapper(current))
    mask_name = current if current in ALL_MASK_ATTENTION_FUNCTIONS else "sdpa"
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask_name])
    return name


@contextmanager
def wrapped_attention(model, wrapper: Callable[[str], Callable], prefix: str) -> Iterator[str]:
    """Run ``model`` on ``wrapper(current_implementation)`` (``register_wrapper``) while the block runs.

    Yields the registered name; the model's own implementation is restored and the name unregistered on
    exit, also on errors.
    """
    original = model.config._attn_implementation
    name = register_wrapper(model, wrapper, prefix)
    try:
        model.set_attn_implementation(name)
        yield name
    finally:
        model.set_attn_implementation(original)
        unregister(name)


@contextmanager
def around_kernel(model, wrap: Callable[[Callable, str], Callable], prefix: str) -> Iterator[str]:
    """``wrapped_attention`` with ``wrap(kernel, implementation)``: ``kernel(module, ...)`` calls the module's
    own attention function for the implementation the model uses (``model_kernel``)."""

    def wrapper(implementation: str):
        def kernel(module, *args, **kwargs):
            return model_kernel(module, implementation)(module, *args, **kwargs)
        return wrap(kernel, implementation)

    with wrapped_attention(model, wrapper, prefix) as name:
        yield name


def unregister(name: str) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface._global_mapping.pop(name, None)
    AttentionMaskInterface._global_mapping.pop(name, None)


@contextmanager
def attention_control(model, control: AttentionControl | None = None) -> Iterator[AttentionControl]:
    """Run ``model`` with the controlled attention function; always restore it afterwards.

    Yields the control object, whose fields may be changed between forward passes.
    """
    control = control or AttentionControl()
    try:
        with wrapped_attention(model, lambda current: controlled_attention(control, current), "retrieval_heads"):
            yield control
    finally:
        control.top1.clear()
