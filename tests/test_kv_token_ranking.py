"""``token_ranking="retrieval-heads"``: every KV head keeps the tokens the retrieval KV heads rank high."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_kv_eval
from retrieval_heads.errors import UserError
from retrieval_heads.kv.policy import PolicySettings, make_plan
from retrieval_heads.kv.prefill import kept_positions
from retrieval_heads.kv.snapkv import Observed

TOTAL, WINDOW = 60, 4


def _observed(seed: int = 0) -> Observed:
    g = torch.Generator().manual_seed(seed)
    return Observed(TOTAL, WINDOW, {layer: torch.rand(2, TOTAL - WINDOW, generator=g) for layer in (0, 2)})


def test_shared_scores_are_the_guides_mean_normalised_scores():
    observed = _observed()
    before = {layer: s.clone() for layer, s in observed.scores.items()}
    guides = [(0, 1), (2, 0)]
    a, b = observed.scores[0][1], observed.scores[2][0]
    shared = observed.shared_from(guides)
    expected = (a / a.mean() + b / b.mean()) / 2
    for scores in shared.scores.values():
        assert scores.shape == (2, TOTAL - WINDOW)
        torch.testing.assert_close(scores, expected.expand(2, -1))
    torch.testing.assert_close(observed.shared_from(guides, "max").scores[0][1], torch.maximum(a / a.mean(), b / b.mean()))
    assert all(torch.equal(observed.scores[layer], s) for layer, s in before.items())  # left as it was
    with pytest.raises(ValueError):
        observed.shared_from([])


def test_retrieval_ranking_guides_from_eligible_heads_above_the_threshold():
    kv_scores = np.array([[0.5, 0.05], [0.9, 0.9], [0.02, 0.3]])
    eligible = np.array([True, False, True])  # layer 1 is a sliding-window layer: never a guide
    settings = PolicySettings(sink=2, obs_window=WINDOW, token_ranking="retrieval-heads", threshold=0.1)
    for policy in ("snapkv", "retrieval-snapkv", "headkv"):
        plan = make_plan(policy, 0.2, TOTAL, kv_scores=kv_scores, eligible=eligible, settings=settings)
        assert plan.guides == ((0, 0), (2, 1))
        described = plan.describe()
        assert described["token_ranking"] == "retrieval-heads" and described["guide_kv_heads"] == ["0-0", "2-1"]
    old_name = PolicySettings(sink=2, obs_window=WINDOW, token_ranking="retrieval", threshold=0.1)  # deprecated
    assert old_name == settings and old_name.token_ranking == "retrieval-heads"
    own = make_plan("snapkv", 0.2, TOTAL, kv_scores=kv_scores, eligible=eligible, settings=PolicySettings())
    assert own.guides == () and own.describe()["token_ranking"] == "own" and "guide_kv_heads" not in own.describe()
    with pytest.raises(UserError, match="none does"):
        make_plan("snapkv", 0.2, TOTAL, kv_scores=kv_scores * 0.1, eligible=eligible, settings=settings)
    with pytest.raises(UserError, match="--token-ranking"):
        PolicySettings(token_ranking="mine").check()


def test_every_head_keeps_what_the_guides_rank_high():
    observed = _observed(1)
    spike = 30  # a token only the guide head attends to
    for layer, scores in observed.scores.items():
        scores[:, spike] = 0.0
    observed.scores[0][0, spike] = 50.0
    kv_scores = np.array([[0.8, 0.0], [0.0, 0.0], [0.0, 0.0]])
    eligible = np.array([True, False, True])
    base = dict(kv_scores=kv_scores, eligible=eligible)
    own = make_plan("snapkv", 0.25, TOTAL, **base, settings=PolicySettings(sink=2, obs_window=WINDOW))
    guided = make_plan("snapkv", 0.25, TOTAL, **base,
                       settings=PolicySettings(sink=2, obs_window=WINDOW, token_ranking="retrieval-heads", own_share=0))
    kept_own, kept_guided = kept_positions(own, observed), kept_positions(guided, observed)
    assert sum(spike in p.tolist() for per in kept_own.values() for p in per) < 4  # its own ranking drops it
    first = kept_guided[0][0]
    assert spike in first.tolist() and first.numel() == 15
    for per in kept_guided.values():
        for positions in per:
            assert torch.equal(positions, first)  # every head, every layer: the same tokens


def test_each_head_keeps_its_own_best_share_first():
    observed = _observed(2)
    guide_spike, own_spikes = 30, {(0, 0): 10, (0, 1): 12, (2, 0): 14, (2, 1): 16}
    guide = observed.scores[0][0]
    guide[guide_spike] = 50.0
    guide[[12, 14, 16]] = 0.0  # the guide ranks the other heads' own best tokens last
    for (layer, head), position in own_spikes.items():
        observed.scores[layer][head, position] = 40.0
    kv_scores = np.array([[0.8, 0.0], [0.0, 0.0], [0.0, 0.0]])
    eligible = np.array([True, False, True])

    def kept(own_share: float) -> dict:
        settings = PolicySettings(sink=2, obs_window=WINDOW, token_ranking="retrieval-heads", own_share=own_share)
        plan = make_plan("snapkv", 0.25, TOTAL, kv_scores=kv_scores, eligible=eligible, settings=settings)
        assert plan.own_share == own_share and plan.describe()["own_share"] == own_share
        return kept_positions(plan, observed)

    shared, mixed = kept(0.0), kept(0.3)  # 15 kept: 2 sink + 4 window + 9 chosen, 2 of them by the head itself
    for (layer, head), position in own_spikes.items():
        assert guide_spike in mixed[layer][head].tolist() and mixed[layer][head].numel() == 15
        assert position in mixed[layer][head].tolist()
        assert (position in shared[layer][head].tolist()) == ((layer, head) == (0, 0))
    with pytest.raises(UserError, match="--own-share"):
        PolicySettings(own_share=1.5).check()


def test_kv_eval_records_the_token_ranking(tiny_tokenizer, tmp_path):
    from retrieval_heads.kv.evaluate import run_kv_eval

    loaded, scores, config = tiny_kv_eval(tiny_tokenizer, tmp_path)
    options = dict(budgets=[0.3], policies=["full", "snapkv", "headkv"], sink=4, window=16, obs_window=8,
                   query_agnostic=True, progress=False, selection="reread")
    out = tmp_path / "out"
    summary = run_kv_eval(loaded, config, out, scores, token_ranking="retrieval-heads", **options)
    assert summary["token_ranking"] == "retrieval-heads"
    by = {r["policy"]: r for r in summary["rows"]}
    assert by["full"]["token_ranking"] is None and by["headkv"]["token_ranking"] == "retrieval-heads"
    assert by["snapkv"]["compressed_kv_fraction"] == pytest.approx(0.3, abs=0.5 / 150)
    plan = json.loads((out / "query-agnostic" / "snapkv-0.3" / "L200" / "kv_plan.json").read_text())
    assert plan["token_ranking"] == "retrieval-heads" and plan["guide_kv_heads"] and plan["own_share"] == 0.2
    assert summary["own_share"] == 0.2 and by["snapkv"]["own_share"] == 0.2
    with pytest.raises(UserError, match="another KV plan"):  # each head's own ranking is another plan
        run_kv_eval(loaded, config, out, scores, resume=True, **options)
