"""``--follow``: the tokens after a well-scored one rank with it, so a copied value is kept past where attention points."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_kv_eval
from retrieval_heads.errors import UserError
from retrieval_heads.kv.frontier import method_name
from retrieval_heads.kv.policy import PolicySettings, make_plan, read_plan
from retrieval_heads.kv.prefill import kept_positions
from retrieval_heads.kv.snapkv import Observed, follow_scores

TOTAL, WINDOW, SINK = 100, 4, 2
ELIGIBLE = np.array([True, False, True])
KV_SCORES = np.array([[0.8, 0.0], [0.0, 0.0], [0.05, 0.3]])


def test_follow_scores_carry_a_peak_forward_only():
    scores = torch.zeros(2, 20)
    scores[0, 5] = 1.0
    scores[1, 0] = 0.5
    followed = follow_scores(scores, 3)
    assert followed[0].tolist() == [0.0] * 5 + [1.0] * 4 + [0.0] * 11  # 5 and the 3 after it, nothing before
    assert followed[1, :4].tolist() == [0.5] * 4 and followed[1, 4:].sum() == 0
    assert follow_scores(scores, 0) is scores and follow_scores(torch.zeros(2, 0), 3).shape == (2, 0)


def _observed() -> Observed:
    g = torch.Generator().manual_seed(0)
    scores = {layer: torch.rand(2, TOTAL - WINDOW, generator=g) * 0.01 for layer in (0, 2)}
    for layer in (0, 2):
        scores[layer][:, 40] = 1.0  # every head points at token 40 (where a copied value starts), and
        scores[layer][:, 70:73] = 0.5  # at a three-token phrase elsewhere
    return Observed(TOTAL, WINDOW, scores)


def _kept(follow: int, policy: str) -> dict:
    settings = PolicySettings(sink=SINK, obs_window=WINDOW, floor_share=0.0, follow=follow)
    plan = make_plan(policy, 0.2, TOTAL, kv_scores=KV_SCORES, eligible=ELIGIBLE, settings=settings)
    return {(layer, h): set(p.tolist()) for layer, per in kept_positions(plan, _observed()).items()
            for h, p in enumerate(per)}


@pytest.mark.parametrize("policy", ["snapkv", "adaptive"])
def test_follow_keeps_the_tokens_after_the_peak_within_the_same_budget(policy):
    plain, followed = _kept(0, policy), _kept(3, policy)
    assert sum(map(len, plain.values())) == sum(map(len, followed.values()))  # the same bytes, spent elsewhere
    for head, kept in followed.items():
        assert {40, 41, 42, 43, 70, 71, 72} <= kept and not {41, 42, 43} <= plain[head]


def test_the_plan_records_follow_and_older_plans_read_as_none():
    settings = PolicySettings(sink=SINK, obs_window=WINDOW, follow=8)
    plan = make_plan("snapkv", 0.1, TOTAL, kv_scores=KV_SCORES, eligible=ELIGIBLE, settings=settings)
    assert plan.describe()["follow"] == 8
    plain = make_plan("snapkv", 0.1, TOTAL, kv_scores=KV_SCORES, eligible=ELIGIBLE,
                      settings=PolicySettings(sink=SINK, obs_window=WINDOW))
    assert "follow" not in read_plan(plain.describe())  # what runs before --follow wrote: they resume as they were
    assert method_name({"policy": "snapkv", "selection": "window", "follow": 8}) == "snapkv (follow 8)"
    assert method_name({"policy": "snapkv", "selection": "window", "follow": 0}) == "snapkv"
    with pytest.raises(UserError, match="--follow"):
        PolicySettings(follow=-1).check()


def test_kv_eval_with_follow_holds_the_budget_and_refuses_to_resume_without_it(tiny_tokenizer, tmp_path):
    from retrieval_heads.kv.evaluate import run_kv_eval

    loaded, scores, config = tiny_kv_eval(tiny_tokenizer, tmp_path)
    out = tmp_path / "out"
    summary = run_kv_eval(loaded, config, out, scores, budgets=[0.3], sink=4, obs_window=8, progress=False,
                          policies=["full", "snapkv"], follow=5)
    row = {r["policy"]: r for r in summary["rows"]}["snapkv"]
    assert row["follow"] == 5 and row["compressed_kv_fraction"] == pytest.approx(0.3, abs=2 / 150)
    assert json.loads((out / "snapkv-0.3" / "L200" / "kv_plan.json").read_text())["follow"] == 5
    with pytest.raises(UserError):
        run_kv_eval(loaded, config, out, scores, budgets=[0.3], sink=4, obs_window=8, progress=False,
                    policies=["snapkv"], resume=True)
