"""Which layers of a model have softmax attention heads to score, found by one dry forward pass.

Hybrid models (Qwen3-Next, Jamba, Nemotron-H, LFM2, ...) interleave softmax attention with
linear-attention, Mamba or convolution layers; only the first have heads whose top-1 key means
anything. Legacy families (BLOOM, Falcon, ...) compute attention inside their own modules, out of
reach of transformers' attention interface, so no hook sees them. ``inspect_attention`` runs one
two-token forward pass under ``attention_control`` and records which layers called the attention
function and with which shapes, before any real work starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from .hooks import AttentionControl, attention_control

# Declared layer kinds that compute softmax attention: such a layer must reach the hook.
SOFTMAX_KINDS = ("full_attention", "sliding_attention", "chunked_attention", "attention", "global", "local")


@dataclass(frozen=True)
class AttentionLayout:
    """Attention shape of every layer; a layer with 0 heads has no softmax attention (not applicable).

    Attributes:
        heads, kv_heads: per layer, query heads and KV heads of its attention calls.
        key_dims, value_dims: per layer, head sizes of keys and values (they differ under
            multi-head latent attention, whose attention calls see decompressed per-head keys and values).
        kinds: per layer, the declared kind (``config.layer_types``) or "attention"/"none".
    """

    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    key_dims: tuple[int, ...]
    value_dims: tuple[int, ...]
    kinds: tuple[str, ...]

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    @property
    def num_heads(self) -> int:
        return max(self.heads)

    @property
    def num_kv_heads(self) -> int:
        return max(self.kv_heads)

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, h in enumerate(self.heads) if h]

    @property
    def is_hybrid(self) -> bool:
        return len(self.attention_layers) < self.num_layers

    @property
    def latent(self) -> bool:
        """True for multi-head latent attention (key and value head sizes differ)."""
        return any(k != v for k, v, h in zip(self.key_dims, self.value_dims, self.heads) if h)

    def applicable(self) -> np.ndarray:
        """(layers, num_heads) bool: True where a layer has that query head."""
        return np.arange(self.num_heads)[None, :] < np.asarray(self.heads)[:, None]

    def to_summary(self) -> dict:
        return {"attention_layers": self.attention_layers, "layer_heads": list(self.heads),
                "layer_kinds": list(self.kinds), "latent_attention": self.latent}

    @classmethod
    def uniform(cls, num_layers: int, heads: int, kv_heads: int, head_dim: int = 0) -> "AttentionLayout":
        """Every layer with the same attention (plain dense decoders)."""
        n = num_layers
        return cls((heads,) * n, (kv_heads,) * n, (head_dim,) * n, (head_dim,) * n, ("attention",) * n)


def declared_kinds(model, num_layers: int) -> list[str] | None:
    """``config.layer_types`` of the text model, when it declares one kind per layer."""
    kinds = getattr(model.config.get_text_config(), "layer_types", None)
    return [str(k) for k in kinds] if kinds and len(kinds) == num_layers else None


def architecture_name(model) -> str:
    archs = getattr(model.config, "architectures", None)
    return archs[0] if archs else type(model).__name__


@torch.no_grad()
def inspect_attention(model) -> AttentionLayout:
    """Run two tokens through ``model`` under the hook and return its layout.

    Raises ``UserError`` (one line naming the architecture) when no layer reaches the attention
    interface, or when a layer declared as softmax attention does not.
    """
    num_layers = model.config.get_text_config().num_hidden_layers
    control = AttentionControl()
    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2]], device=device)
    name = architecture_name(model)
    can_switch = getattr(model, "_can_set_attn_implementation", lambda: True)
    if not can_switch():  # transformers knows it up front; asking it to switch would only log a warning
        raise UserError(_bypass_message(name))
    with attention_control(model, control):
        try:
            model(input_ids=ids, use_cache=False)
        except (TypeError, ValueError) as exc:  # e.g. a multimodal model that needs an image every time
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{name} cannot run a text-only forward pass ({text}); "
                            "it has no decoder language model to score on its own") from None
    if None in control.seen:
        raise UserError(f"{name}: its attention modules carry no layer index, so heads cannot be told apart by layer")
    seen = control.seen
    if not seen and not getattr(model.config.get_text_config(), "num_attention_heads", None):
        raise UserError(f"{name} has no softmax attention layers (a state-space or recurrent model): no heads to score")
    if not seen:
        raise UserError(_bypass_message(name))
    if any(layer >= num_layers for layer in seen):
        raise UserError(f"{name}: attention layer indices {sorted(seen)} do not fit its {num_layers} layers")
    kinds = declared_kinds(model, num_layers)
    missing = [i for i in range(num_layers) if i not in seen and kinds and kinds[i] in SOFTMAX_KINDS]
    if missing:
        raise UserError(f"{name}: layers {missing} are declared as attention but never reached the attention "
                        "interface; their heads cannot be probed")
    kinds = kinds or ["attention" if i in seen else "none" for i in range(num_layers)]
    blank = lambda field: tuple(getattr(seen[i], field) if i in seen else 0 for i in range(num_layers))  # noqa: E731
    return AttentionLayout(blank("heads"), blank("kv_heads"), blank("key_dim"), blank("value_dim"), tuple(kinds))


def _bypass_message(name: str) -> str:
    return (f"{name} computes attention inside its own modules, not through transformers' attention interface, "
            "so its heads cannot be probed or masked; architectures whose attention layers call the interface "
            "(Llama, Qwen, Gemma, Mistral, DeepSeek, gpt-oss, hybrids, ...) are supported")
