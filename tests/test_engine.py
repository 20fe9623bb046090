"""Shared-prefix engine versus the plain one-sample-at-a-time path: identical tokens and top-1 positions."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from retrieval_heads.core.engine import Engine, common_prefix_length
from retrieval_heads.core.hooks import AttentionControl, attention_control


def never_stop(_token: int) -> bool:
    return False


def prompts_sharing_prefixes(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 512, (300,), generator=g).tolist()
    needle = [7, 7, 7, 7, 7]
    return [base[:cut] + needle + base[cut:length] for cut, length in [(40, 200), (120, 250), (120, 300), (250, 300), (10, 90)]]


def run_all(model, prompts, *, share: bool, chunk: int = 32):
    with attention_control(model) as control:
        engine = Engine(model, control, never_stop, chunk_size=chunk, share_prefix=share)
        outs = [engine.generate(p, max_new_tokens=5) for p in sorted(prompts)]
    return outs, engine.timer


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_shared_prefix_equals_plain_path(family):
    model = build_tiny(family)
    prompts = prompts_sharing_prefixes()
    plain, plain_timer = run_all(model, prompts, share=False)
    shared, shared_timer = run_all(model, prompts, share=True)
    assert shared_timer.reused_tokens > 0
    assert shared_timer.prefilled_tokens < plain_timer.prefilled_tokens
    for a, b in zip(plain, shared):
        assert a.generated_ids == b.generated_ids
        assert torch.equal(a.top1, b.top1), f"{(a.top1 != b.top1).sum()} positions differ"


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([], [1]) == 0


def test_stop_token_ends_generation():
    model = build_tiny("llama")
    prompt = prompts_sharing_prefixes()[0]
    with attention_control(model) as control:
        first = Engine(model, control, never_stop).generate(prompt, max_new_tokens=6)
        stop_at = first.generated_ids[2]
        stopped = Engine(model, control, lambda t: t == stop_at).generate(prompt, max_new_tokens=6)
    assert stopped.generated_ids == first.generated_ids[: first.generated_ids.index(stop_at) + 1]
    assert stopped.top1.shape[0] == len(stopped.generated_ids)


def peaked_llama():
    """A tiny Llama with large weights, so logits and attention have clear winners (no float ties)."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                            num_attention_heads=8, num_key_value_heads=2, head_dim=8, initializer_range=0.3)
    return tf.LlamaForCausalLM(config).eval()


def test_batched_decoding_matches_one_at_a_time():
    model = peaked_llama()
    prompts = sorted(prompts_sharing_prefixes(seed=3))
    stop_token = {"id": None}
    with attention_control(model) as control:
        single = Engine(model, control, never_stop, chunk_size=32)
        ref = [single.generate(p, max_new_tokens=6) for p in prompts]
        stop_token["id"] = ref[1].generated_ids[2]  # one sample stops early and leaves the batch
        stop = lambda t: t == stop_token["id"]
        ref = [Engine(model, control, stop, chunk_size=32).generate(p, max_new_tokens=6) for p in prompts]
        got = Engine(model, control, stop, chunk_size=32).generate_batch(prompts, max_new_tokens=6)
    assert len(ref[1].generated_ids) < 6
    for a, b in zip(ref, got):
        assert a.generated_ids == b.generated_ids
        mismatch = (a.top1 != b.top1).sum().item()
        assert mismatch == 0, f"{mismatch} top-1 positions differ"



def test_later_batches_reuse_buffers_with_unchanged_results():
    """A shorter batch after a longer one decodes in the same buffers (stale keys where it pads)."""
    model = peaked_llama()
    prompts = sorted(prompts_sharing_prefixes(seed=5), key=len, reverse=True)
    with attention_control(model) as control:
        ref = [Engine(model, control, never_stop, chunk_size=32).generate(p, max_new_tokens=5) for p in prompts]
        engine = Engine(model, control, never_stop, chunk_size=32)
        got = engine.generate_batch(prompts[:3], max_new_tokens=5)
        first = engine._batch_buffers[0][0]
        got += engine.generate_batch(prompts[3:], max_new_tokens=5)
    assert engine._batch_buffers[0][0] is first
    for a, b in zip(ref, got):
        assert a.generated_ids == b.generated_ids
        assert torch.equal(a.top1, b.top1)

def test_preallocated_layer_matches_dynamic_layer_and_grows():
    from transformers.cache_utils import DynamicLayer

    from retrieval_heads.core.engine import PreallocatedLayer

    torch.manual_seed(0)
    first = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    plain = DynamicLayer()
    plain.update(*first)
    buffers = [torch.cat([t, torch.zeros(2, 3, 2, 4)], dim=2) for t in first]  # room for 2 more
    grown = PreallocatedLayer.over(*buffers, length=5)
    for _ in range(4):  # the third step outgrows the buffer
        step = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        expected, got = plain.update(*step), grown.update(*step)
        assert all(torch.equal(e, g) for e, g in zip(expected, got))
    rows = torch.tensor([1])
    plain.batch_select_indices(rows)
    grown.batch_select_indices(rows)
    step = torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4)
    assert all(torch.equal(e, g) for e, g in zip(plain.update(*step), grown.update(*step)))
    assert grown.get_seq_length() == plain.get_seq_length() == 10


def test_prefill_and_decode_track_no_gradients():
    """Called directly (as kv-eval does), they must not build an autograd graph: it holds every activation."""
    model = build_tiny("llama")
    engine = Engine(model, AttentionControl(), stop=lambda token: False)
    ids = list(range(3, 40))
    cache = engine.prefill(ids[:-1])
    assert not any(layer.keys.requires_grad for layer in cache.layers)
    generation = engine.decode(cache, ids, 3, probe=False)
    assert len(generation.generated_ids) == 3 and not cache.layers[0].keys.requires_grad
