"""Byte budgets: every policy keeps b of the full cache's bytes (within rounding); old head-fraction plans are
reproduced by their byte budget; HeadKV and retrieval-snapkv allocations. Numpy only, no model."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval_heads.errors import UserError
from retrieval_heads.kv.policy import (
    POLICIES,
    PolicySettings,
    headkv_keep,
    make_plan,
    random_plan,
    retrieval_snapkv,
    top_fraction,
)

SHAPE = (30, 3)  # smollm2-135m: 30 global layers x 3 KV heads = 90
ELIGIBLE = np.ones(30, dtype=bool)
SETTINGS = PolicySettings(sink=64, window=384, obs_window=32)


@pytest.fixture
def kv_scores():
    rng = np.random.default_rng(0)
    return rng.random(SHAPE) * (rng.random(SHAPE) > 0.7)  # sparse, like retrieval scores


@pytest.mark.parametrize("tokens", [4000, 3957])
@pytest.mark.parametrize("budget", [0.05, 0.1, 0.15, 0.2, 0.5])
def test_every_policy_keeps_the_budget(kv_scores, budget, tokens):
    n = 90
    for policy in POLICIES[1:]:
        plan = make_plan(policy, budget, tokens, kv_scores=kv_scores, eligible=ELIGIBLE, settings=SETTINGS)
        got = plan.byte_fraction(tokens)
        counts = plan.token_counts(tokens)
        assert got == pytest.approx(counts.sum() / (n * tokens))
        if policy in ("retrieval", "random") and not plan.extra.get("shrunk"):
            # whole heads: within budget, and one more full head would not fit
            step = (tokens - plan.sink - plan.recent_window) / (n * tokens)
            assert budget - step - 1e-9 <= got <= budget + 0.5 / tokens + 1e-12, (policy, got)
        else:  # each KV head within half a token of b x T
            assert abs(got - budget) <= 0.5 / tokens + 1e-12, (policy, got)
        assert (counts <= tokens).all() and (counts >= 0).all()


def test_retrieval_reproduces_the_old_head_fraction_plan(kv_scores):
    """README's configuration: 23 of 90 KV heads full, sink 64 + window 384, at 4000 tokens = 33.9% of the bytes."""
    old = top_fraction(kv_scores, 0.25, eligible=ELIGIBLE, sink=64, window=384)
    assert old.num_full == 23
    matched = old.byte_fraction(4000)
    assert matched == pytest.approx((23 * 4000 + 67 * 448) / (90 * 4000))
    for budget in (matched, round(matched, 3)):  # the exact fraction and the 0.339 a user would type
        new = make_plan("retrieval", budget, 4000, kv_scores=kv_scores, eligible=ELIGIBLE, settings=SETTINGS)
        assert np.array_equal(new.full, old.full) and (new.sink, new.recent_window) == (64, 384)
        rand = make_plan("random", budget, 4000, kv_scores=kv_scores, eligible=ELIGIBLE, settings=SETTINGS)
        assert np.array_equal(rand.full, random_plan(SHAPE, 23, eligible=ELIGIBLE, seed=0).full)
        uniform = make_plan("uniform", budget, 4000, kv_scores=kv_scores, eligible=ELIGIBLE, settings=SETTINGS)
        assert (uniform.sink, uniform.recent_window) == (64, 1292)  # README's "uniform sink + window 1292"
    below = make_plan("retrieval", 0.3388, 4000, kv_scores=kv_scores, eligible=ELIGIBLE, settings=SETTINGS)
    assert below.num_full == 22


def test_retrieval_shrinks_the_window_when_sink_and_window_exceed_the_budget(kv_scores):
    plan = make_plan("retrieval", 0.05, 4000, kv_scores=kv_scores, eligible=ELIGIBLE, settings=SETTINGS)
    assert plan.num_full == 0 and (plan.sink, plan.recent_window) == (64, 136) and plan.byte_fraction(4000) == 0.05
    tiny = make_plan("retrieval", 0.01, 4000, kv_scores=kv_scores, eligible=ELIGIBLE, settings=SETTINGS)
    assert (tiny.sink, tiny.recent_window) == (40, 0)  # the sink shrinks too
    rand = make_plan("random", 0.05, 4000, kv_scores=kv_scores, eligible=ELIGIBLE, settings=SETTINGS)
    assert rand.num_full == 0 and rand.recent_window == 136


def test_headkv_allocation_sums_to_the_pool_with_floor_and_cap():
    scores = np.zeros((4, 3))
    scores[0, 0] = 10.0  # would take far more than the whole context: capped at 1
    scores[1, 1] = 1.0
    scores[2, 2] = 0.5
    budget, floor_share = 0.2, 0.2
    keep = headkv_keep(scores, budget, eligible=np.ones(4, dtype=bool), floor_share=floor_share)
    assert keep.sum() == pytest.approx(budget * 12)
    assert keep.min() == pytest.approx(floor_share * budget)  # scoreless heads get exactly the floor
    assert keep[0, 0] == 1.0
    # the rest (and the capped head's excess) in proportion to the uncapped scores: 1.0 : 0.5
    extra = keep - floor_share * budget
    assert extra[1, 1] / extra[2, 2] == pytest.approx(2.0)
    assert extra[1, 1] + extra[2, 2] == pytest.approx(budget * 12 - 1 - 11 * floor_share * budget)
    flat = headkv_keep(np.zeros((4, 3)), budget, eligible=np.ones(4, dtype=bool))
    assert np.allclose(flat, budget)  # no scores: the equal split
    sliding = headkv_keep(scores, budget, eligible=np.array([True, False, True, True]))
    assert (sliding[1] == 0).all() and sliding.sum() == pytest.approx(budget * 9)
    assert np.allclose(headkv_keep(scores, 1.0, eligible=np.ones(4, dtype=bool)), 1.0)


def test_retrieval_snapkv_full_heads_within_their_share(kv_scores):
    settings = PolicySettings(full_share=0.5, threshold=0.1)
    plan = retrieval_snapkv(kv_scores, 0.1, eligible=ELIGIBLE, settings=settings)
    above = int((kv_scores > 0.1).sum())
    assert plan.num_full == min(above, int(0.5 * 0.1 * 90)) == 4
    full_scores = np.sort(kv_scores[plan.full])
    assert full_scores.min() >= np.sort(kv_scores.ravel())[-4]  # the best ones
    rest = plan.keep[~plan.full]
    assert np.allclose(rest, rest[0]) and plan.keep.sum() == pytest.approx(0.1 * 90)
    none = retrieval_snapkv(np.zeros(SHAPE), 0.1, eligible=ELIGIBLE, settings=settings)
    assert none.num_full == 0 and np.allclose(none.keep, 0.1)  # nothing above the threshold: plain snapkv


def test_budget_and_settings_errors(kv_scores):
    for bad in (0.0, -0.1, 1.5, None):
        with pytest.raises(UserError, match="fraction of the full cache's KV bytes"):
            make_plan("snapkv", bad, 4000, kv_scores=kv_scores, eligible=ELIGIBLE)
    with pytest.raises(UserError, match="--floor-share"):
        PolicySettings(floor_share=1.5).check()
    with pytest.raises(UserError, match="--obs-window"):
        PolicySettings(obs_window=0).check()
