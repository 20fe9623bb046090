"""Downstream task suites: items, scorers, Wilson intervals, user items, a tiny end-to-end run, the CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from conftest import build_tiny
from retrieval_heads.analysis.formats import save_scores
from retrieval_heads.cli import main
from retrieval_heads.core.head_scores import HeadScores
from retrieval_heads.errors import UserError
from retrieval_heads.tasks.suites import KNOWLEDGE, Item, load_items, suite_items
from retrieval_heads.tasks.run import SUITES, AnswerStop, get_suite, render, run_tasks, wilson
from retrieval_heads.tasks.scoring import contains, final_answer, normalize, score

BUILT_IN = ["extractive-qa", "reasoning", "reasoning-cot", "knowledge-qa"]


# ---- items -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BUILT_IN)
def test_items_are_deterministic_and_at_least_100(name):
    items = suite_items(name, 100)
    assert len(items) == 100
    assert items == suite_items(name, 100)
    assert len({it.id for it in items}) == 100
    assert suite_items(name, 40) == items[:40]  # the first n items do not depend on n
    assert suite_items(name, 100, seed=7) != items


def test_knowledge_has_more_than_100_distinct_facts():
    assert len(KNOWLEDGE) >= 100
    assert len({q for q, _ in KNOWLEDGE}) == len(KNOWLEDGE)
    assert all(it.context == "" for it in suite_items("knowledge-qa", len(KNOWLEDGE)))


@pytest.mark.parametrize("name", ["extractive-qa", "reasoning"])
def test_context_answers_are_spans_and_distractors_differ(name):
    for it in suite_items(name, 200):
        assert contains(it.context, it.answer), it
        assert it.answer not in it.distractors
        assert all(contains(it.context, d) for d in it.distractors)
        assert score(it, it.answer)[0]


def test_cot_suite_asks_the_reasoning_items():
    assert suite_items("reasoning-cot", 20) == suite_items("reasoning", 20)
    assert SUITES["reasoning-cot"].cot and not SUITES["reasoning"].cot
    assert SUITES["reasoning-cot"].max_new_tokens > SUITES["reasoning"].max_new_tokens


# ---- scoring -----------------------------------------------------------------------------------

ITEM = Item("x", "Anwen lives in Brill. Corvin lives in New Tolvar.", "Where does Anwen live?", ("Brill",),
            ("New Tolvar",))


def test_normalize():
    assert normalize("  The  Capital, of FRANCE!  ") == "capital of france"
    assert normalize("twenty-four") == "twenty four"


@pytest.mark.parametrize("response,expected", [
    ("Brill", True),
    ("Anwen lives in brill.", True),
    ("She lives in the town of Brill, I think", True),
    ("Brillo", False),  # whole words only
    ("Anwen lives in Brill and Corvin in New Tolvar.", False),  # repeats the passage: a distractor too
    ("Brill, near Tolvar", True),  # a part of a distractor is not the distractor
    ("", False),
])
def test_direct_scorer(response, expected):
    assert score(ITEM, response)[0] is expected


@pytest.mark.parametrize("response,final", [
    ("Anwen lives in Brill.\nAnswer: Brill\n", "Brill"),
    ("Step 1: Brill?\nanswer : New Tolvar", "New Tolvar"),
    ("Answer: Tolvar\nAnswer:\n\n  Brill  \n", "Brill"),  # last marker, its line empty: the next line
    ("Anwen lives in New Tolvar.\nSo she lives in Brill.", "So she lives in Brill."),  # no marker: last line
    ("Answer: the land is:\nKestria", "the land is: Kestria"),  # a lead-in takes the next line
    ("", ""),
])
def test_final_answer(response, final):
    assert final_answer(response) == final


def test_cot_scorer_reads_only_the_final_answer():
    assert score(ITEM, "Corvin lives in New Tolvar, Anwen in Brill.\nAnswer: Brill", cot=True) == (True, "Brill")
    assert not score(ITEM, "Anwen lives in Brill.\nAnswer: New Tolvar", cot=True)[0]


def test_aliases():
    item = Item("k", "", "How many legs does a spider have?", ("8", "eight"))
    assert score(item, "A spider has eight legs.")[0]
    assert score(item, "8 legs")[0]
    assert not score(item, "88 legs")[0]


def test_wilson_known_values():
    low, high = wilson(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = wilson(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    low, high = wilson(10, 10)
    assert round(low, 4) == 0.7225 and high == 1.0
    low, high = wilson(81, 263)  # Wilson (1927)-style example: p = 0.308
    assert (round(low, 3), round(high, 3)) == (0.255, 0.366)
    assert wilson(0, 0) == (0.0, 1.0)


# ---- user items --------------------------------------------------------------------------------

def test_load_items(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"context": "A is 3.", "question": "What is A?", "answer": "3"}\n\n'
                    '{"question": "Capital of Peru?", "answer": ["Lima"], "id": "peru"}\n')
    items = load_items(path)
    assert [it.id for it in items] == ["line-1", "peru"]
    assert items[1].context == "" and items[1].answers == ("Lima",)


@pytest.mark.parametrize("line,message", [
    ("not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object"),
    ('{"answer": "x"}', "line 2: 'question'"),
    ('{"question": "q?"}', "line 2: 'answer'"),
    ('{"question": "q?", "answer": ""}', "line 2: 'answer'"),
    ('{"question": "q?", "answer": "x", "context": 5}', "line 2: 'context'"),
    ('{"question": "q?", "answer": "x", "id": "line-1"}', "line 2: id 'line-1' appears twice"),
])
def test_load_items_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok?", "answer": "yes"}\n' + line + "\n")
    with pytest.raises(UserError, match=message):
        load_items(path)


def test_load_items_missing_or_empty(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_items(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no items"):
        load_items(tmp_path / "empty.jsonl")


# ---- prompts and stopping ----------------------------------------------------------------------

class _Tok:
    """Decodes token id i to PIECES[i]."""

    PIECES = ["\n", "Paris", " is", "Answer", ":", " it", ".", "<eos>"]
    eos_token_id = 7

    def decode(self, ids):
        return "".join(self.PIECES[i] for i in ids)


class _Model:
    class generation_config:
        eos_token_id = None


def _stops_after(stop, ids):
    stop.reset()
    for n, i in enumerate(ids, start=1):
        if stop(i):
            return n
    return None


def test_answer_stop():
    direct = AnswerStop(_Tok(), _Model(), cot=False)
    assert _stops_after(direct, [0, 1, 2, 0, 1]) == 4  # a leading newline does not end the answer
    assert _stops_after(direct, [1, 7, 1]) == 2  # EOS
    assert _stops_after(direct, [1, 2, 4, 0, 0, 1, 0]) == 7  # "Paris is:" is a lead-in: the answer is below
    cot = AnswerStop(_Tok(), _Model(), cot=True)
    assert _stops_after(cot, [1, 2, 0, 3, 4, 0, 5, 6, 0, 1]) == 9  # the line after "Answer:" must have text
    assert _stops_after(cot, [1, 0, 1, 0]) is None
    assert _stops_after(cot, [3, 4, 5, 4, 0, 1, 0]) == 7  # "Answer: it:" is a lead-in


def test_render_plain_and_chat(tiny_tokenizer):
    item = Item("x", "Some context.", "What?", ("a",))
    plain = render(tiny_tokenizer, item)
    assert plain.startswith("<bos>Some context.") and plain.endswith("Answer:")
    assert "Question: What?" in plain

    class Chat:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "<user>" + messages[0]["content"] + "<assistant>"

    chat = render(Chat(), item, cot=True)
    assert chat.startswith("<user>Some context.") and "step by step" in chat and "'Answer:'" in chat


# ---- end to end --------------------------------------------------------------------------------

@pytest.fixture
def loaded(tiny_tokenizer):
    from retrieval_heads.models import LoadedModel

    return LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)


def _conditions(shape=(3, 8)):
    from retrieval_heads.masking.heads import MaskPlan, plan_masking
    from retrieval_heads.tasks.run import Condition

    rng = np.random.default_rng(0)
    scores = HeadScores(rng.random((4, *shape)) * 0.2)
    common = dict(num_layers=shape[0], num_heads=shape[1], scores=scores)
    return [Condition("none", MaskPlan()), Condition("top-4", plan_masking(**common, mask_top=4)),
            Condition("random-4", plan_masking(**common, mask_random=4))]


def test_end_to_end_tiny_llama(loaded, tmp_path, monkeypatch):
    import retrieval_heads.tasks.run as tasks

    known_ids = {it.id for it in suite_items("knowledge-qa", 3)[:2]}
    real_score = tasks.score

    def score(item, response, *, cot=False):  # a random model knows nothing: two knowledge items count as known
        correct, scored = real_score(item, response, cot=cot)
        return correct or item.id in known_ids, scored

    monkeypatch.setattr(tasks, "score", score)
    suites = [get_suite(n) for n in BUILT_IN]
    out = tmp_path / "tasks"
    summary = run_tasks(loaded, suites, _conditions(), out, n=3, max_new_tokens=3, progress=False)
    written = json.loads((out / "summary.json").read_text())
    assert written["rows"] == summary["rows"]
    assert len(written["rows"]) == 4 * 3
    for row in written["rows"]:
        assert {"suite", "condition", "accuracy", "ci_low", "ci_high", "n", "k", "masked_heads"} <= set(row)
        assert 0.0 <= row["ci_low"] <= row["ci_high"] <= 1.0
    top = next(r for r in written["rows"] if r["condition"] == "top-4")
    assert top["k"] == 4 and len(top["masked_heads"]) == 4
    assert (out / "tasks.png").stat().st_size > 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    knowledge_none = [r for r in records if r["suite"] == "knowledge-qa" and r["condition"] == "none"]
    known = sum(r["correct"] for r in knowledge_none)
    assert known == 2
    # knowledge-qa: the masked conditions only ask what the unmasked model answered
    assert len(records) == 3 * 3 * 3 + 3 + 2 * known
    row = next(r for r in written["rows"] if r["suite"] == "knowledge-qa" and r["condition"] == "top-4")
    assert row["n"] == known
    # top-4 against random-4, one row per suite, on the items all three conditions answered
    assert [(c["suite"], c["k"], c["n"]) for c in written["contrasts"]] == [
        (suite.name, 4, known if suite.only_known else 3) for suite in suites]

    again = run_tasks(loaded, suites, _conditions(), out, n=3, max_new_tokens=3, progress=False, resume=True)
    assert len((out / "results.jsonl").read_text().splitlines()) == len(records)  # nothing rerun
    assert again["rows"] == summary["rows"]
    with pytest.raises(UserError, match="--resume"):
        run_tasks(loaded, suites, _conditions(), out, n=3, max_new_tokens=3, progress=False)

    other = tmp_path / "again"
    run_tasks(loaded, suites, _conditions(), other, n=3, max_new_tokens=3, progress=False)
    responses = [json.loads(line)["response"] for line in (other / "results.jsonl").read_text().splitlines()]
    assert responses == [r["response"] for r in records]  # deterministic on CPU


def test_masking_changes_the_masked_run_only(loaded, tmp_path):
    from retrieval_heads.core.hooks import AblationMode, AttentionControl
    from retrieval_heads.masking.heads import MaskPlan
    from retrieval_heads.tasks.run import Condition

    everything = MaskPlan(heads=tuple((l, h) for l in range(3) for h in range(8)), k=24)
    conds = [Condition("none", MaskPlan()), Condition("none-again", MaskPlan()), Condition("all-24", everything)]
    control = AttentionControl(mode=AblationMode.ZERO)  # a random tiny model attends almost uniformly anyway
    run_tasks(loaded, [get_suite("extractive-qa")], conds, tmp_path, n=4, max_new_tokens=4, progress=False,
              control=control)
    assert control.ablate is None
    by = {}
    for line in (tmp_path / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        by.setdefault(r["condition"], []).append(r["response"])
    assert by["none"] == by["none-again"]
    assert by["all-24"] != by["none"]


# ---- command line ------------------------------------------------------------------------------

def test_cli_unknown_suite_exits_2(capsys):
    assert main(["tasks", "--suite", "extractiv-qa"]) == 2
    assert "Did you mean: extractive-qa" in capsys.readouterr().err


def test_cli_bad_items_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{oops\n')
    assert main(["tasks", "--items", str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err


def _args(**kw):
    base = dict(scores=None, mask_top=None, mask_random=None, mask_heads=None, seed=0, random_per_sample=False)
    return argparse.Namespace(**{**base, **kw})


def test_cli_conditions(tmp_path):
    from retrieval_heads.cli.tasks import conditions_from_args, suites_from_args

    path = save_scores(HeadScores(np.random.default_rng(1).random((2, 30, 9)) * 0.3), tmp_path / "s.json")
    names = lambda conds: [c.name for c in conds]  # noqa: E731
    assert names(conditions_from_args(_args(), 30, 9)) == ["none"]
    default = conditions_from_args(_args(scores=str(path)), 30, 9)
    assert names(default) == ["none", "top-20", "random-20"]
    assert len(default[1].plan.heads) == 20 and set(default[1].plan.heads).isdisjoint(default[2].plan.heads)
    assert names(conditions_from_args(_args(scores=str(path), mask_top=5), 30, 9)) == ["none", "top-5"]
    assert names(conditions_from_args(_args(scores=str(path), mask_top=5, mask_random=7), 30, 9)) == [
        "none", "top-5", "random-7"]
    assert names(conditions_from_args(_args(mask_heads="1-2,3-4"), 30, 9)) == ["none", "heads-2"]
    with pytest.raises(UserError, match="--scores"):
        conditions_from_args(_args(mask_top=3), 30, 9)

    suite_args = argparse.Namespace(suite=None, items=None)
    assert [s.name for s in suites_from_args(suite_args)] == BUILT_IN
    suite_args.suite = ["reasoning,extractive-qa", "all"]
    assert [s.name for s in suites_from_args(suite_args)] == ["reasoning", "extractive-qa", "reasoning-cot",
                                                               "knowledge-qa"]


def test_plot_from_rows(tmp_path):
    from retrieval_heads.analysis.plots.tasks import task_accuracy

    rows = [{"suite": s, "condition": c, "accuracy": a, "ci_low": max(a - 0.1, 0), "ci_high": min(a + 0.1, 1), "n": 50}
            for s in ("extractive-qa", "knowledge-qa") for c, a in (("none", 0.8), ("top-20", 0.3), ("random-20", 0.7))]
    rows.append({"suite": "reasoning", "condition": "none", "accuracy": None, "ci_low": 0.0, "ci_high": 1.0, "n": 0})
    path = task_accuracy(rows, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_random_per_sample_records_its_heads(loaded, tmp_path):
    from retrieval_heads.masking.heads import MaskPlan, plan_masking
    from retrieval_heads.tasks.run import Condition

    scores = HeadScores(np.zeros((1, 3, 8)))
    plan = plan_masking(num_layers=3, num_heads=8, scores=scores, mask_random=3, per_sample=True)
    conds = [Condition("none", MaskPlan()), Condition("random-3", plan)]
    summary = run_tasks(loaded, [get_suite("reasoning")], conds, tmp_path, n=3, max_new_tokens=2, progress=False)
    masked = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()][3:]
    heads = [tuple(r["masked_heads"]) for r in masked]
    assert all(len(h) == 3 for h in heads) and len(set(heads)) > 1
    assert summary["rows"][1]["masked_heads"] == "per-sample"
