"""kvpress compatibility check: a DuoAttentionPress built from our exported pattern masks our heads.

kvpress 0.5.5 declares ``transformers<5.3``, so this runs in its own environment, not under pytest
(``.ci/run`` builds one): ``PYTHONPATH=. python tests/kvpress_compat/check_press.py``.
From random scores of a tiny random Llama (3 layers, 8 query heads, 4 KV heads), it exports a
DuoAttention directory, builds the press with ``retrieval_heads.kv.press``, prefills under it and
decodes one token. The decode logits must equal those of a reference attention that hides
positions [sink, T - recent) from exactly the KV heads we expect to stream, and differ from full
attention. Exits 1 with the first mismatch.
"""

from __future__ import annotations

import copy
import sys
import tempfile

import numpy as np
import torch
from transformers import AttentionInterface, DynamicCache, LlamaConfig, LlamaForCausalLM

from retrieval_heads.analysis.formats import save_scores
from retrieval_heads.core.head_scores import HeadScores
from retrieval_heads.errors import UserError
from retrieval_heads.kv.press import duo_attention_press

LAYERS, HEADS, KV_HEADS = 3, 8, 4
SINK, RECENT, TOKENS = 2, 3, 16
RATIO = 0.5  # half of the 12 KV heads stream


def tiny_model(kv_heads: int = KV_HEADS) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=kv_heads, head_dim=8,
                         max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("sdpa")  # kvpress's DuoAttentionPress refuses eager
    return model


def export_pattern(directory: str) -> np.ndarray:
    """Random scores exported as a duo directory; returns the (layers, kv_heads) view they should give."""
    rng = np.random.default_rng(0)
    scores = HeadScores(rng.random((5, LAYERS, HEADS)), model="tiny")
    save_scores(scores, directory, "duo", num_kv_heads=KV_HEADS, sink=SINK, recent=RECENT)
    return scores.kv_view(KV_HEADS, "max")


def lowest(kv: np.ndarray, fraction: float) -> np.ndarray:
    """(layers, kv_heads) bool: the ``fraction`` of KV heads with the lowest scores (scores distinct)."""
    n = round(kv.size * fraction)
    cut = np.sort(kv, axis=None)[n]
    return kv < cut


def reference_attention(streaming: np.ndarray):
    """Eager attention for one decode step that hides [SINK, TOKENS - RECENT) from streaming KV heads."""
    hidden = torch.zeros(LAYERS, KV_HEADS, TOKENS + 1, dtype=torch.bool)
    hidden[:, :, SINK:TOKENS - RECENT] = torch.from_numpy(streaming)[:, :, None]

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        groups = query.shape[1] // key.shape[1]  # query (B, H, 1, D), key/value (B, H_kv, K, D)
        assert query.shape[2] == 1 and key.shape[2] == TOKENS + 1, "reference covers the first decode step only"
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        logits = query @ key.transpose(2, 3) * scaling  # (B, H, 1, K)
        mask = hidden[module.layer_idx].repeat_interleave(groups, 0)[None, :, None, :]
        weights = logits.masked_fill(mask, float("-inf")).softmax(-1)
        return (weights @ value).transpose(1, 2), weights  # (B, 1, H, D)

    return attend


def prefill(model, ids) -> DynamicCache:
    cache = DynamicCache()
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)
    return cache


def decode_logits(model, cache, token) -> torch.Tensor:
    with torch.no_grad():
        return model(token, past_key_values=cache, use_cache=True).logits[0, -1]


def main() -> int:
    model = tiny_model()
    ids = torch.randint(0, 128, (1, TOKENS), generator=torch.Generator().manual_seed(1))
    token = torch.tensor([[7]])
    with tempfile.TemporaryDirectory() as directory:
        kv = export_pattern(directory)
        streaming = lowest(kv, RATIO)
        press = duo_attention_press(directory, RATIO)

        full = decode_logits(model, prefill(model, ids), token)  # no press: full attention
        with press(model):
            cache = prefill(model, ids)  # same cache; the press marks what decoding must not see
        assert (press.sink_size, press.recent_size) == (SINK, RECENT), (press.sink_size, press.recent_size)
        got = press.streaming_mask.cpu().numpy()
        assert got.shape == (LAYERS, KV_HEADS) and (got == streaming).all(), f"streaming heads\n{got}\n!=\n{streaming}"
        reference_cache = copy.deepcopy(cache)
        pressed = decode_logits(model, cache, token)

        AttentionInterface.register("duo_reference", reference_attention(streaming))
        model.set_attn_implementation("duo_reference")
        reference = decode_logits(model, reference_cache, token)

        diff = (pressed - reference).abs().max().item()
        assert torch.allclose(pressed, reference, atol=1e-4), f"press vs reference: max_diff={diff:.2e}"
        effect = (pressed - full).abs().max().item()
        assert effect > 1e-3, f"masking the streaming heads changed nothing (max_diff={effect:.2e})"

        try:
            with press(tiny_model(kv_heads=2)):
                pass
        except UserError as exc:
            assert "4 KV heads" in str(exc) and "has 3 x 2" in str(exc), exc
        else:
            raise AssertionError("a pattern of the wrong shape was accepted")
    print(f"kvpress DuoAttentionPress reads our pattern: {int(streaming.sum())} of {streaming.size} KV heads stream, "
          f"decode logits match the reference (max_diff={diff:.1e}; vs full attention {effect:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
