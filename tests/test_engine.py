"""Shared-prefix engine versus the plain one-sample-at-a-time path: identical tokens and top-1 positions."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from retrieval_heads.engine import Engine, common_prefix_length
from retrieval_heads.hooks import attention_control


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
