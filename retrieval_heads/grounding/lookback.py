"""Lookback-Lens-style features (Chuang et al., EMNLP 2024): per head, attention on the prompt vs. on the answer so far.

For the query row producing answer token r, head (l, h) puts mean attention ``A_ctx`` on the P
prompt tokens and ``A_new`` on the r answer tokens before it; its lookback ratio is
``A_ctx / (A_ctx + A_new)`` (1 for the first token, which has no answer before it). An answer's
features are the (layers x heads) ratios averaged over the rows producing its tokens (the
Grounder's pass has one more row, reading the last answer token, which is left out); a logistic regression trained
on another split (``metrics.LogisticRegression``) turns them into a score.

``lookback_ratios(model, recorder)`` wraps the attention kernel the model currently runs (also
the probe's, when nested with ``attention_control``) and fills ``recorder.ratios`` on the one
forward pass whose query count equals ``recorder.rows`` (answer tokens + 1): the Grounder's teacher-forced pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch


@dataclass
class LookbackRecorder:
    """Set ``prompt_length``, ``rows`` (answer tokens + 1) and ``total`` (positions after the pass)
    before a pass (``expect``); ``ratios[layer]`` is then (B, H, rows) float32."""

    prompt_length: int = 0
    rows: int = 0
    total: int = 0
    ratios: dict[int, torch.Tensor] = field(default_factory=dict)

    def expect(self, prompt_length: int, answer_length: int) -> None:
        self.prompt_length, self.rows, self.total = prompt_length, answer_length + 1, prompt_length + answer_length
        self.ratios.clear()

    def reset(self) -> None:
        """Record nothing until the next ``expect``."""
        self.rows = 0
        self.ratios.clear()

    def features(self, num_layers: int, num_heads: int) -> torch.Tensor:
        """(num_layers * num_heads,) mean ratio per head over the answer tokens (1 where a layer recorded nothing)."""
        out = torch.ones(num_layers, num_heads)
        for layer, ratio in self.ratios.items():
            out[layer, : ratio.shape[1]] = ratio[0, :, : self.rows - 1].mean(-1).cpu()
        return out.flatten()


def ratios(query: torch.Tensor, key: torch.Tensor, mask, scale: float, recorder: LookbackRecorder,
           logit_kwargs: dict) -> torch.Tensor:
    """(B, H, rows) lookback ratio of the last ``recorder.rows`` query rows (see the module docstring)."""
    from ..core.hooks import query_logits

    rows = recorder.rows
    probs = torch.softmax(query_logits(query, key, mask, scale, rows=rows, **logit_kwargs), dim=-1)  # (B, H, R, K)
    position = recorder.total - key.shape[2] + torch.arange(key.shape[2], device=probs.device)  # absolute, (K,)
    in_prompt = (position < recorder.prompt_length).float()
    in_answer = 1 - in_prompt
    a_ctx = (probs * in_prompt).sum(-1) / in_prompt.sum().clamp(min=1)
    new_count = torch.arange(rows, device=probs.device).clamp(min=1).float()  # answer tokens before row r
    a_new = (probs * in_answer).sum(-1) / new_count
    return a_ctx / (a_ctx + a_new).clamp(min=1e-12)


@contextmanager
def lookback_ratios(model, recorder: LookbackRecorder) -> Iterator[LookbackRecorder]:
    """Record lookback ratios while the block runs; the model's attention is restored on exit."""
    from ..core.hooks import model_kernel, wrapped_attention

    def wrap(implementation: str):
        kernels: dict[type, object] = {}

        def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
            layer = getattr(module, "layer_idx", None)
            if recorder.rows and query.shape[2] == recorder.rows and isinstance(key, torch.Tensor) and layer is not None:
                scale = scaling if scaling is not None else query.shape[-1] ** -0.5
                logit_kwargs = {k: kwargs.get(k) for k in ("softcap", "position_bias", "sliding_window")}
                recorder.ratios[layer] = ratios(query, key, attention_mask, scale, recorder, logit_kwargs)
            kernel = kernels.get(type(module)) or kernels.setdefault(type(module), model_kernel(module, implementation))
            return kernel(module, query, key, value, attention_mask, scaling=scaling,
                                                        dropout=dropout, **kwargs)

        return attention

    with wrapped_attention(model, wrap, "lookback"):
        yield recorder
