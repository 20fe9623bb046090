"""``adaptive`` and ``retrieval-adaptive``: the evidence divides one pool of tokens among the KV heads."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import tiny_kv_eval
from retrieval_heads.errors import UserError
from retrieval_heads.kv.policy import PolicySettings, make_plan
from retrieval_heads.kv.prefill import kept_positions
from retrieval_heads.kv.snapkv import Observed, evidence_counts

TOTAL, WINDOW, SINK = 100, 4, 2
ELIGIBLE = np.array([True, False, True])  # layer 1 is a sliding-window layer: never in the pool
KV_SCORES = np.array([[0.8, 0.0], [0.0, 0.0], [0.05, 0.3]])
SETTINGS = PolicySettings(sink=SINK, obs_window=WINDOW, floor_share=0.0)


def _observed(seed: int = 0) -> Observed:
    g = torch.Generator().manual_seed(seed)
    return Observed(TOTAL, WINDOW, {layer: torch.rand(2, TOTAL - WINDOW, generator=g) * 0.01 for layer in (0, 2)})


def _counts(plan, observed) -> dict:
    return {(l, h): int(p.numel()) for l, per in kept_positions(plan, observed).items() for h, p in enumerate(per)}


def test_the_head_the_evidence_points_at_keeps_more_and_the_total_is_the_budget():
    observed = _observed()
    observed.scores[2][1, 40:70] = 1.0  # 30 tokens only this head attends to
    plan = make_plan("adaptive", 0.2, TOTAL, kv_scores=KV_SCORES, eligible=ELIGIBLE, settings=SETTINGS)
    assert plan.pooled and plan.policy == "adaptive" and plan.describe()["head_budgets"] == "evidence"
    counts = _counts(plan, observed)
    assert sum(counts.values()) == 4 * 20  # the pool: 0.2 x 100 tokens x 4 eligible KV heads
    assert counts[(2, 1)] >= SINK + WINDOW + 30 and min(counts.values()) >= SINK + WINDOW
    assert set(range(40, 70)) <= set(kept_positions(plan, observed)[2][1].tolist())
    equal = _counts(make_plan("snapkv", 0.2, TOTAL, kv_scores=KV_SCORES, eligible=ELIGIBLE, settings=SETTINGS),
                    observed)
    assert set(equal.values()) == {20}  # snapkv: the same count for every head, whatever the evidence


def test_the_floor_keeps_each_heads_own_best():
    observed = _observed(1)
    observed.scores[2][1, 10:90] = 1.0  # the evidence alone would give this head almost the whole pool
    for layer, head, spike in ((0, 0, 20), (0, 1, 30), (2, 0, 50)):
        observed.scores[layer][head, spike] = 0.5
    bare = make_plan("adaptive", 0.3, TOTAL, kv_scores=KV_SCORES, eligible=ELIGIBLE, settings=SETTINGS)
    floored = make_plan("adaptive", 0.3, TOTAL, kv_scores=KV_SCORES, eligible=ELIGIBLE,
                        settings=PolicySettings(sink=SINK, obs_window=WINDOW, floor_share=0.5))
    floors = _counts(floored, observed)
    assert min(floors.values()) >= 15 and sum(floors.values()) == sum(_counts(bare, observed).values()) == 120
    assert min(_counts(bare, observed).values()) < 15
    kept = kept_positions(floored, observed)
    assert all(spike in kept[layer][head].tolist() for layer, head, spike in ((0, 0, 20), (0, 1, 30), (2, 0, 50)))


def test_retrieval_adaptive_keeps_retrieval_heads_whole_and_pools_the_rest():
    observed = _observed(2)
    observed.scores[0][1, 5:25] = 1.0
    settings = PolicySettings(sink=SINK, obs_window=WINDOW, floor_share=0.0, full_share=0.5, threshold=0.1)
    plan = make_plan("retrieval-adaptive", 0.5, TOTAL, kv_scores=KV_SCORES, eligible=ELIGIBLE, settings=settings)
    assert plan.full_heads() == ["0-0"] and plan.pooled
    counts = _counts(plan, observed)
    assert counts[(0, 0)] == TOTAL and sum(counts.values()) == plan.token_counts(TOTAL).sum() == 100 + 3 * 33
    assert counts[(0, 1)] >= 26 and evidence_counts(plan, observed)[1].sum() == 0  # the sliding layer: nothing


def test_a_pool_too_small_for_the_floors_keeps_equal_counts():
    plan = make_plan("adaptive", 0.05, TOTAL, kv_scores=KV_SCORES, eligible=ELIGIBLE, settings=SETTINGS)
    assert evidence_counts(plan, _observed(3))[ELIGIBLE].tolist() == [[5, 5], [5, 5]]  # 5 < sink + window


def test_adaptive_refuses_a_shared_token_ranking():
    settings = PolicySettings(sink=SINK, obs_window=WINDOW, token_ranking="retrieval-heads")
    with pytest.raises(UserError, match="--token-ranking own"):
        make_plan("adaptive", 0.2, TOTAL, kv_scores=KV_SCORES, eligible=ELIGIBLE, settings=settings)


def test_kv_eval_runs_the_adaptive_policies_at_their_budget(tiny_tokenizer, tmp_path):
    from retrieval_heads.kv.evaluate import run_kv_eval

    loaded, scores, config = tiny_kv_eval(tiny_tokenizer, tmp_path)
    out = tmp_path / "out"
    summary = run_kv_eval(loaded, config, out, scores, budgets=[0.3], sink=4, obs_window=8, progress=False,
                          policies=["full", "snapkv", "adaptive", "retrieval-adaptive"], query_agnostic=True,
                          selection="reread")
    by = {r["policy"]: r for r in summary["rows"]}
    for policy in ("adaptive", "retrieval-adaptive"):
        assert by[policy]["compressed_kv_fraction"] == pytest.approx(0.3, abs=2 / 150)  # bytes held, measured
    plan = json.loads((out / "query-agnostic" / "adaptive-0.3" / "L200" / "kv_plan.json").read_text())
    assert plan["head_budgets"] == "evidence" and plan["policy"] == "adaptive"


def test_a_layer_pool_divides_each_layers_budget_apart():
    observed = _observed(4)
    observed.scores[0][1, 10:60] = 1.0  # layer 0's second head: what the whole model's pool would follow
    settings = PolicySettings(sink=SINK, obs_window=WINDOW, floor_share=0.0, pool="layer")
    plan = make_plan("adaptive", 0.2, TOTAL, kv_scores=KV_SCORES, eligible=ELIGIBLE, settings=settings)
    assert plan.describe()["pool"] == "layer"
    by_layer = evidence_counts(plan, observed)
    assert by_layer[0].sum() == by_layer[2].sum() == 40 and by_layer[0, 1] > by_layer[0, 0]
    model = evidence_counts(make_plan("adaptive", 0.2, TOTAL, kv_scores=KV_SCORES, eligible=ELIGIBLE,
                                      settings=replace(settings, pool="model")), observed)
    assert model[0].sum() > 40 and model.sum() == 80
    with pytest.raises(UserError, match="--pool"):
        PolicySettings(pool="head").check()
