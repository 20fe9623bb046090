"""The pure mapping and metric functions of benchmarks/contextcite_peer.py and loo_reference.py (no model)."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
peer = pytest.importorskip("contextcite_peer")
loo = pytest.importorskip("loo_reference")


def test_part_spans_follow_separators():
    context = "Title\nOne. Two.\n\nOther\nThree."
    parts, seps = ["Title", "One.", "Two.", "Other", "Three."], ["", "\n", " ", "\n\n", "\n"]
    spans = peer.part_spans(parts, seps)
    assert [context[s:e] for s, e in spans] == parts


def test_sentence_scores_spread_by_share():
    sentences = [(0, 10), (11, 20)]
    # one source is exactly sentence 0; one spans both (half in each... 10 of 20 chars in sentence 1); a title-like source outside
    scores = peer.sentence_scores([(0, 10), (10, 30), (40, 45)], [2.0, 4.0, 9.0], sentences)
    assert scores[0] == pytest.approx(2.0)
    assert scores[1] == pytest.approx(4.0 * 9 / 20)
    assert peer.partition_agreement([(0, 10), (10, 30)], sentences) == 0.5


def test_ranked_positive_only_ties_in_context_order():
    sentences = [(0, 5), (6, 10), (11, 15), (16, 20)]
    assert peer.ranked([0.0, 1.0, 3.0, 1.0], sentences) == [2, 1, 3]
    assert peer.ranked([0.0, -1.0, 0.0, 0.0], sentences) == []


def test_citation_metrics():
    m = peer.citation_metrics([2, 0, 1], [0, 3])
    assert m == {"recall@1": 0.0, "recall@2": 0.5, "precision@2": 0.5}
    empty = peer.citation_metrics([], [0, 3])
    assert empty["recall@2"] == 0.0 and empty["precision@2"] is None


def test_spearman_with_ties_and_constants():
    assert peer.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert peer.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert peer.spearman([0, 0, 0], [1, 2, 3]) is None
    scipy = pytest.importorskip("scipy.stats")
    a, b = [0, 0, 3, 1, 0, 2], [0.5, -0.1, 2.0, 0.4, 0.0, 0.3]
    assert peer.spearman(a, b) == pytest.approx(scipy.spearmanr(a, b).statistic)


def test_mean_ci_matches_grounding_metrics():
    metrics = pytest.importorskip("retrieval_heads.grounding.metrics")
    values = [0.0, 0.5, 1.0, 0.5, 0.0, 1.0, 0.5]
    row, ours = metrics.mean_row("x", values), peer.mean_ci([*values, None])
    assert (ours["mean"], ours["ci_low"], ours["ci_high"], ours["n"]) == pytest.approx(
        (row["mean"], row["ci_low"], row["ci_high"], row["n"]))


def test_remove_sentence_keeps_one_separator():
    context = "Title\nOne. Two. Three.\n\nOther\nFour."
    assert loo.remove_sentence(context, 11, 15) == "Title\nOne. Three.\n\nOther\nFour."  # middle
    assert loo.remove_sentence(context, 16, 22) == "Title\nOne. Two.\n\nOther\nFour."  # last of its paragraph
    assert loo.remove_sentence(context, 6, 10) == "Title\nTwo. Three.\n\nOther\nFour."  # first of its paragraph


def test_select_answers_and_grounding_line(tmp_path):
    pytest.importorskip("retrieval_heads.grounding.citations")
    context = "T\nAlpha is here. Beta is there.\n\nU\nGamma."
    items = [{"id": "a", "context": context, "question": "q?"}, {"id": "b", "context": context, "question": "q?"}]
    spans = [[2, 16], [17, 31], [36, 42]]
    results = [
        {"id": "a", "answer": "", "sentence_spans": spans, "supporting_spans": [[2, 16]]},
        {"id": "b", "answer": "Beta", "sentence_spans": spans, "supporting_spans": [[17, 31], [36, 42]],
         "spans": [{"context_start": 17, "context_end": 21}], "forward_passes": {"prefill": 1, "decode": 3, "teacher_forced": 1}},
    ]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    chosen = peer.select_answers(tmp_path, 5)
    assert [a["id"] for a in chosen] == ["b"] and chosen[0]["context"] == context
    line = loo.grounding_line(chosen[0])
    assert line["scores"] == [0.0, 4.0, 0.0] and line["ranked"] == [1]
    assert line["recall@1"] == 0.5 and line["precision@2"] == 1.0 and line["passes_total"] == 5
