"""Sparsity, dynamic activation, KV view and comparison on small synthetic head scores (no model)."""

import json

import numpy as np
import pytest

import retrieval_heads.analysis.properties as analysis
from retrieval_heads.cli import main
from retrieval_heads.core.head_scores import HeadScores
from retrieval_heads.errors import UserError


def scores_from_means(mean, n_samples: int = 1, **kw) -> HeadScores:
    """HeadScores whose every sample equals ``mean`` (layers, heads)."""
    return HeadScores(np.repeat(np.asarray(mean, dtype=float)[None], n_samples, axis=0), **kw)


@pytest.fixture
def gqa_scores() -> HeadScores:
    """4 samples, 3 layers x 4 heads. Head 1-2 scores in every sample, 2-0 in half of them."""
    samples = np.zeros((4, 3, 4))
    samples[:, 1, 2] = [0.9, 0.8, 1.0, 0.7]  # mean 0.85, always active
    samples[:2, 2, 0] = [0.4, 0.2]  # mean 0.15, active in 2 of 4
    samples[0, 0, 3] = 0.2  # mean 0.05, active in 1 of 4
    return HeadScores(samples, model="toy")


def test_buckets_follow_the_papers_boundaries():
    mean = np.array([[0.0, 0.05, 0.1, 0.1000001], [0.5, 0.5000001, 2.0, 0.0]])
    buckets = analysis.bucket_counts(mean)
    assert [b.label for b in buckets] == ["= 0", "(0, 0.1]", "(0.1, 0.5]", "> 0.5"]
    assert [b.count for b in buckets] == [2, 2, 2, 2]
    assert sum(b.percent for b in buckets) == pytest.approx(100.0)


def test_sparsity_counts_retrieval_heads_per_layer(gqa_scores):
    sp = analysis.sparsity(gqa_scores)
    assert sp.n_heads == 12
    assert sp.n_retrieval == 2
    assert sp.percent_retrieval == pytest.approx(100 * 2 / 12)
    assert sp.per_layer == [0, 1, 1]


def test_activation_frequency_and_always_active(gqa_scores):
    act = analysis.activation(gqa_scores)
    assert act.frequency.shape == (3, 4)
    assert act.frequency[1, 2] == 1.0 and act.frequency[2, 0] == 0.5 and act.frequency[0, 3] == 0.25
    assert [(h.layer, h.head) for h in act.always_active] == [(1, 2)]
    assert [(h.layer, h.head, h.active_fraction) for h in act.retrieval] == [(1, 2, 1.0), (2, 0, 0.5)]


def test_empty_samples_are_counted_but_not_dropped(gqa_scores):
    samples = np.concatenate([gqa_scores.samples, np.zeros((1, 3, 4))])  # one sample where nothing scored
    act = analysis.activation(HeadScores(samples))
    assert act.always_active == [] and act.n_empty_samples == 1 and act.n_always_active_nonempty == 1


def test_top_heads_carry_active_fraction(gqa_scores):
    top = analysis.top_heads(gqa_scores, 3)
    assert [(h.layer, h.head) for h in top] == [(1, 2), (2, 0), (0, 3)]
    assert top[1].score == pytest.approx(0.15) and top[1].active_fraction == 0.5


def test_kv_view_groups_query_heads(gqa_scores):
    kv = analysis.kv_view(gqa_scores, 2)
    assert kv.group_size == 2 and kv.max.shape == (3, 2)
    assert kv.max[1, 1] == pytest.approx(0.85) and kv.mean[1, 1] == pytest.approx(0.425)
    assert (kv.top[0].layer, kv.top[0].head) == (1, 1)
    with pytest.raises(UserError, match="cannot be grouped into 3"):
        analysis.kv_view(gqa_scores, 3)


def test_compare_identical_and_opposite():
    rng = np.random.default_rng(0)
    mean = rng.random((4, 8)) * 0.3
    same = analysis.compare(scores_from_means(mean), scores_from_means(mean), top=5)
    assert same.pearson == pytest.approx(1.0) and same.spearman == pytest.approx(1.0)
    assert same.topk_overlap == 5 and same.topk_overlap_fraction == 1.0 and same.jaccard == 1.0
    other = analysis.compare(scores_from_means(mean), scores_from_means(mean.max() - mean), top=5)
    assert other.pearson == pytest.approx(-1.0) and other.topk_overlap == 0


