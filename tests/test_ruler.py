"""RULER's 13 tasks as named sets: multi-needle NIAH, variable tracking, common and frequent words, QA.

Everything runs offline: the QA sets are built from small fake SQuAD and HotpotQA records, and every run
passes its own haystack file (or uses a task that builds its own context).
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from conftest import build_tiny, forced_answer

from retrieval_heads.cli import main
from retrieval_heads.core.scoring import answer_score, string_match_all, string_match_part
from retrieval_heads.errors import UserError
from retrieval_heads.models import LoadedModel
from retrieval_heads.sweep.contexts import fit_size
from retrieval_heads.sweep.grid import SweepConfig, prepare
from retrieval_heads.sweep.haystack import (MultiNeedle, Needle, TaskItem, insert_needle, insert_needles,
                                            load_needle_set, needles_metric, require_one_needle)
from retrieval_heads.sweep.sources import ruler_qa
from retrieval_heads.sweep.sources.haystacks import NOISE
from retrieval_heads.sweep.sources.hotpotqa import HotpotItem, Paragraph
from retrieval_heads.sweep.sources.ruler import DEPTHS, RULER_TASKS
from retrieval_heads.sweep.sources.ruler_qa import QaContexts, hotpotqa_source, squad_source
from retrieval_heads.sweep.sources.squad import SquadItem

NEEDLE = re.compile(r"One of the special magic (numbers|uuids) for (\S+) is: (\S+)\.")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
ESSAY = ("The river rises in the hills. It runs past the old mill and the school. Boats carry grain to the town. "
         "The bridge was built of stone. ") * 3


def test_rulers_thirteen_tasks_with_their_metrics():
    assert list(RULER_TASKS) == [
        "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
        "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2"]
    assert needles_metric("ruler:qa_1") == needles_metric("ruler:qa_2:seed=3") == "string_match_part"
    assert {needles_metric(f"ruler:{t}") for t in RULER_TASKS if not t.startswith("qa")} == {"string_match_all"}
    assert DEPTHS[:4] == (0, 3, 5, 8) and DEPTHS[-1] == 100 and len(DEPTHS) == 40  # np.round(np.linspace(0, 100, 40))


# --- the multi-needle NIAH tasks -------------------------------------------------------------------------------

def _parts(sentence):
    match = NEEDLE.fullmatch(sentence)
    assert match, sentence
    return match.groups()


@pytest.mark.parametrize("task, sentences, asked", [
    ("niah_multikey_1", 4, 1), ("niah_multivalue", 4, 4), ("niah_multiquery", 4, 4)])
def test_multi_needle_sets_hide_several_needles(task, sentences, asked):
    needles = load_needle_set(f"ruler:{task}:n=20").needles
    keys_of_set = []
    for n in needles:
        assert isinstance(n, MultiNeedle) and len(n.sentences) == sentences and len(n.other_depths) == sentences - 1
        assert set(n.other_depths) <= set(DEPTHS) and len(set(n.other_depths)) == sentences - 1
        parts = [_parts(s) for s in n.sentences]
        keys = [k for _, k, _ in parts]
        assert len(n.answers) == asked and n.real_needle == ", ".join(n.answers)
        assert _parts(n.needle)[2] == n.answers[0]  # the first needle asked about is the one at the sweep's depth
        if task == "niah_multivalue":  # one key, four values, all asked
            assert len(set(keys)) == 1 and [v for _, _, v in parts] == list(n.answers)
            assert n.question == f"What are all the special magic numbers for {keys[0]} mentioned in the provided text?"
        else:  # four keys: one asked (three distractors), or all four
            assert len(set(keys)) == 4
            keys_of_set += keys
            by_key = {k: v for _, k, v in parts}
            asked_keys = [k for k in by_key if by_key[k] in n.answers]
            assert sorted(by_key[k] for k in asked_keys) == sorted(n.answers)
        if task == "niah_multiquery":
            listed = re.fullmatch(r"What are all the special magic numbers for (.+) mentioned in the provided text\?",
                                  n.question).group(1)
            assert listed.replace(", and ", ", ").split(", ") == [k for v in n.answers for k, w in
                                                                  ((k, w) for _, k, w in parts) if w == v]
    assert len(set(keys_of_set)) == len(keys_of_set)  # keys are distinct within a set


def test_multi_needle_sets_are_seeded_and_pinned():
    def first(name):
        return load_needle_set(name).needles[0]

    assert load_needle_set("ruler:niah_multivalue:n=3").needles == load_needle_set("ruler:niah_multivalue").needles[:3]
    assert first("ruler:niah_multikey_1:seed=1") != first("ruler:niah_multikey_1")
    multikey = first("ruler:niah_multikey_1")
    assert multikey.sentences == (
        "One of the special magic numbers for funny-snail is: 9152513.",
        "One of the special magic numbers for misty-owl is: 1679215.",
        "One of the special magic numbers for noble-goat is: 8995970.",
        "One of the special magic numbers for long-violin is: 4664860.")
    assert multikey.question == "What is the special magic number for funny-snail mentioned in the provided text?"
    assert (multikey.other_depths, multikey.answers) == ((46.0, 21.0, 15.0), ("9152513",))
    multivalue = first("ruler:niah_multivalue")
    assert multivalue.sentences[1] == "One of the special magic numbers for misty-owl is: 5343902."
    assert multivalue.answers == ("1679215", "5343902", "9577766", "9152513")
    multiquery = first("ruler:niah_multiquery")
    assert multiquery.question == ("What are all the special magic numbers for funny-snail, long-violin, misty-owl, "
                                   "and noble-goat mentioned in the provided text?")
    assert multiquery.answers == ("9152513", "4664860", "1679215", "8995970")


@pytest.mark.parametrize("task, kind", [("niah_multikey_2", "numbers"), ("niah_multikey_3", "uuids")])
def test_needle_haystack_tasks_hide_one_needle_among_distractor_needles(task, kind):
    needle_set = load_needle_set(f"ruler:{task}:n=4")
    lines = needle_set.own_haystack.split("\n")
    assert len(lines) > 3000 and needle_set.haystack_for(None) is None
    distractor_keys = set()
    for line in lines:
        line_kind, key, value = _parts(line)
        assert line_kind == kind
        distractor_keys.add(key)
        if kind == "uuids":
            assert UUID.fullmatch(key) and UUID.fullmatch(value)
    for n in needle_set.needles:
        assert type(n) is Needle  # one needle: the single-needle form
        _, key, value = _parts(n.needle)
        assert key not in distractor_keys and n.real_needle == value  # no distractor shares a key with a needle
        if kind == "uuids":
            assert UUID.fullmatch(key)
            assert n.question == f"What is the special magic uuid for {key} mentioned in the provided text?"
    assert lines[0] == "One of the special magic numbers for cloudy-camp is: 9074414." or kind == "uuids"
    assert load_needle_set(f"ruler:{task}:n=4").own_haystack == needle_set.own_haystack
    with pytest.raises(UserError, match="builds its own haystack of distractor needles; drop --haystack"):
        needle_set.haystack_text("paul-graham")


def test_insert_needles_spreads_them_and_keeps_one_needle_as_before():
    context = "One. Two. Three. Four. Five. Six. Seven. Eight."
    for depth in (0, 30, 50, 100):
        text, start, end = insert_needle(context, "NEEDLE.", depth)
        assert insert_needles(context, [("NEEDLE.", depth)]) == (text, [(start, end)])
    text, spans = insert_needles(context, [("A.", 50), ("B.", 10), ("C.", 90), ("D.", 50)])
    assert [text[s:e] for s, e in spans] == ["A.", "B.", "C.", "D."]
    assert text == "B. One. Two. Three. Four. A. D. Five. Six. Seven. C. Eight."  # 10% lies before the first boundary


def test_a_multi_needle_prompt_holds_every_needle_and_spans_the_first(tiny_tokenizer, tmp_path):
    haystack = tmp_path / "essay.txt"
    haystack.write_text(ESSAY)
    config = SweepConfig(model="tiny", needles="ruler:niah_multikey_1:n=2", haystack=str(haystack), lengths=[300],
                         depths=[0.0, 100.0])
    inputs = prepare(config, tiny_tokenizer, None)
    needle = inputs.needles[0]
    for depth in (0, 100):
        prompt = inputs.prompts[f"n0-L300-d{depth}"]
        assert all(prompt.text.count(s) == 1 for s in needle.sentences)
        start, end = prompt.needle_span
        assert tiny_tokenizer.decode(prompt.ids[start:end]).strip() == needle.needle
    # the first needle moves with the depth; the distractors stay where their own depths put them
    first, last = (inputs.prompts[f"n0-L300-d{d}"].text for d in (0, 100))
    assert first.index(needle.needle) < first.index(needle.others[0]) and last.index(needle.needle) > last.index(needle.others[0])


# --- the tasks with no needle ---------------------------------------------------------------------------------

def test_variable_tracking_chains_in_noise():
    vt = load_needle_set("ruler:vt:n=6")
    assert vt.contexts is not None and not vt.has_depth and vt.metric == "string_match_all"
    first = vt.needles[0]
    assert isinstance(first, TaskItem) and first.needle == "" and first.sentences == ()
    assert first.question == "Find all variables that are assigned the value 23199 in the text above."
    assert first.answers == ("VTKGN", "KUHMP", "XNHTQ", "GXZVX", "ISXRM")
    assert vt.contexts.context(0, 3, 1000) == "\n".join([
        "VAR VTKGN = 23199", NOISE, "VAR KUHMP = VAR VTKGN ", "VAR XNHTQ = VAR KUHMP ", NOISE,
        "VAR GXZVX = VAR XNHTQ ", "VAR ISXRM = VAR GXZVX ", NOISE])
    for index, item in enumerate(vt.needles):
        names = item.answers
        assert len(names) == 5 == len(set(names)) and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
        value = re.search(r"value (\d{5}) ", item.question).group(1)
        lines = vt.contexts.context(index, 200, 4000).split("\n")
        assert lines.count(NOISE) == 200
        chain = [line for line in lines if line != NOISE]
        assert chain == [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a} " for a, b in zip(names, names[1:])]
    assert load_needle_set("ruler:vt:n=6").contexts.context(2, 50, 1000) == vt.contexts.context(2, 50, 1000)


def test_common_words_repeat_ten_words_often():
    cwe = load_needle_set("ruler:cwe:n=3")
    first = cwe.needles[0]
    assert first.question == "What are the 10 most common words in the above list?"
    assert first.answers == ("mild", "owl", "awesome", "flat", "snail", "scarce", "nice", "happy", "royal", "letter")
    assert cwe.contexts.context(0, 3, 1000).startswith("1. mild 2. snail 3. awesome 4. flat 5. mild 6. owl ")
    for length, (common, other) in ((1000, (6, 1)), (8000, (30, 3))):
        text = cwe.contexts.context(1, 40, length)
        words = re.findall(r"(\d+)\. (\S+)", text)
        assert [int(i) for i, _ in words] == list(range(1, len(words) + 1))
        counts = Counter(w for _, w in words)
        assert {counts[w] for w in cwe.needles[1].answers} == {common} and len(counts) == 50
        assert {c for w, c in counts.items() if w not in cwe.needles[1].answers} == {other}
    # past the single words, adjective-noun pairs that share no part with a common word
    many = cwe.contexts.uncommon(0, 1000)
    assert len(set(many)) == 1000 and not set(many) & set(first.answers)
    assert all(not set(w.split("-")) & set(first.answers) for w in many)
    assert cwe.contexts.uncommon(0, 700) == many[:700]


def test_frequent_words_follow_zipf():
    fwe = load_needle_set("ruler:fwe:n=3")
    first = fwe.needles[0]
    assert first.question == ("Do not provide any explanation. Please ignore the dots '....'. What are the three "
                              "most frequently appeared words in the above coded text?")
    assert first.answers == ("rokifc", "llbaac", "tehzed")
    assert fwe.contexts.context(0, 80, 1000).startswith("... ... ... ... ... ... rokifc ... ... ")
    for index, item in enumerate(fwe.needles):
        counts = Counter(fwe.contexts.context(index, 2000, 2000).split(" "))
        ranked = [w for w, _ in counts.most_common()]
        assert ranked[0] == "..." and set(ranked[1:4]) == set(item.answers) and len(counts) <= 2000 // 50
        assert counts["..."] == int(2000 / (3.14159265 ** 2 / 6))
        assert all(re.fullmatch(r"[a-z]{6}", w) for w in ranked[1:])
    # at the smallest size the three still outnumber the rest
    counts = Counter(fwe.contexts.context(0, fwe.contexts.min_size, 4000).split(" "))
    assert sorted(counts.values(), reverse=True)[3] > sorted(counts.values(), reverse=True)[4]


SQUAD_ITEMS = [
    SquadItem("q1", "Normans", "The Normans gave their name to Normandy, a region in France.",
              "In what country is Normandy located?", ("France", "France", "in France"), (53, 53, 50), False),
    SquadItem("q2", "Normans", "The Normans gave their name to Normandy, a region in France.",
              "Who gave their name to France?", (), (), True, ("The Normans",)),
    SquadItem("q3", "Normans", "Rollo was the first ruler of Normandy.", "Who first ruled Normandy?", ("Rollo",),
              (0,), False),
    SquadItem("q4", "Normans", "The Norman conquest of England began in 1066.", "When did the conquest begin?",
              ("1066", "in 1066"), (41, 38), False),
    SquadItem("q5", "Physics", "Force is a push or a pull.", "What is a force?", ("a push or a pull",), (9,), False),
    SquadItem("q6", "Physics", "Mass measures inertia.", "What does mass measure?", ("inertia",), (14,), False),
]
HOTPOT_ITEMS = [
    HotpotItem("h1", "Were A and B of the same nationality?", "yes", "comparison", "hard",
               (Paragraph("A", ("A was American.", " A made films.")), Paragraph("B", ("B was American.",))), ()),
    HotpotItem("h2", "Where was C born?", "Paris", "bridge", "hard",
               (Paragraph("C", ("C was born in Paris.",)), Paragraph("B", ("B was American.",))), ()),
    HotpotItem("h3", "What did D build?", "a bridge", "bridge", "hard",
               (Paragraph("D", ("D built a bridge.",)), Paragraph("E", ("E is a river.",))), ()),
]


def test_qa_1_puts_a_squad_paragraph_among_distractors():
    source = squad_source(SQUAD_ITEMS)
    assert len(source.questions) == 5 and len(source.documents) == 5  # answerable questions, distinct paragraphs
    qa = QaContexts("qa_1", "squad", seed=0, count=5, source=source)
    by_question = {item.question: item for item in qa.items}
    assert by_question["In what country is Normandy located?"].answers == ("France", "in France")
    assert by_question["In what country is Normandy located?"].real_needle == "France"
    first = qa.items[0]
    gold = source.documents[source.gold[qa.chosen[0]][0]]
    assert (first.question, first.answers, gold) == ("What is a force?", ("a push or a pull",),
                                                     "Force is a push or a pull.")
    assert qa.context(0, 0, 1000) == f"Document 1:\n{gold}"
    # the same article's other paragraph first, then one of another article
    assert qa.context(0, 2, 1000) == ("Document 1:\nRollo was the first ruler of Normandy.\n\n"
                                      "Document 2:\nForce is a push or a pull.\n\n"
                                      "Document 3:\nMass measures inertia.")
    for index in range(5):  # distractors: the same article's paragraphs first, then the others
        k = qa.chosen[index]
        nearby = set(source.nearby[k])
        order = qa.distractors(index)
        assert set(order[: len(nearby)]) == nearby and len(order) == qa.max_size(index, 1000) == 4
        full = qa.context(index, 4, 1000)
        assert all(d in full for d in source.documents) and full.count("Document ") == 5
    assert QaContexts("qa_1", "squad", seed=0, count=5, source=source).context(3, 2, 1000) == qa.context(3, 2, 1000)
    assert QaContexts("qa_1", "squad", seed=1, count=5, source=source).chosen != qa.chosen


def test_qa_2_keeps_every_hotpotqa_paragraph_of_its_question():
    source = hotpotqa_source(HOTPOT_ITEMS)
    assert len(source.documents) == 5  # B's paragraph is shared by two questions: one document
    qa = QaContexts("qa_2", "hotpotqa", seed=0, count=3, source=source)
    k = qa.items.index(next(i for i in qa.items if i.question.startswith("Were A")))
    assert qa.items[k].answers == ("yes",)
    text = qa.context(k, 0, 1000)
    assert text.count("Document ") == 2 and "A\nA was American. A made films." in text and "B\nB was American." in text
    assert qa.context(k, 3, 1000).count("Document ") == 5


def test_qa_sets_by_name_read_the_data_sets(monkeypatch, tiny_tokenizer):
    monkeypatch.setattr(ruler_qa, "squad_items", lambda: SQUAD_ITEMS)
    monkeypatch.setattr(ruler_qa, "hotpotqa_items", lambda: HOTPOT_ITEMS)
    qa_1 = load_needle_set("ruler:qa_1:n=2")
    assert qa_1.metric == "string_match_part" and qa_1.name == "ruler:qa_1:seed=0:n=2"
    inputs = prepare(SweepConfig(model="tiny", needles="ruler:qa_1:n=2", lengths=[150], depths=[10.0, 90.0]),
                     tiny_tokenizer, None)
    assert sorted(inputs.prompts) == ["n0-L150-d0", "n1-L150-d0"]  # no depth: one sample per length
    prompt = inputs.prompts["n0-L150-d0"]
    assert prompt.needle_span is None and "Force is a push or a pull." in prompt.text
    assert prompt.text.count("Document ") >= 2 and len(prompt.ids) <= 150
    assert prompt.text.endswith("Question: What is a force?\nAnswer:")
    assert inputs.haystack_text.startswith("ruler:qa_1:seed=0:n=2 v1 squad ")
    assert load_needle_set("ruler:qa_2:n=3").needles[0].question == "Where was C born?"
    with pytest.raises(UserError, match="has 5 questions, not 9"):
        load_needle_set("ruler:qa_1:n=9")


def test_task_contexts_fill_their_length(tiny_tokenizer):
    for task in ("vt", "cwe", "fwe"):
        inputs = prepare(SweepConfig(model="tiny", needles=f"ruler:{task}:n=1", lengths=[800, 1600]), tiny_tokenizer,
                         None)
        for length in (800, 1600):
            prompt = inputs.prompts[f"n0-L{length}-d0"]
            assert length - 60 <= len(prompt.ids) <= length, (task, length, len(prompt.ids))
    with pytest.raises(UserError, match="too short for sample 0 of ruler:cwe"):
        prepare(SweepConfig(model="tiny", needles="ruler:cwe:n=1", lengths=[300]), tiny_tokenizer, None)
    with pytest.raises(UserError, match="builds its own context; drop --haystack"):
        prepare(SweepConfig(model="tiny", needles="ruler:vt:n=1", haystack="ruler-noise", lengths=[300]),
                tiny_tokenizer, None)


def test_fit_size_finds_the_largest_size_that_fits():
    def build(size):
        return "x" * (size * 3 + 5)

    for budget in (5, 8, 100, 1000, 12345):
        size = fit_size(build, len, budget, low=0)
        assert len(build(size)) <= budget < len(build(size + 1))
    assert fit_size(build, len, 4, low=0) is None
    assert fit_size(build, len, 1000, low=0, high=10) == 10
    assert fit_size(build, len, 1000, low=0, high=500) == 331


# --- metrics ---------------------------------------------------------------------------------------------------

def test_string_match_all_and_part_on_hand_made_answers():
    values = ("1679215", "5343902", "9577766", "9152513")
    assert string_match_all(values, "They are 1679215, 5343902, 9577766 and 9152513.") == 1.0
    assert string_match_all(values, "1679215 and 9577766") == 0.5
    assert string_match_all(("VTKGN", "KUHMP"), "vtkgn") == 0.5  # case-insensitive
    assert string_match_part(("France", "in France"), "It is in france.") == 1.0
    assert string_match_part(("1066", "in 1066"), "In 1067.") == 0.0
    assert answer_score("string_match_part", ["Paris", "paris, France"], "PARIS") == 1.0
    with pytest.raises(ValueError):
        string_match_part([], "x")


# --- runs on a tiny model ----------------------------------------------------------------------------------------

@pytest.fixture
def tiny_llama(monkeypatch, tiny_tokenizer):
    import retrieval_heads.models as models

    model = build_tiny("llama")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: LoadedModel(model, tiny_tokenizer, "tiny-llama", 0.0))
    return model


def _rows(out):
    return {r["needle_index"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_niah_on_a_multi_value_set(tmp_path, tiny_llama, tiny_tokenizer):
    haystack = tmp_path / "essay.txt"
    haystack.write_text(ESSAY)
    values = load_needle_set("ruler:niah_multivalue:n=2").needles[0].answers
    out = tmp_path / "run"
    argv = ["niah", "--needles", "ruler:niah_multivalue:n=2", "--haystack", str(haystack), "--lengths", "600",
            "--depths", "50", "--max-new-tokens", "60", "--chunk-size", "64", "--out", str(out), "--quiet"]
    with forced_answer(tiny_llama, tiny_tokenizer, text=" ".join(values)):
        assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "string_match_all" and summary["samples"] == 2
    rows = _rows(out)
    assert rows[0]["answers"] == list(values) and rows[0]["score"] == 100.0 and rows[0]["contains_answer"]
    assert rows[1]["score"] == 0.0 and not rows[1]["contains_answer"] and rows[1]["failure"] is not None


def test_niah_on_variable_tracking(tmp_path, tiny_llama, tiny_tokenizer, capsys):
    names = load_needle_set("ruler:vt:n=2").needles[0].answers
    out = tmp_path / "vt"
    argv = ["niah", "--needles", "ruler:vt:n=2", "--lengths", "300", "--max-new-tokens", "40", "--chunk-size", "64",
            "--out", str(out), "--quiet"]
    with forced_answer(tiny_llama, tiny_tokenizer, text=" ".join(names)):
        assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "string_match_all" and summary["config"]["depths"] == [0.0]
    assert [(g["context_length"], g["depth_percent"]) for g in summary["grid"]] == [(300, 0.0)]
    rows = _rows(out)
    assert rows[0]["answers"] == list(names) and rows[0]["score"] == 100.0 and rows[0]["depth_percent"] == 0.0
    assert rows[1]["score"] == 0.0
    # a task with no needle has no depth to sweep
    assert main(argv[:-3] + ["--depths", "50", "--out", str(tmp_path / "other")]) == 2
    assert "ruler:vt:seed=0:n=2 has no needle depth" in capsys.readouterr().err


def test_detect_scores_the_asked_needle_of_a_multi_key_set(tmp_path, tiny_llama, tiny_tokenizer):
    haystack = tmp_path / "essay.txt"
    haystack.write_text(ESSAY)
    needle = load_needle_set("ruler:niah_multikey_1:n=1").needles[0]
    out = tmp_path / "detect"
    with forced_answer(tiny_llama, tiny_tokenizer, text=needle.real_needle):
        assert main(["detect", "--needles", "ruler:niah_multikey_1:n=1", "--haystack", str(haystack), "--lengths",
                     "300", "--depths", "50", "--max-new-tokens", "12", "--chunk-size", "64", "--out", str(out),
                     "--quiet"]) == 0
    (record,) = map(json.loads, (out / "samples.jsonl").read_text().splitlines())
    start, end = record["needle_span"]
    assert tiny_tokenizer.decode(record["prompt_ids"][start:end]).strip() == needle.needle and record["success"]


@pytest.mark.parametrize("command, needles, why", [
    ("detect", "ruler:vt", "ruler:vt:seed=0:n=8 has no needle (it builds its own context)"),
    ("detect", "ruler:qa_1:n=2", "ruler:qa_1:seed=0:n=2 has no needle"),
    ("detect", "ruler:niah_multivalue", "asks for 4 values, each copied from its own needle"),
    ("lookup", "ruler:cwe", "ruler:cwe:seed=0:n=8 has no needle"),
    ("lookup", "ruler:niah_multiquery", "asks for 4 values"),
])
def test_detect_and_lookup_refuse_sets_without_one_needle(tmp_path, monkeypatch, capsys, command, needles, why):
    import retrieval_heads.models as models

    def never(*args, **kwargs):
        raise AssertionError("no model or data may be loaded for a refused set")

    monkeypatch.setattr(models, "load_model", never)
    monkeypatch.setattr(ruler_qa, "squad_items", never)
    assert main([command, "--needles", needles, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err and f"{command} scores the one needle" in err
    assert "run it with niah or kv-eval" in err


def test_sets_with_one_needle_pass_the_check():
    for name in ("ruler:niah_single_1", "ruler:niah_multikey_1", "ruler:niah_multikey_3", None, "needles.jsonl"):
        require_one_needle(name, "detect")
    assert load_needle_set("ruler:niah_multikey_2:n=1").one_needle
    assert not load_needle_set("ruler:fwe:n=1").one_needle
