"""Head selection, failure types, NIAH runs and mask sweeps on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import build_tiny

from retrieval_heads.cli import main
from retrieval_heads.core.head_scores import HeadScores
from retrieval_heads.core.hooks import AblationPhase, AttentionControl
from retrieval_heads.errors import UserError
from retrieval_heads.masking.failures import FailureType, classify, contains_answer
from retrieval_heads.masking.heads import (MaskPlan, Selection, parse_heads, plan_masking, random_heads, random_pool,
                                           top_heads)
from retrieval_heads.masking.niah import run_niah
from retrieval_heads.masking.sweep import run_mask_sweep, usable_ks
from retrieval_heads.models import LoadedModel
from retrieval_heads.sweep.grid import SweepConfig


def scores_3x8() -> HeadScores:
    mean = np.zeros((3, 8))
    mean[2, 5], mean[1, 0], mean[0, 3], mean[2, 1] = 0.9, 0.6, 0.3, 0.05
    return HeadScores(mean[None])


def test_top_and_random_heads():
    s = scores_3x8()
    assert top_heads(s, 3) == [(2, 5), (1, 0), (0, 3)]
    drawn = random_heads(s, 5, seed=1)
    assert len(set(drawn)) == 5 and not {(2, 5), (1, 0), (0, 3)} & set(drawn)
    assert drawn == random_heads(s, 5, seed=1) != random_heads(s, 5, seed=2)


def test_random_heads_never_include_the_top_k_they_are_compared_with():
    """With K beyond the retrieval heads, the top K reach below the threshold; random-K stays outside them."""
    mean = np.zeros((3, 8))
    mean[0, :] = [0.9, 0.5, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04]  # 2 retrieval heads, 6 just below 0.1
    s = HeadScores(mean[None])
    top = set(top_heads(s, 8))
    assert top == {(0, h) for h in range(8)}
    for seed in range(20):
        drawn = random_heads(s, 8, seed=seed)
        assert len(set(drawn)) == 8 and not top & set(drawn)
    # the top 12 are layer 0 and heads 0-3 of layer 1 (ties by position): 12 heads are left to draw from
    assert set(random_heads(s, 12, seed=0)) == {(1, h) for h in range(4, 8)} | {(2, h) for h in range(8)}
    with pytest.raises(UserError, match="outside the top K"):
        random_heads(s, 13, seed=0)
    assert usable_ks([0, 2, 8, 12, 13, 20], s) == [0, 2, 8, 12]
    assert len(random_pool(s, 2)) == 22  # K within the retrieval heads: every non-retrieval head


def test_masking_errors_are_user_errors():
    s = scores_3x8()
    with pytest.raises(UserError, match="larger than"):
        plan_masking(num_layers=3, num_heads=8, scores=s, mask_top=25)
    with pytest.raises(UserError, match="non-retrieval"):
        plan_masking(num_layers=3, num_heads=8, scores=s, mask_random=22)
    with pytest.raises(UserError, match="does not exist"):
        parse_heads("40-3", 3, 8)
    with pytest.raises(UserError, match="layer-head"):
        parse_heads("4:3", 3, 8)
    with pytest.raises(UserError, match="4x8 model"):
        plan_masking(num_layers=3, num_heads=8, scores=HeadScores(np.zeros((1, 4, 8))), mask_top=2)
    with pytest.raises(UserError, match="needs --scores"):
        plan_masking(num_layers=3, num_heads=8, mask_top=2)
    assert parse_heads("2-1, 0-7", 3, 8) == [(2, 1), (0, 7)]


def test_random_heads_per_sample_differ():
    plan = plan_masking(num_layers=3, num_heads=8, scores=scores_3x8(), mask_random=4, per_sample=True, seed=3)
    assert plan.heads_for("n0-L100-d0") != plan.heads_for("n1-L100-d0")
    assert plan.heads_for("n0-L100-d0") == plan.heads_for("n0-L100-d0")


@pytest.mark.parametrize(
    "response, expected",
    [
        ("The code is seven swans.", None),
        ("", FailureType.EMPTY),
        ("I don't know.", FailureType.EMPTY),
        ("The secret code of the blue door is the secret code.", FailureType.EMPTY),
        ("The secret code of the blue door is seven geese.", FailureType.INCOMPLETE),
        ("The secret code of the blue door is the assert statement.", FailureType.WRONG_EXTRACTION),
        ("The secret code of the blue door is a purple dragon.", FailureType.HALLUCINATION),
    ],
)
def test_failure_types(response, expected):
    got = classify(response, answer="seven swans", needle="The secret code of the blue door is seven swans.",
                   question="What is the secret code of the blue door?",
                   context="The assert statement checks a condition. The secret code of the blue door is seven swans.")
    assert got == expected


def test_contains_answer_ignores_case_and_punctuation():
    assert contains_answer("It is: Seven Swans!", "seven swans")
    assert not contains_answer("seven black swans", "seven swans")


@pytest.fixture
def loaded(tiny_tokenizer):
    return LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)


def config() -> SweepConfig:
    return SweepConfig(model="tiny-llama", lengths=[250, 350], depths=[0, 100], max_new_tokens=4, chunk_size=64)


def test_niah_run_records_masked_heads_and_heatmap(loaded, tmp_path):
    plan = MaskPlan(Selection.EXPLICIT, 2, ((0, 1), (2, 3)))
    result = run_niah(loaded, config(), tmp_path, plan=plan, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 32
    assert all(r["masked_heads"] == ["0-1", "2-3"] for r in rows)
    assert all(0 <= r["score"] <= 100 for r in rows)
    assert result.summary["mean_score"] == pytest.approx(sum(r["score"] for r in rows) / 32)
    assert (tmp_path / "heatmap.png").stat().st_size > 1000


def test_prefill_ablation_drops_the_shared_cache_between_different_heads(loaded, tmp_path):
    plan = plan_masking(num_layers=3, num_heads=8, scores=scores_3x8(), mask_random=3, per_sample=True)
    control = AttentionControl(phase=AblationPhase.ALL)
    run_niah(loaded, config(), tmp_path / "a", plan=plan, control=control, progress=False)
    reference = SweepConfig(**{**config().to_dict(), "share_prefix": False})
    run_niah(loaded, reference, tmp_path / "b", plan=plan, control=AttentionControl(phase=AblationPhase.ALL), progress=False)
    key = lambda p: sorted((json.loads(l)["id"], json.loads(l)["response"]) for l in p.read_text().splitlines())
    assert key(tmp_path / "a" / "results.jsonl") == key(tmp_path / "b" / "results.jsonl")


def test_mask_sweep_rows_and_curve(loaded, tmp_path):
    summary = run_mask_sweep(loaded, config(), tmp_path, scores_3x8(), ks=[0, 2, 50], progress=False)
    assert [(r["selection"], r["k"]) for r in summary["rows"]] == [("none", 0), ("top", 2), ("random", 2)]
    assert (tmp_path / "mask_sweep.png").exists() and (tmp_path / "top-2" / "heatmap.png").exists()
    assert usable_ks([0, 5, 100], scores_3x8()) == [0, 5]


def test_mask_sweep_draws_random_heads_per_sample(loaded, tmp_path):
    summary = run_mask_sweep(loaded, config(), tmp_path, scores_3x8(), ks=[3], per_sample=True, progress=False)
    assert summary["random_per_sample"] is True
    assert summary["rows"][1]["masked_heads"] == "per-sample" and len(summary["rows"][0]["masked_heads"]) == 3
    rows = [json.loads(line) for line in (tmp_path / "random-3" / "results.jsonl").read_text().splitlines()]
    drawn = {tuple(r["masked_heads"]) for r in rows}
    assert len(drawn) > 1 and all(len(heads) == 3 for heads in drawn)


def test_niah_cli_rejects_scores_of_another_shape(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "scores.json"
    bad.write_text(json.dumps({f"{l}-{h}": [0.0] for l in range(4) for h in range(4)}))
    import retrieval_heads.cli.common as common

    monkeypatch.setattr(common, "load_for", lambda args: LoadedModel(build_tiny("llama"), None, "tiny", 0.0))
    code = main(["niah", "--scores", str(bad), "--mask-top", "2", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "4x4 model" in capsys.readouterr().err
