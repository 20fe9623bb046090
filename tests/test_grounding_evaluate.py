"""Hallucination detectors compared across ground runs (grounding/evaluate.py, ``ground-eval``), on synthetic lines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval_heads.errors import UserError
from retrieval_heads.grounding import citations, evaluate, metrics


def line(i: int, label: int | None, *, grounding=None, signal: float = 0.0, lookback=None, length=(5, 100, 0.5)) -> dict:
    r = {"id": f"q{i}", "grounding": grounding, "grounding_x_relevance": grounding, "mean_logprob": -1.0,
         "all_heads_copy_rate": 0.5, "lexical_overlap": 0.5, "length_position": list(length)}
    if label is not None:
        r["label"] = label
    if lookback is not None:
        r["lookback"] = lookback
    return r


def runs(rng, n: int, shift: float = 0.0) -> list[dict]:
    """Labels alternate; the lookback feature 1 separates them (the others are noise); grounding carries
    the label plus ``shift``."""
    out = []
    for i in range(n):
        y = i % 2
        out.append(line(i, y, grounding=0.2 + 0.5 * y + shift,
                        lookback=[float(rng.normal()), 3.0 * y - 1.5 + 0.1 * float(rng.normal()), float(rng.normal())]))
    return out


def by_name(rows):
    return {r["score"]: r for r in rows}


def test_read_scores_rank_and_missing_scores_rank_lowest():
    fit = [line(0, 1, grounding=0.9), line(1, 0, grounding=0.1), line(2, None, grounding=0.0)]
    test = [line(0, 1, grounding=0.8), line(1, 0, grounding=None), line(2, 0, grounding=0.3)]
    rows = by_name(evaluate.compare(fit, test))
    assert rows["grounding"]["auroc"] == 1.0 and rows["grounding"]["n"] == 3  # the empty answer ranks below 0.3
    assert rows["lexical overlap"]["auroc"] == 0.5  # a constant score: ties count one half
    assert rows["grounding"]["positives"] == 1


def test_regressions_are_fitted_on_one_run_and_measured_on_another():
    rng = np.random.default_rng(0)
    fit, test = runs(rng, 40), runs(rng, 30)
    rows = by_name(evaluate.compare(fit, test))
    assert rows["Lookback-Lens LR"]["auroc"] == 1.0  # feature 1 carries the label in both runs
    assert rows["length and position LR"]["auroc"] == 0.5  # the same cues for every answer: nothing to learn
    flipped = [{**r, "lookback": [r["lookback"][0], -r["lookback"][1], r["lookback"][2]]} for r in test]
    assert by_name(evaluate.compare(fit, flipped))["Lookback-Lens LR"]["auroc"] == 0.0  # fitted on fit, not on test
    one_class = [r for r in fit if r["label"] == 1]
    assert "Lookback-Lens LR" not in by_name(evaluate.compare(one_class, test))


def test_the_flagging_threshold_comes_from_the_fit_run():
    rng = np.random.default_rng(1)
    fit = runs(rng, 20)
    rows = by_name(evaluate.compare(fit, runs(rng, 20)))
    assert rows["grounding"]["threshold"] == pytest.approx(0.7) and rows["grounding"]["balanced_accuracy"] == 1.0
    shifted = by_name(evaluate.compare(fit, runs(rng, 20, shift=0.6)))["grounding"]  # every test score above 0.7
    assert shifted["auroc"] == 1.0 and shifted["balanced_accuracy"] == 0.5 and shifted["fit_balanced_accuracy"] == 1.0


def test_unlabelled_runs_are_refused():
    with pytest.raises(UserError, match="labelled"):
        evaluate.compare([line(0, None, grounding=0.5)], [line(1, 1, grounding=0.5)])


def test_length_position_cues_and_citation_relevance():
    context = "Alpha beta. The river Oth flows north.\nGamma delta."
    assert metrics.length_position("It is the Oth river", 5, context, 12) == [5.0, 12.0, context.index("river") / len(context)]
    assert metrics.length_position("nothing here", 2, context, 12)[2] == 1.0
    assert metrics.length_position("Othello", 2, context, 12)[2] == 1.0  # whole words only
    span = {"context_start": context.index("Oth"), "context_end": context.index("Oth") + 3}
    assert citations.sentence_around(context, span["context_start"], span["context_end"]).strip() == \
        "The river Oth flows north."
    assert citations.citation_relevance("Which way does the river Oth flow?", context, [span]) == pytest.approx(2 / 4)
    assert citations.citation_relevance("Which way does the river Oth flow?", context, []) == 0.0


def test_cli_ground_eval(tmp_path, capsys):
    from retrieval_heads.cli import main

    rng = np.random.default_rng(2)
    for name, n in (("fit", 30), ("test", 20)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs(rng, n)))
    out = tmp_path / "eval.json"
    assert main(["ground-eval", "--fit", str(tmp_path / "fit"), "--on", str(tmp_path / "test"), str(tmp_path / "fit"),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Lookback-Lens LR" in text and "(in-sample)" in text
    saved = json.loads(out.read_text())
    assert saved["fit"]["labelled"] == 30 and [t["labelled"] for t in saved["tests"]] == [20, 30]
    assert main(["ground-eval", "--fit", str(tmp_path), "--on", str(tmp_path / "test")]) == 2
    assert "not a ground run" in capsys.readouterr().err


def test_new_word_grounding_reads_only_the_words_an_answer_adds():
    answer = "The market town is Burnley, Lancashire"
    spans = [(0, 3), (4, 10), (11, 15), (16, 18), (19, 26), (26, 27), (28, 38)]  # The market town is Burnley , Lancashire
    grounded = {"Burnley": False, "Lancashire": True}
    tokens = [{"start": a, "end": b, "counted": answer[a:b].isalnum(), "grounded": grounded.get(answer[a:b], True)}
              for a, b in spans]
    question = "Which market town in Lancashire has the BB postcode?"
    assert metrics.new_word_grounding(answer, tokens, question) == 0.0  # "burnley" is the only new word: ungrounded
    tokens[4]["grounded"] = True
    assert metrics.new_word_grounding(answer, tokens, question) == 1.0
    tokens[6]["grounded"] = False
    assert metrics.new_word_grounding(answer, tokens, "Is Burnley a market town?") == 0.0  # new: lancashire, ungrounded
    assert metrics.new_word_grounding(answer, tokens, "Is Burnley a market town in Lancashire?") == 0.0  # nothing new
    record = {"answer": answer, "tokens": tokens, "question": question, "label": 1}
    assert evaluate.read_score(record, "new_word_grounding") == 1.0
    assert evaluate.read_score({**record, "tokens": []}, "new_word_grounding") is None  # an empty answer
