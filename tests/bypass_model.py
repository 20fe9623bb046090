"""A tiny decoder whose attention never calls transformers' attention interface, defined here so it can never move.

Real legacy families (BLOOM, Falcon, ...) move onto the interface one release at a time; the refusal
path keeps a test on this model instead. It is Llama with every attention module replaced by one that
computes softmax attention itself, in plain torch, whatever ``config._attn_implementation`` says.
``register()`` makes it known to ``AutoConfig`` and ``AutoModelForCausalLM`` as ``MODEL_TYPE``, so
``build_tiny(MODEL_TYPE)`` and ``--model DIR`` (in-process) load it like any other architecture.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

MODEL_TYPE = "rh-test-bypass-attention"


class BypassConfig(LlamaConfig):
    model_type = MODEL_TYPE


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class BypassAttention(torch.nn.Module):
    """Causal softmax attention with rotary positions, computed in this module (no interface call)."""

    def __init__(self, original: torch.nn.Module):
        super().__init__()
        self.layer_idx = original.layer_idx
        self.head_dim = original.head_dim
        self.groups = original.num_key_value_groups
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = original.q_proj, original.k_proj, original.v_proj, original.o_proj

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        batch, q_len, _ = hidden_states.shape
        shape = (batch, q_len, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)  # (B, H, Q, D)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)  # (B, KV, Q, D)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        k, v = k.repeat_interleave(self.groups, dim=1), v.repeat_interleave(self.groups, dim=1)
        k_len = k.shape[2]
        scores = q @ k.transpose(2, 3) / self.head_dim ** 0.5  # (B, H, Q, K)
        future = torch.arange(k_len)[None, :] > torch.arange(k_len - q_len, k_len)[:, None]
        probs = scores.masked_fill(future.to(scores.device), float("-inf")).softmax(-1)
        out = (probs @ v).transpose(1, 2).reshape(batch, q_len, -1)
        return self.o_proj(out), None


class BypassForCausalLM(LlamaForCausalLM):
    config_class = BypassConfig

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            layer.self_attn = BypassAttention(layer.self_attn)


def register() -> str:
    """Make the model known to the auto classes (idempotent); returns its model type."""
    try:
        AutoConfig.register(MODEL_TYPE, BypassConfig)
        AutoModelForCausalLM.register(BypassConfig, BypassForCausalLM)
    except ValueError:  # already registered in this process
        pass
    return MODEL_TYPE