def test_compare_matches_numpy_and_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    a = rng.random((5, 6)) * (rng.random((5, 6)) > 0.5)  # ties at zero
    b = a + rng.normal(0, 0.1, a.shape).clip(0)
    result = analysis.compare(scores_from_means(a), scores_from_means(b))
    assert result.pearson == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert result.spearman == pytest.approx(spearmanr(a.ravel(), b.ravel())[0])


def test_compare_jaccard_and_overlap_counts():
    a = np.zeros((2, 4))
    b = np.zeros((2, 4))
    a[0, :3] = [0.9, 0.5, 0.2]  # retrieval heads 0-0, 0-1, 0-2
    b[0, 1:4] = [0.9, 0.5, 0.2]  # retrieval heads 0-1, 0-2, 0-3
    result = analysis.compare(scores_from_means(a), scores_from_means(b), top=2)
    assert result.jaccard == pytest.approx(2 / 4)
    assert result.topk_overlap == 1  # {0-0, 0-1} vs {0-1, 0-2}
    assert result.n_retrieval_both == 2


def test_compare_shape_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="different shapes.*2x4.*3x4"):
        analysis.compare(scores_from_means(np.zeros((2, 4))), scores_from_means(np.zeros((3, 4))))


def test_constant_scores_give_nan_correlation_and_json_null():
    zeros = scores_from_means(np.zeros((2, 2)))
    result = analysis.compare(zeros, zeros)
    assert np.isnan(result.pearson) and np.isnan(result.jaccard)
    encoded = json.dumps(result.to_dict(), allow_nan=False)
    assert '"pearson": null' in encoded


def test_analyze_is_json_ready(gqa_scores):
    result = analysis.analyze(gqa_scores, top=2, num_kv_heads=2)
    json.dumps(result, allow_nan=False)
    assert {"buckets", "n_retrieval_heads", "top_heads", "always_active"} <= set(result)
    assert result["n_retrieval_heads"] == 2
    assert [(h["layer"], h["head"]) for h in result["always_active"]] == [(1, 2)]
    assert result["kv_heads"]["num_kv_heads"] == 2 and len(result["top_heads"]) == 2


def test_aggregate_scores_have_no_activation():
    mean = scores_from_means(np.full((2, 2), 0.2), meta={"aggregate": True})
    result = analysis.analyze(mean)
    assert result["activation"] is None and result["always_active"] is None
    assert result["top_heads"][0]["active_fraction"] is None


def test_cli_analyze_json_and_text(tmp_path, gqa_scores, capsys):
    path = tmp_path / "toy.json"
    gqa_scores.save_paper_json(path)
    assert main(["analyze", str(path), "--json", "--top", "3", "--kv-heads", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_retrieval_heads"] == 2 and len(out["top_heads"]) == 3 and out["kv_heads"]["group_size"] == 2
    assert main(["analyze", str(path)]) == 0
    text = capsys.readouterr().out
    assert "Top 3 heads" not in text and "Top 12 heads" in text  # fewer heads than the default 20
    assert "Active in all 4 samples: 1 heads: L1H2" in text


def test_cli_compare_json(tmp_path, gqa_scores, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    gqa_scores.save_paper_json(a)
    gqa_scores.save_paper_json(b)
    assert main(["compare", str(a), str(b), "--json", "--top", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pearson"] == pytest.approx(1.0) and out["topk_overlap"] == 2 and out["jaccard"] == 1.0
    assert {"spearman", "topk_overlap_fraction"} <= set(out)


def test_cli_compare_shape_mismatch_exits_2(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    scores_from_means(np.zeros((2, 4))).save_paper_json(a)
    scores_from_means(np.zeros((3, 4))).save_paper_json(b)
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retrieval-heads: error: cannot compare scores of different shapes")
    assert "\n" not in err


def test_cli_analyze_missing_file_exits_2(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope.json")]) == 2
    assert "not found" in capsys.readouterr().err
